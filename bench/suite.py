"""The benchmark command line and the order of a run.

Owns: ``python -m bench [--quick] [--only P1,P4] [--repetitions N] [--out FILE]
[--work-dir DIR]``:
choosing the sizes, generating the data, running the figure groups in order,
writing results.json and printing the table. Progress goes to stderr, the
table to stdout. Missing a target is a result, not an error: the exit code is 0
unless a measurement itself failed (1).
Never touches: how any figure is measured (``pipeline``, ``step``, ``end_to_end``,
``predict``, ``scale``, ``demo``).

Example:
    >>> main(["--quick", "--out", "/tmp/results.json"])   # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import datasets, end_to_end, machine, pipeline, scale, step
from bench import demo as demo_figure
from bench import predict as predict_figure
from bench.measure import BenchmarkFailed
from bench.report import Figure, results, table, write_json
from bench.sizes import FULL, QUICK, Sizes
from job.errors import TrainjobError

BENCH_DIR = Path(__file__).resolve().parent
ORDER = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "M1", "M2", "D1")
"""Rows of the table, in the issue's order."""
GROUPS = {"pipeline": ("P1", "P2"), "step": ("P3", "P6"), "end_to_end": ("P4", "M1", "P5"),
          "predict": ("P7",), "scale": ("M2",), "demo": ("D1",)}
"""Figures measured together: asking for one runs its whole group."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Before anything imports TensorFlow.
    sizes = QUICK if args.quick else FULL
    if args.repetitions is not None:
        sizes = dataclasses.replace(sizes, repetitions=args.repetitions)
    try:
        document = run(sizes, work_dir=args.work_dir, groups=_groups(args.only), log=_log())
    except (BenchmarkFailed, TrainjobError) as error:
        print(f"bench: error: {error}", file=sys.stderr, flush=True)
        return 1
    # A smoke run never overwrites the results of a full one.
    out = args.out or (args.work_dir / "results-quick.json" if args.quick
                       else BENCH_DIR / "results.json")
    write_json(out, document)
    print(table(document), end="", flush=True)
    print(f"bench: results in {out}", file=sys.stderr, flush=True)
    return 0


def run(sizes: Sizes, *, work_dir: Path, groups: Sequence[str],
        log: Callable[[str], None]) -> dict[str, Any]:
    """Measure the figures of ``groups`` and return the results document."""
    started, clock = time.monotonic(), machine.cpu_clock()
    env = machine.environment()
    work_dir = Path(work_dir).resolve()  # Specs resolve relative paths against their folder.
    figures: list[Figure] = []
    if "pipeline" in groups or "predict" in groups:
        log(f"photo set: {sizes.photos} JPEGs of {sizes.photo_size[0]}x{sizes.photo_size[1]}")
        photos = datasets.photo_folder(work_dir, sizes)
        if "pipeline" in groups:
            figures += pipeline.measure(photos, sizes, work_dir=work_dir, log=log)
        if "predict" in groups:
            figures += predict_figure.measure(photos, sizes, work_dir=work_dir, log=log)
    if "step" in groups or "end_to_end" in groups:
        log(f"sample shapes: {sizes.shapes_per_class} per class, {sizes.train_image_size} px")
        shapes = datasets.shapes_folder(work_dir, sizes)
        if "step" in groups:
            figures += step.measure(shapes, sizes, work_dir=work_dir, log=log)
        if "end_to_end" in groups:
            figures += end_to_end.measure(shapes, sizes, work_dir=work_dir, log=log)
    if "scale" in groups:
        figures += scale.measure(sizes, work_dir=work_dir, log=log)
    if "demo" in groups:
        figures += demo_figure.measure(sizes, work_dir=work_dir, log=log)
    figures.sort(key=lambda figure: ORDER.index(figure.id))
    env["load_average_after"] = machine.environment()["load_average"]
    return results(figures, mode=sizes.name, environment=env,
                   sizes=dataclasses.asdict(sizes), seconds=time.monotonic() - started,
                   others_cpu_share=machine.others_share(clock, machine.cpu_clock(),
                                                         cores=env["cpus_available"]))


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
                        help="timed repetitions per figure (default: 3, quick: 1)")
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
