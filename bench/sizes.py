"""How big a benchmark run is: data sizes, epochs and repetitions, for full and quick runs.

Owns: the two presets, ``FULL`` (what BENCHMARKS.md reports; its rounds are the
most a run makes, and ``bench.budget`` lowers them where a slower machine would take
the suite past 10 minutes) and ``QUICK`` (tiny, one repetition: proves the code runs,
numbers mean nothing), and which field holds each figure group's rounds.
Never touches: files, processes, TensorFlow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ROUNDS_FIELDS = {"pipeline": "repetitions", "predict": "predict_repetitions",
                 "step": "repetitions", "end_to_end": "repetitions",
                 "scale": "scale_repetitions", "demo": "demo_rounds"}
"""The field holding each figure group's rounds (P1/P2, P3/P6 and P4/M1/P5 share one)."""


@dataclass(frozen=True)
class Sizes:
    """One preset. Every figure reads its sizes from here and nowhere else."""

    name: str
    """"full" or "quick": recorded in results.json so quick numbers are never mistaken."""
    photos: int = 2000
    """JPEGs in the photo set for P1/P2: the issue asks for at least 2,000."""
    photo_size: tuple[int, int] = (512, 384)
    """(width, height) of each photo: about a small camera image, as the issue asks."""
    decode_size: tuple[int, int] = (128, 128)
    """(height, width) the photos are decoded to for P1/P2."""
    shapes_per_class: int = 300
    """Sample images per class for the training figures: 960 train and 240 validation
    images, 15 steps an epoch, so batch norm settles and accuracy rises above chance."""
    train_image_size: int = 32
    """Pixels per side for the training figures, as the project's tests train: twelve
    training processes then fit in the time budget on 2 cores."""
    batch_size: int = 64
    """Global batch for every figure: trainjob's default."""
    step_epochs: int = 5
    """P3 epochs per process: the first is a warm-up (it traces the step), the median of
    the other four is that process's figure. Each epoch is only 15 steps: with two, one
    slow epoch (a busy moment of the machine) decided a round."""
    run_epochs: int = 5
    """P4/P5/M1 epochs per run: enough to learn above chance, and for a cache across
    epochs to pay off."""
    repetitions: int = 3
    """Timed repetitions (rounds) per figure; the figure is their median, and the table
    shows the lowest and highest of the rounds' own ratios beside it."""
    predict_repetitions: int = 2
    """Rounds of P7: each pass predicts 2,000 photos at 128x128 (about 13 s of compute on 2
    cores, the same model on both sides), so three rounds were a quarter of the suite."""
    scale_repetitions: int = 2
    """Rounds of M2: peak memory barely moves between runs (its rounds stayed within
    0.99-1.07x in every run measured), and each round is two training processes."""
    warmups: int = 0
    """Untimed rounds before the repetitions. None: every side runs in a fresh process
    (it traces its own first call whatever ran before), and the suite's one warm-up
    (``measure.warm_up``) reads the data and imports the libraries before the first
    figure. A round per figure cost a quarter of those figures' time."""
    matmul_size: int = 2048
    """n of the n x n float32 matmul that measures the machine's peak FLOP/s (P6)."""
    matmul_repetitions: int = 5
    """Timed matmuls for the peak; each takes a fraction of a second."""
    child_timeout_seconds: float = 600.0
    """A benchmark child still running after this is stopped and reported as a failure."""
    scale_cache_mb: int = 2
    """data.cache_memory_mb of M2's runs, MiB: small, so the run on 8 times as much decoded
    data (16 MiB: 1,368 images at 64 px) trains its one epoch in seconds."""
    scale_image_size: int = 64
    """Pixels per side of M2's images: the spec's default, 12 KiB decoded each."""
    demo_rounds: int = 2
    """Runs of the demo for D1's figure. A run takes the demo's own time (about 40 s on 2
    cores, however fast the machine: it sizes its training to 30 s), so each round costs
    what it costs a newcomer; two give a spread, and D1 sits far from its target."""
    rounds_fixed: bool = False
    """True: ``--repetitions`` set every figure's rounds, and the budget planner
    (``bench.budget``) runs them as asked. False: it may lower a group's rounds, to two at
    the least, so the suite fits its budget on a slower machine."""
    demo_float32_side: bool = False
    """True: D1 also runs the demo once with bfloat16 hidden from trainjob, where the CPU has
    it and ``--precision auto`` was asked for. Off: that run cost 40 s of an auto run's 622 s
    on this project's 2-core machine, past the 10 minutes; ``--precision float32`` measures
    the float32 demo as its D1 figure, in two rounds."""


    def rounds(self, group: str) -> int:
        """The rounds this preset gives figure group ``group`` (see ``ROUNDS_FIELDS``)."""
        return getattr(self, ROUNDS_FIELDS[group])

    def with_rounds(self, group: str, rounds: int) -> Sizes:
        """This preset with ``rounds`` for ``group``: what that group's measurement reads.

        Example:
            >>> FULL.with_rounds("step", 2).repetitions, FULL.with_rounds("demo", 1).demo_rounds
            (2, 1)
        """
        return dataclasses.replace(self, **{ROUNDS_FIELDS[group]: rounds})


FULL = Sizes(name="full")
QUICK = Sizes(name="quick", photos=64, shapes_per_class=10, train_image_size=32, batch_size=8,
              step_epochs=2, run_epochs=2, repetitions=1, warmups=0, matmul_size=256,
              matmul_repetitions=1, child_timeout_seconds=180.0, demo_rounds=1,
              predict_repetitions=1, scale_repetitions=1,
              demo_float32_side=False, scale_cache_mb=1)
"""Smoke mode: every code path once on tiny data, about a minute."""
