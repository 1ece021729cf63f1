"""Compute precision: which Keras dtype policy a run trains with, and why.

Owns: the meaning of ``train.mixed_precision`` (auto, true, false), which
hardware facts decide ``auto`` (GPU compute capability, the CPU's bfloat16
instructions; ``job.machine`` reads them), and the sentence that tells the user
what was chosen.
Never touches: TensorFlow's global state (``job.distributed`` sets the policy),
the model, the spec file, reading the hardware.

Mixed precision computes layers in 16 bits while every variable, the loss and
the softmax stay in float32. It pays only where the hardware does 16-bit math
natively; elsewhere it is emulated and slower. So ``auto`` turns it on only for:

* GPUs of compute capability 8.0 or newer (bfloat16 tensor cores):
  ``mixed_bfloat16``, which needs no loss scaling;
* GPUs of compute capability 7.x (float16 tensor cores only) when the run has a
  single replica: ``mixed_float16`` with loss scaling. With several replicas it
  stays float32: Keras 3's LossScaleOptimizer decides whether to skip a step
  from one replica's own gradients, before they are all-reduced, so another
  replica's overflow reaches the weights (on two CPU replicas a weight became
  -inf; ``tests/test_precision.py`` pins it), and between workers, which each
  decide alone, a skipped collective would hang the group;
* CPUs with AVX512_BF16 or AMX-BF16 instructions: ``mixed_bfloat16``.

Everything else trains in float32. The exported ``model.h5`` is float32 either
way, so it loads and predicts the same on any machine.

Example:
    >>> choose("auto", gpu_capabilities=[], cpu_flags={"avx512_bf16"}, replicas=1).policy
    'mixed_bfloat16'
    >>> choose("auto", gpu_capabilities=[(6, 1)], cpu_flags=set(), replicas=1).policy
    'float32'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from job.errors import SpecError

FLOAT16_TENSOR_CORES = (7, 0)
"""Lowest CUDA compute capability with float16 tensor cores (Volta)."""
BFLOAT16_TENSOR_CORES = (8, 0)
"""Lowest CUDA compute capability with bfloat16 tensor cores (Ampere)."""
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""/proc/cpuinfo flags of x86 CPUs that compute bfloat16 natively."""


@dataclass(frozen=True)
class Choice:
    """The dtype policy of a run and the reason, in a few words, for the log."""

    policy: str
    """A Keras dtype policy: float32, mixed_bfloat16 or mixed_float16."""
    reason: str

    @property
    def is_mixed(self) -> bool:
        return self.policy != "float32"

    def describe(self) -> str:
        return f"precision {self.policy} ({self.reason})"


def choose(requested: str | bool, *, gpu_capabilities: Sequence[tuple[int, int]],
           cpu_flags: Iterable[str], replicas: int) -> Choice:
    """The policy for ``train.mixed_precision`` on this hardware.

    Args:
        requested: "auto", True or False (the spec's value).
        gpu_capabilities: (major, minor) CUDA compute capability of each GPU this
            process trains on; empty on a CPU-only machine.
        cpu_flags: the CPU's feature flags (as /proc/cpuinfo spells them).
        replicas: replicas in sync across the whole run (all workers' GPUs).

    Raises:
        SpecError: ``true`` where only float16 is possible (GPUs older than 8.0)
            and the run has several replicas (see the module docstring).
    """
    gpus = list(gpu_capabilities)
    if requested is False:
        return Choice("float32", "train.mixed_precision: false")
    if requested not in (True, "auto"):
        raise ValueError(f"mixed_precision={requested!r}: expected 'auto', True or False")
    forced = requested is True
    if not gpus:
        native = sorted(CPU_BF16_FLAGS & set(cpu_flags))
        if forced:
            return Choice("mixed_bfloat16", "train.mixed_precision: true")
        if native:
            return Choice("mixed_bfloat16", f"auto: the CPU has {native[0].upper()}")
        return Choice("float32", "auto: no GPU, and the CPU has no bfloat16 instructions")
    oldest = min(gpus)
    capability = f"GPU compute capability {oldest[0]}.{oldest[1]}"
    if oldest >= BFLOAT16_TENSOR_CORES:
        return Choice("mixed_bfloat16", "train.mixed_precision: true" if forced
                      else f"auto: {capability} has bfloat16 tensor cores")
    if replicas > 1:
        if forced:
            raise SpecError(
                f"train.mixed_precision=true needs float16 with loss scaling on {capability} "
                f"(bfloat16 needs 8.0), and Keras 3's loss scaling is not safe across "
                f"{replicas} replicas: set it to auto or false, or train on one GPU.")
        return Choice("float32", f"auto: {capability} has no bfloat16, and float16 loss "
                                 f"scaling is not safe across {replicas} replicas")
    if forced:
        return Choice("mixed_float16", "train.mixed_precision: true")
    if oldest >= FLOAT16_TENSOR_CORES:
        return Choice("mixed_float16", f"auto: {capability} has float16 tensor cores "
                                       "(one replica, with loss scaling)")
    return Choice("float32", f"auto: {capability} has no tensor cores")


PEER_FLOAT32 = Choice("float32", "auto: a peer worker's hardware has no native 16-bit math")
"""What every worker of a group trains with when any one of them chose float32 on auto:
the workers must agree, since loss scaling changes the step and the checkpoint."""
