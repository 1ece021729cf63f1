"""The optimizers of ``train.optimizer``: Keras's, each variable updated by one fused kernel.

Owns: the optimizer a spec names (``make``), with loss scaling under
``mixed_float16``; and the fused update of Adam, AdamW and SGD with momentum.
Never touches: the training loop, the strategy, checkpoints, the model.

Why fused: Keras 3 builds its update from generic ops, about 30 graph ops a variable
for Adam, so tracing the small CNN's training step (20 variables) created 1,190 ops
and took 0.42-0.44 s, and TensorFlow's graph optimizer then worked through all of them
on the first call. TensorFlow's training kernels (``ResourceApplyAdam``,
``ResourceApplyKerasMomentum``) do the same arithmetic in one op a variable: 501 ops,
0.15-0.17 s to trace, the same speed after; a backbone with hundreds of variables
saves more, at every phase of a fine-tune.

Everything else stays Keras's: the classes are Keras's optimizers with only
``update_step`` replaced, so the slots (``momentum``, ``velocity``), the iteration
count, gradient clipping, AdamW's weight decay (applied before ``update_step``),
loss scaling, the checkpoints and the distributed update (one ``update_step`` a
variable and device) are unchanged. A gradient of ``tf.IndexedSlices`` (an
embedding's), ``amsgrad``, Nesterov momentum and plain SGD keep Keras's update.

The arithmetic is Keras's, operation for operation; the one difference is where Adam's
betas are rounded to float32. The kernel takes them in float32 and computes ``1 - beta``
there; Keras computes ``1 - beta`` in double and rounds that. So Adam(0.9, 0.999) here is
bit for bit Keras's Adam given the betas as float32 values (0.89999998, 0.99900001):
``1 - beta_2`` is 1.3e-5 smaller, relatively, than Keras's own. SGD with momentum is bit
for bit Keras's. RMSprop is Keras's own: TensorFlow's kernel orders its arithmetic
differently. ``tests/test_optimizers.py`` holds all of this, and is the alarm for a
Keras upgrade that changes an update.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def make(name: str, learning_rate: float):
    """The optimizer ``train.optimizer`` names, at ``learning_rate``; wrapped for loss
    scaling under ``mixed_float16``."""
    optimizer = {
        "adam": lambda: Adam(learning_rate),
        "adamw": lambda: AdamW(learning_rate),
        "sgd": lambda: SGD(learning_rate, momentum=0.9),
        "rmsprop": lambda: keras.optimizers.RMSprop(learning_rate),
    }[name]()
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class _FusedAdamStep:
    """Adam's ``update_step`` as ``ResourceApplyAdam``: m, v and the variable in one op.

    The kernel's scalars (the betas, their powers at this step, the rate, epsilon)
    are the same for every variable of a dtype, so one update computes them once
    (``_scalars``), where Keras computes them again for each variable.
    """

    _step_scalars: dict | None = None

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self._step_scalars = {}
        try:
            super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._step_scalars = None

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        return tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]), **self._scalars(variable.dtype, learning_rate),
            grad=tf.cast(gradient, variable.dtype))

    def _scalars(self, dtype, learning_rate) -> dict:
        """The kernel's scalar arguments in ``dtype``, computed once an update."""
        known = self._step_scalars if self._step_scalars is not None else {}
        if dtype not in known:
            step = tf.cast(self.iterations + 1, dtype)
            beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            known[dtype] = dict(beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
                                lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
                                epsilon=tf.cast(self.epsilon, dtype))
        return known[dtype]


class Adam(_FusedAdamStep, keras.optimizers.Adam):
    """Keras's Adam with the fused update."""


class AdamW(_FusedAdamStep, keras.optimizers.AdamW):
    """Keras's AdamW with the fused update (the weight decay is applied before it)."""


class SGD(keras.optimizers.SGD):
    """Keras's SGD; with momentum (and not Nesterov's), ``ResourceApplyKerasMomentum``."""

    def update_step(self, gradient, variable, learning_rate):
        if not self.momentum or self.nesterov or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        return tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=_handle(self.momentums[self._get_variable_index(variable)]),
            lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype), use_nesterov=False)


def _handle(slot):
    """The resource handle of an optimizer slot (a Keras variable) on this update's device."""
    return slot.value.handle
