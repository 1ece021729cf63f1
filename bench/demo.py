"""D1: the demo's wall time on a fresh folder, as a newcomer's ``make demo`` runs it.

Owns: running ``python -m job demo --out DIR`` in a fresh process on an empty
folder (it draws the data, calibrates, trains and saves), and reading back what
it said and wrote: the epochs and the time it announced, the time it took, the
precision, the validation and test accuracy.

Two sides (the figure's runs in rounds, the float32 path once, in the first):

* **as this machine runs it**: the D1 figure.
* **the float32 path**, where this CPU computes bfloat16 natively: trainjob's
  ``mixed_precision: auto`` then picks bfloat16, while most laptops and CI
  runners have no bfloat16 and train in float32. This side runs the same command
  in a private mount namespace (``unshare``) whose ``/proc/cpuinfo`` lacks the
  bfloat16 flags, so trainjob's own choice is float32 and nothing in ``job/`` is
  told. TensorFlow's kernels still use the CPU's other instructions: this is
  float32 on this CPU, not on an older one. Where the namespace cannot be made
  (not Linux, no ``unshare``, no permission), the side is left out and the
  results say why; on a CPU without bfloat16 the first side already is float32.

With the suite's ``--precision float32`` the float32 path is the only side, and
the figure: the native side would measure bfloat16 again. Where it cannot be
made, the native side runs, and the figure's precision and note say so.

The reference is the README's promise: two minutes for the set-up and the demo
together. The set-up (a fresh venv from a warm package cache) is not measured
here; BENCHMARKS.md gives its figure.
Never touches: the demo's code; it runs the command a user runs.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.measure import REPO, BenchmarkFailed, alternate, child_env, median, run_child
from bench.report import Figure, Target
from bench.sizes import Sizes
from job import machine
from job.precision import CPU_BF16_FLAGS

D1_TARGET = Target(at_least=False, value=1.0)
BUDGET_SECONDS = 120.0
"""The README's promise for ``make demo`` on 2 CPU cores, set-up included."""
PLAN_LINE = re.compile(r"for (\d+) epochs, about (\d+) s here")
DONE_LINE = re.compile(r"demo: done in (\d+) s; training took (\d+) s(?:, estimated (\d+) s)?")
NATIVE, FLOAT32 = "as this machine runs it", "the float32 path (bfloat16 hidden)"
PROBE_SECONDS = 30
"""Time limit of the one-line check that the float32 side's namespace can be made."""


@dataclass(frozen=True)
class DemoRun:
    """What one ``trainjob demo`` reported."""

    seconds: float
    """Wall time of the process, start to exit."""
    epochs: int
    estimate_seconds: float
    """What the demo announced for its training, before training."""
    training_seconds: float
    """What training then took, by the demo's own clock."""
    precision: str
    val_accuracy: float
    test_accuracy: float


def measure(sizes: Sizes, *, work_dir: Path, log: Callable[[str], None],
            precision: str = "auto") -> list[Figure]:
    """D1 from ``sizes.demo_rounds`` runs of the figure's side; the float32 path, where it
    is a second side, runs once, in the first round.

    ``precision``: the suite's ``--precision`` (``bench.specs.PRECISIONS``).
    """
    counter = itertools.count(1)
    hidden, why_not = float32_namespace(work_dir)

    def side(name: str, prefix: list[str]) -> Callable[[], DemoRun]:
        return lambda: run_demo(prefix, out=work_dir / "demo" / f"{name}-{next(counter)}",
                                sizes=sizes)

    def rounds(sides: dict[str, Callable[[], DemoRun]], count: int) -> dict[str, list]:
        return alternate(sides, repetitions=count, warmups=0, log=log, label="D1 demo")

    if precision == "float32" and hidden is not None:
        runs = rounds({FLOAT32: side("float32", hidden)}, sizes.demo_rounds)
        return [_figure(runs[FLOAT32], None, side="float32",
                        why_not="with --precision float32 this path is the figure")]
    if precision == "float32" and why_not is not None:
        why_not = f"--precision float32 asked for, but bfloat16 could not be hidden: {why_not}"
    native = side("native", [])
    if hidden is None or precision != "auto" or not sizes.demo_float32_side:
        if why_not is None and hidden is not None:
            why_not = "measured as the figure of --precision float32"
        return [_figure(rounds({NATIVE: native}, sizes.demo_rounds)[NATIVE], None,
                        side="native", why_not=why_not)]
    first = rounds({NATIVE: native, FLOAT32: side("float32", hidden)}, 1)
    later = rounds({NATIVE: native}, sizes.demo_rounds - 1) if sizes.demo_rounds > 1 else {}
    return [_figure(first[NATIVE] + later.get(NATIVE, []), first[FLOAT32], side="native",
                    why_not=None)]


def run_demo(prefix: list[str], *, out: Path, sizes: Sizes) -> DemoRun:
    """``trainjob demo --out OUT`` on an empty ``out``, started through ``prefix``."""
    shutil.rmtree(out, ignore_errors=True)
    log = out.parent / "logs" / f"{out.name}.log"
    child = run_child([*prefix, sys.executable, "-m", "job", "demo", "--out", str(out)],
                      env=child_env(threads=None), cwd=REPO, log=log,
                      timeout_seconds=sizes.child_timeout_seconds)
    text = log.read_text(errors="replace")
    plan, done = PLAN_LINE.search(text), DONE_LINE.search(text)
    if plan is None or done is None or done.group(3) is None:
        raise BenchmarkFailed(f"the demo did not announce its plan and time as expected "
                              f"(log: {log})")
    metrics = json.loads((out / "models" / "shapes" / "metrics.json").read_text())
    return DemoRun(seconds=child.seconds, epochs=int(plan.group(1)),
                   estimate_seconds=float(done.group(3)),
                   training_seconds=float(done.group(2)), precision=metrics["precision"],
                   val_accuracy=metrics["val_accuracy"],
                   test_accuracy=metrics["test_accuracy"])


def float32_namespace(work_dir: Path) -> tuple[list[str] | None, str | None]:
    """The command prefix that hides bfloat16 from trainjob, or None and why not.

    Where this CPU has no bfloat16 flags there is nothing to hide: (None, None).
    """
    flags = machine.cpu_flags()
    if not CPU_BF16_FLAGS & flags:
        return None, None
    cpuinfo = Path(work_dir) / "cpuinfo-without-bf16"
    cpuinfo.parent.mkdir(parents=True, exist_ok=True)
    text = Path("/proc/cpuinfo").read_text(errors="replace")
    for flag in CPU_BF16_FLAGS:
        text = re.sub(rf"(?<=\s){flag}(?=\s)", "", text)
    cpuinfo.write_text(text)
    unshare = shutil.which("unshare")
    if unshare is None:
        return None, "no `unshare` on this machine"
    user = [] if _is_root() else ["--map-root-user"]
    prefix = [unshare, *user, "--mount", "--propagation", "private", "sh", "-c",
              'mount --bind "$0" /proc/cpuinfo && exec "$@"', str(cpuinfo)]
    try:
        seen = subprocess.run([*prefix, "cat", "/proc/cpuinfo"], capture_output=True,
                              text=True, timeout=PROBE_SECONDS, check=True).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"a mount namespace could not be made ({type(error).__name__})"
    if CPU_BF16_FLAGS & set(seen.split()):
        return None, "the mount namespace still showed the bfloat16 flags"
    return prefix, None


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _figure(measured: list[DemoRun], float32: list[DemoRun] | None, *, side: str,
            why_not: str | None) -> Figure:
    """D1 from the ``measured`` side's runs (``side``: "native" or "float32"), with the
    float32 path's runs, when it ran beside it, in the note."""
    precision = measured[0].precision
    details = {"budget_seconds": BUDGET_SECONDS, "precision": precision, "side": side,
               **_side_details(side, measured)}
    hidden = " (bfloat16 hidden from trainjob)" if side == "float32" else ""
    if float32:
        details.update(_side_details("float32", float32))
        other = (f"the float32 path (bfloat16 hidden from trainjob) took "
                 f"{median([r.seconds for r in float32]):.0f} s (median of {len(float32)}): "
                 f"{_summary(float32)}")
    elif side == "float32":
        other = why_not
    else:
        other = f"no float32 side: {why_not}" if why_not else "this CPU has no bfloat16"
    details["note"] = f"in {precision}{hidden}: {_summary(measured)}; {other}"
    return Figure.of("D1", title=f"Demo on a fresh folder: draw, calibrate, train, save "
                                 f"({precision})",
                     unit="s", reference_name="the README's two minutes, set-up included",
                     target=D1_TARGET, trainjob=[r.seconds for r in measured],
                     reference=[BUDGET_SECONDS], **details)


def _side_details(name: str, runs: list[DemoRun]) -> dict[str, object]:
    return {f"{name}_seconds": [r.seconds for r in runs],
            f"{name}_epochs": [r.epochs for r in runs],
            f"{name}_estimate_seconds": [r.estimate_seconds for r in runs],
            f"{name}_training_seconds": [r.training_seconds for r in runs],
            f"{name}_precision": runs[0].precision,
            f"{name}_val_accuracy": [r.val_accuracy for r in runs],
            f"{name}_test_accuracy": [r.test_accuracy for r in runs]}


def _summary(runs: list[DemoRun]) -> str:
    """Epochs, training time against the announced time, and accuracies, round by round."""
    def each(values, spec: str) -> str:
        return "/".join(format(value, spec) for value in values)

    return (f"epochs {each([r.epochs for r in runs], 'd')}, training "
            f"{each([r.training_seconds for r in runs], '.0f')} s (announced "
            f"{each([r.estimate_seconds for r in runs], '.0f')} s), val_accuracy "
            f"{each([r.val_accuracy for r in runs], '.3f')}, test_accuracy "
            f"{each([r.test_accuracy for r in runs], '.3f')}")
