"""The run report: ``report/`` beside model.h5, its numbers in metrics.json, TensorBoard.

One real two-epoch run (one worker, the sample shapes at 32 px) is read by most
tests; the report drawn from made-up numbers needs no training. Two workers are in
test_multiworker.py.
"""

from __future__ import annotations

import base64
import csv
import errno
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from job import data, metrics, report
from job import spec as spec_module
from tests.conftest import KERAS_SAVE_WARNING, Run, succeeded, tiny_spec, train

# Keras's own HDF5 writer trips numpy 2's copy-keyword deprecation once per weight: noise.
pytestmark = [pytest.mark.usefixtures("one_local_worker"), KERAS_SAVE_WARNING]

CLASSES = ("circle", "square", "star", "triangle")
PICTURES = ("learning_curves.png", "confusion_matrix_val.png", "confusion_matrix_test.png",
            "worst_val.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"




def report_spec(shapes_data: Path, out_dir: Path, **overrides) -> dict:
    """tiny_spec in float32: the in-process check predicts with model.h5 (float32), so
    the run must have evaluated in float32 too for argmax to agree image for image."""
    return tiny_spec(shapes_data, out_dir, **{"train": {"mixed_precision": False},
                                              **overrides})


@pytest.fixture(scope="module")
def reported(shapes_data, tmp_path_factory) -> Run:
    """One uninterrupted two-epoch run with a test set; the tests read its report.

    It exports the last epoch, so the export takes that epoch's validation (which
    counted its confusion matrix: 4 classes) instead of validating again, and the
    report's worst images come from the export's own check of the validation split:
    the tests below hold both against model.h5. (A run that exports an earlier best
    epoch validates again: ``test_selection``'s early stop.)
    """
    folder = tmp_path_factory.mktemp("reported")
    return succeeded(train(folder, report_spec(shapes_data, folder / "models",
                                               output={"export_model": "last"}),
                           run_id="reported"))


def predicted_confusion(run_dir: Path, split: str) -> np.ndarray:
    """The confusion matrix of ``split``, computed here from model.h5 over the whole split."""
    import keras

    spec = spec_module.load(run_dir / "spec.yaml")
    splits = data.make_splits(spec.data, seed=spec.train.seed)
    decoded = data.decode(getattr(splits, split), spec=spec.data, cache_dir=None)
    model = keras.models.load_model(run_dir / "model.h5", compile=False)
    predicted = model.predict(np.asarray(decoded.pixels), verbose=0).argmax(axis=1)
    return metrics.confusion_matrix(decoded.labels, predicted, num_classes=len(CLASSES))


class Links(HTMLParser):
    """Every ``src`` and ``href`` of an HTML page, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [(tag, name, value) for name, value in attrs if name in ("src", "href")]

    def handle_data(self, text):
        self.text.append(text)


# --- the report of a real run -------------------------------------------------------------


def test_a_run_writes_its_report_beside_the_model(reported):
    folder = reported.run_dir / "report"
    for name in PICTURES:
        assert (folder / name).read_bytes().startswith(PNG_MAGIC), name
    for name in ("classes_val.csv", "classes_test.csv", "report.html"):
        assert (folder / name).is_file(), name
    # Drawn in a hidden folder and renamed: nothing of it is left behind.
    assert not [p.name for p in reported.run_dir.iterdir() if p.name.startswith(".")]
    assert f"report: {folder / 'report.html'}" in reported.out
    assert "warning" not in reported.err


def test_report_html_is_self_contained(reported):
    folder = reported.run_dir / "report"
    page = Links()
    page.feed((folder / "report.html").read_text(encoding="utf-8"))

    assert page.links, "the report shows no picture"
    assert all(tag == "img" and name == "src" for tag, name, _ in page.links), page.links
    embedded = [base64.b64decode(value.removeprefix("data:image/png;base64,"))
                for _, _, value in page.links]
    assert all(value.startswith("data:image/png;base64,") for _, _, value in page.links)
    # Every picture of the folder is in the page, byte for byte.
    assert sorted(embedded) == sorted((folder / name).read_bytes() for name in PICTURES)
    text = " ".join(page.text)
    assert all(name in text for name in CLASSES)
    assert "all 60 validation images" in text


def test_confusion_matrices_cover_each_split_and_match_the_exported_model(reported):
    found = reported.metrics()
    for split, size in (("val", 60), ("test", 40)):
        matrix = np.array(found[f"{split}_confusion_matrix"])
        assert matrix.shape == (4, 4)
        assert matrix.sum() == size
        np.testing.assert_array_equal(matrix, predicted_confusion(reported.run_dir, split))
        assert np.trace(matrix) / size == pytest.approx(found[f"{split}_accuracy"], abs=1e-6)


def test_per_class_figures_are_in_metrics_json_and_the_report_tables(reported):
    found = reported.metrics()
    for split in ("val", "test"):
        scores = metrics.class_scores(np.array(found[f"{split}_confusion_matrix"]), CLASSES)
        assert found[f"{split}_classes"] == [vars(s) for s in scores]
        assert found[f"{split}_averages"] == metrics.averages(scores)
        with (reported.run_dir / "report" / f"classes_{split}.csv").open(newline="") as rows:
            table = list(csv.DictReader(rows))
        assert [row["class"] for row in table] == list(CLASSES)
        assert [int(row["support"]) for row in table] == [s.support for s in scores]
        for row, score in zip(table, scores):
            for key in ("precision", "recall", "f1"):
                expected = getattr(score, key)
                # Six significant digits; an empty cell where there is nothing to divide by.
                assert (float(row[key]) == pytest.approx(expected, rel=1e-5) if row[key]
                        else expected is None), (row, score)


def scalars_and_images(folder: Path) -> dict[str, dict[int, object]]:
    """Every summary of a TensorBoard run folder: tag -> step -> value (an image's PNG)."""
    import tensorflow as tf

    found: dict[str, dict[int, object]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                found.setdefault(value.tag, {})[event.step] = (
                    array[2] if array.dtype == object else float(array))
    return found


def test_tensorboard_has_train_and_validation_under_the_same_tags(reported):
    logs = reported.run_dir / "logs"
    train_run, validation_run = scalars_and_images(logs / "train"), scalars_and_images(
        logs / "validation")
    history = reported.history()

    for split, run in (("train", train_run), ("val", validation_run)):
        for quantity in ("loss", "accuracy"):
            assert run[f"epoch_{quantity}"] == pytest.approx(
                {int(row["epoch"]): float(row[f"{split}_{quantity}"]) for row in history},
                rel=1e-5)
    # Per-step figures stay on the train run, at the global step.
    assert set(train_run["batch_loss"]) <= set(range(1, reported.metrics()["steps"] + 1))
    assert "batch_loss" not in validation_run
    # The confusion matrices, as images, on the validation and test runs.
    last_epoch = reported.metrics()["epochs"]
    for run_name in ("validation", "test"):
        pictures = scalars_and_images(logs / run_name)["confusion_matrix"]
        assert list(pictures) == [last_epoch]
        assert pictures[last_epoch].startswith(PNG_MAGIC)


# --- a report that cannot be drawn ---------------------------------------------------------


def test_a_report_that_cannot_be_drawn_leaves_the_run_successful_with_one_warning(
        shapes_data, tmp_path, monkeypatch):
    """matplotlib fails to save (as on a full disk): the run still succeeds, says why once."""
    from matplotlib.figure import Figure

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    run = succeeded(train(tmp_path, report_spec(shapes_data, tmp_path / "models",
                                                train={"epochs": 1, "mixed_precision": False}),
                          run_id="undrawn"))

    warnings = [line for line in run.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, run.err
    assert "run report could not be drawn" in warnings[0]
    assert "No space left on device" in warnings[0]
    assert not (run.run_dir / "report").exists()
    assert not [p.name for p in run.run_dir.iterdir() if p.name.startswith(".")]
    assert run.metrics()["val_classes"] and (run.run_dir / "model.h5").is_file()
    assert "report:" not in run.out


# --- the report from made-up numbers -----------------------------------------------------


def made_up_report(*, workers: int = 1, with_test: bool = True) -> report.RunReport:
    rng = np.random.default_rng(0)
    names = ("cat", "dog", "<b>fish</b>")
    found = {"val_confusion_matrix": [[5, 1, 0], [2, 6, 0], [0, 0, 0]],
             "val_accuracy": 11 / 14, "val_loss": 0.5, "epochs": 2, "workers": workers}
    if with_test:
        found["test_confusion_matrix"] = [[3, 0, 0], [0, 2, 1], [0, 1, 2]]
    count = 7
    worst = report.Worst(pixels=rng.integers(0, 255, (count, 8, 8, 1), dtype=np.uint8),
                         labels=np.arange(count) % 3, predicted=np.zeros(count, np.int64),
                         true_probability=np.linspace(0.0, 0.6, count),
                         names=tuple(f"img{i}.png" for i in range(count)),
                         shard_images=7, workers=workers)
    history = ({"epoch": "1", "train_loss": "0.9", "train_accuracy": "0.5", "val_loss": "0.7",
                "val_accuracy": ""}, {"epoch": 2, "train_loss": 0.6, "train_accuracy": 0.7,
                                      "val_loss": 0.5, "val_accuracy": 11 / 14})
    return report.RunReport(run_id="made-up", class_names=names, metrics=found,
                            history=history, worst=worst)


def test_a_new_report_replaces_the_old_one_whole(tmp_path):
    folder = tmp_path / "report"
    report.write_report(folder, made_up_report())
    assert (folder / "classes_test.csv").is_file()

    written = report.write_report(folder, made_up_report(workers=2, with_test=False))

    assert sorted(p.name for p in folder.iterdir()) == [
        "classes_val.csv", "confusion_matrix_val.png", "learning_curves.png", "report.html",
        "worst_val.png"]
    assert list(written.confusion_pngs) == ["validation"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    page = (folder / "report.html").read_text(encoding="utf-8")
    # Names from the data are escaped, and the grid says which share of the split it ranks.
    assert "<b>fish</b>" not in page and "&lt;b&gt;fish&lt;/b&gt;" in page
    assert "the 7 of the 14 validation images (50%) that the chief evaluated" in page


def test_the_worst_images_grid_shows_each_image_pixel_for_pixel_under_its_caption(tmp_path):
    from PIL import Image

    worst = made_up_report().worst  # 8x8 grey images; image 0 predicted right, 1 wrong.
    path = report.plot_worst_images(worst, ("cat", "dog", "fish"), tmp_path / "worst.png")

    grid = np.asarray(Image.open(path).convert("RGB")).astype(int)
    cell, caption = round(report.THUMB_INCHES * report.DPI), round(report.CAPTION_INCHES
                                                                   * report.DPI)
    assert grid.shape == (report.TITLE_PIXELS + 2 * (caption + cell),
                          report.GRID_COLUMNS * cell, 3)  # 7 images: two rows of six
    side = cell - 2 * report.THUMB_MARGIN_PIXELS
    for index in (0, 1, 6):
        left = (index % report.GRID_COLUMNS) * cell + report.THUMB_MARGIN_PIXELS
        top = report.TITLE_PIXELS + index // report.GRID_COLUMNS * (caption + cell) + caption
        shown = grid[top:top + side, left:left + side]
        rows = ((np.arange(side) + 0.5) * 8 / side).astype(int)  # each source pixel 20.5x
        enlarged = worst.pixels[index][..., 0][np.ix_(rows, rows)]
        assert (shown == enlarged[..., None]).all()  # pixel for pixel, grey stays grey
        inked = grid[top - caption:top, left:left + side].reshape(-1, 3)
        darkest = inked[np.argmin(inked.sum(axis=-1))]
        wrong = worst.labels[index] != worst.predicted[index]
        assert (darkest[0] - darkest[2] > 80) == wrong, (index, darkest)  # red, or black


def test_the_worst_images_are_those_with_the_lowest_true_class_probability():
    probabilities = np.array([0.7, 0.05, 0.3, 0.05, 0.9])

    assert report.lowest_true_probability(probabilities, count=3).tolist() == [1, 3, 2]
    assert report.lowest_true_probability(probabilities, count=9).tolist() == [1, 3, 2, 0, 4]


def test_learning_curves_draw_a_resumed_history_with_a_missing_cell(tmp_path):
    path = report.plot_learning_curves(made_up_report().history, tmp_path / "curves.png")

    assert path.read_bytes().startswith(PNG_MAGIC)
