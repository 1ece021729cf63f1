"""The suite's time budget: a short calibration, each group's cost, and the rounds that fit.

Owns: the calibration (``python -m bench.budget``, run as the suite's warm-up child:
it imports what the measured children use, then times about two seconds of Keras's own
float32 ``train_on_batch`` on the bench's small CNN, which no change to trainjob's loop
moves), the reference costs of every figure group
as measured on this project's 2-core machine, and the plan: how many rounds each
group runs so that the whole suite fits ``BUDGET_SECONDS`` here, chosen before the
first group and chosen again before each later one from the time spent. Every
function but the calibration is pure.
Never touches: how a figure is measured (the groups read their rounds from
``bench.sizes.Sizes``), processes (``bench.measure`` starts this one), TensorFlow
in the suite's own process (only the calibration child imports it).

Example:
    >>> costs = reference_costs(mode="full", bfloat16=False)
    >>> plan = make_plan(costs, most={"step": 3, "end_to_end": 3}, slowness=2.0,
    ...                  spent_seconds=10.0)
    >>> plan.rounds, round(plan.estimated_seconds)
    ({'step': 3, 'end_to_end': 2}, 468)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUDGET_SECONDS = 540.0
"""Seconds the plan fits the whole suite into: the issue's 10 minutes less 60 s for what
an estimate cannot see (the groups' times moved by 3-7% between three idle runs here;
after the end-to-end group, the last one whose rounds can still be lowered, about 130 s
of scale and demo remain)."""
MIN_ROUNDS = 2
"""Fewest rounds the planner leaves a figure: two rounds still give every ratio a spread.
A preset with fewer (``--quick``: one) keeps its own."""
REFERENCE_IMAGES_PER_SECOND = 578.0
"""The calibration's figure on this project's 2-core machine (AMD EPYC, AVX-512 with
bfloat16; TensorFlow 2.21, Keras 3.15, oneDNN kernels), where the group costs below were
measured: Keras's float32 step of the small CNN at 32 px, batch 64. Measured at b847d0a
in three processes on the idle machine: 567, 575 and 592 images/s (earlier, under other
work, 609-645 in the least disturbed processes and 336-510 in the others: Keras's step,
like ``model.fit`` in P3, runs at one of two speeds from process to process).
Re-measure it with ``python -m bench.budget`` on an idle machine when TensorFlow, Keras or
the small CNN change, or every estimate moves with it."""
CALIBRATION_SECONDS = 2.0
"""Seconds of timed training steps: about 20 steps of 64 images here. Longer would catch
less of a moment's load; the whole calibration costs about 3 s beside the warm-up's
imports."""
CALIBRATION_WARMUP_CALLS = 3
"""Untimed steps first: the first traces the step, and the next one or two still ran
slower (kernel set-up, allocation), as ``job.demo``'s calibration found."""
CALIBRATION_MIN_CALLS = 5
"""Timed steps even on a machine slower than CALIBRATION_SECONDS allows for."""
CUT_ORDER = ("demo", "scale", "predict", "pipeline", "end_to_end", "step")
"""Where rounds are cut first. D1, M2 and P7 already run two (BENCHMARKS.md: their rounds
barely move); then P1/P2, whose rounds the docs do not ask three of; then P4/M1/P5, the
dearest round; P3/P6 last, since ``model.fit``'s rate moves most from process to process."""
STEADY_DEMO_SECONDS = 30.0
"""Seconds of each demo round that no machine changes: the demo sizes its training to
``job.demo.TARGET_SECONDS`` wherever its fewest epochs fit."""


@dataclass(frozen=True)
class Cost:
    """One figure group's time on the reference machine (``REFERENCE_IMAGES_PER_SECOND``)."""

    round_seconds: float
    """Seconds of one round there, every side once; scaled by the machine's slowness."""
    fixed_seconds: float = 0.0
    """Seconds the group spends once, whatever its rounds (P7's untrained model, M2's
    data and runners); scaled too."""
    steady_round_seconds: float = 0.0
    """Seconds of each round that the machine does not change (the demo's sized training)."""

    def seconds(self, rounds: int, *, slowness: float) -> float:
        """Estimated seconds of ``rounds`` rounds on a machine ``slowness`` times slower.

        Example:
            >>> Cost(10.0, fixed_seconds=2.0, steady_round_seconds=1.0).seconds(3, slowness=2)
            67.0
        """
        return ((self.fixed_seconds + rounds * self.round_seconds) * slowness
                + rounds * self.steady_round_seconds)


FLOAT32_COSTS = {
    "pipeline": Cost(17.0),
    "predict": Cost(37.0, fixed_seconds=4.5),
    "step": Cost(32.0),
    "end_to_end": Cost(45.5),
    "scale": Cost(19.5, fixed_seconds=6.0),
    "demo": Cost(7.5, steady_round_seconds=STEADY_DEMO_SECONDS),
}
"""Full runs with trainjob in float32, on the reference machine: three idle runs at
cbd739d (451, 472 and 490 s; BENCHMARKS.md), each group's time divided by its rounds in
that run, the middle of the three; the once-only parts aside as each group's child logs
showed them (P7's model 4.4 s; M2's set-up about 6 s; 37-38 s a demo, 30 of them sized
training)."""
BFLOAT16_COSTS = {**FLOAT32_COSTS, "step": Cost(53.0), "end_to_end": Cost(49.0)}
"""``--precision auto`` on a CPU with bfloat16: P3 runs a third side (trainjob in float32),
and the end-to-end runs train faster (the one idle auto run: 160 and 147 s over 3 rounds)."""
QUICK_COSTS = {
    "pipeline": Cost(11.0),
    "predict": Cost(10.0, fixed_seconds=4.0),
    "step": Cost(13.0),
    "end_to_end": Cost(25.0),
    "scale": Cost(24.0),
    "demo": Cost(8.0, steady_round_seconds=STEADY_DEMO_SECONDS),
}
"""``--quick``: one round of tiny data, where start-up dominates, so precision changes
little. From one float32 smoke run at 6b359a8 (166 s, while other work used 43% of the
CPU time): each group's time over that run's calibration (1.09x the reference's time),
M2's from its CPU-seconds (its wall time, 41 s, caught most of the other work)."""


@dataclass(frozen=True)
class Plan:
    """How many rounds each group runs, and why."""

    rounds: dict[str, int]
    """Each group's rounds, by name, in the order they run."""
    most: dict[str, int]
    """Each group's rounds before any cut: the preset's, or ``--repetitions``."""
    estimated_seconds: float
    """The whole suite, as last estimated: the time spent so far and the rest's estimate."""
    slowness: float
    """How many times the reference machine's time a group takes here, as last estimated."""
    budget_seconds: float = BUDGET_SECONDS
    fixed: bool = False
    """True: ``--repetitions`` set the rounds, and the plan leaves them."""
    events: tuple[str, ...] = field(default=())
    """Each cut made while running, one line each."""

    @property
    def cut(self) -> dict[str, int]:
        """The groups running fewer rounds than ``most``, with the rounds they run."""
        return {name: count for name, count in self.rounds.items() if count < self.most[name]}

    @property
    def over_budget(self) -> bool:
        return self.estimated_seconds > self.budget_seconds


def reference_costs(*, mode: str, bfloat16: bool) -> dict[str, Cost]:
    """The group costs for preset ``mode`` ("full" or "quick"); ``bfloat16``: trainjob's
    sides compute in bfloat16 (``--precision auto`` on a CPU that has it)."""
    if mode == "quick":
        return dict(QUICK_COSTS)
    return dict(BFLOAT16_COSTS if bfloat16 else FLOAT32_COSTS)


def slowness_of(images_per_second: float) -> float:
    """How many times the reference machine's time this machine takes, from its calibration.

    Example:
        >>> slowness_of(REFERENCE_IMAGES_PER_SECOND / 2)
        2.0
    """
    if not images_per_second > 0:
        raise ValueError(f"images_per_second={images_per_second}; expected a positive rate.")
    return REFERENCE_IMAGES_PER_SECOND / images_per_second


def estimate(costs: Mapping[str, Cost], rounds: Mapping[str, int], *,
             slowness: float) -> float:
    """Seconds the groups in ``rounds`` take together, on a machine ``slowness`` times slower."""
    return sum(costs[name].seconds(count, slowness=slowness) for name, count in rounds.items())


def choose_rounds(costs: Mapping[str, Cost], *, most: Mapping[str, int],
                  budget_seconds: float, slowness: float) -> dict[str, int]:
    """The most rounds, up to ``most``, whose estimate fits ``budget_seconds`` (pure).

    Cuts a round at a time in ``CUT_ORDER``, each group down to ``MIN_ROUNDS`` (or its own
    fewer) before the next; then gives back, the dearest-to-cut group first, every round
    that the later cuts made room for. If even the fewest do not fit, returns the fewest.

    Example:
        >>> choose_rounds({"pipeline": Cost(10.0), "step": Cost(50.0)},
        ...               most={"pipeline": 3, "step": 3}, budget_seconds=140, slowness=1.0)
        {'pipeline': 3, 'step': 2}
    """
    rounds = dict(most)
    order = [name for name in CUT_ORDER if name in rounds]
    for name in order:
        while (rounds[name] > min(MIN_ROUNDS, most[name])
               and estimate(costs, rounds, slowness=slowness) > budget_seconds):
            rounds[name] -= 1
    for name in reversed(order):
        while (rounds[name] < most[name]
               and estimate(costs, {**rounds, name: rounds[name] + 1},
                            slowness=slowness) <= budget_seconds):
            rounds[name] += 1
    return rounds


def make_plan(costs: Mapping[str, Cost], *, most: Mapping[str, int], slowness: float,
              spent_seconds: float, fixed: bool = False) -> Plan:
    """The plan before the first group: ``most`` rounds cut to fit what is left of the
    budget after ``spent_seconds`` (data and warm-up); ``fixed`` keeps ``most``."""
    rounds = dict(most) if fixed else choose_rounds(
        costs, most=most, budget_seconds=BUDGET_SECONDS - spent_seconds, slowness=slowness)
    return Plan(rounds=rounds, most=dict(most), slowness=slowness, fixed=fixed,
                estimated_seconds=spent_seconds + estimate(costs, rounds, slowness=slowness))


def replan(plan: Plan, costs: Mapping[str, Cost], *, spent_seconds: float,
           done: Mapping[str, float]) -> Plan:
    """Before the next group: the deadline. ``done`` holds each finished group's seconds.

    The slowness is corrected by how the finished groups' time compared with their
    estimate, and the rest's rounds are chosen again against what is left of the budget:
    lowered (never below ``MIN_ROUNDS``) when the time spent says so, or given back (never
    above ``most``) when the calibration caught a busy moment and the groups ran faster
    than it said. An event says what changed.

    Example:
        >>> costs = {"pipeline": Cost(10.0), "step": Cost(50.0)}
        >>> plan = make_plan(costs, most={"pipeline": 3, "step": 3}, slowness=1.0,
        ...                  spent_seconds=0.0)
        >>> replan(plan, costs, spent_seconds=100.0, done={"pipeline": 100.0}).rounds
        {'pipeline': 3, 'step': 2}
    """
    rest = {name: count for name, count in plan.rounds.items() if name not in done}
    expected = estimate(costs, {name: plan.rounds[name] for name in done},
                        slowness=plan.slowness)
    slowness = plan.slowness * (sum(done.values()) / expected if expected > 0 else 1.0)
    if plan.fixed or not rest:
        return dataclasses.replace(
            plan, estimated_seconds=spent_seconds + estimate(costs, rest, slowness=slowness))
    lowered = choose_rounds(costs, most={name: plan.most[name] for name in rest},
                            slowness=slowness,
                            budget_seconds=plan.budget_seconds - spent_seconds)
    estimated = spent_seconds + estimate(costs, lowered, slowness=slowness)
    events = plan.events
    if lowered != rest:
        changes = ", ".join(f"{name} {rest[name]} -> {count}"
                            for name, count in lowered.items() if count != rest[name])
        events += (f"{spent_seconds:.0f} s spent, the groups so far at {slowness:.2f}x the "
                   f"reference machine's time, about {estimated:.0f} s in all: rounds "
                   f"{changes}",)
    return dataclasses.replace(plan, rounds={**plan.rounds, **lowered}, slowness=slowness,
                               estimated_seconds=estimated, events=events)


def plan_line(plan: Plan, calibration: Mapping[str, Any]) -> str:
    """The plan in one line: the calibration, the estimate against the budget, the rounds.

    Example:
        >>> plan = Plan(rounds={"step": 2}, most={"step": 3}, estimated_seconds=500.0,
        ...             slowness=1.25)
        >>> print(plan_line(plan, {"images_per_second": 512.0, "precision": "float32"}))
        ... # doctest: +NORMALIZE_WHITESPACE
        plan: calibration 512 images/s (float32 step; the reference machine 620, so 1.25x
        its time); about 500 s of a 540 s budget; rounds: step 2 (cut from 3)
    """
    rounds = ", ".join(f"{name} {count}" + (f" (cut from {plan.most[name]})"
                                            if count < plan.most[name] else "")
                       for name, count in plan.rounds.items())
    why = " set by --repetitions" if plan.fixed else ""
    return (f"plan: calibration {calibration['images_per_second']:.0f} images/s "
            f"({calibration['precision']} step; the reference machine "
            f"{REFERENCE_IMAGES_PER_SECOND:.0f}, so {plan.slowness:.2f}x its time); about "
            f"{plan.estimated_seconds:.0f} s of a {plan.budget_seconds:.0f} s budget; "
            f"rounds{why}: {rounds}")


def over_budget_line(plan: Plan) -> str | None:
    """One line when even the fewest rounds do not fit the budget; None when they do."""
    if plan.fixed or not plan.over_budget:
        return None
    return (f"plan: even {MIN_ROUNDS} rounds of every figure take about "
            f"{plan.estimated_seconds:.0f} s here, over the {plan.budget_seconds:.0f} s "
            f"budget; running {MIN_ROUNDS}")


def plan_json(plan: Plan, calibration: Mapping[str, Any]) -> dict[str, Any]:
    """What results.json keeps of the plan (``plan``): ``speed_vs_reference`` is the
    calibration's, ``slowness`` and ``estimated_seconds`` the last estimate's."""
    return {"calibration": dict(calibration),
            "reference_images_per_second": REFERENCE_IMAGES_PER_SECOND,
            "speed_vs_reference": (calibration["images_per_second"]
                                   / REFERENCE_IMAGES_PER_SECOND),
            "slowness": plan.slowness,
            "estimated_seconds": plan.estimated_seconds,
            "budget_seconds": plan.budget_seconds, "rounds": dict(plan.rounds),
            "most_rounds": dict(plan.most), "cut": plan.cut, "fixed": plan.fixed,
            "over_budget": plan.over_budget, "events": list(plan.events)}


# --- in the calibration child --------------------------------------------------------


def calibrate(*, seconds: float = CALIBRATION_SECONDS) -> dict[str, Any]:
    """Time Keras's own training step of the bench's small CNN here: images per second.

    Plain ``train_on_batch`` on ``job.model.build_model`` at the training figures' size
    and batch, in float32 whatever the run's precision: what the references run, and a
    step that trainjob's own loop (whose speed is what the suite measures) never changes;
    the costs of bfloat16 runs are their own (``BFLOAT16_COSTS``).
    """
    import keras
    import numpy as np

    from bench.sizes import FULL
    from job import sample_data
    from job.model import build_model

    side, batch, classes = FULL.train_image_size, FULL.batch_size, len(sample_data.CLASSES)
    model = build_model(input_shape=(side, side, 3), num_classes=classes, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (batch, side, side, 3)).astype("float32")
    labels = rng.integers(0, classes, batch)
    for _ in range(CALIBRATION_WARMUP_CALLS):  # The first traces; the next run slower.
        model.train_on_batch(pixels, labels)
    calls, started = 0, time.perf_counter()
    while calls < CALIBRATION_MIN_CALLS or time.perf_counter() - started < seconds:
        model.train_on_batch(pixels, labels)
        calls += 1
    elapsed = time.perf_counter() - started
    return {"images_per_second": calls * batch / elapsed, "precision": "float32",
            "steps": calls, "seconds": elapsed, "image_size": side, "batch_size": batch}


def main(argv: list[str] | None = None) -> int:
    """The warm-up child: import what the measured children use, then calibrate."""
    parser = argparse.ArgumentParser(prog="python -m bench.budget",
                                     description="Time this machine against the reference.")
    parser.add_argument("--result", type=Path, help="write the calibration here as JSON")
    args = parser.parse_args(argv)
    from job import kernels

    kernels.apply()  # Before TensorFlow loads, as every measured trainjob side does.
    from bench.measure import WARM_UP_MODULES

    for module in WARM_UP_MODULES:
        importlib.import_module(module)
    result = calibrate()
    text = json.dumps(result, indent=2)
    if args.result:
        args.result.write_text(text + "\n")
    else:
        print(text)
        print(f"slowness against the reference machine: "
              f"{slowness_of(result['images_per_second']):.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
