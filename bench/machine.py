"""The machine a benchmark ran on: versions, cores, and how busy other work kept it.

Owns: the environment block of results.json (TensorFlow, Keras, Pillow, NumPy
and Python versions, the commit measured and whether ``job/`` had uncommitted
changes, CPU counts, load averages) and the share of the CPUs that
processes outside this benchmark used while it ran, so a noisy table says so.
Never touches: TensorFlow or Pillow themselves (versions come from package
metadata), measurements.

The CPU share is read from ``/proc`` (Linux only; None elsewhere): the whole
machine's busy time from ``/proc/stat``, minus the CPU time of this process's
tree (every live descendant's own and reaped children's time, plus our own).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from job.machine import available_cpus

PACKAGES = {"tensorflow": "tensorflow", "keras": "keras", "pillow": "pillow",
            "numpy": "numpy"}
"""Result key -> distribution name of the versions recorded with every run."""
PROC = Path("/proc")
REPO = Path(__file__).resolve().parent.parent


def environment() -> dict[str, object]:
    """Versions, CPU counts and the load averages right now."""
    versions = {}
    for key, distribution in PACKAGES.items():
        try:
            versions[key] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    return {
        **versions,
        "python": platform.python_version(),
        **_commit(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_available": available_cpus(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _commit() -> dict[str, object]:
    """The commit measured, and whether job/ differs from it (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  check=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--", "job")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "job_uncommitted_changes": None if status is None else bool(status)}


@dataclass(frozen=True)
class CpuClock:
    """CPU seconds used by the whole machine and by this benchmark, at one moment."""

    wall: float
    machine_busy: float | None
    ours: float | None


def cpu_clock() -> CpuClock:
    """Read the clocks now (None where ``/proc`` is not there)."""
    return CpuClock(wall=time.monotonic(), machine_busy=_machine_busy_seconds(),
                    ours=_tree_seconds(os.getpid()))


def others_share(start: CpuClock, end: CpuClock, *, cores: int) -> float | None:
    """Fraction of all cores' time between the two clocks used by other processes."""
    if None in (start.machine_busy, end.machine_busy, start.ours, end.ours):
        return None
    capacity = (end.wall - start.wall) * cores
    others = (end.machine_busy - start.machine_busy) - (end.ours - start.ours)
    return max(0.0, min(1.0, others / capacity)) if capacity > 0 else None


def _machine_busy_seconds() -> float | None:
    """Busy time of all CPUs since boot: everything in /proc/stat's cpu line but idle/iowait."""
    try:
        fields = (PROC / "stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _tree_seconds(root: int) -> float | None:
    """CPU time of ``root`` and its live descendants, each with its reaped children's."""
    table: dict[int, tuple[int, int]] = {}
    for entry in PROC.glob("[0-9]*"):
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # Exited while we looked.
        # The command name (field 2) may hold spaces; the fields after it never do.
        fields = text[text.rindex(")") + 2:].split()
        parent = int(fields[1])
        ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
        table[int(entry.name)] = (parent, ticks)
    if root not in table:
        return None
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += table[pid][1]
        stack.extend(children.get(pid, ()))
    return total / os.sysconf("SC_CLK_TCK")
