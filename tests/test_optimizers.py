"""The fused optimizers are Keras's optimizers: the same updates, one kernel a variable.

Each test trains a few variables for ten steps with made-up gradients, once with
Keras's class and once with ``job.optimizers``', inside ``tf.function`` as the
training step runs them, and compares every weight and slot bit for bit. They are
also the alarm for a Keras upgrade that changes how an optimizer updates.
"""

from __future__ import annotations

import numpy as np
import pytest

SHAPES = [(3, 4), (4,), (5, 5, 2)]


def trained(optimizer, *, steps: int = 10) -> list[np.ndarray]:
    """Every variable and optimizer slot after ``steps`` updates with fixed gradients."""
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=shape).astype("float32")) for shape in SHAPES]
    optimizer.build(variables)

    @tf.function
    def apply(gradients):
        optimizer.apply_gradients(zip(gradients, variables))

    for _ in range(steps):
        apply([tf.constant(rng.normal(size=shape).astype("float32")) for shape in SHAPES])
    return [v.numpy() for v in variables] + [v.numpy() for v in optimizer.variables]


def assert_identical(ours: list[np.ndarray], keras_s: list[np.ndarray]) -> None:
    assert len(ours) == len(keras_s)
    for mine, theirs in zip(ours, keras_s):
        assert mine.shape == theirs.shape and np.array_equal(mine, theirs)


def test_sgd_with_momentum_is_bit_for_bit_keras_s():
    import keras

    from job import optimizers

    assert_identical(trained(optimizers.SGD(0.01, momentum=0.9)),
                     trained(keras.optimizers.SGD(0.01, momentum=0.9)))


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_is_bit_for_bit_keras_s_with_betas_exact_in_float32(name):
    # 1 - 0.875 and 1 - (1 - 2**-10) are exact in float32 and in double alike, so
    # where each side rounds 1 - beta cannot matter: every other operation must agree.
    import keras

    from job import optimizers

    settings = {"learning_rate": 0.01, "beta_1": 0.875, "beta_2": 1 - 2**-10}
    assert_identical(trained(getattr(optimizers, name)(**settings)),
                     trained(getattr(keras.optimizers, name)(**settings)))


def test_adam_s_default_betas_are_keras_s_rounded_to_float32_and_nothing_else():
    import keras

    from job import optimizers

    ours = trained(optimizers.Adam(0.01))
    assert_identical(ours, trained(keras.optimizers.Adam(
        0.01, beta_1=float(np.float32(0.9)), beta_2=float(np.float32(0.999)))))
    # The rounding is the documented difference: Keras's own defaults differ a little.
    theirs = trained(keras.optimizers.Adam(0.01))
    assert not all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    for mine, keras_s in zip(ours, theirs):
        np.testing.assert_allclose(mine, keras_s, rtol=1e-4, atol=1e-6)


def test_amsgrad_keeps_keras_s_update():
    import keras

    from job import optimizers

    assert_identical(trained(optimizers.Adam(0.01, amsgrad=True)),
                     trained(keras.optimizers.Adam(0.01, amsgrad=True)))


@pytest.mark.parametrize(("name", "kernel"), [("adam", "ResourceApplyAdam"),
                                              ("adamw", "ResourceApplyAdam"),
                                              ("sgd", "ResourceApplyKerasMomentum")])
def test_the_spec_s_optimizer_updates_each_variable_with_one_fused_kernel(name, kernel):
    import keras
    import tensorflow as tf

    from job import optimizers

    optimizer = optimizers.make(name, 0.01)
    variables = [keras.Variable(np.zeros(shape, "float32")) for shape in SHAPES]
    optimizer.build(variables)
    graph = tf.function(lambda gradients: optimizer.apply_gradients(
        zip(gradients, variables))).get_concrete_function(
        [tf.TensorSpec(shape, "float32") for shape in SHAPES]).graph
    kinds = [op.type for op in graph.get_operations()]
    assert kinds.count(kernel) == len(SHAPES)
    # Keras's generic update writes the slots with AssignAddVariableOp; the kernel does not.
    assert "AssignAddVariableOp" not in kinds or kinds.count("AssignAddVariableOp") == 1


def test_a_checkpoint_of_keras_s_adam_resumes_into_the_fused_one(tmp_path):
    # A run checkpointed before the optimizers were fused resumes with the same slots.
    import keras
    import tensorflow as tf

    from job import optimizers

    def model_and(optimizer):
        variable = keras.Variable(np.arange(4, dtype="float32"))
        optimizer.build([variable])
        return variable, optimizer

    variable, old = model_and(keras.optimizers.Adam(0.01))
    old.apply_gradients([(tf.ones(4), variable)])
    path = tf.train.Checkpoint(v=variable, optimizer=old).save(str(tmp_path / "ckpt"))

    restored, new = model_and(optimizers.Adam(0.01))
    tf.train.Checkpoint(v=restored, optimizer=new).restore(path).assert_consumed()
    assert_identical([v.numpy() for v in new.variables], [v.numpy() for v in old.variables])
    assert int(new.iterations.numpy()) == 1
