"""P3 and P6: training-step throughput against ``model.fit``, and the share of the matmul peak.

Owns: P3, one worker training with its data already in memory, each side in a
fresh process (``python -m bench.step SIDE ...``), in alternating rounds. trainjob runs
``job.train.train`` and its own per-epoch ``images_per_second`` (history.csv:
step time only, without decoding, validation or the epoch-end checkpoint) is
read back; the reference decodes the same training split with ``job.data`` and
runs ``model.compile`` + ``model.fit`` on those arrays with the same model,
optimizer and batch, timing each epoch with a callback. In every process the
first epoch is a warm-up (it traces the step function) and the median of the
later epochs is that round's figure.
trainjob trains at its defaults, so with ``train.mixed_precision: auto`` it
computes in bfloat16 on CPUs that have it natively, while ``model.fit`` runs at
Keras's float32 default, what a user gets without changing anything. A third
side, trainjob with ``mixed_precision: false``, is measured in the same rounds
and kept in P3's details (and note), so the loop's own gain stays visible. With
the suite's ``--precision float32`` trainjob's side itself trains with
``mixed_precision: false`` and the third side, the same run again, is left out,
as it is on a CPU without bfloat16 (the suite measures CPUs: a GPU's own mixed
precision is not looked for).
P6: training FLOPs per image counted from the model's layer shapes, times P3's
images per second, over the median of timed large ``tf.matmul`` calls made in
the same process right after training, in the dtype the training computed in
(bfloat16 under mixed_bfloat16), so a busy machine slows both alike.
Never touches: the photo set, the end-to-end runs.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.measure import alternate, median, run_module, timed
from bench.report import Figure, Target, write_json
from bench.sizes import Sizes
from bench.specs import mixed_precision_setting, prepare_runs
from job import machine
from job.precision import CPU_BF16_FLAGS

P3_TARGET = Target(at_least=True, value=1.1)
"""In float32 too: the same kernels' work, fed without Python per batch and on oneDNN."""
P6_TARGET = Target(at_least=True, value=0.25, percent=True)
TRAINING_FLOPS_PER_FORWARD = 3
"""Training costs about three forward passes: the forward, and the backward pass's
gradients with respect to both the activations and the weights."""


def measure(train_dir: Path, sizes: Sizes, *, work_dir: Path, log: Callable[[str], None],
            precision: str = "auto") -> list[Figure]:
    """P3 (trainjob's loop against ``model.fit``) and P6 (its share of the matmul peak).

    ``precision``: the suite's ``--precision`` (``bench.specs.PRECISIONS``).
    """
    _, spec_path = prepare_runs(train_dir, sizes, work_dir=work_dir, kind="step",
                                epochs=sizes.step_epochs,
                                mixed_precision=mixed_precision_setting(precision))
    counter = itertools.count(1)

    def side(name: str, spec: Path, *args: str) -> Callable[[], dict]:
        def run() -> dict:
            number = next(counter)
            kind = "fit" if name == "fit" else "trainjob"
            return run_module("bench.step", [kind, str(spec), *args, "--run-id",
                                             f"{name}-{number}"],
                              log=work_dir / "logs" / "step" / f"{name}-{number}.log",
                              timeout_seconds=sizes.child_timeout_seconds)
        return run

    sides = {"trainjob": side("trainjob", spec_path, "--matmul-size", str(sizes.matmul_size),
                              "--matmul-repetitions", str(sizes.matmul_repetitions))}
    # With float32 asked for, or no bfloat16 in the CPU, trainjob's side already is this one.
    if precision == "auto" and CPU_BF16_FLAGS & machine.cpu_flags():
        _, float32_spec_path = prepare_runs(train_dir, sizes, work_dir=work_dir,
                                            kind="step-float32", epochs=sizes.step_epochs,
                                            mixed_precision=False)
        sides["trainjob float32"] = side("trainjob-float32", float32_spec_path)
    sides["model.fit"] = side("fit", spec_path)
    runs = alternate(sides, repetitions=sizes.repetitions, warmups=0, log=log,
                     label="P3/P6 training step (each first epoch is a warm-up)")
    return _figures(runs, sizes)


def _figures(runs: dict[str, list[dict]], sizes: Sizes) -> list[Figure]:
    """P3 and P6 from the rounds' results, with the float32 side's note when it ran."""
    ours = [median(run["rates"]) for run in runs["trainjob"]]
    theirs = [median(run["rates"]) for run in runs["model.fit"]]
    peak = [median(run["gflops"]) for run in runs["trainjob"]]
    precision = runs["trainjob"][0]["precision"]
    dtype = matmul_dtype(precision)
    gflops_per_image = runs["model.fit"][0]["flops_per_image"] / 1e9
    p3 = Figure.of("P3", title=f"Training step, one worker, data in memory ({precision})",
                   unit="images/s", reference_name="model.fit on the same arrays (float32)",
                   target=P3_TARGET, trainjob=ours, reference=theirs,
                   method="job.train.train per-epoch images_per_second (history.csv)",
                   precision=precision, image_size=sizes.train_image_size,
                   batch_size=sizes.batch_size,
                   **_float32_side(runs.get("trainjob float32"), theirs))
    p6 = Figure.of("P6", title=f"Training FLOP/s, share of the matmul peak ({dtype})",
                   unit="GFLOP/s", reference_name=f"{sizes.matmul_size}² {dtype} tf.matmul",
                   target=P6_TARGET, trainjob=[rate * gflops_per_image for rate in ours],
                   reference=peak, training_gflops_per_image=gflops_per_image,
                   matmul_dtype=dtype, precision=dtype)
    return [p3, p6]


def _float32_side(runs: list[dict] | None, theirs: list[float]) -> dict[str, object]:
    """P3's details for its float32 side (trainjob with ``mixed_precision: false``), if run."""
    if not runs:
        return {}
    float32 = [median(run["rates"]) for run in runs]
    rounds = [ours / ref for ours, ref in zip(float32, theirs)]
    return {"float32_images_per_second": median(float32),
            "float32_ratio": median(float32) / median(theirs), "float32_samples": float32,
            "float32_round_ratios": rounds,
            "note": (f"trainjob in float32 (mixed_precision: false), same rounds: "
                     f"{median(float32):,.0f} images/s, {median(float32) / median(theirs):.2f}x "
                     f"model.fit (rounds {', '.join(f'{r:.2f}x' for r in rounds)})")}


def matmul_dtype(policy: str) -> str:
    """The dtype a Keras policy computes in: what P6's peak must be measured in."""
    return {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}.get(policy, "float32")


# --- in the child processes ----------------------------------------------------------


def trainjob_rates(spec_path: Path, *, run_id: str) -> dict:
    """Images per second of each epoch after the first, as trainjob's loop reports them."""
    from job import kernels

    kernels.apply()  # As `trainjob train` does before TensorFlow loads: its kernel choice.
    from job import spec as spec_module
    from job.cluster import cluster_from_env
    from job.train import train

    spec = spec_module.load(spec_path)
    result = train(spec, cluster=cluster_from_env({}), run_id=run_id, env={})
    with open(result.run_dir / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {"rates": [float(row["images_per_second"]) for row in rows[1:]],
            "precision": result.metrics["precision"]}


def fit_rates(spec_path: Path) -> dict:
    """The reference's images per second of each epoch after the first, and FLOPs per image."""
    import keras

    from job import data
    from job import spec as spec_module
    from job.model import build_model

    spec = spec_module.load(spec_path)
    splits = data.make_splits(spec.data, seed=spec.train.seed)
    decoded = data.decode(splits.train, spec=spec.data, cache_dir=None,
                          workers=spec.data.decode_workers)
    keras.utils.set_random_seed(spec.train.seed)
    model = build_model(input_shape=decoded.pixels.shape[1:],
                        num_classes=len(splits.class_names), model=spec.model,
                        seed=spec.train.seed)
    model.compile(optimizer=keras.optimizers.Adam(spec.train.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    clock = _EpochClock(keras)
    model.fit(decoded.pixels, decoded.labels, batch_size=spec.train.global_batch_size,
              epochs=spec.train.epochs, shuffle=True, verbose=0, callbacks=[clock.callback])
    return {"rates": [len(decoded.labels) / seconds for seconds in clock.seconds[1:]],
            "flops_per_image": training_flops_per_image(model)}


class _EpochClock:
    """A Keras callback's worth of state: the wall time of every epoch."""

    def __init__(self, keras) -> None:
        self.seconds: list[float] = []
        self.started = 0.0
        clock = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                clock.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                clock.seconds.append(time.perf_counter() - clock.started)

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


def matmul_gflops(*, size: int, repetitions: int, dtype: str) -> dict:
    """GFLOP/s of each timed n x n ``dtype`` matmul after one warm-up (2 n³ FLOPs each)."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((size, size), seed=1), dtype)
    b = tf.cast(tf.random.normal((size, size), seed=2), dtype)

    def product():
        # Reducing to one number forces the matmul to finish without copying n² values.
        return float(tf.reduce_sum(tf.cast(tf.matmul(a, b), "float32")))

    product()
    return {"gflops": [2 * size**3 / 1e9 / timed(product)[1] for _ in range(repetitions)]}


def main(argv: Sequence[str] | None = None) -> int:
    """One side of P3 in this process; writes its JSON to ``--result``.

    The trainjob side also times the matmul peak right after training, so both
    parts of P6 see the machine in the same state.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.step")
    parser.add_argument("side", choices=("trainjob", "fit"))
    parser.add_argument("spec", type=Path)
    parser.add_argument("--run-id", required=True)
    # 0: the trainjob side measures no peak (the float32 comparison side).
    parser.add_argument("--matmul-size", type=int, default=0)
    parser.add_argument("--matmul-repetitions", type=int, default=0)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.side == "fit":
        result = fit_rates(args.spec)
    else:
        result = trainjob_rates(args.spec, run_id=args.run_id)
        if args.matmul_size:
            result.update(matmul_gflops(size=args.matmul_size,
                                        repetitions=args.matmul_repetitions,
                                        dtype=matmul_dtype(result["precision"])))
    write_json(args.result, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
