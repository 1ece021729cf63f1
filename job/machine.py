"""Facts about the machine a worker runs on: CPUs, their limits and features, GPUs.

Owns: how many CPUs this process may use (its affinity, capped by a container's
cgroup CPU limit), the CPU's feature flags, and the compute capability of each GPU.
Never touches: decisions based on them (``job.precision`` chooses a dtype policy,
``job.images`` a number of decoder threads, ``job.launcher`` threads per worker).
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def available_cpus(*, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by a container CPU limit.

    In a Kubernetes pod the affinity is every core of the node, while the pod's
    ``cpu`` limit is a cgroup quota; starting a process per node core would only
    add memory and context switches.
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    limit = _cgroup_cpu_limit(cgroup_root)
    return max(1, min(count, limit) if limit else count)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags; empty where /proc/cpuinfo is missing (not Linux)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def gpu_capabilities(tf) -> list[tuple[int, int]]:
    """(major, minor) compute capability of each visible GPU; (0, 0) when unreported."""
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability") or (0, 0)
        capabilities.append((int(capability[0]), int(capability[1])))
    return capabilities


def _cgroup_cpu_limit(root: Path) -> int | None:
    """Whole CPUs allowed by a cgroup v2 (cpu.max) or v1 (cfs quota) limit; None: no limit."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None
