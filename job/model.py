"""The classifier: a small built-in CNN or a ``keras.applications`` backbone.

Owns: ``build_model``, the backbones, in-model preprocessing (each backbone's own
``preprocess_input``, built from plain layers, so model.h5 takes 0-255 pixels),
augmentation layers (active only in training, run on the accelerator), and loading
the weights file the spec names or ``job.weights`` finds for ``imagenet``.
Never touches: data loading, other files, where ImageNet weights come from
(``job.weights``), strategy creation (the caller builds the model under
``strategy.scope()``).
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
from keras import layers

from job import weights as weights_module
from job.errors import SpecError
from job.spec import IMAGENET, AugmentSpec, ModelSpec

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
"""ImageNet channel means the VGG16 and ResNet50 weights were trained with (BGR order)."""
_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
"""ImageNet channel standard deviations (0-1 pixels), as keras.applications.efficientnet has
them: its ImageNet model divides by their square roots once more (see _fold_imagenet_scale)."""


def _caffe(x):
    # RGB -> BGR and mean subtraction as one fixed 1x1 projection.
    return layers.Dense(3, trainable=False, dtype="float32", name="preprocess",
                        kernel_initializer=keras.initializers.Constant(np.eye(3)[::-1]),
                        bias_initializer=keras.initializers.Constant(
                            [-m for m in _CAFFE_MEAN_BGR]))(x)


_PREPROCESS = {
    "vgg16": _caffe,
    "resnet": _caffe,
    # Scale to [-1, 1].
    "mobilenet_v2": lambda x: layers.Rescaling(1 / 127.5, offset=-1.0, dtype="float32",
                                               name="preprocess")(x),
    # EfficientNet rescales inside the backbone itself.
    "efficientnet": lambda x: x,
}

_APPLICATIONS = {
    "vgg16": ("VGG16", "vgg16"),
    "resnet50": ("ResNet50", "resnet"),
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2"),
    "efficientnet_b0": ("EfficientNetB0", "efficientnet"),
}
MIN_APPLICATION_SIZE = 32
"""Pixels: keras.applications backbones refuse smaller inputs."""


def build_model(*, input_shape: tuple[int, int, int], num_classes: int,
                model: ModelSpec | None = None, seed: int | None = None) -> keras.Model:
    """Build an uncompiled classifier that takes 0-255 pixels and outputs class probabilities.

    Args:
        input_shape: (height, width, channels).
        num_classes: size of the softmax output.
        model: the spec's model section (None: ``ModelSpec()``, the spec's defaults):
            the backbone (``small_cnn`` or a keras.applications name); the weights
            file to start from (None: random; ``imagenet``: the backbone's Keras
            ImageNet file, which ``job.weights`` finds or fetches; backbone-only
            "notop" weights for an applications backbone, or full-model weights of the
            same architecture, e.g. an earlier run's model.h5); the dropout before the
            classifier head; the training-time augmentation.
        seed: seeds the augmentation layers.

    Example:
        >>> model = build_model(input_shape=(64, 64, 3), num_classes=4)   # doctest: +SKIP
        >>> model.output_shape
        (None, 4)
    """
    spec = model or ModelSpec()
    backbone, dropout, augment = spec.backbone, spec.dropout, spec.augment
    inputs = keras.Input(shape=input_shape, name="image")
    x = _augmentation(augment, seed=seed)(inputs) if _has_augmentation(augment) else inputs
    if backbone == "small_cnn":
        features = _small_cnn(x)
        backbone_weights = None
    else:
        features, backbone_model = _application(x, backbone=backbone, input_shape=input_shape)
        backbone_weights = backbone_model
    x = layers.Dropout(dropout, name="head_dropout")(features) if dropout > 0 else features
    # The head in float32 even under mixed precision: the softmax must sum to one, and
    # 16-bit logits make confident predictions' gradients coarse (measured: -2 points of
    # test accuracy on the demo with bfloat16 logits). It is a tiny share of the work.
    x = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    classifier = keras.Model(inputs, outputs, name=f"trainjob_{backbone}")
    if spec.weights is not None:
        _start_from(spec, classifier, backbone=backbone_weights, image_size=input_shape[:2])
    return classifier


def _start_from(spec: ModelSpec, classifier: keras.Model, *, backbone: keras.Model | None,
                image_size: tuple[int, int]) -> None:
    """Load model.weights: the ImageNet file ``job.weights`` finds, or the file named."""
    path = (weights_module.resolve(spec, image_size=image_size, env=os.environ)
            if spec.weights == IMAGENET else Path(spec.weights))
    loaded = _load_weights(classifier, backbone, path)
    if loaded is backbone and spec.backbone.startswith("efficientnet"):
        # A notop file holds Keras's ImageNet EfficientNet, which scales its input once more.
        _fold_imagenet_scale(backbone)


def _has_augmentation(augment: AugmentSpec | None) -> bool:
    return augment is not None and (augment.flip != "none" or augment.rotation > 0
                                    or augment.zoom > 0 or augment.contrast > 0)


def _augmentation(augment: AugmentSpec, *, seed: int | None) -> keras.Sequential:
    # Keras preprocessing layers are identity at inference: model.h5 predicts unaugmented.
    steps = []
    if augment.flip != "none":
        steps.append(layers.RandomFlip(augment.flip, seed=seed))
    if augment.rotation > 0:
        steps.append(layers.RandomRotation(augment.rotation, fill_mode="reflect", seed=seed))
    if augment.zoom > 0:
        steps.append(layers.RandomZoom(augment.zoom, fill_mode="reflect", seed=seed))
    if augment.contrast > 0:
        steps.append(layers.RandomContrast(augment.contrast, value_range=(0, 255), seed=seed))
    return keras.Sequential(steps, name="augment")


def _small_cnn(x):
    """Three blocks of two 3x3 convs with batch norm, then global max pooling.

    Max pooling keeps "is this shape anywhere" features whatever the position,
    and the paired convs see far enough to tell corners from curves. About
    290k parameters: trains to >0.9 on the sample data in a few CPU minutes.
    """
    x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    for block, filters in enumerate((32, 64, 128)):
        for conv in range(2):
            name = f"block{block}_conv{conv}"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
            # momentum 0.9: moving statistics settle within a short run's few hundred steps.
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
            x = layers.Activation("relu", name=f"{name}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return layers.GlobalMaxPooling2D(name="pool")(x)


def _application(x, *, backbone: str, input_shape: tuple[int, int, int]):
    class_name, module_name = _APPLICATIONS[backbone]
    height, width, channels = input_shape
    if min(height, width) < MIN_APPLICATION_SIZE:
        raise SpecError(f"data.image_size={[height, width]} is too small for model.backbone="
                        f"{backbone}; use at least {MIN_APPLICATION_SIZE} pixels per side.")
    if channels != 3:
        raise SpecError(f"data.color_mode=grayscale does not fit model.backbone={backbone}, "
                        "which expects 3 channels; use color_mode: rgb or backbone: small_cnn.")
    # Each backbone has its own input convention. Built from plain layers, not
    # preprocess_input (whose ops model.h5 cannot reload), computing the same thing.
    x = _PREPROCESS[module_name](x)
    constructor = getattr(keras.applications, class_name)
    base = constructor(include_top=False, weights=None, input_shape=input_shape, pooling="avg")
    return base(x), base


def _load_weights(model: keras.Model, backbone: keras.Model | None,
                  path: Path) -> keras.Model:
    """Load ``path`` into the backbone (a notop file), else the whole model; return which."""
    if not path.is_file():
        raise SpecError(f"model.weights={str(path)!r} does not exist; give the path of a local "
                        "weights file, imagenet (see `trainjob weights fetch`) or null.")
    errors = []
    for target in (backbone, model):
        if target is None:
            continue
        try:
            target.load_weights(str(path))
            return target
        except Exception as error:  # Keras raises ValueError, OSError, KeyError... by format.
            errors.append(f"{target.name}: {str(error).splitlines()[0] if str(error) else error}")
    raise SpecError(f"model.weights={str(path)!r} does not fit this model ("
                    + "; ".join(errors) + "); use a notop weights file of the same backbone, or "
                    "full-model weights of the same architecture and classes.")


def _fold_imagenet_scale(backbone: keras.Model) -> None:
    """Give an EfficientNet built with weights=None the input scaling of Keras's ImageNet one.

    keras.applications' EfficientNet adds ``Rescaling(1 / sqrt(stddev))`` after its
    Normalization layer only when built with ``weights="imagenet"`` (see
    tensorflow/tensorflow#49930); we build with None and load the notop file ourselves, so
    that layer is missing. Dividing the normalised input by sqrt(stddev) equals normalising
    with the variance times stddev, so the loaded variance takes that factor: the outputs of
    Keras's ImageNet model, with the layers of every other run, so model.h5 and full-model
    weights need nothing special.
    """
    (normalization,) = [layer for layer in backbone.layers
                        if isinstance(layer, layers.Normalization)]
    normalization.adapt_variance.assign(
        normalization.adapt_variance.numpy() * np.array(_IMAGENET_STDDEV_RGB, dtype="float32"))
    normalization.finalize_state()  # Its mean and variance are cached tensors: refresh them.
