"""Pictures of a model's results, drawn with matplotlib (Agg backend, no display), and the
grid of worst images pasted and lettered with Pillow.

Owns: every matplotlib call of the project, and this is the only module that imports
it: confusion-matrix PNGs, learning curves, the grid of worst-classified images, and
the run report (``report/`` beside ``model.h5``: those pictures, the per-class tables
as CSV, and one self-contained ``report.html`` with every picture embedded). Each
picture is written under a temp name and renamed into place (``job.atomic``), so no
reader sees half a PNG; the run report is drawn in a hidden folder renamed to
``report/`` once complete, so a report that fails halfway leaves nothing behind.
Never touches: the numbers (``job.metrics`` computes them), training decisions,
TensorFlow, the model (the caller brings its predictions).

Example:
    >>> plot_confusion_matrix(np.array([[9, 1], [2, 8]]), ("cat", "dog"),
    ...                       "cm.png", title="validation")            # doctest: +SKIP
    PosixPath('cm.png')
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Before pyplot: pods and CI have no display.

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from job.atomic import fsync_path, new_file_mode, replacing  # noqa: E402
from job.metrics import ClassScores, averages, class_scores  # noqa: E402

DPI = 100
"""Pixels per inch of saved pictures: figure inches x 100 = pixels, a size that reads
well in a browser and in an image viewer."""
CELL_INCHES = 0.6
"""Width and height of one matrix cell: room for a three-digit count and a short name."""
MIN_INCHES, MAX_INCHES = 4.0, 16.0
"""Bounds of the matrix side: legible with two classes, at most 1600 px with hundreds."""
LABELLED_CLASSES = 40
"""Above this many classes, the axes show class indices instead of names, and the
cells carry no counts: names and numbers would overlap into noise."""


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str],
                          path: str | os.PathLike[str], title: str) -> Path:
    """Draw a confusion matrix (rows: true class, columns: predicted) as a PNG at ``path``.

    Colours are each row's share of its class (recall along the diagonal), so a small
    class reads as clearly as a large one; the cells show the counts.
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    count = len(class_names)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    side = min(MAX_INCHES, max(MIN_INCHES, 1.5 + CELL_INCHES * count))
    figure, axes = plt.subplots(figsize=(side + 1.0, side), dpi=DPI)
    try:
        image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
        labels = list(class_names) if count <= LABELLED_CLASSES else [str(i) for i in range(count)]
        ticks = np.arange(count) if count <= LABELLED_CLASSES else _sparse_ticks(count)
        axes.set_xticks(ticks, [labels[i] for i in ticks], rotation=45, ha="right")
        axes.set_yticks(ticks, [labels[i] for i in ticks])
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
        axes.set_title(title)
        if count <= LABELLED_CLASSES:
            _annotate(axes, matrix, shares)
        figure.tight_layout()
        with replacing(path, suffix=".png") as tmp:
            figure.savefig(tmp, format="png")
    finally:
        plt.close(figure)
    return Path(path)


def _annotate(axes, matrix: np.ndarray, shares: np.ndarray) -> None:
    """The count in every cell, white on dark cells so it stays readable."""
    for (row, column), value in np.ndenumerate(matrix):
        colour = "white" if shares[row, column] > 0.5 else "black"
        axes.text(column, row, str(value), ha="center", va="center", color=colour,
                  fontsize="small")


def _sparse_ticks(count: int) -> np.ndarray:
    """About 20 evenly spaced class indices, for a matrix too large to label every class."""
    return np.unique(np.linspace(0, count - 1, num=20).round().astype(int))


# --- the run report: report/ beside model.h5 --------------------------------------------

CURVES_INCHES = (11.0, 4.0)
"""Learning curves, loss and accuracy side by side: 1100 x 400 px, one screen wide."""
GRID_COLUMNS = 6
"""Thumbnails per row of the worst-classified grid: 6 x 180 px fits one screen width."""
THUMB_INCHES = 1.8
"""Side of one thumbnail (180 px): a 32 px image scales up crisply, a 224 px one down."""
CAPTION_INCHES = 0.75
"""Room above each thumbnail for its four caption lines (true, predicted, p, file)."""
THUMB_MARGIN_PIXELS = 8
"""Space on each side of a thumbnail inside its cell, so neighbours never touch."""
TITLE_PIXELS = 40
"""Height of the grid's title line."""
WORST_IMAGES = 24
"""Thumbnails in the grid: four rows of six, enough to see what the mistakes share."""
CAPTION_CHARACTERS = 22
"""Most characters of a class or file name in a caption: the thumbnail's width at 8 pt."""
SPLITS = (("val", "validation"), ("test", "test"))
"""metrics.json's prefix of each evaluated split, and the name the report (and
TensorBoard's run folders) give it."""


@dataclass(frozen=True)
class Worst:
    """The validation images one worker holds that the model judged worst, worst first."""

    pixels: np.ndarray
    """uint8 (images, height, width, channels): what the model saw."""
    labels: np.ndarray
    predicted: np.ndarray
    true_probability: np.ndarray
    """The probability the model gave each image's true class."""
    names: tuple[str, ...]
    """Each image's file name ('' when unknown)."""
    shard_images: int
    """Readable validation images the worker held, which the grid is drawn from."""
    workers: int


def lowest_true_probability(true_probability: np.ndarray, *, count: int) -> np.ndarray:
    """Indices of the ``count`` images whose true class got the lowest probability.

    Worst first; ties keep file order, so the grid is the same on every rerun.

    Example:
        >>> lowest_true_probability(np.array([0.9, 0.1, 0.5, 0.1]), count=3).tolist()
        [1, 3, 2]
    """
    return np.argsort(np.asarray(true_probability), kind="stable")[:count]


@dataclass(frozen=True)
class RunReport:
    """What the run report shows: the run's numbers, its history, its worst images."""

    run_id: str
    class_names: tuple[str, ...]
    metrics: Mapping[str, Any]
    """metrics.json's content: figures, facts, and each split's ``<split>_confusion_matrix``."""
    history: tuple[Mapping[str, Any], ...]
    """history.csv's rows (numbers, or the strings a resumed run read back)."""
    worst: Worst | None = None


@dataclass(frozen=True)
class Written:
    """A run report on disk."""

    folder: Path
    confusion_pngs: dict[str, bytes]
    """Each split's confusion matrix PNG, by name (``validation``, ``test``), for TensorBoard."""


def write_report(folder: str | os.PathLike[str], report: RunReport) -> Written:
    """Draw the run report into ``folder`` (``report/``), replacing an older one whole.

    Everything is drawn in a hidden folder beside it, which is renamed into place only
    when complete: a failure (matplotlib, a full disk) raises and leaves no folder.
    """
    folder = Path(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        pictures, confusion_pngs = _draw(staging, report)
        tables = {split: _class_rows(report, split) for split, _ in SPLITS}
        for split, rows in tables.items():
            if rows is not None:
                _write_text(staging / f"classes_{split}.csv", _class_csv(rows))
        _write_text(staging / "report.html", render_html(report, pictures, tables))
        _publish(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Written(folder=folder, confusion_pngs=confusion_pngs)


def _draw(folder: Path, report: RunReport) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Every picture of the report, by file name; and the confusion matrices, by split."""
    paths = [plot_learning_curves(report.history, folder / "learning_curves.png")]
    confusion = {}
    for split, name in SPLITS:
        matrix = report.metrics.get(f"{split}_confusion_matrix")
        if matrix is None:
            continue
        matrix = np.asarray(matrix, dtype=np.int64)
        accuracy = float(np.trace(matrix)) / max(int(matrix.sum()), 1)
        path = plot_confusion_matrix(matrix, report.class_names,
                                     folder / f"confusion_matrix_{split}.png",
                                     title=f"{name} set: {int(matrix.sum())} images, "
                                           f"accuracy {accuracy:.4f}")
        paths.append(path)
        confusion[name] = path.read_bytes()
    if report.worst is not None and len(report.worst.labels):
        paths.append(plot_worst_images(report.worst, report.class_names,
                                       folder / "worst_val.png"))
    return {path.name: path.read_bytes() for path in paths}, confusion


def _publish(staging: Path, folder: Path) -> None:
    """Rename the finished ``staging`` folder to ``folder``; an older report goes."""
    file_mode = new_file_mode()
    os.chmod(staging, file_mode | (file_mode & 0o444) >> 2)  # Folders: x wherever r.
    fsync_path(staging)
    old = None
    if folder.is_dir():
        old = folder.parent / f"{staging.name}-old"
        os.replace(folder, old)
    os.replace(staging, folder)
    fsync_path(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_text(path: Path, text: str) -> None:
    with replacing(path, suffix=path.suffix) as tmp:
        tmp.write_text(text, encoding="utf-8")


def plot_learning_curves(history: Sequence[Mapping[str, Any]],
                         path: str | os.PathLike[str]) -> Path:
    """Loss and accuracy per epoch, train and validation, side by side, as a PNG."""
    epochs = [_number(row.get("epoch")) for row in history]
    figure, panels = plt.subplots(1, 2, figsize=CURVES_INCHES, dpi=DPI)
    try:
        for axes, quantity in zip(panels, ("loss", "accuracy")):
            for split, label, style in (("train", "train", "o-"), ("val", "validation", "s-")):
                axes.plot(epochs, [_number(row.get(f"{split}_{quantity}")) for row in history],
                          style, label=label, markersize=4)
            axes.set_title(quantity)
            axes.set_xlabel("epoch")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.grid(alpha=0.3)
            axes.legend()
        figure.tight_layout()
        with replacing(path, suffix=".png") as tmp:
            figure.savefig(tmp, format="png")
    finally:
        plt.close(figure)
    return Path(path)


def _number(value: Any) -> float:
    """A history cell as a float; NaN (a gap in the line) where there is none."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def plot_worst_images(worst: Worst, class_names: Sequence[str],
                      path: str | os.PathLike[str]) -> Path:
    """The worst-classified images as a thumbnail grid, captioned true / predicted / p.

    A wrong prediction's caption is red; an image predicted right but with little
    confidence (when fewer than a grid's worth are wrong) keeps a black one. Pasted
    and lettered with Pillow in matplotlib's own font: the same picture as one set of
    matplotlib axes drew, in 0.06 s instead of 0.2-0.3 s (a subplot per image had cost
    0.7-1.0 s).
    """
    count = len(worst.labels)
    rows = max(1, -(-count // GRID_COLUMNS))
    cell, caption = round(THUMB_INCHES * DPI), round(CAPTION_INCHES * DPI)
    width, height = GRID_COLUMNS * cell, TITLE_PIXELS + rows * (caption + cell)
    grid = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(grid).text((width / 2, TITLE_PIXELS / 2), "lowest probability of the true "
                              "class, worst first", font=_font(10), fill="black", anchor="mm")
    for index in range(count):
        top = TITLE_PIXELS + (index // GRID_COLUMNS) * (caption + cell)
        _thumbnail(grid, worst, index, class_names,
                   left=(index % GRID_COLUMNS) * cell, top=top + caption)
    with replacing(path, suffix=".png") as tmp:
        grid.save(tmp, format="PNG")
    return Path(path)


def _thumbnail(grid: Image.Image, worst: Worst, index: int, class_names: Sequence[str], *,
               left: int, top: int) -> None:
    """One image, centred across the cell whose picture area starts at (left, top), and its
    caption above it: enlarged pixel for pixel (a 32 px image stays crisp) from 3 times up,
    as matplotlib shows images, otherwise resampled smoothly."""
    pixels = np.asarray(worst.pixels[index])
    side = round(THUMB_INCHES * DPI) - 2 * THUMB_MARGIN_PIXELS
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert("RGB")
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.NEAREST if scale >= PIXEL_FOR_PIXEL_SCALE
                         else Image.Resampling.LANCZOS)
    grid.paste(image, (left + THUMB_MARGIN_PIXELS + (side - size[0]) // 2, top))
    true, predicted = int(worst.labels[index]), int(worst.predicted[index])
    lines = [f"true {_short(class_names[true])}", f"predicted {_short(class_names[predicted])}",
             f"p(true) {float(worst.true_probability[index]):.3f}",
             _short(worst.names[index]) if index < len(worst.names) else ""]
    ImageDraw.Draw(grid).multiline_text(
        (left + THUMB_MARGIN_PIXELS, top - 4), "\n".join(lines), font=_font(8), anchor="ld",
        fill="black" if true == predicted else WRONG_COLOUR, spacing=3)


PIXEL_FOR_PIXEL_SCALE = 3
"""From this enlargement up a thumbnail repeats pixels; below it, it is resampled (LANCZOS)."""
WRONG_COLOUR = (178, 34, 34)
"""A wrong prediction's caption: matplotlib's firebrick, as when matplotlib drew the grid."""


@functools.cache
def _font(points: float) -> ImageFont.FreeTypeFont:
    """matplotlib's DejaVu Sans at ``points`` (at ``DPI``), as its own text is drawn."""
    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf",
                                           "DejaVuSans.ttf"), round(points * DPI / 72))


def _short(text: str, width: int = CAPTION_CHARACTERS) -> str:
    """``text`` cut to ``width`` characters, ending in an ellipsis when cut."""
    return text if len(text) <= width else text[:width - 1] + "…"


def _class_rows(report: RunReport, split: str) -> tuple[ClassScores, ...] | None:
    matrix = report.metrics.get(f"{split}_confusion_matrix")
    return None if matrix is None else class_scores(np.asarray(matrix), report.class_names)


def _class_csv(rows: Sequence[ClassScores]) -> str:
    """The per-class table as CSV: an empty cell where a score has nothing to divide by."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", "precision", "recall", "f1", "support"])
    for row in rows:
        writer.writerow([row.name, *("" if v is None else f"{v:.6g}"
                                     for v in (row.precision, row.recall, row.f1)), row.support])
    return buffer.getvalue()


# --- report.html: one file, every picture inside it ---------------------------------------

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; color: #1d2430; max-width: 1120px;
       margin: 24px auto; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 32px;
     border-bottom: 1px solid #d7dce3; padding-bottom: 4px; }
.facts { display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 12px 0; }
.facts div { min-width: 120px; } .facts b { display: block; font-size: 20px; }
.facts span, .note { color: #5a6472; font-size: 13px; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 12px; text-align: right; border-bottom: 1px solid #e6e9ee; }
th:first-child, td:first-child { text-align: left; } tr.avg td { color: #5a6472; }
.pair { display: flex; flex-wrap: wrap; gap: 8px 32px; align-items: center; }
"""
"""Inline, like the pictures: the file must read the same from a volume or an e-mail."""
FACTS = (
    ("val_accuracy", "validation accuracy", "{:.4f}"),
    ("val_loss", "validation loss", "{:.4f}"),
    ("test_accuracy", "test accuracy", "{:.4f}"),
    ("train_accuracy", "train accuracy", "{:.4f}"),
    ("epochs", "epochs", "{}"),
    ("steps", "steps", "{}"),
    ("workers", "workers", "{}"),
    ("precision", "precision policy", "{}"),
    ("images_per_second", "images/s trained", "{:.0f}"),
    ("duration_seconds", "seconds", "{:.0f}"),
)
"""metrics.json's keys shown at the top of the report, with a label and a format."""


def render_html(report: RunReport, pictures: Mapping[str, bytes],
                tables: Mapping[str, Sequence[ClassScores] | None]) -> str:
    """``report.html``: the run's figures, pictures (as data URIs) and per-class tables.

    Self-contained: no ``src`` or ``href`` leaves the file, so it reads the same on
    the models volume, after ``pull``, or as a mail attachment. Every name that comes
    from the data (classes, files) is escaped.
    """
    parts = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>trainjob run {escape(report.run_id)}</title><style>{STYLE}</style>"
             f"</head><body><h1>Run {escape(report.run_id)}</h1>", _facts(report.metrics),
             "<h2>Learning curves</h2>", _image(pictures, "learning_curves.png",
                                                "loss and accuracy per epoch")]
    for split, name in SPLITS:
        if tables.get(split) is not None:
            parts += [f"<h2>{name.capitalize()} set</h2><div class=\"pair\">",
                      _image(pictures, f"confusion_matrix_{split}.png",
                             f"confusion matrix, {name} set"), _table(tables[split]),
                      "</div><p class=\"note\">Rows: true class; columns: predicted class; "
                      "colour: the share of the true class's images.</p>"]
    if report.worst is not None and "worst_val.png" in pictures:
        parts += ["<h2>Worst-classified validation images</h2>",
                  f"<p class=\"note\">{escape(_worst_note(report))}</p>",
                  _image(pictures, "worst_val.png", "worst-classified validation images")]
    parts.append(f"<p class=\"note\">Files of this report: {escape(', '.join(pictures))}, "
                 "classes_*.csv (the tables).</p></body></html>\n")
    return "\n".join(parts)


def _facts(metrics: Mapping[str, Any]) -> str:
    cells = [f"<div><b>{escape(form.format(metrics[key]))}</b><span>{escape(label)}</span></div>"
             for key, label, form in FACTS if metrics.get(key) is not None]
    return f"<div class=\"facts\">{''.join(cells)}</div>"


def _image(pictures: Mapping[str, bytes], name: str, alt: str) -> str:
    if name not in pictures:
        return ""
    data = base64.b64encode(pictures[name]).decode("ascii")
    return f"<img alt=\"{escape(alt)}\" src=\"data:image/png;base64,{data}\">"


def _table(rows: Sequence[ClassScores]) -> str:
    def cell(value: float | None) -> str:
        return "<td>-</td>" if value is None else f"<td>{value:.4f}</td>"

    lines = ["<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
             "<th>support</th></tr>"]
    lines += [f"<tr><td>{escape(row.name)}</td>{cell(row.precision)}{cell(row.recall)}"
              f"{cell(row.f1)}<td>{row.support}</td></tr>" for row in rows]
    total = sum(row.support for row in rows)
    for kind, values in averages(rows).items():
        lines.append(f"<tr class=\"avg\"><td>{kind} average</td>{cell(values['precision'])}"
                     f"{cell(values['recall'])}{cell(values['f1'])}<td>{total}</td></tr>")
    return "\n".join(lines + ["</table>"])


def _worst_note(report: RunReport) -> str:
    """Which images the grid ranks: the whole split, or the chief's share of it."""
    worst = report.worst
    matrix = report.metrics.get("val_confusion_matrix")
    split = int(np.asarray(matrix).sum()) if matrix is not None else worst.shard_images
    shown = min(len(worst.labels), WORST_IMAGES)
    ranked = (f"all {split} validation images" if worst.workers == 1 else
              f"the {worst.shard_images} of the {split} validation images "
              f"({worst.shard_images / max(split, 1):.0%}) that the chief evaluated: "
              f"each of the {worst.workers} workers holds its own share")
    return (f"The {shown} images whose true class got the lowest probability, worst first, "
            f"ranked among {ranked}. A red caption is a wrong prediction.")
