"""Batch normalization through TensorFlow's fused kernel, in the steps trainjob traces.

Owns: how Keras's ``BatchNormalization`` layers compute while trainjob traces its
training step, its evaluation step, the trained model's forward pass and the Keras
runtime's predict function (``job.runtimes``: predict, evaluate, the export's checks):
one ``FusedBatchNormV3`` op (and its gradient op) per layer, where Keras 3 builds batch
norm from about a dozen separate ops (moments, reshapes, ``rsqrt``, multiplies) in
each direction. In training mode it normalizes with the batch's statistics and updates
the moving averages exactly as Keras does, from the batch's population variance; in
inference mode (``training=False``, or a frozen layer) it normalizes with the moving
statistics.
Never touches: the layers' variables, configuration or class (a model saved at any
point is plain Keras, and computes as Keras does wherever trainjob does not run it),
anything traced outside the block, the dtype policy.

Why: batch norm was 17% of the small CNN's op time in float32, nearly all of it in
the unfused ops; fused, the whole training step took 2.5-2.7 ms of CPU time an image
against 3.1-3.4 ms on this project's 2-core CPU (BENCHMARKS.md, P3). The numbers are
the same up to float rounding (``tests/test_fused_norm.py`` compares outputs,
gradients and moving statistics with Keras's own layer).

Only layers that Keras would compute exactly like this take the fused path:
four-dimensional channels-last input, no mask, and in training mode no
renormalization and no cross-replica (``synchronized``) statistics. Any other layer,
or another Keras backend, computes as Keras does.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import keras
import tensorflow as tf

_LAYER = keras.layers.BatchNormalization
_KERAS_CALL = _LAYER.call
_LOCK = threading.Lock()
_depth = 0
"""How many ``tracing`` blocks are open: the last one out restores Keras's call."""


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """Within the block, eligible layers compute with the fused kernel.

    Enter it where a step is traced (the replica step's model call): a traced function
    keeps the ops it was traced with, so later calls run fused whether or not the block
    is entered again. Nested or concurrent blocks share one switch.
    """
    global _depth
    with _LOCK:
        _depth += 1
        _LAYER.call = _call
    try:
        yield
    finally:
        with _LOCK:
            _depth -= 1
            if not _depth:
                _LAYER.call = _KERAS_CALL


def eligible(layer, inputs, *, training, mask) -> bool:
    """Whether Keras's ``layer`` would compute exactly what the fused kernel computes."""
    axis = layer.axis if layer.axis >= 0 else layer.axis + len(inputs.shape)
    if mask is not None or len(inputs.shape) != 4 or axis != 3:
        return False
    if keras.backend.backend() != "tensorflow":
        return False
    # In training mode Keras normalizes with the batch's statistics, which renormalization
    # and cross-replica statistics change; in inference mode with the moving ones alone.
    return not (training and layer.trainable) or not (layer.renorm or layer.synchronized)


def _call(self, inputs, training=None, mask=None):
    if not eligible(self, inputs, training=training, mask=mask):
        return _KERAS_CALL(self, inputs, training=training, mask=mask)
    return _fused(self, inputs, batch_statistics=bool(training and self.trainable))


def _fused(layer, inputs, *, batch_statistics: bool):
    """Keras's batch norm of channels-last ``inputs`` in one fused op: with the batch's
    statistics, updating the moving ones (training), or with the moving ones (inference).

    Like Keras, it computes in float32 whatever the layer's compute dtype, and casts
    the output back.
    """
    x = tf.cast(inputs, "float32")
    channels = x.shape[-1]
    scale = tf.cast(layer.gamma, "float32") if layer.scale else tf.ones([channels])
    offset = tf.cast(layer.beta, "float32") if layer.center else tf.zeros([channels])
    moving_mean = tf.cast(layer.moving_mean, "float32")
    moving_variance = tf.cast(layer.moving_variance, "float32")
    outputs, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=scale, offset=offset,
        mean=tf.zeros([0]) if batch_statistics else moving_mean,
        variance=tf.zeros([0]) if batch_statistics else moving_variance,
        epsilon=layer.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
        is_training=batch_statistics)
    if batch_statistics:
        # The op normalizes with the population variance but returns the sample one
        # (divided by n - 1); Keras averages the population variance into its statistics.
        count = tf.cast(tf.size(x) // channels, "float32")
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        momentum = layer.momentum
        layer.moving_mean.assign(moving_mean * momentum + mean * (1.0 - momentum))
        layer.moving_variance.assign(moving_variance * momentum
                                     + variance * (1.0 - momentum))
    return tf.cast(outputs, layer.compute_dtype)
