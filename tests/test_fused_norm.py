"""Batch norm through the fused kernel computes what Keras's own layer computes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from job import distributed, fused_norm
from tests.conftest import KERAS_SAVE_WARNING


def _layer(**options):
    layer = keras.layers.BatchNormalization(momentum=0.9, **options)
    layer.build((None, 6, 5, 3))
    layer.gamma.assign([1.5, 0.5, 2.0]) if layer.scale else None
    layer.beta.assign([0.1, -0.2, 0.3]) if layer.center else None
    layer.moving_mean.assign([0.2, 0.1, -0.1])
    layer.moving_variance.assign([1.2, 0.8, 1.1])
    return layer


def _step(layer, x, *, fused: bool, training=True):
    """The layer's output, gradients of a weighted sum (input, gamma, beta), and statistics."""
    weights = tf.constant(np.random.default_rng(1).normal(size=x.shape), "float32")
    with tf.GradientTape() as tape:
        tape.watch(x)
        if fused:
            with fused_norm.tracing():
                y = layer(x, training=training)
        else:
            y = layer(x, training=training)
        total = tf.reduce_sum(tf.cast(y, "float32") * weights)
    gradients = tape.gradient(total, [x, *layer.trainable_variables])
    return ([y.numpy().astype(np.float32)] + [g.numpy() for g in gradients]
            + [layer.moving_mean.numpy(), layer.moving_variance.numpy()])


def _images(shape=(4, 6, 5, 3)):
    rng = np.random.default_rng(0)
    return tf.constant(rng.normal(2.0, 3.0, size=shape), "float32")


@pytest.mark.parametrize("options", [{}, {"center": False}, {"scale": False}],
                         ids=["gamma-and-beta", "no-beta", "no-gamma"])
def test_the_fused_layer_matches_keras_in_output_gradients_and_moving_statistics(options):
    x = _images()
    expected = _step(_layer(**options), x, fused=False)
    got = _step(_layer(**options), x, fused=True)
    assert len(got) == len(expected)
    for name, a, b in zip(["output", "d input", "d weights 1", "d weights 2", "moving mean",
                           "moving variance"][:len(got) - 2] + ["moving mean", "moving variance"],
                          got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_the_fused_layer_matches_keras_under_bfloat16_compute():
    x = _images()
    expected = _step(_layer(dtype="mixed_bfloat16"), tf.cast(x, "bfloat16"), fused=False)
    got = _step(_layer(dtype="mixed_bfloat16"), tf.cast(x, "bfloat16"), fused=True)
    assert got[0].dtype == expected[0].dtype
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(got[-2:], expected[-2:], rtol=1e-5)  # Statistics in float32.


def _traced_ops(layer, x, *, training):
    @tf.function
    def forward(images):
        with fused_norm.tracing():
            return layer(images, training=training)
    graph = forward.get_concrete_function(x).graph
    return {op.type for op in graph.get_operations()}


def test_inference_and_a_frozen_layer_match_keras_with_the_moving_statistics():
    x = _images()
    for training in (False, True):
        expected_layer, got_layer = _layer(), _layer()
        expected_layer.trainable = got_layer.trainable = training is False
        expected = _step(expected_layer, x, fused=False, training=training)
        got = _step(got_layer, x, fused=True, training=training)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        # Nothing moved: inference reads the moving statistics, never updates them.
        np.testing.assert_array_equal(got[-2], np.float32([0.2, 0.1, -0.1]))


def test_every_mode_traces_one_fused_op_and_outside_the_block_keras_ops():
    x = _images()
    assert "FusedBatchNormV3" in _traced_ops(_layer(), x, training=True)
    assert "FusedBatchNormV3" in _traced_ops(_layer(), x, training=False)
    frozen = _layer()
    frozen.trainable = False
    assert "FusedBatchNormV3" in _traced_ops(frozen, x, training=True)
    # Outside the block Keras's own ops are traced: the switch is put back.
    layer = _layer()
    graph = tf.function(lambda images: layer(images, training=True)).get_concrete_function(x).graph
    assert "FusedBatchNormV3" not in {op.type for op in graph.get_operations()}


def test_layers_keras_computes_otherwise_keep_keras_ops():
    channels_first = keras.layers.BatchNormalization(axis=1)
    channels_first.build((None, 3, 6, 5))
    assert "FusedBatchNormV3" not in _traced_ops(channels_first, _images((4, 3, 6, 5)),
                                                 training=True)
    flat = keras.layers.BatchNormalization()
    flat.build((None, 3))
    assert "FusedBatchNormV3" not in _traced_ops(flat, _images((4, 3)), training=True)
    renormalized = keras.layers.BatchNormalization(renorm=True)
    renormalized.build((None, 6, 5, 3))
    assert "FusedBatchNormV3" not in _traced_ops(renormalized, _images(), training=True)
    # Renormalization changes only training; inference reads the moving statistics.
    assert "FusedBatchNormV3" in _traced_ops(renormalized, _images(), training=False)


def test_the_training_step_trains_with_the_fused_kernel():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    strategy = tf.distribute.get_strategy()
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    run = distributed.make_train_steps(
        strategy, model, optimizer, keras.losses.SparseCategoricalCrossentropy(reduction=None),
        global_batch=4)
    images = np.random.default_rng(2).uniform(0, 255, (8, 8, 8, 3)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((images, np.array([0, 1] * 4))).batch(4)
    before = model.layers[2].moving_mean.numpy().copy()
    stats = run(iter(dataset), 2, False)
    assert stats.count == 8
    assert not np.allclose(model.layers[2].moving_mean.numpy(), before)
    assert keras.layers.BatchNormalization.call is fused_norm._KERAS_CALL
    traced = run.traced.get_concrete_function(iter(dataset), tf.constant(2, "int32"),
                                              tf.constant(0.0))
    library = traced.graph.as_graph_def().library.function
    ops = {node.op for function in library for node in function.node_def}
    assert "FusedBatchNormV3" in ops and "FusedBatchNormGradV3" in ops


@KERAS_SAVE_WARNING
def test_the_keras_runtime_predicts_with_the_fused_kernel_and_keras_s_numbers(tmp_path):
    from job import runtimes

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.layers[2].moving_variance.assign([0.5, 2.0, 1.5, 0.8])  # Not the identity.
    model.save(tmp_path / "model.keras")
    images = np.random.default_rng(3).uniform(0, 255, (5, 8, 8, 3)).astype("float32")

    runtime = runtimes.load(tmp_path / "model.keras")
    predicted = runtime.predict(images)

    np.testing.assert_allclose(predicted, model.predict(images, verbose=0), rtol=1e-5,
                               atol=1e-6)
    traced = runtime.loaded.predict_function._list_all_concrete_functions()
    ops = {op.type for function in traced for op in function.graph.get_operations()}
    library = {node.op for function in traced
               for f in function.graph.as_graph_def().library.function for node in f.node_def}
    assert "FusedBatchNormV3" in ops | library
    assert keras.layers.BatchNormalization.call is fused_norm._KERAS_CALL
