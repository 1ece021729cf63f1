"""The float32 copy a mixed-precision run exports computes what the trained model does."""

from __future__ import annotations

import numpy as np
import pytest

from job import spec as spec_module


@pytest.fixture(autouse=True)
def float32_policy_after():
    yield
    import keras

    keras.mixed_precision.set_global_policy("float32")


def test_the_copy_carries_state_that_layers_derive_from_their_weights():
    """EfficientNet normalises its input with a Normalization layer, whose mean and
    variance are weights but are used through state derived from them."""
    import keras

    from job import export
    from job.model import build_model

    model_spec = spec_module.ModelSpec(backbone="efficientnet_b0")

    def build():
        return build_model(input_shape=(32, 32, 3), num_classes=3, model=model_spec, seed=1)

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    trained = build()
    for layer in trained._flatten_layers():
        if isinstance(layer, keras.layers.Normalization):
            layer.adapt_mean.assign(np.full(layer.adapt_mean.shape, 40.0, "float32"))
            layer.adapt_variance.assign(np.full(layer.adapt_variance.shape, 900.0, "float32"))
            layer.finalize_state()
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")

    copy = export.float32_copy(trained, build=build)

    def normalised(model):
        layer = next(lay for lay in model._flatten_layers()
                     if isinstance(lay, keras.layers.Normalization))
        return np.asarray(layer(images), dtype="float32")

    # bfloat16 against float32: close, not equal; a stale normalisation is far off.
    np.testing.assert_allclose(normalised(copy), normalised(trained), rtol=0.02, atol=0.02)
