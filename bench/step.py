"""P3 and P6: training-step throughput against ``model.fit``, and the share of the matmul peak.

Owns: P3, one worker training with its data already in memory, in this
process. trainjob runs ``job.train.train`` and its own per-epoch
``images_per_second`` (history.csv: step time only, without decoding,
validation or the epoch-end checkpoint) is read back; the reference decodes the
same training split with ``job.data`` and runs ``model.compile`` + ``model.fit``
on those arrays with the same model, optimizer and batch, timing each epoch
with a callback. The first epoch of each is the warm-up (it traces the step
function); the later epochs are the repetitions.
P6: training FLOPs per image counted from the model's layer shapes, times P3's
images per second, over the median of timed large ``tf.matmul`` calls.
Never touches: child processes, the photo set.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

from bench.measure import fresh_dir, median, timed
from bench.report import Figure, Target
from bench.sizes import Sizes
from bench.specs import training_spec
from job import data
from job import spec as spec_module

P3_TARGET = Target(at_least=True, value=1.0)
P6_TARGET = Target(at_least=True, value=0.25, percent=True)
TRAINING_FLOPS_PER_FORWARD = 3
"""Training costs about three forward passes: the forward, and the backward pass's
gradients with respect to both the activations and the weights."""


def measure(train_dir: Path, sizes: Sizes, *, work_dir: Path,
            log: Callable[[str], None]) -> list[Figure]:
    """P3 (trainjob's loop against ``model.fit``) and P6 (its share of the matmul peak)."""
    spec = spec_module.from_dict(
        training_spec(train_dir, sizes, epochs=sizes.step_epochs,
                      output_dir=fresh_dir(work_dir / "runs" / "step"), name="bench-step"),
        base_dir=work_dir)
    log("P3 training step: trainjob (first epoch is the warm-up)")
    ours = trainjob_rates(spec, log_path=work_dir / "logs" / "step-trainjob.log")
    log("P3 training step: reference model.fit (first epoch is the warm-up)")
    theirs, flops_per_image = fit_rates(spec)
    log("P6 matmul peak")
    peak = matmul_gflops(sizes)
    p3 = Figure.of("P3", title="Training step, one worker, data in memory",
                   unit="images/s", reference_name="model.fit on the same arrays",
                   target=P3_TARGET, trainjob=ours, reference=theirs,
                   method="job.train.train per-epoch images_per_second (history.csv)",
                   image_size=sizes.train_image_size, batch_size=sizes.batch_size)
    gflops_per_image = flops_per_image / 1e9
    p6 = Figure.of("P6", title="Training FLOP/s, share of the matmul peak", unit="GFLOP/s",
                   reference_name=f"{sizes.matmul_size}² float32 tf.matmul", target=P6_TARGET,
                   trainjob=[rate * gflops_per_image for rate in ours], reference=peak,
                   training_gflops_per_image=gflops_per_image,
                   model_fit_share=median(theirs) * gflops_per_image / median(peak))
    return [p3, p6]


def trainjob_rates(spec: spec_module.Spec, *, log_path: Path) -> list[float]:
    """Images per second of each epoch after the first, as trainjob's loop reports them."""
    from job.cluster import cluster_from_env
    from job.train import train

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        result = train(spec, cluster=cluster_from_env({}), run_id="p3", env={}, out=out)
    with open(result.run_dir / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [float(row["images_per_second"]) for row in rows[1:]]


def fit_rates(spec: spec_module.Spec) -> tuple[list[float], float]:
    """The reference's images per second of each epoch after the first, and FLOPs per image."""
    import keras

    from job.model import build_model

    splits = data.make_splits(spec.data, seed=spec.train.seed)
    decoded = data.decode(splits.train, spec=spec.data, cache_dir=None,
                          workers=spec.data.decode_workers)
    keras.utils.set_random_seed(spec.train.seed)
    model = build_model(input_shape=decoded.pixels.shape[1:],
                        num_classes=len(splits.class_names), backbone=spec.model.backbone,
                        dropout=spec.model.dropout, augment=spec.model.augment,
                        seed=spec.train.seed)
    model.compile(optimizer=keras.optimizers.Adam(spec.train.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    clock = _EpochClock(keras)
    model.fit(decoded.pixels, decoded.labels, batch_size=spec.train.global_batch_size,
              epochs=spec.train.epochs, shuffle=True, verbose=0, callbacks=[clock.callback])
    rates = [len(decoded.labels) / seconds for seconds in clock.seconds[1:]]
    return rates, training_flops_per_image(model)


class _EpochClock:
    """A Keras callback's worth of state: the wall time of every epoch."""

    def __init__(self, keras) -> None:
        self.seconds: list[float] = []
        clock = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                clock.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                clock.seconds.append(time.perf_counter() - clock.started)

        self.started = 0.0
        self.callback = Callback()


def training_flops_per_image(model) -> float:
    """Multiply-adds of every Conv2D and Dense layer, x2 FLOPs, x3 for training.

    Batch norm, activations and pooling are left out: in the small CNN they are
    about 2% of the convolutions' work.
    """
    import keras

    forward = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            kernel_h, kernel_w, channels_in, channels_out = layer.kernel.shape
            _, height, width, _ = layer.output.shape
            forward += 2 * kernel_h * kernel_w * channels_in * channels_out * height * width
        elif isinstance(layer, keras.layers.Dense):
            inputs, outputs = layer.kernel.shape
            forward += 2 * inputs * outputs
    return float(forward * TRAINING_FLOPS_PER_FORWARD)


def _leaf_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _leaf_layers(layer)
        else:
            yield layer


def matmul_gflops(sizes: Sizes) -> list[float]:
    """GFLOP/s of each timed n x n float32 matmul after one warm-up (2 n³ FLOPs each)."""
    import tensorflow as tf

    n = sizes.matmul_size
    a = tf.random.normal((n, n), dtype=tf.float32, seed=1)
    b = tf.random.normal((n, n), dtype=tf.float32, seed=2)

    def product():
        # Reducing to one number forces the matmul to finish without copying n² values.
        return float(tf.reduce_sum(tf.matmul(a, b)))

    product()
    return [2 * n**3 / 1e9 / timed(product)[1] for _ in range(sizes.matmul_repetitions)]
