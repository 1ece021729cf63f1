"""The model at work: predict and evaluate over image files, decoded as training decoded them.

Owns: loading a trained model, in any format a run exports (each in its own runtime,
``job.runtimes``: ONNX and LiteRT models without TensorFlow), with what it needs to read
images the way its run did
(from the run directory: ``spec.yaml``'s image size, colour mode and pixel limit, and
``labels.json``'s class names; for a bare model file, what its input shape says),
turning command-line paths (images, folders, list files) into one list of files, the
stream that decodes the next chunk of files in threads while the model predicts the
current one (so memory holds two chunks, however many files), and the flows of
``trainjob predict`` and ``trainjob evaluate``.
Never touches: training, decoding itself (``job.images``: the very decoder training
used), the numbers of an evaluation (``job.metrics``), pictures (``job.report``), the
row formats (``job.predict_output``). It only reads a run's files; evaluate writes
under ``evaluations/``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from job import images, listing, metrics, runtimes
from job import spec as spec_module
from job.atomic import replacing
from job.errors import EXIT_BAD_INPUT, EXIT_OK, DataError, StorageError
from job.predict_output import Row, open_writer, rows_of

MODEL_FILE = "model.h5"
"""The model a run writes (``job.run_dir``)."""
LABELS_FILE = "labels.json"
SPEC_FILE = "spec.yaml"
MODEL_SUFFIXES = tuple(runtimes.SUFFIXES)
"""Model files a run exports (a SavedModel is a folder with saved_model.pb)."""
LIST_SUFFIXES = (".txt", ".lst")
"""A named file ending so is a list of image paths, one a line, not an image."""
PREDICT_BATCH = 64
"""Images per model call: trainjob's default global batch, which any model it trained fits."""
CHUNK_BYTES = 64 * 2**20
"""Decoded pixels per chunk (two chunks are alive at once: one decoding, one predicting)."""
CHUNK_IMAGES = (256, 4096)
"""Fewest and most images per chunk: enough to keep every decoder thread busy, few enough
for a first row soon and a bounded pause on Ctrl-C."""


@dataclass(frozen=True)
class Loaded:
    """A model ready to predict, with how its images are decoded and named."""

    model: Any
    path: Path
    """The model file."""
    class_names: tuple[str, ...]
    data: spec_module.DataSpec
    """The run's data settings (image size, colour mode, pixel limit, bad-image policy)."""
    assumed: str | None = None
    """One line saying what was assumed for a model without its run directory; None: nothing."""

    @property
    def home(self) -> Path:
        """The run directory (or the bare model's folder)."""
        return self.path.parent


# --- the model and its run -----------------------------------------------------------


def load(source: str | os.PathLike[str]) -> Loaded:
    """Load a run's model (``source``: its run directory or its model file) to predict.

    Without ``spec.yaml`` or ``labels.json`` beside the model, the image size and colour
    mode come from the model's input shape, the decoder settings are the defaults and
    the classes are ``class_0..class_N-1``; ``Loaded.assumed`` says so in one line.

    Raises:
        DataError: the path is missing, a run directory lacks a file, the model file is
            not a Keras classifier, or it disagrees with its run's spec or labels.
        SpecError: the run's ``spec.yaml`` does not load.
    """
    model_path = _model_path(Path(source))
    folder, in_run = model_path.parent, model_path.parent == Path(source)
    spec_path, labels_path = folder / SPEC_FILE, folder / LABELS_FILE
    for needed in (spec_path, labels_path):
        if in_run and not needed.is_file():
            raise DataError(f"{source}: the run directory has no {needed.name}; it is damaged "
                            f"or not a trainjob run; give the model file to predict without it.")
    data = spec_module.load(spec_path).data if spec_path.is_file() else None
    model = runtimes.load(model_path)
    shape, num_classes = _model_shapes(model, model_path, spec=data)
    names = _class_names(labels_path, num_classes) if labels_path.is_file() else None
    assumed = _assumptions(model_path, shape=shape, spec_missing=data is None,
                           names_missing=names is None, num_classes=num_classes)
    if data is None:
        data = spec_module.DataSpec(train_dir=folder, image_size=shape[:2],
                                    color_mode="rgb" if shape[2] == 3 else "grayscale")
    elif data.image_shape != shape:
        raise DataError(f"{model_path}: the model takes {_describe(shape)} images but "
                        f"{spec_path} says {_describe(data.image_shape)}; the files are from "
                        "different runs: put the run's own model.h5 beside its spec.yaml.")
    names = names or tuple(f"class_{i}" for i in range(num_classes))
    return Loaded(model, model_path, names, data, assumed)


def _model_path(source: Path) -> Path:
    if source.is_dir() and runtimes.format_of(source) is not None:
        return source  # A SavedModel folder.
    if source.is_dir():
        if not (source / MODEL_FILE).is_file():
            raise DataError(f"{source}: no {MODEL_FILE} in this folder; a run writes it when "
                            "it completes: give a finished run's directory or a model file.")
        return source / MODEL_FILE
    if not source.exists():
        raise DataError(f"{source}: no such run directory or model file; give a run directory "
                        f"(<output.dir>/<run-id>) or a model file ({', '.join(MODEL_SUFFIXES)}, "
                        "a SavedModel folder).")
    if source.suffix.lower() not in MODEL_SUFFIXES:
        raise DataError(f"{source}: not a model file (expected a name ending "
                        f"{', '.join(MODEL_SUFFIXES)}); give a run directory or its model.h5.")
    return source


def _model_shapes(model, path: Path, *, spec: spec_module.DataSpec | None,
                  ) -> tuple[tuple[int, int, int], int]:
    """((height, width, channels), classes) of an image classifier, or a DataError."""
    if len(model.input_shapes) != 1 or len(model.output_shapes) != 1:
        raise DataError(f"{path}: the model has {len(model.input_shapes)} inputs and "
                        f"{len(model.output_shapes)} outputs; expected an image classifier with "
                        "one of each, as trainjob trains.")
    given, out = model.input_shapes[0], model.output_shapes[0]
    if len(given) != 4 or given[3] not in (1, 3) or len(out) != 2 or not (out[1] or 0) >= 2:
        raise DataError(f"{path}: the model maps {given} to {out}; expected images "
                        "(batch, height, width, 1 or 3 channels) to probabilities of 2 or more "
                        "classes (batch, classes).")
    if (given[1] is None or given[2] is None) and spec is None:
        raise DataError(f"{path}: the model accepts images of any size, so the size it was "
                        f"trained at is unknown; give its run directory (with {SPEC_FILE}).")
    height = given[1] if given[1] is not None else spec.image_size[0]
    width = given[2] if given[2] is not None else spec.image_size[1]
    return (int(height), int(width), int(given[3])), int(out[1])


def _class_names(path: Path, num_classes: int) -> tuple[str, ...]:
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot be read as JSON ({error}); it should list the "
                        "class names in output order.") from None
    if (not isinstance(names, list) or len(names) != num_classes
            or not all(isinstance(name, str) for name in names)):
        raise DataError(f"{path}: expected a list of {num_classes} class names (the model has "
                        f"{num_classes} outputs), got {str(names)[:100]}; the files are from "
                        "different runs.")
    return tuple(names)


def _assumptions(model_path: Path, *, shape: tuple[int, int, int], spec_missing: bool,
                 names_missing: bool, num_classes: int) -> str | None:
    missing = [name for name, gone in ((SPEC_FILE, spec_missing), (LABELS_FILE, names_missing))
               if gone]
    if not missing:
        return None
    assumed = []
    if spec_missing:
        assumed.append(f"{_describe(shape)} images (the model's input) and the default "
                       "decoder settings")
    if names_missing:
        assumed.append(f"classes class_0..class_{num_classes - 1}")
    return (f"note: {model_path} has no {' or '.join(missing)} beside it; assuming "
            f"{', '.join(assumed)}.")


def _describe(shape: Sequence[int]) -> str:
    return f"{shape[0]}x{shape[1]} {'rgb' if shape[2] == 3 else 'grayscale'}"


# --- the files -------------------------------------------------------------------------


def list_inputs(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Image files from images, folders (walked, links followed once) and list files.

    A list file (``.txt``, ``.lst``) holds one path a line (blank lines and ``#`` lines are
    skipped); relative paths are relative to its folder. Any other named file is taken as
    an image, so a file that is not one gets its row with the reason. A path listed twice
    is predicted once.

    Raises:
        DataError: a named path does not exist, a list file cannot be read, or no image
            files are found at all.
    """
    found: list[str] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found += _walk(path)
        elif not path.exists():
            raise DataError(f"{images.printable_path(path)}: no such file or folder; give "
                            "images, folders of images or a list file (.txt).")
        elif path.suffix.lower() in LIST_SUFFIXES:
            found += _read_list(path)
        else:
            found.append(os.fspath(path))
    unique = list(dict.fromkeys(os.path.normpath(p) for p in found))
    if not unique:
        named = ", ".join(images.printable_path(p) for p in paths)
        raise DataError(f"no image files in {named} (.jpg .png .bmp .gif .tif .webp); give "
                        "images, folders of images or a list file (.txt).")
    return unique


def _walk(folder: Path) -> list[str]:
    """Visible image files under ``folder`` in sorted order; each real folder once (a link
    loop ends)."""
    visited: set[tuple[int, int]] = set()
    found: list[str] = []
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        stat = os.stat(directory)
        if (stat.st_dev, stat.st_ino) in visited:
            subdirs[:] = []
            continue
        visited.add((stat.st_dev, stat.st_ino))
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found += [os.path.join(directory, f) for f in sorted(files) if images.is_image_file(f)]
    return found


def _read_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{images.printable_path(path)}: byte {error.start} is not UTF-8 text; "
                        "a list file holds one image path a line.") from None
    except OSError as error:
        raise DataError(f"{images.printable_path(path)}: cannot read the list file: "
                        f"{error.strerror}.") from None
    found: list[str] = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        target = path.parent / entry
        found += _walk(target) if target.is_dir() else [os.fspath(target)]
    return found


# --- the stream ------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Consecutive files, and what the model said of the readable ones."""

    paths: Sequence[str]
    kept: list[int]
    """Indices into ``paths`` of the decoded files, the rows of ``probabilities``."""
    probabilities: np.ndarray
    bad: list[tuple[str, str]]
    """(path, reason) of each unreadable file, in order."""


def chunk_size(data: spec_module.DataSpec) -> int:
    """Images per chunk: ``CHUNK_BYTES`` of pixels, within ``CHUNK_IMAGES``, in whole batches
    (a partial batch costs a model call for a few images; only the last chunk has one).

    Example:
        >>> chunk_size(spec_module.DataSpec(train_dir=Path("."), image_size=(128, 128)))
        1344
    """
    low, high = CHUNK_IMAGES
    images = min(high, max(low, CHUNK_BYTES // int(np.prod(data.image_shape))))
    return images - images % PREDICT_BATCH


def stream(loaded: Loaded, paths: Sequence[str], *, size: int | None = None,
           workers: int = 0) -> Iterator[Chunk]:
    """Predict ``paths`` chunk by chunk, in order; the next chunk decodes meanwhile.

    ``workers``: decoder threads; 0, one per CPU core here (``data.decode_workers`` was
    for the training machine; the pixels are the same for any count).
    """
    size = size or chunk_size(loaded.data)
    data = loaded.data

    def decode(start: int):
        return images.decode_many(paths[start:start + size], size=data.image_size,
                                  color_mode=data.color_mode, workers=workers,
                                  max_pixels=data.max_image_pixels)

    ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-ahead")
    try:
        pending = ahead.submit(decode, 0)
        for start in range(0, len(paths), size):
            pixels, kept, bad = pending.result()
            if start + size < len(paths):
                pending = ahead.submit(decode, start + size)
            yield Chunk(paths[start:start + size], kept,
                        predict_pixels(loaded.model, pixels, len(loaded.class_names)), bad)
    finally:
        ahead.shutdown(wait=False, cancel_futures=True)


def predict_pixels(model, pixels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class probabilities of decoded uint8 pixels, ``PREDICT_BATCH`` images a call."""
    if len(pixels) == 0:
        return np.empty((0, num_classes), dtype=np.float32)
    return model.predict(pixels, batch_size=PREDICT_BATCH)


# --- the flows -------------------------------------------------------------------------


def predict(source: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]], *,
            top_k: int, output: Path | None = None,
            out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``trainjob predict``: one row per file, to ``out`` as a table or to ``output``.

    Returns:
        0 when every file was predicted; 2 (bad input) when some could not be read:
        their rows say why, and every other file still has its row.
    """
    out, err = out or sys.stdout, err or sys.stderr
    writer = open_writer(output, out=out)  # A bad --output fails before any work.
    paths = list_inputs(inputs)
    loaded = load(source)
    if loaded.assumed:
        print(loaded.assumed, file=err, flush=True)
    top_k = min(top_k, len(loaded.class_names))
    started, unreadable = time.monotonic(), 0
    with writer.open(loaded.class_names, top_k=top_k, paths=paths, model=loaded.path):
        for chunk in stream(loaded, paths):
            rows: list[Row] = rows_of(chunk, loaded.class_names, top_k=top_k)
            writer.write(rows)
            unreadable += len(chunk.bad)
    seconds = time.monotonic() - started
    where = f"; rows in {output}" if output is not None else ""
    print(f"predicted {len(paths) - unreadable} of {len(paths)} images in {seconds:.1f} s "
          f"({len(paths) / max(seconds, 1e-9):.0f} images/s){where}", file=err, flush=True)
    if unreadable:
        print(f"trainjob: {unreadable} of {len(paths)} images could not be read; their rows "
              "say why (exit 2)", file=err, flush=True)
        return EXIT_BAD_INPUT
    return EXIT_OK


def evaluate(source: str | os.PathLike[str], data_dir: str | os.PathLike[str], *,
             top_k: int, out_dir: Path | None = None,
             out: TextIO | None = None, err: TextIO | None = None) -> Path:
    """``trainjob evaluate``: score the model on a class-per-subfolder tree.

    Writes ``evaluation.json`` and ``confusion_matrix.png`` into ``out_dir`` (default:
    ``RUN_DIR/evaluations/<data folder name>/``), prints the table, returns the folder.
    Unreadable images follow the run's ``data.on_bad_image``: skipped with a warning
    (and listed in ``evaluation.json``), or, under ``fail``, an error before anything
    is written.
    """
    out, err = out or sys.stdout, err or sys.stderr
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"DATA_DIR={str(data_dir)!r} is not a folder; give a folder with one "
                        "subfolder of images per class, as data.train_dir.")
    loaded = load(source)
    if loaded.assumed:
        print(loaded.assumed, file=err, flush=True)
    items = listing.list_images(data_dir, key="DATA_DIR", class_names=loaded.class_names)
    if not len(items):
        raise DataError(f"DATA_DIR={str(data_dir)!r}: its class folders hold no images "
                        "(.jpg .png .bmp .gif .tif .webp).")
    evaluation, skipped = _measure(loaded, items, top_k=min(top_k, len(loaded.class_names)),
                                   err=err)
    folder = out_dir or loaded.home / "evaluations" / (data_dir.resolve().name or "data")
    document = {"model": str(loaded.path.resolve()), "data_dir": str(data_dir.resolve()),
                **evaluation.to_dict(), "skipped_images": len(skipped),
                "skipped_files": [list(pair) for pair in skipped]}
    _write_evaluation(folder, document, evaluation, data_name=data_dir.resolve().name)
    width = shutil.get_terminal_size((metrics.TABLE_WIDTH, 24)).columns
    print(metrics.format_report(evaluation, width=width), file=out)
    print(f"\nevaluation: {folder / 'evaluation.json'}\nconfusion matrix: "
          f"{folder / 'confusion_matrix.png'}", file=out, flush=True)
    return folder


def _measure(loaded: Loaded, items: listing.ImageList, *, top_k: int,
             err: TextIO) -> tuple[metrics.Evaluation, list[tuple[str, str]]]:
    """The confusion matrix and top-k hits over ``items``, chunk by chunk."""
    num_classes = len(loaded.class_names)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    hits, skipped, done = 0, [], 0
    for chunk in stream(loaded, list(items.paths)):
        labels = items.labels[done + np.asarray(chunk.kept, dtype=np.int64)]
        done += len(chunk.paths)
        _apply_bad_image_policy(chunk.bad, policy=loaded.data.on_bad_image, err=err)
        skipped += chunk.bad
        predicted = chunk.probabilities.argmax(axis=1) if len(labels) else labels
        matrix += metrics.confusion_matrix(labels, predicted, num_classes=num_classes)
        if len(labels):
            hits += int(metrics.top_k_hits(chunk.probabilities, labels, k=top_k).sum())
    if not matrix.sum():
        raise DataError(f"DATA_DIR={str(items.root)!r}: none of its {len(items)} images can be "
                        "read, so there is nothing to evaluate.")
    return metrics.Evaluation(loaded.class_names, matrix, top_k, hits), skipped


def _apply_bad_image_policy(bad: list[tuple[str, str]], *, policy: str, err: TextIO) -> None:
    """As training does: ``skip`` warns of each file, ``fail`` stops at the first."""
    if bad and policy == "fail":
        path, reason = bad[0]
        raise DataError(f"{images.printable_path(path)}: unreadable image: {reason}; fix or "
                        "remove it (the run's data.on_bad_image is fail).")
    for path, reason in bad:
        print(f"warning: skipping unreadable image {images.printable_path(path)}: {reason}",
              file=err, flush=True)


def _write_evaluation(folder: Path, document: dict, evaluation: metrics.Evaluation, *,
                      data_name: str) -> None:
    from job import report  # matplotlib: only once there is something to draw

    try:  # The picture first: evaluation.json, written last, means the folder is complete.
        report.plot_confusion_matrix(evaluation.matrix, evaluation.class_names,
                                     folder / "confusion_matrix.png",
                                     title=f"{data_name}: accuracy {evaluation.accuracy:.3f}")
        with replacing(folder / "evaluation.json") as tmp:
            tmp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    except OSError as error:
        raise StorageError(f"{error.filename or folder}: cannot write the evaluation: "
                           f"{error.strerror or error}; give --out a writable folder.") from None
