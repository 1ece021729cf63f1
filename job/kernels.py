"""Which CPU kernels TensorFlow runs: its oneDNN ones, on every x86 CPU.

Owns: the TensorFlow settings that must be in the environment before TensorFlow
loads, because it reads them only then (``TF_ENABLE_ONEDNN_OPTS``), and putting
them there for the commands that load it.
Never touches: the dtype policy (``job.precision``), thread counts (``job.launcher``),
anything a user set: a variable already in the environment is left as it is.

TensorFlow turns its oneDNN kernels on by default only on CPUs with VNNI,
bfloat16 or AMX instructions; elsewhere (many laptops, CI runners and cloud CPUs)
it runs its own Eigen kernels. For trainjob's float32 training step oneDNN is the
faster choice on any x86 CPU: on a 2-core AVX-512 CPU, the small CNN's step took
3.0-3.3 ms of CPU time an image with oneDNN, 3.1-3.2 ms with oneDNN held to
AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, as on a CPU without AVX-512), and 4.5-5.0 ms
with Eigen's kernels: 1.4-1.6 times the work. BENCHMARKS.md (P3) has the figures.
Results can differ from Eigen's in the last bits of a float, as between any two
kernel libraries; ``TF_ENABLE_ONEDNN_OPTS=0`` restores TensorFlow's own choice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
"""TensorFlow's switch for its oneDNN kernels: 1 on, 0 off, unset: its own choice."""


def settings(env: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to ``env`` before TensorFlow loads (pure): none a user set."""
    return {} if ONEDNN_ENV in env else {ONEDNN_ENV: "1"}


def apply(env: MutableMapping[str, str] | None = None) -> None:
    """Put ``settings`` into ``env`` (default: this process's environment).

    Call it before anything imports TensorFlow; afterwards it changes nothing in
    this process, only in the processes it starts.
    """
    env = os.environ if env is None else env
    env.update(settings(env))
