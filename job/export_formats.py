"""The writers of each model format: Keras's own where it serves, our inference call where not.

Owns: turning a trained Keras model into a ``keras``, ``saved_model``, ``litert`` or
``onnx`` artifact at a path it is given (``h5`` is ``job.run_dir``'s, as ever), and the
workarounds the pinned converters need:

- Keras's ``model.export(format="tf_saved_model")`` and ``format="onnx"`` trace
  ``model.__call__`` without ``training=False``, and Keras's augmentation layers default
  to training mode: the SavedModel would flip the images it serves at random, and tf2onnx
  refuses the random op. Both are written here from ``model(image, training=False)``,
  with Keras's own ``ExportArchive`` and tf2onnx's ``from_function`` (what
  ``model.export`` calls underneath). ``format="litert"`` already calls with
  ``training=False`` and is used as it is.
- tf2onnx turns the plain tensors a function captures (Keras's ``Normalization`` keeps its
  mean and variance so, in EfficientNet) into extra graph inputs that no caller feeds;
  they are put back into the graph as the constants they are.

Never touches: where files go and how they are put in place (``job.run_dir``), checking
them (``job.export``), running them (``job.runtimes``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

INPUT_NAME = "image"
"""The exported models' input name, as ``job.model`` names the Keras input."""


def write(name: str, model, path: Path) -> None:
    """Write ``model`` in format ``name`` (not ``h5``) at ``path``, a temp name in place."""
    _WRITERS[name](model, path)


def _signature(model) -> list[tf.TensorSpec]:
    """Any number of float32 images of the model's size: 0-255 pixels, as model.h5 takes."""
    return [tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32, name=INPUT_NAME)]


def _inference(model) -> Callable:
    return lambda image: model(image, training=False)


def _keras(model, path: Path) -> None:
    with warnings.catch_warnings():
        # Keras's writer trips numpy 2's copy-keyword deprecation once per weight: noise.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        model.save(str(path))


def _saved_model(model, path: Path) -> None:
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", _inference(model), input_signature=_signature(model))
    # write_out signs "serve" as serving_default too: what TF Serving calls.
    archive.write_out(str(path), verbose=False)


def _litert(model, path: Path) -> None:
    model.export(str(path), format="litert", verbose=False)


def _onnx(model, path: Path) -> None:
    import onnx
    import tf2onnx
    from onnx import numpy_helper

    signature = _signature(model)
    function = tf.function(_inference(model), input_signature=signature)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)  # Its version banner is noise.
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature)
    captured = {inner.name: outer.numpy() for outer, inner
                in function.get_concrete_function().graph.captures
                if outer.dtype != tf.resource}
    for graph_input in list(proto.graph.input):
        if graph_input.name in captured:
            proto.graph.initializer.append(
                numpy_helper.from_array(captured[graph_input.name], graph_input.name))
            proto.graph.input.remove(graph_input)
    onnx.save(proto, str(path))


_WRITERS: dict[str, Callable[..., None]] = {
    "keras": _keras, "saved_model": _saved_model, "litert": _litert, "onnx": _onnx,
}
