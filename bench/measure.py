"""Measuring: interleaved repetitions after warm-ups, medians, and child processes.

Owns: how a measurement is repeated (warm-ups discarded, trainjob and reference
alternating so a change in machine load hits both alike), the suite's one
warm-up (imports and data read once before the first figure, in a child that
may measure something meanwhile), the median, the
environment of every child, and running one child process to its end with its
wall time and peak RSS (measured by ``bench/child.py``, a small process between
us and the child).
Every measurement runs in a fresh process; the suite itself never imports
TensorFlow. Two reasons, both measured: a ``tf.data`` pipeline that ran earlier
in a process can halve the throughput of a later one there (Keras's loader fell
from ~1,500 to ~770 images/s after trainjob's pipeline ran first), and a child's
peak RSS would start from its parent's.
Never touches: what is measured; callers pass functions and command lines.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from job.cluster import ENV_PREFIX, INDEX_ENV, TF_CONFIG_ENV
from job.launcher import THREAD_VARIABLES

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
"""Working folder of every child, so ``python -m job`` and ``-m bench.*`` resolve here."""
CLUSTER_VARIABLES = (TF_CONFIG_ENV, INDEX_ENV)
"""Dropped from the children's environment (with every variable of trainjob's own,
ENV_PREFIX): a shell that exports a cluster must not turn a benchmark run into a
multi-worker one."""
STOP_GRACE_SECONDS = 20.0
"""Seconds a timed-out child has after SIGTERM (to stop its own workers) before SIGKILL."""
CHILD = Path(__file__).resolve().with_name("child.py")
"""Starts each measured child from a small process; see its docstring for why."""
LOG_TAIL_LINES = 30
"""Lines of a failed child's log quoted in the error."""
WARM_UP_MODULES = ("PIL.Image", "keras", "matplotlib.pyplot", "tensorflow")
"""What the measured children load, imported once by the suite's warm-up child."""


class BenchmarkFailed(RuntimeError):
    """A measured run did not finish as it should; the message names its log."""


def median(values: Sequence[float]) -> float:
    """The median of at least one value.

    Example:
        >>> median([3.0, 1.0, 2.0])
        2.0
    """
    if not values:
        raise ValueError("median of no values: a figure needs at least one repetition.")
    return float(statistics.median(values))


def alternate(sides: Mapping[str, Callable[[], T]], *, repetitions: int, warmups: int,
              log: Callable[[str], None], label: str) -> dict[str, list[T]]:
    """Run every side ``warmups`` times untimed, then ``repetitions`` times, in rounds.

    Each round runs every side once, in order, so a change in machine load
    lands on all of them alike.

    Returns:
        Each side's results of the timed rounds, by name.
    """
    kept: dict[str, list[T]] = {name: [] for name in sides}
    for round_number in range(warmups + repetitions):
        warm = round_number < warmups
        what = "warm-up" if warm else f"repetition {round_number - warmups + 1}/{repetitions}"
        for name, function in sides.items():
            log(f"{label}: {name} {what}")
            result = function()
            if not warm:
                kept[name].append(result)
    return kept


def warm_up(folders: Iterable[Path], *, module: str, log: Path,
            timeout_seconds: float) -> dict:
    """Once per suite, untimed: read every file of ``folders``, then run the warm-up child.

    Every side of every figure runs in a fresh process, so what a first round
    finds cold lives outside processes: the data and the libraries in the page
    cache, and first-use caches on disk (matplotlib's font list). This warms them
    once, for all figures, where a warm-up round per figure ran every side again.
    The child, ``python -m module``, imports ``WARM_UP_MODULES`` and may measure
    something while they are loaded (``bench.budget`` calibrates); its result is
    returned.
    """
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                with open(path, "rb") as handle:
                    while handle.read(1 << 20):
                        pass
    return run_module(module, [], log=log, timeout_seconds=timeout_seconds)


def timed(function: Callable[[], T]) -> tuple[T, float]:
    """``(function(), seconds)`` by the monotonic performance counter."""
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


@dataclass(frozen=True)
class Child:
    """One finished child process."""

    seconds: float
    """Wall time from start to exit."""
    peak_rss_bytes: int
    """Largest resident set of the child (or of any descendant it waited for)."""
    log: Path


def run_child(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path,
              timeout_seconds: float) -> Child:
    """Run ``argv`` to its end, through ``bench/child.py``, with output in ``log``.

    Raises:
        BenchmarkFailed: unless it exits 0, naming the command, why, and its log's end.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    report = log.with_name(log.name + ".json")
    report.unlink(missing_ok=True)
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, str(CHILD), str(report), *argv],
                                   env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                   stdout=output, stderr=subprocess.STDOUT)
        timed_out = threading.Event()
        watchdog = threading.Timer(timeout_seconds, _stop, args=(process, timed_out))
        watchdog.start()
        try:
            process.wait()
        finally:
            watchdog.cancel()
    result = json.loads(report.read_text()) if report.exists() else {}
    if process.returncode != 0 or result.get("returncode") != 0:
        why = (f"did not finish within {timeout_seconds:g}s" if timed_out.is_set()
               else f"exited with {result.get('returncode', process.returncode)}")
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        raise BenchmarkFailed(f"{' '.join(map(str, argv))} {why} (log: {log}):\n{tail}")
    return Child(seconds=result["seconds"], peak_rss_bytes=result["peak_rss_bytes"], log=log)


def run_module(module: str, args: Sequence[str], *, log: Path, timeout_seconds: float,
               threads: int | None = None) -> dict:
    """Run ``python -m module ARGS --result FILE`` in a fresh process; return FILE's JSON."""
    result = log.with_name(log.stem + ".result.json")
    result.unlink(missing_ok=True)
    run_child([sys.executable, "-m", module, *args, "--result", str(result)],
              env=child_env(threads=threads), cwd=REPO, log=log,
              timeout_seconds=timeout_seconds)
    return json.loads(result.read_text())


def child_env(*, threads: int | None) -> dict[str, str]:
    """This environment for a benchmark child: no cluster, quiet TensorFlow, set threads.

    ``threads=None`` leaves the thread variables unset: TensorFlow's defaults (all
    cores), or the launcher's share per worker.
    """
    env = {key: value for key, value in os.environ.items()
           if key not in CLUSTER_VARIABLES and not key.startswith(ENV_PREFIX)
           and key not in THREAD_VARIABLES}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if threads is not None:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    return env


def _stop(process: subprocess.Popen, timed_out: threading.Event) -> None:
    """SIGTERM (so a launcher can stop its workers), then SIGKILL after a grace period."""
    timed_out.set()
    process.terminate()
    killer = threading.Timer(STOP_GRACE_SECONDS, process.kill)
    killer.daemon = True
    killer.start()


def fresh_dir(path: Path) -> Path:
    """``path`` as a new empty folder: a run directory must never resume an old run."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
