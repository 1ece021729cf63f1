"""The trained model out of the run: the float32 copy, its digests, and the files.

Owns: turning a mixed-precision model into the float32 one that is exported, the
digest of the weights every worker reports (so workers can be compared), and the
order of the final writes: the model first, then labels, spec and metrics
(``metrics.json`` last: its presence means the run is complete).
Never touches: training, where files live (``job.run_dir`` writes them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf


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
    return copy


def export(run, model, *, metrics: dict[str, Any], spec_dict: dict[str, Any],
           class_names, log) -> None:
    """Save the model and, on the chief, the run's metadata; non-chief scratch is removed.

    ``log(text)`` prints a line; ``log.tagged(text)`` one that names the worker.
    """
    metrics["weights_sha256"] = weights_sha256(model)
    # Every worker saves (collectives may need all of them); only the chief's is shared.
    model_path, metrics["model_sha256"] = run.save_model(model)
    run.write_text("weights.sha256", metrics["weights_sha256"] + "\n")
    if run.is_chief:
        run.write_json("labels.json", list(class_names))
        run.write_spec(spec_dict)
        run.write_json("metrics.json", metrics)
        log(f"model: {model_path}")
        log(f"metrics: {run.root / 'metrics.json'} (val_accuracy "
            f"{metrics['val_accuracy']:.4f})")
    else:
        log.tagged(f"done at step {metrics['steps']}; weights sha256 "
                   f"{metrics['weights_sha256'][:16]}")
    run.cleanup()


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
