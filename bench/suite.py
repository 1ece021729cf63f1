"""The benchmark command line and the order of a run.

Owns: ``python -m bench [--quick] [--only P1,P4] [--repetitions N]
[--precision auto|float32] [--out FILE] [--work-dir DIR]``:
choosing the sizes and the precision, generating the data, running the figure
groups in order with the rounds ``bench.budget`` plans from the warm-up's
calibration (and lowers before a group when the time spent says so), timing each
group (wall and CPU seconds), writing results.json and printing the table.
Progress goes to stderr (the plan first), the table to stdout, and the last
line on stderr says how long the whole suite took and how much CPU it used.
Missing a target is a result, not an error: the exit code is 0 unless a
measurement itself failed (1).
Never touches: how any figure is measured (``pipeline``, ``step``, ``end_to_end``,
``predict``, ``scale``, ``demo``), warmed up (``measure``) or planned (``budget``).

Example:
    >>> main(["--quick", "--out", "/tmp/results.json"])   # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import budget, datasets, end_to_end, machine, pipeline, scale, step
from bench import demo as demo_figure
from bench import predict as predict_figure
from bench.measure import BenchmarkFailed, warm_up
from bench.report import Figure, Timing, results, table, write_json
from bench.sizes import FULL, QUICK, Sizes
from bench.specs import PRECISIONS
from job import machine as job_machine
from job.errors import TrainjobError
from job.precision import CPU_BF16_FLAGS

BENCH_DIR = Path(__file__).resolve().parent
ORDER = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "M1", "M2", "D1")
"""Rows of the table, in the issue's order."""
GROUPS = {"pipeline": ("P1", "P2"), "step": ("P3", "P6"), "end_to_end": ("P4", "M1", "P5"),
          "predict": ("P7",), "scale": ("M2",), "demo": ("D1",)}
"""Figures measured together: asking for one runs its whole group."""
RUN_ORDER = ("pipeline", "predict", "step", "end_to_end", "scale", "demo")
"""The groups in the order they run: the two on the photo set share its generation."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Before anything imports TensorFlow.
    sizes = sizes_of(args)
    try:
        document = run(sizes, work_dir=args.work_dir, groups=_groups(args.only), log=_log(),
                       precision=args.precision)
    except (BenchmarkFailed, TrainjobError) as error:
        print(f"bench: error: {error}", file=sys.stderr, flush=True)
        return 1
    # A smoke run never overwrites the results of a full one.
    out = args.out or (args.work_dir / "results-quick.json" if args.quick
                       else BENCH_DIR / "results.json")
    write_json(out, document)
    print(table(document), end="", flush=True)
    print(f"bench: results in {out}", file=sys.stderr, flush=True)
    print(whole_suite_line(document), file=sys.stderr, flush=True)
    return 0


def run(sizes: Sizes, *, work_dir: Path, groups: Sequence[str],
        log: Callable[[str], None], precision: str = "auto") -> dict[str, Any]:
    """Measure the figures of ``groups`` and return the results document.

    ``precision`` "float32" makes every trainjob training side compute in float32
    (see ``bench.specs``); "auto" leaves trainjob's own choice. The warm-up child
    calibrates this machine, and ``bench.budget`` plans each group's rounds from it
    (``sizes.rounds_fixed``: as the sizes say), lowering them before a group if the
    time spent says the budget needs it.
    """
    started, clock = time.monotonic(), machine.cpu_clock()
    env = machine.environment()
    work_dir = Path(work_dir).resolve()  # Specs resolve relative paths against their folder.
    timings: dict[str, dict[str, float | None]] = {}
    timed = functools.partial(_timed, timings=timings, log=log)
    photos, shapes = _data(sizes, work_dir=work_dir, groups=groups, timed=timed)
    calibration = timed("warm-up", lambda: warm_up(
        {photos, shapes} - {work_dir}, module="bench.budget",
        log=work_dir / "logs" / "warm-up.log", timeout_seconds=sizes.child_timeout_seconds),
        "imports and data read once, untimed; this machine's speed calibrated")
    costs = budget.reference_costs(mode=sizes.name, bfloat16=_bfloat16(precision))
    plan = budget.make_plan(costs, most={name: sizes.rounds(name) for name in RUN_ORDER
                                         if name in groups},
                            slowness=budget.slowness_of(calibration["images_per_second"]),
                            spent_seconds=time.monotonic() - started, fixed=sizes.rounds_fixed)
    for line in (budget.over_budget_line(plan), budget.plan_line(plan, calibration)):
        if line:
            log(line)
    measures = _measures(photos, shapes, work_dir=work_dir, log=log, precision=precision)
    figures: list[Figure] = []
    for name in plan.rounds:
        plan = _replanned(plan, costs, started=started, timings=timings, log=log)
        group_sizes = sizes.with_rounds(name, plan.rounds[name])
        figures += timed(name, functools.partial(measures[name], group_sizes),
                         ", ".join(GROUPS[name]))
    figures.sort(key=lambda figure: ORDER.index(figure.id))
    env["load_average_after"] = machine.environment()["load_average"]
    timing = Timing(seconds=time.monotonic() - started, cpu_seconds=_cpu_seconds(),
                    others_cpu_share=machine.others_share(clock, machine.cpu_clock(),
                                                          cores=env["cpus_available"]),
                    groups=timings, plan=budget.plan_json(plan, calibration))
    return results(figures, mode=sizes.name, precision=precision, environment=env,
                   sizes=dataclasses.asdict(sizes), timing=timing)


def _data(sizes: Sizes, *, work_dir: Path, groups: Sequence[str],
          timed: Callable[..., Any]) -> tuple[Path, Path]:
    """The photo set and the sample shapes the groups need, generated once (the work
    folder itself stands for a set no group needs)."""
    photos = shapes = work_dir
    if {"pipeline", "predict"}.intersection(groups):
        photos = timed("photo set", lambda: datasets.photo_folder(work_dir, sizes),
                       f"{sizes.photos} JPEGs of {sizes.photo_size[0]}x{sizes.photo_size[1]}")
    if {"step", "end_to_end"}.intersection(groups):
        shapes = timed("sample shapes", lambda: datasets.shapes_folder(work_dir, sizes),
                       f"{sizes.shapes_per_class} per class, {sizes.train_image_size} px")
    return photos, shapes


def _measures(photos: Path, shapes: Path, *, work_dir: Path, log: Callable[[str], None],
              precision: str) -> dict[str, Callable[[Sizes], list[Figure]]]:
    """Each group's measurement, given the sizes (with its rounds) it runs at."""
    where = {"work_dir": work_dir, "log": log}
    return {
        "pipeline": lambda sizes: pipeline.measure(photos, sizes, **where),
        "predict": lambda sizes: predict_figure.measure(photos, sizes, **where),
        "step": lambda sizes: step.measure(shapes, sizes, precision=precision, **where),
        "end_to_end": lambda sizes: end_to_end.measure(shapes, sizes, precision=precision,
                                                       **where),
        "scale": lambda sizes: scale.measure(sizes, precision=precision, **where),
        "demo": lambda sizes: demo_figure.measure(sizes, precision=precision, **where),
    }


def _replanned(plan: budget.Plan, costs: dict[str, budget.Cost], *, started: float,
               timings: dict[str, dict[str, float | None]],
               log: Callable[[str], None]) -> budget.Plan:
    """The plan before the next group, its cut logged if the deadline made one."""
    done = {name: float(timings[name]["seconds"] or 0.0) for name in plan.rounds
            if name in timings}
    updated = budget.replan(plan, costs, spent_seconds=time.monotonic() - started, done=done)
    for event in updated.events[len(plan.events):]:
        log(f"plan: {event}")
    return updated


def _bfloat16(precision: str) -> bool:
    """Whether trainjob's sides compute in bfloat16 here: ``auto`` on a CPU that has it."""
    return precision == "auto" and bool(CPU_BF16_FLAGS & job_machine.cpu_flags())


def sizes_of(args: argparse.Namespace) -> Sizes:
    """The preset the arguments ask for; ``--repetitions`` sets every figure's rounds,
    those that run fewer by default (P7, M2, D1) included, and the budget keeps them."""
    sizes = QUICK if args.quick else FULL
    if args.repetitions is not None:
        sizes = dataclasses.replace(sizes, repetitions=args.repetitions,
                                    predict_repetitions=args.repetitions,
                                    scale_repetitions=args.repetitions,
                                    demo_rounds=args.repetitions, rounds_fixed=True)
    return sizes


def whole_suite_line(document: dict[str, Any]) -> str:
    """The run's last line: its wall time, each part's, and the CPU time it used.

    The CPU time over the cores bounds what the run would take on an idle machine
    from below; the wall time under load bounds it from above.
    """
    parts = ", ".join(f"{name} {part['seconds']:.0f} s"
                      for name, part in document.get("groups", {}).items())
    line = f"bench: whole suite took {document['seconds']:.0f} s" + (f" ({parts})" if parts
                                                                      else "")
    cpu, cores = document.get("cpu_seconds"), document["environment"]["cpus_available"]
    if cpu is not None:
        line += (f"; its processes used {cpu:,.0f} CPU-seconds ({cpu / cores:,.0f} s on "
                 f"{cores} idle cores at the least)")
    share = document.get("others_cpu_share")
    if share is not None:
        line += f"; other processes used {share:.0%} of the CPU time"
    return line


def _timed(name: str, work: Callable[[], Any], what: str, *,
           timings: dict[str, dict[str, float | None]], log: Callable[[str], None]) -> Any:
    """``work()``, logged with ``what`` and its wall and CPU seconds kept under ``name``."""
    log(f"{name}: {what}")
    started, cpu = time.monotonic(), _cpu_seconds()
    result = work()
    timings[name] = {"seconds": time.monotonic() - started,
                     "cpu_seconds": _cpu_seconds() - cpu}
    log(f"{name}: done in {timings[name]['seconds']:.0f} s, "
        f"{timings[name]['cpu_seconds']:.0f} CPU-seconds")
    return result


def _cpu_seconds() -> float:
    """User + system time of this process and of every child it has waited for.

    Every measured child is waited for (``bench/child.py`` waits for its command,
    and a launcher for its workers), so between two readings this is the suite's
    own CPU time, whatever else runs on the machine.
    """
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _groups(only: str | None) -> list[str]:
    """The groups holding the figures in ``only`` (comma-separated ids); all for None."""
    if not only:
        return list(GROUPS)
    wanted = {part.strip().upper() for part in only.split(",") if part.strip()}
    unknown = sorted(wanted.difference(ORDER))
    if unknown:
        raise SystemExit(f"bench: error: --only={only}: unknown figure {unknown[0]}; "
                         f"expected some of {','.join(ORDER)}.")
    return [name for name, ids in GROUPS.items() if wanted.intersection(ids)]


def _log() -> Callable[[str], None]:
    """Progress lines on stderr, each with the seconds since the suite started."""
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"bench [{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr,
              flush=True)

    return log


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark trainjob against plain Keras on the same data, in one run.")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one repetition: checks the suite runs (numbers "
                             "mean nothing)")
    parser.add_argument("--only", metavar="IDS",
                        help="comma-separated figures, e.g. P1,P4 (their whole group runs)")
    parser.add_argument("--repetitions", type=_positive, metavar="N",
                        help="timed rounds of every figure (default: 3; P7, M2 and D1: "
                             "2; quick: 1)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default): trainjob's own choice, bfloat16 where the CPU "
                             "has it; float32: every trainjob training side, the demo and "
                             "P6's peak in float32, as on a CPU without bfloat16")
    parser.add_argument("--out", type=Path,
                        help="results file (default: bench/results.json; with --quick, "
                             "results-quick.json in the work folder)")
    parser.add_argument("--work-dir", type=Path, default=BENCH_DIR / "work",
                        help="generated data, runs and logs (default: bench/work)")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value
