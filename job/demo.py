"""``trainjob demo``: draw the sample data, size a run to this machine, train it locally.

Owns: the demo's folder layout (``<out>/data``, ``<out>/shapes.yaml``,
``<out>/models``), the recipe in its spec, the few seconds of calibration that
choose its epochs and estimate its time, and the rule that a spec already in
``<out>`` is trained as it is, never overwritten.
Never touches: anything the real ``trainjob train`` path does not; the demo is
that path on bundled data. Calibration times the demo's model on random pixels
before training starts, and leaves nothing behind for training to use.

A first run draws the data (about a second), calibrates (a few seconds), writes
the spec with a header that records a sha256 of what the demo wrote, says what
it will train and about how long that takes here, then trains. A rerun reuses
the data when it is complete and trains the spec that is there: the demo's own
from an earlier run, or one the user edited, which it says in one line.

Example:
    >>> run_demo(out_dir=Path("demo"))   # doctest: +SKIP
    training 4 classes × 800 images for 6 epochs, about 31 s here
      calibrated: ...
    0
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from job import sample_data
from job import spec as spec_module
from job.atomic import replacing
from job.cluster import INDEX_ENV, TF_CONFIG_ENV, WORKERS_ENV
from job.spec import Spec

SPEC_FILE = "shapes.yaml"
"""The demo's spec, in the demo folder."""
IMAGES_PER_CLASS = 800
"""Images drawn per class: 3,200 in all, 2,560 for training after the validation split."""
TEST_PER_CLASS = 50
"""Test images per class: 200, evaluated once at the end."""
IMAGE_SIZE = 32
"""Pixels per side. Smaller images cost less per image but teach the model less per
image: with this recipe (float32, seed 1234) 24 px reached 0.953 validation accuracy
after 5 epochs and 16 px 0.870 after 6, where 32 px reached 0.991 after 5."""
VAL_SPLIT = 0.2
"""Share of each class held out for validation: 640 images, a standard error of about
0.006 at 0.98 accuracy."""
MIN_EPOCHS = 5
"""The fewest epochs a machine gets, however slow. Over nine seeds (float32) 5 epochs
reached 0.959-0.995 validation accuracy; 4 epochs 0.952-0.973, too close to 0.95."""
MAX_EPOCHS = 8
"""The most a fast machine gets: later epochs move validation accuracy by a point or two
either way (0.96-0.99), so more would only make the demo longer."""
TARGET_SECONDS = 30.0
"""Seconds of training (from loading the spec to the saved model) the epochs are chosen
to fit. With the rest (the set-up from a warm package cache, TensorFlow's import, drawing
the data and the calibration), the demo stays within two minutes wherever MIN_EPOCHS fit."""
CALIBRATION_SECONDS = 1.0
"""Seconds of timed training steps: enough for a steady images-per-second figure, short
enough to go unnoticed."""
CALIBRATION_MIN_CALLS = 2
"""Timed calls (of ``train.steps_per_call`` steps) even on a machine slower than
CALIBRATION_SECONDS allows for."""
WARMUP_CALLS = 2
"""Untimed calls after the traced first one: measured on 2 cores, the next one or two
calls still ran at half the steady speed (kernel set-up, allocation), as an epoch's
first steps do."""
EVAL_SPEEDUP = 3.0
"""Images evaluated per image trained in the same time: a forward pass without the
backward one costs about a third."""
START_COSTS = 5.0
"""The run's fixed costs (decoding the images, building the model, tracing the training
and evaluation steps and their slow first calls, the test, the export with its checks and
the report) in units of the calibration's own start (``Speed.start_seconds``), which
traces and warms up the same step: measured 2.5 (float32) and 5.0 (bfloat16) on 2 busy
cores. The higher one: an estimate that runs late costs the reader's trust."""
HEADER = ("# Written by `trainjob demo` (sha256 {digest}); "
          "edit it and the demo trains your version.\n")
"""First line of the demo's spec; the digest covers everything after it."""
_HEADER_PATTERN = re.compile(r"# Written by `trainjob demo` \(sha256 ([0-9a-f]{64})\)")


def recipe(*, epochs: int) -> dict[str, Any]:
    """The demo's spec as a dict (pure); ``epochs`` comes from the calibration.

    RMSprop at 0.001, batch 32 and no dropout: measured on 2 cores in float32, it
    passed 0.95 validation accuracy after 4 epochs in each of nine seeds. The demo's earlier recipe
    (Adam at 0.002, batch 64, dropout 0.2) stayed below 0.52 for 5 epochs and
    needed 8 to pass 0.95. Each change helped alone (after 6 epochs: dropout 0,
    0.938; RMSprop, 0.942; against 0.814); batch 32 gives twice the steps for the
    same images (after 5 epochs: 0.991 against 0.950 with batch 64).
    """
    return {
        "name": "shapes",
        "data": {"train_dir": "data/train", "test_dir": "data/test", "val_split": VAL_SPLIT,
                 "image_size": [IMAGE_SIZE, IMAGE_SIZE]},
        "model": {"backbone": "small_cnn", "dropout": 0.0,
                  "augment": {"flip": "horizontal", "rotation": 0.0, "zoom": 0.0}},
        "train": {"epochs": epochs, "global_batch_size": 32, "optimizer": "rmsprop",
                  "learning_rate": 0.001, "log_every_steps": 20},
        "output": {"dir": "models", "checkpoint_every_steps": 100},
    }


@dataclass(frozen=True)
class Prepared:
    """The demo folder, ready to train."""

    spec_path: Path
    plan: Plan | None
    """What the calibration chose for a spec written just now; None for a spec already there."""


def run_demo(*, out_dir: Path) -> int:
    """Draw the data, write the spec unless one is there, say what happens, train it."""
    from job.train import run_worker

    started = time.monotonic()
    env = _single_worker_environment()
    prepared = write_demo(out_dir)
    trained_from = time.monotonic()
    spec = spec_module.load(prepared.spec_path)
    code = run_worker(spec, run_id=spec.name, env=env)
    now = time.monotonic()
    estimate = (f", estimated {prepared.plan.seconds:.0f} s" if prepared.plan is not None
                else "")
    print(f"demo: done in {now - started:.0f} s; training took {now - trained_from:.0f} s"
          f"{estimate}", flush=True)
    return code


def write_demo(out_dir: Path, *,
               calibrate: Callable[[Path], Plan] | None = None) -> Prepared:
    """Draw the data, and write the spec unless one is there; say which, in one line.

    Args:
        out_dir: the demo folder.
        calibrate: times this machine and returns the plan for a new spec
            (None: ``calibrate_plan``, a few seconds of real training steps);
            called only when there is no spec yet.
    """
    out_dir = Path(out_dir)
    draw_data(out_dir)
    spec_path = out_dir / SPEC_FILE
    state = spec_state(spec_path)
    if state == "demo":
        print(f"{spec_path}: the demo's spec from an earlier run, trained as it is",
              flush=True)
        return Prepared(spec_path, plan=None)
    if state == "edited":
        print(f"{spec_path}: not the spec the demo wrote (edited, or from an older trainjob): "
              "trained as it is; delete it to get the demo's own", flush=True)
        return Prepared(spec_path, plan=None)
    plan = (calibrate or calibrate_plan)(out_dir)
    write_spec(spec_path, recipe(epochs=plan.epochs))
    print(plan.describe(), flush=True)
    return Prepared(spec_path, plan=plan)


def _single_worker_environment() -> dict[str, str]:
    """This process's environment as one worker on this machine, quiet; a copy of it.

    The demo is one worker whatever the shell's cluster variables say. They go from
    ``os.environ`` itself, as does the C++ start-up chatter: the calibration imports
    TensorFlow before training would, and TensorFlow reads both at import.
    """
    for name in (TF_CONFIG_ENV, INDEX_ENV, WORKERS_ENV):
        os.environ.pop(name, None)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return dict(os.environ)


def draw_data(out_dir: Path) -> Path:
    """The sample data in ``out_dir/data``: drawn once, reused while it is complete."""
    return sample_data.generate(Path(out_dir) / "data", images_per_class=IMAGES_PER_CLASS,
                                test_per_class=TEST_PER_CLASS, image_size=IMAGE_SIZE)


# --- the spec file ------------------------------------------------------------------


def render_spec(spec: dict[str, Any]) -> str:
    """The spec file's text: the header with the body's sha256, then the body (pure)."""
    body = yaml.safe_dump(spec, sort_keys=False)
    return HEADER.format(digest=hashlib.sha256(body.encode()).hexdigest()) + body


def spec_state(path: Path) -> str:
    """``missing``, ``demo`` (exactly as the demo wrote it) or ``edited`` (anything else).

    A file without the demo's header, or whose body no longer matches the digest
    in it, is the user's: the demo never writes over it.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return "missing"
    except (OSError, UnicodeDecodeError):
        return "edited"  # Not ours to judge: loading it will say what is wrong.
    header, _, body = text.partition("\n")
    match = _HEADER_PATTERN.fullmatch(header.split(";")[0])
    if match and hashlib.sha256(body.encode()).hexdigest() == match.group(1):
        return "demo"
    return "edited"


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    """Write the demo's spec atomically: a reader never sees half of it."""
    with replacing(path) as tmp:
        tmp.write_text(render_spec(spec), encoding="utf-8")
    return Path(path)


# --- calibration --------------------------------------------------------------------


@dataclass(frozen=True)
class Speed:
    """How fast this machine trains the demo's model, measured just now."""

    images_per_second: float
    """Training images per second, once the steps run at their steady speed."""
    start_seconds: float
    """What starting cost beyond those steps: tracing the step, TensorFlow's one-time
    set-up, the slower first calls. Training pays it too, in its first epoch."""
    precision: str
    """The dtype policy the run will train in, and the calibration did."""


@dataclass(frozen=True)
class Plan:
    """What the demo will train and how long it should take here."""

    epochs: int
    seconds: float
    speed: Speed

    def describe(self) -> str:
        """Two lines, each within an 80-column terminal."""
        return (f"training {len(sample_data.CLASSES)} classes × {IMAGES_PER_CLASS} images for "
                f"{self.epochs} epochs, about {self.seconds:.0f} s here\n  calibrated: "
                f"{self.speed.images_per_second:.0f} images/s in {self.speed.precision}")


def estimate_seconds(speed: Speed, *, epochs: int) -> float:
    """Seconds from now to the exported model for ``epochs`` of the demo (pure).

    Example:
        >>> speed = Speed(640.0, start_seconds=0.5, precision="float32")
        >>> round(estimate_seconds(speed, epochs=5))
        24
    """
    num_classes = len(sample_data.CLASSES)
    num_val = round(IMAGES_PER_CLASS * VAL_SPLIT) * num_classes
    num_train = IMAGES_PER_CLASS * num_classes - num_val
    evaluated = epochs * num_val + TEST_PER_CLASS * num_classes
    images = epochs * num_train + evaluated / EVAL_SPEEDUP
    return START_COSTS * speed.start_seconds + images / speed.images_per_second


def choose_epochs(speed: Speed, *, target_seconds: float = TARGET_SECONDS) -> Plan:
    """The most epochs between MIN_EPOCHS and MAX_EPOCHS that fit ``target_seconds`` (pure).

    A machine too slow for even MIN_EPOCHS gets MIN_EPOCHS, and an honest estimate.

    Example:
        >>> choose_epochs(Speed(640.0, start_seconds=0.5, precision="float32")).epochs
        6
    """
    epochs = MIN_EPOCHS
    while (epochs < MAX_EPOCHS
           and estimate_seconds(speed, epochs=epochs + 1) <= target_seconds):
        epochs += 1
    return Plan(epochs=epochs, seconds=estimate_seconds(speed, epochs=epochs), speed=speed)


def calibrate_plan(out_dir: Path) -> Plan:
    """Time the demo's model here and choose its epochs."""
    spec = spec_module.from_dict(recipe(epochs=MIN_EPOCHS), base_dir=Path(out_dir),
                                 source="the demo's recipe")
    return choose_epochs(measure_speed(spec, num_classes=len(sample_data.CLASSES)))


def measure_speed(spec: Spec, *, num_classes: int,
                  seconds: float = CALIBRATION_SECONDS) -> Speed:
    """Run ``spec``'s training steps on random pixels for a moment; how fast were they?

    The steps are training's own (``job.distributed``): the same strategy, dtype
    policy, model, optimizer and compiled step, so the figure is the one training
    will see. The policy is reset and the session cleared afterwards: training
    builds its own model from TensorFlow's initial state, as ``trainjob train`` does.
    """
    import keras
    import tensorflow as tf

    from job import distributed
    from job.cluster import cluster_from_env
    from job.model import build_model

    cluster = cluster_from_env({})
    strategy = distributed.make_strategy(cluster, timeout_seconds=60)
    choice = distributed.set_precision(strategy, spec, cluster=cluster)
    batch, per_call = spec.train.global_batch_size, spec.train.steps_per_call
    try:
        with strategy.scope():
            model = build_model(input_shape=spec.data.image_shape, num_classes=num_classes,
                                model=spec.model, seed=spec.train.seed)
            optimizer = distributed.make_optimizer(spec)
            optimizer.build(model.trainable_variables)
        steps = distributed.make_train_steps(
            strategy, model, optimizer,
            keras.losses.SparseCategoricalCrossentropy(reduction=None), global_batch=batch)
        batches = iter(strategy.distribute_datasets_from_function(
            lambda _: _random_batches(tf, spec, num_classes=num_classes)))
        first_started = time.perf_counter()
        steps(batches, 1, False)
        for _ in range(WARMUP_CALLS):
            steps(batches, per_call, False)
        calls, started = 0, time.perf_counter()
        while calls < CALIBRATION_MIN_CALLS or time.perf_counter() - started < seconds:
            steps(batches, per_call, False)
            calls += 1
        elapsed = time.perf_counter() - started
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()
    rate = calls * per_call * batch / elapsed
    warm_steps = 1 + WARMUP_CALLS * per_call
    return Speed(images_per_second=rate, precision=choice.policy,
                 start_seconds=max(0.0, started - first_started - warm_steps * batch / rate))


def _random_batches(tf, spec: Spec, *, num_classes: int):
    """One batch of random uint8 pixels and labels, repeated: what training's stream holds."""
    import numpy as np

    rng = np.random.default_rng(spec.train.seed)
    batch = spec.train.global_batch_size
    images = rng.integers(0, 256, (batch, *spec.data.image_shape), dtype=np.uint8)
    labels = rng.integers(0, num_classes, batch, dtype=np.int32)
    return tf.data.Dataset.from_tensors((images, labels)).repeat()
