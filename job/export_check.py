"""Every format of ``output.formats``, written beside model.h5 and checked against the model.

Owns: the parity check: each exported file is run in its own runtime (``job.runtimes``)
on validation images and its class probabilities are compared with the trained model's;
the limits (top-1 the same on every image, and each format's ``tolerance`` on every
probability); what a miss does under ``output.export_check`` (``fail``: the file is
removed and the run fails with exit 1; ``warn``: one warning line, the file stays);
and the ``exports`` entry of metrics.json with one line per format.
Never touches: how a format is written (``job.export_formats``) or run
(``job.runtimes``), where files go (``job.run_dir``), the order of a run's final
writes (``job.export``), training.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from job import export_formats, fused_norm, runtimes
from job.errors import RunFailed, StorageError
from job.run_dir import sha256_file

PARITY_IMAGES = 1024
"""Most validation images each format is checked on: one disagreement in a thousand
shows, and five runtimes on a CPU take seconds, not a validation pass each."""
PREDICT_BATCH = runtimes.PREDICT_BATCH
"""Images per forward pass of the trained model, as the runtimes batch them."""


class ExportMismatch(RunFailed):
    """An exported model predicts differently from the trained one, or cannot run (exit 1)."""


def parity_images(decoded) -> np.ndarray:
    """The first ``PARITY_IMAGES`` of this worker's decoded validation images, else of
    its training images (a validation shard is empty when workers outnumber its images)."""
    pixels = decoded["val"].pixels if len(decoded["val"].pixels) else decoded["train"].pixels
    return np.asarray(pixels[:PARITY_IMAGES])


def write_formats(run, model, *, output, pixels: np.ndarray, log,
                  reference: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Write every format of ``output.formats`` beside model.h5 and check each one.

    Call it on the chief, after ``run.save_model``. Each file is run in its own runtime
    on ``pixels`` and its probabilities compared with ``model``'s, ``reference``
    (default: computed by ``inference(model)``); one line per format goes to ``log``.

    Returns:
        metrics.json's ``exports``: ``{format: {path, sha256, bytes, max_abs_diff,
        top1_agreement, images, runtime, max_abs_diff_limit, passed}}``; ``path`` is
        relative to the run directory.

    Raises:
        ExportMismatch: under ``output.export_check: fail``, a format missed its limit,
            or could not be written or run; its file was removed.
    """
    if reference is None:
        reference = probabilities(inference(model), pixels)
    exports = {}
    for name in (name for name in runtimes.FORMATS if name in output.formats):
        exports[name] = _write_and_check(run, model, name, reference=reference, pixels=pixels)
        log(describe(name, exports[name]))
    missed = [name for name, figures in exports.items() if not figures["passed"]]
    if missed and output.export_check == "fail":
        for name in missed:
            run.remove_export(runtimes.FORMATS[name].file)
        raise ExportMismatch(
            "; ".join(_miss(name, exports[name]) for name in missed) + ". Removed; the "
            "run failed and wrote no metrics.json: set output.export_check: warn to keep "
            "such a file, or take the format out of output.formats.")
    for name in missed:
        print(f"warning: {_miss(name, exports[name])}; kept because output.export_check is "
              "warn: check it before you deploy it", file=sys.stderr, flush=True)
    return exports


def _write_and_check(run, model, name: str, *, reference: np.ndarray,
                     pixels: np.ndarray) -> dict[str, Any]:
    """One format written (model.h5 already is), run and compared: its exports entry."""
    fmt = runtimes.FORMATS[name]
    figures: dict[str, Any] = {"path": fmt.file, "runtime": fmt.runtime, "images": len(pixels),
                               "max_abs_diff_limit": fmt.tolerance}
    try:
        if name == "h5":
            path = run.model_path
            figures.update(sha256=sha256_file(path), bytes=path.stat().st_size)
        else:
            path, figures["sha256"], figures["bytes"] = run.save_export(
                fmt.file, lambda tmp: export_formats.write(name, model, tmp),
                folder=name == "saved_model")
    except StorageError:
        raise
    except Exception as error:  # Converters raise anything for a model they cannot take.
        return {**figures, "max_abs_diff": None, "top1_agreement": None, "passed": False,
                "error": f"could not be written ({_reason(error)})"}
    try:
        predicted = runtimes.load(path, fmt).predict(pixels)
    except Exception as error:  # Runtimes raise anything for a file they cannot run.
        return {**figures, "max_abs_diff": None, "top1_agreement": None, "passed": False,
                "error": f"does not run in {fmt.runtime} ({_reason(error)})"}
    return {**figures, **compare(reference, predicted, tolerance=fmt.tolerance)}


def compare(reference: np.ndarray, predicted: np.ndarray, *,
            tolerance: float) -> dict[str, Any]:
    """The parity figures of ``predicted`` against ``reference`` (images x classes).

    ``passed`` needs the same top-1 class on every image and no probability further
    than ``tolerance`` away; a NaN, another shape, or no image at all never passes.

    Example:
        >>> compare(np.array([[0.75, 0.25]]), np.array([[0.625, 0.375]]), tolerance=1e-3)
        {'max_abs_diff': 0.125, 'top1_agreement': 1.0, 'passed': False}
    """
    unchecked = {"max_abs_diff": None, "top1_agreement": None, "passed": False}
    if not len(reference):
        return {**unchecked, "error": "was not checked: there is no image to check it on"}
    if predicted.shape != reference.shape:
        return {**unchecked, "error": f"gave probabilities of shape {predicted.shape} where "
                                      f"the trained model gave {reference.shape}"}
    max_abs_diff = float(np.max(np.abs(predicted.astype(np.float64) - reference)))
    agreement = float(np.mean(predicted.argmax(axis=1) == reference.argmax(axis=1)))
    return {"max_abs_diff": max_abs_diff, "top1_agreement": agreement,
            "passed": bool(agreement == 1.0 and max_abs_diff <= tolerance)}


def describe(name: str, figures: dict[str, Any]) -> str:
    """One line about one format, under 80 columns: its file and size, and how it did in
    its runtime ('export onnx: model.onnx 1.2 MB, top-1 60/60, max diff 3.1e-07 (limit
    1e-03)'; the runtime of each format is in the README)."""
    size = f"{figures['bytes'] / 1e6:.1f} MB" if "bytes" in figures else "not written"
    if figures["max_abs_diff"] is None:
        checked = figures["error"]
    else:
        agreeing = round(figures["top1_agreement"] * figures["images"])
        checked = (f"top-1 {agreeing}/{figures['images']}, max diff "
                   f"{figures['max_abs_diff']:.1e} (limit {figures['max_abs_diff_limit']:.0e})")
    return (f"export {name}: {figures['path']} {size}, {checked}"
            + ("" if figures["passed"] else "; MISSED"))


def _miss(name: str, figures: dict[str, Any]) -> str:
    """Why ``name`` missed, in words for one error or warning line."""
    if figures["max_abs_diff"] is None:
        return f"{figures['path']} ({name}) {figures['error']}"
    return (f"{figures['path']} ({name}) predicts differently from the trained model in "
            f"{figures['runtime']}: top-1 {100 * figures['top1_agreement']:.1f}% the same "
            f"(needs 100%), max abs diff {figures['max_abs_diff']:.1e} (limit "
            f"{figures['max_abs_diff_limit']:.0e}) on {figures['images']} images")


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: " + (str(error).strip().splitlines() or [""])[0][:200]


def inference(model) -> Callable[[np.ndarray], np.ndarray]:
    """``model``'s class probabilities of one batch of images (as ``runtimes.fixed_batches``
    gives them), in inference mode with ``job.fused_norm``'s batch norm, traced once a
    shape: the export's checks and the run report share it."""
    def forward(batch):
        with fused_norm.tracing():
            return model(tf.cast(batch, "float32"), training=False)

    traced = tf.function(forward, autograph=False)  # No Python control flow to convert.
    return lambda batch: traced(batch).numpy()


def probabilities(predict: Callable[[np.ndarray], np.ndarray],
                  pixels: np.ndarray) -> np.ndarray:
    """The trained model's class probabilities (float64) of ``pixels``, by ``predict``
    (``inference``), batch by batch."""
    parts = [predict(batch)[:real] for batch, real in runtimes.fixed_batches(pixels)]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, 0))
