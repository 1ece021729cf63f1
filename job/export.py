"""The trained model out of the run: the float32 copy, its digests, the files, the report.

Owns: turning a mixed-precision model into the float32 one that is exported, the
digest of the weights every worker reports (so workers can be compared), the
per-class figures of metrics.json (from each split's confusion matrix, by
``job.metrics``), and the order of the final writes: the model first, then on the
chief its other formats, each checked (``job.export_check``), then labels, spec and
metrics (``metrics.json`` last: its presence means the run is complete); then the
chief's run report (``report``), which may fail only with a warning line.
Never touches: training, where files live (``job.run_dir`` writes them), the formats
and their checks (``job.export_check``), drawing (``job.report``).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from job import data, export_check, runtimes
from job.metrics import averages, class_scores

REPORT_FOLDER = "report"
"""The run report's folder, beside model.h5."""


class Predictions(NamedTuple):
    """What the export computed with the trained model, for the chief's report."""

    predict: Callable[[np.ndarray], np.ndarray]
    """One batch's class probabilities (``export_check.inference``), traced once a shape."""
    parity: np.ndarray | None = None
    """The probabilities of ``export_check.parity_images`` (the first validation images),
    which every format was checked against; None off the chief."""


def float32_copy(model, build: Callable[[], Any]):
    """The trained ``model`` rebuilt with float32 layers by ``build()``, for export.

    Mixed precision keeps every variable in float32, so the weights carry over
    exactly; only the layers' compute dtype changes. A float32 model.h5 predicts
    the same on any machine, where a bfloat16 one would crawl on CPUs without
    native bfloat16. The copy lives in host memory: saving reads it from there
    anyway, and a second set of weights must not crowd a full GPU at the end.
    """
    keras.mixed_precision.set_global_policy("float32")
    with tf.device("/CPU:0"):
        copy = build()
        copy.set_weights(model.get_weights())
        for layer in copy._flatten_layers():
            # Layers that derive state from their weights (Normalization's mean and
            # variance) compute it in finalize_state; set_weights alone leaves it stale.
            if isinstance(layer, keras.layers.Normalization) and layer.built:
                layer.finalize_state()
    return copy


def export(run, model, *, metrics: dict[str, Any], spec, decoded, log) -> Predictions:
    """Save the model and, on the chief, its other formats and the run's metadata.

    ``metrics["classes"]`` names the outputs; ``decoded`` is this worker's decoded
    splits, which the chief checks each format on. Non-chief scratch is removed.
    ``log(text)`` prints a line; ``log.tagged(text)`` one that names the worker.
    Returns the model's traced forward pass and what it predicted, for the report.

    Raises:
        export_check.ExportMismatch: a format missed its limit (``output.export_check``).
    """
    class_names, predict, reference = metrics["classes"], export_check.inference(model), None
    metrics["weights_sha256"] = weights_sha256(model)
    metrics.update(class_figures(metrics, class_names))
    # Every worker saves (collectives may need all of them); only the chief's is shared.
    model_path, metrics["model_sha256"] = run.save_model(model)
    run.write_text("weights.sha256", metrics["weights_sha256"] + "\n")
    if run.is_chief:
        pixels = export_check.parity_images(decoded)
        reference = export_check.probabilities(predict, pixels)
        metrics["exports"] = export_check.write_formats(
            run, model, output=spec.output, pixels=pixels, log=log, reference=reference)
        run.write_json("labels.json", list(class_names))
        run.write_spec(spec.to_dict())
        run.write_json("metrics.json", metrics)
        log(f"model: {model_path}")
        log(f"metrics: {run.root / 'metrics.json'} (val_accuracy "
            f"{metrics['val_accuracy']:.4f})")
    else:
        log.tagged(f"done at step {metrics['steps']}; weights sha256 "
                   f"{metrics['weights_sha256'][:16]}")
    run.cleanup()
    return Predictions(predict, reference)


def weights_sha256(model) -> str:
    """A digest of every weight's path, shape and bytes: equal on workers that agree."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(json.dumps(list(weight.shape)).encode())
        digest.update(bytes(memoryview(_to_numpy(weight)).cast("B")))
    return digest.hexdigest()


def _to_numpy(weight):
    return np.ascontiguousarray(np.asarray(weight.numpy()))


def class_figures(metrics: dict[str, Any], class_names) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support of every split with a confusion matrix.

    ``<split>_classes`` (one dict per class, in label order) and ``<split>_averages``
    (macro and support-weighted), for metrics.json. A score with nothing to divide by
    is None (null), never a silent 0.
    """
    figures: dict[str, Any] = {}
    for split in ("val", "test"):
        matrix = metrics.get(f"{split}_confusion_matrix")
        if matrix is None:
            continue
        scores = class_scores(np.asarray(matrix), tuple(class_names))
        figures[f"{split}_classes"] = [vars(score).copy() for score in scores]
        figures[f"{split}_averages"] = averages(scores)
    return figures


def report(predictions: Predictions, *, metrics: dict[str, Any], reporter, items, decoded,
           cluster) -> Path | None:
    """The chief's run report in ``report/``, and its confusion matrices in TensorBoard.

    Called after every worker has exported, so the chief's predictions here hold no
    peer up. ``predictions`` are what ``export`` computed with the exported model,
    ``items`` the whole validation split and ``decoded`` the chief's shard of it
    (``cluster`` says which). The report never fails the run: whatever
    goes wrong drawing it (matplotlib, a full disk, a bug) is one warning line on
    stderr, and the run still succeeds with its model and metrics.json.
    """
    folder = reporter.run.root / REPORT_FOLDER
    try:
        from job import report as drawing  # matplotlib: loaded by the chief, at the end only

        worst = _worst(predictions,
                       data.shard(items, index=cluster.index, num_workers=cluster.num_workers),
                       decoded, workers=cluster.num_workers, count=drawing.WORST_IMAGES)
        written = drawing.write_report(folder, drawing.RunReport(
            run_id=str(metrics.get("run_id", reporter.run.shared.name)),
            class_names=tuple(metrics["classes"]), metrics=metrics,
            history=tuple(reporter.history), worst=worst))
        reporter.confusion_matrices(written.confusion_pngs, epoch=int(metrics["epochs"]))
    except Exception as error:  # Anything at all: the report must never fail the run.
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        print(f"warning: {folder}: the run report could not be drawn "
              f"({type(error).__name__}: {reason}); the model and metrics.json are complete",
              file=sys.stderr, flush=True)
        return None
    reporter.line(f"report: {folder / 'report.html'}")
    return folder


def _worst(predictions: Predictions, shard, decoded, *, workers: int, count: int):
    """The ``count`` images of the chief's validation shard with the lowest probability
    of their true class, for the report's grid."""
    from job.report import Worst, lowest_true_probability

    known = predictions.parity
    if known is not None and 0 < len(decoded.pixels) == len(known):
        # The formats were checked on this whole shard: no second forward pass over it.
        true_probability, predicted = _true_and_predicted(known, decoded.labels)
        true_probability = true_probability.astype(np.float32, copy=False)
    else:
        true_probability, predicted = true_class_probabilities(
            predictions.predict, decoded.pixels, decoded.labels)
    bad = {path for path, _ in decoded.bad}
    paths = [path for path in shard.paths if path not in bad]
    # Decoded rows are the shard's readable files in order; names only when they line up.
    names = ([Path(path).name for path in paths] if len(paths) == len(decoded.labels)
             else [""] * len(decoded.labels))
    chosen = lowest_true_probability(true_probability, count=count)
    return Worst(pixels=np.asarray(decoded.pixels[chosen]),
                 labels=decoded.labels[chosen], predicted=predicted[chosen],
                 true_probability=true_probability[chosen],
                 names=tuple(names[i] for i in chosen), shard_images=len(decoded.labels),
                 workers=workers)


def true_class_probabilities(predict, pixels, labels) -> tuple[np.ndarray, np.ndarray]:
    """Each image's probability of its true class, and its predicted class.

    Batch by batch with ``predict`` (``export_check.inference``), on this worker alone
    (no collective), keeping two numbers per image rather than every class's
    probability.
    """
    true_parts, predicted_parts, start = [], [], 0
    for batch, real in runtimes.fixed_batches(pixels):
        true, predicted = _true_and_predicted(predict(batch)[:real], labels[start:start + real])
        true_parts.append(true)
        predicted_parts.append(predicted)
        start += real
    if not true_parts:
        return np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(true_parts), np.concatenate(predicted_parts)


def _true_and_predicted(probabilities: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray]:
    """Each row's probability of its label, and its most probable class."""
    rows = np.arange(len(probabilities))
    return (probabilities[rows, np.asarray(labels, dtype=np.int64)],
            probabilities.argmax(axis=1))
