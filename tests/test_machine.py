"""Facts about the machine: CPUs a process may use, and the CPU's features."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from job import machine


@pytest.mark.parametrize("files, limit", [
    ({"cpu.max": "150000 100000\n"}, 2),
    ({"cpu.max": "100000 100000\n"}, 1),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_available_cpus_honours_a_container_cpu_limit(tmp_path, files, limit):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    cores = len(os.sched_getaffinity(0))

    assert machine.available_cpus(cgroup_root=tmp_path) == min(cores, limit or cores)


def test_cpu_flags_reads_the_flags_line(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\n"
                       "flags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n"
                       "flags\t\t: fpu avx2 avx512_bf16\n")

    assert machine.cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}


def test_cpu_flags_reads_arm_features(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")

    assert machine.cpu_flags(cpuinfo) == {"fp", "asimd", "bf16"}


def test_cpu_flags_is_empty_without_cpuinfo(tmp_path: Path):
    assert machine.cpu_flags(tmp_path / "missing") == frozenset()
