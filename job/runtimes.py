"""Exported models at work, each in its own runtime; the formats' names and limits.

Owns: the table of model formats a run exports (``output.formats``): each one's fixed
name in the run directory, the runtime that runs it, its parity limit and the Python
modules it needs beyond the base install (the ``export`` extra); telling a model file's
format from its name; and running any of them on decoded pixels: Keras for ``h5`` and
``keras`` (its batch norm fused by ``job.fused_norm``), TensorFlow's SavedModel loader
and its serving signature, the LiteRT interpreter, ONNX Runtime. The last two never
import TensorFlow, so ``trainjob predict model.onnx`` starts in a fraction of the time.
Never touches: writing models (``job.export_formats``), decoding images, training.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from job import collector
from job.errors import DataError, SpecError

PREDICT_BATCH = 64
"""Images per call of a runtime: trainjob's default global batch, which any model it
trained fits in memory."""


@dataclass(frozen=True)
class Format:
    """One value of ``output.formats``."""

    name: str
    file: str
    """Its fixed name in the run directory (``saved_model`` is a folder)."""
    runtime: str
    """What runs it for the parity check and ``trainjob predict``."""
    tolerance: float
    """The most any class probability may differ from the trained model's."""
    modules: tuple[str, ...]
    """Python modules that writing and running it need, from the ``export`` extra."""


FORMATS: dict[str, Format] = {f.name: f for f in (
    # Keras and TensorFlow run the very kernels training used: only round-off may differ.
    Format("h5", "model.h5", "Keras", 1e-4, ()),
    Format("keras", "model.keras", "Keras", 1e-4, ()),
    Format("saved_model", "saved_model", "TensorFlow", 1e-4, ()),
    # Other kernels and fused ops: float32 round-off adds up through a deep backbone.
    Format("litert", "model.tflite", "LiteRT", 1e-3, ("ai_edge_litert",)),
    Format("onnx", "model.onnx", "ONNX Runtime", 1e-3, ("tf2onnx", "onnx", "onnxruntime")),
)}
"""Every export format, in the order a run writes them."""
SUFFIXES = {".h5": "h5", ".hdf5": "h5", ".keras": "keras", ".tflite": "litert",
            ".onnx": "onnx"}
"""Model file endings and their formats; a SavedModel is a folder with saved_model.pb."""
EXTRA_HINT = "install the export extra (pip install 'trainjob[export]'; the image has it)"


def check_installed(formats: Iterable[str]) -> None:
    """Refuse, before a run trains, formats whose converter or runtime is not installed.

    Raises:
        SpecError: naming ``output.formats``, the format, the missing modules and the fix.
    """
    for name in formats:
        missing = [m for m in FORMATS[name].modules if importlib.util.find_spec(m) is None]
        if missing:
            raise SpecError(f"output.formats: {name} needs {', '.join(missing)}, which "
                            f"{'is' if len(missing) == 1 else 'are'} not installed here; "
                            f"{EXTRA_HINT}, or remove {name} from output.formats.")


def format_of(path: Path) -> Format | None:
    """The format of a model file or SavedModel folder, from its name; None if it is none."""
    if path.is_dir():
        return FORMATS["saved_model"] if (path / "saved_model.pb").is_file() else None
    name = SUFFIXES.get(path.suffix.lower())
    return FORMATS[name] if name else None


@dataclass(frozen=True)
class Runtime:
    """A model file loaded in its own runtime: its shapes, and a forward pass."""

    path: Path
    format: Format
    input_shapes: tuple[tuple[int | None, ...], ...]
    """Each input's shape, batch first; None where any size goes."""
    output_shapes: tuple[tuple[int | None, ...], ...]
    run: Callable[[np.ndarray], np.ndarray]
    """float32 images (batch, height, width, channels) -> class probabilities."""
    loaded: Any = None
    """What the runtime loaded (the Keras model, the SavedModel's function, the
    interpreter, the session), for a caller that inspects it."""

    def predict(self, pixels: np.ndarray, *, batch_size: int = PREDICT_BATCH) -> np.ndarray:
        """Class probabilities of 0-255 pixels, ``batch_size`` images a call."""
        parts = [np.asarray(self.run(batch), dtype=np.float32)[:real]
                 for batch, real in fixed_batches(pixels, batch_size)]
        return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)


def fixed_batches(pixels: np.ndarray,
                  batch_size: int = PREDICT_BATCH) -> Iterator[tuple[np.ndarray, int]]:
    """``pixels`` as float32 batches of ``batch_size`` images, each with how many of its
    images are real.

    A last batch shorter than the full ones before it is padded with black images,
    whose outputs the caller drops. A traced forward pass (Keras's predict function, a
    ``tf.function``) then sees one shape and traces once; a shorter last batch traced
    it a second time, about 0.2 s for the small CNN and more for a large backbone. A
    lone short batch is one shape already and stays as it is: padding it would compute
    a whole batch for a few images.

    Example:
        >>> [(batch.shape, real) for batch, real in fixed_batches(np.zeros((5, 2, 2, 3)), 4)]
        [((4, 2, 2, 3), 4), ((4, 2, 2, 3), 1)]
        >>> [(batch.shape, real) for batch, real in fixed_batches(np.zeros((3, 2, 2, 3)), 4)]
        [((3, 2, 2, 3), 3)]
    """
    for start in range(0, len(pixels), batch_size):
        batch = np.asarray(pixels[start:start + batch_size], dtype=np.float32)
        real = len(batch)
        if start and real < batch_size:
            padding = np.zeros((batch_size - real, *batch.shape[1:]), np.float32)
            batch = np.concatenate([batch, padding])
        yield batch, real


def load(path: Path, fmt: Format | None = None) -> Runtime:
    """Load ``path`` in the runtime of its format (``fmt``, else told from its name).

    Raises:
        DataError: the file is not a model of that format, or its runtime is missing.
    """
    fmt = fmt or format_of(path)
    if fmt is None:
        raise DataError(f"{path}: not a model file (expected a name ending "
                        f"{', '.join(SUFFIXES)} or a SavedModel folder).")
    loader = _LOADERS[fmt.name]
    try:
        return loader(path, fmt)
    except ImportError as error:
        raise DataError(f"{path}: running {fmt.name} models needs {error.name or error}; "
                        f"{EXTRA_HINT}.") from None
    except DataError:
        raise
    except Exception as error:  # Each runtime raises its own kinds for a damaged file.
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        article = "an" if fmt.runtime[0] in "AEIOU" else "a"
        raise DataError(f"{path}: not {article} {fmt.runtime} model file ({reason}); give a "
                        "model a trainjob run wrote, or its run directory.") from None


def _keras(path: Path, fmt: Format) -> Runtime:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter
    with collector.paused_for_import():
        import keras

        from job import fused_norm  # Imports TensorFlow: only for the formats that use it.

    model = keras.saving.load_model(path, compile=False)

    def run(batch: np.ndarray) -> np.ndarray:
        # Keras traces its predict function on the first call: with batch norm fused, the
        # small CNN predicted 128 px images with 12% less CPU time (BENCHMARKS.md, P7).
        with fused_norm.tracing():
            return model.predict_on_batch(batch)

    return Runtime(path, fmt, tuple(tuple(t.shape) for t in model.inputs),
                   tuple(tuple(t.shape) for t in model.outputs), run, loaded=model)


def _saved_model(path: Path, fmt: Format) -> Runtime:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with collector.paused_for_import():
        import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures.get("serving_default")
    if serve is None:
        raise DataError(f"{path}: the SavedModel has no serving_default signature; export "
                        "it with one, as trainjob does.")
    inputs = serve.structured_input_signature[1]
    outputs = serve.structured_outputs
    name = next(iter(inputs), None)

    def run(batch: np.ndarray) -> np.ndarray:
        return next(iter(serve(**{name: tf.constant(batch)}).values())).numpy()

    return Runtime(path, fmt, tuple(tuple(s.shape) for s in inputs.values()),
                   tuple(tuple(s.shape) for s in outputs.values()), run, loaded=serve)


def _litert(path: Path, fmt: Format) -> Runtime:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    allocated: list[tuple[int, ...]] = [()]

    def run(batch: np.ndarray) -> np.ndarray:
        if batch.shape != allocated[0]:  # The batch is dynamic; tensors are sized per shape.
            interpreter.resize_tensor_input(inputs[0]["index"], batch.shape)
            interpreter.allocate_tensors()
            allocated[0] = batch.shape
        interpreter.set_tensor(inputs[0]["index"], batch)
        interpreter.invoke()
        return interpreter.get_tensor(outputs[0]["index"]).copy()

    return Runtime(path, fmt, tuple(_dims(d["shape_signature"]) for d in inputs),
                   tuple(_dims(d["shape_signature"]) for d in outputs), run, loaded=interpreter)


def _onnx(path: Path, fmt: Format) -> Runtime:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # Errors only: its graph-optimiser notes are noise here.
    session = onnxruntime.InferenceSession(str(path), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run([outputs[0].name], {inputs[0].name: batch})[0]

    return Runtime(path, fmt, tuple(_dims(i.shape) for i in inputs),
                   tuple(_dims(o.shape) for o in outputs), run, loaded=session)


def _dims(shape) -> tuple[int | None, ...]:
    """A runtime's shape with every unknown size (-1, a symbolic name, None) as None."""
    return tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None
                 for d in shape)


_LOADERS: dict[str, Callable[[Path, Format], Runtime]] = {
    "h5": _keras, "keras": _keras, "saved_model": _saved_model, "litert": _litert,
    "onnx": _onnx,
}
