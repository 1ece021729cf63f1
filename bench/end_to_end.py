"""P4, M1 and P5: whole training runs in fresh processes.

Owns: the command lines and environments of the runs, and reading back what
they report.

* P4: wall time of ``python -m job train SPEC`` against ``bench/plain_keras.py``
  (``image_dataset_from_directory`` + ``compile`` + ``fit`` + ``save``) for the
  same epochs on the same folder, in alternating rounds; both final validation
  accuracies are kept. Both get ``TF_NUM_INTRAOP_THREADS`` (and its siblings)
  set to the core count, so neither depends on the caller's shell.
* M1: the peak RSS of those same processes.
* With the suite's ``--precision float32`` the spec turns ``train.mixed_precision``
  off, so every trainjob run computes in float32, as plain Keras does.
* P5: ``python -m job local --workers 2`` (the launcher gives each worker
  cores / 2 threads) against P4's one-worker runs (all the cores), run in the
  same rounds, in images per second of the epochs after the first, from each
  run's history.csv. The first epoch is left out because it traces the step
  function and, with two workers, sets up the collectives: a start-up cost, not
  throughput.

Never touches: the data pipeline or model internals; runs are separate
processes started as a user would start them.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.measure import REPO, Child, alternate, child_env, median, run_child
from bench.report import Figure, Target
from bench.sizes import Sizes
from bench.specs import SEED, VAL_SPLIT, mixed_precision_setting, prepare_runs
from job.machine import available_cpus

P4_TARGET = Target(at_least=False, value=0.7)
P4_FLOAT32_TARGET = Target(at_least=False, value=0.75)
"""Where trainjob trains in float32 it has no bfloat16 step to gain from, only its input
path and its kernels: the target the float32 issue set."""
M1_TARGET = Target(at_least=False, value=1.2)
P5_TARGET = Target(at_least=True, value=0.8)
PLAIN_KERAS = Path(__file__).resolve().parent / "plain_keras.py"
MIB = 2**20


@dataclass(frozen=True)
class Run:
    """What one training process reported."""

    seconds: float
    peak_rss_mib: float
    val_accuracy: float
    images_per_second: float | None = None
    """Median of the epochs after the first (trainjob only; the reference has no history)."""
    precision: str = "float32"
    """The Keras policy the run computed in (trainjob's metrics.json; Keras's default for
    the plain script)."""


@dataclass(frozen=True)
class Runner:
    """Starts the runs of one suite; every run writes to ``runs_dir/<run id>``."""

    train_dir: Path
    sizes: Sizes
    spec_path: Path
    runs_dir: Path
    logs_dir: Path
    names: Callable[[str], str]
    """Kind -> a run id never used before in this suite, so no run resumes another."""

    def trainjob(self) -> Run:
        run_id = self.names("train")
        child = self._run([sys.executable, "-m", "job", "train", str(self.spec_path),
                           "--run-id", run_id], run_id=run_id, threads=available_cpus())
        return _trainjob_result(child, self.runs_dir / run_id)

    def local(self, workers: int) -> Run:
        run_id = self.names(f"local{workers}")
        child = self._run([sys.executable, "-m", "job", "local", "--workers", str(workers),
                           "--max-restarts", "0", "--run-id", run_id, str(self.spec_path)],
                          run_id=run_id, threads=None)
        return _trainjob_result(child, self.runs_dir / run_id)

    def plain_keras(self) -> Run:
        run_id = self.names("keras")
        out = self.runs_dir / run_id
        child = self._run([sys.executable, str(PLAIN_KERAS), str(self.train_dir),
                           "--out-dir", str(out),
                           "--image-size", str(self.sizes.train_image_size),
                           "--batch-size", str(self.sizes.batch_size),
                           "--epochs", str(self.sizes.run_epochs), "--seed", str(SEED),
                           "--val-split", str(VAL_SPLIT)],
                          run_id=run_id, threads=available_cpus())
        result = json.loads((out / "result.json").read_text())
        return Run(child.seconds, child.peak_rss_bytes / MIB, result["val_accuracy"])

    def _run(self, argv: list[str], *, run_id: str, threads: int | None) -> Child:
        return run_child(argv, env=child_env(threads=threads), cwd=REPO,
                         log=self.logs_dir / f"{run_id}.log",
                         timeout_seconds=self.sizes.child_timeout_seconds)


def measure(train_dir: Path, sizes: Sizes, *, work_dir: Path, log: Callable[[str], None],
            precision: str = "auto") -> list[Figure]:
    """P4, M1 and P5 from ``warmups + repetitions`` rounds of the three kinds of run.

    ``precision``: the suite's ``--precision`` (``bench.specs.PRECISIONS``).
    """
    runs_dir, spec_path = prepare_runs(train_dir, sizes, work_dir=work_dir, kind="e2e",
                                       epochs=sizes.run_epochs,
                                       mixed_precision=mixed_precision_setting(precision))
    counter = itertools.count(1)
    runner = Runner(train_dir, sizes, spec_path, runs_dir, logs_dir=work_dir / "logs" / "e2e",
                    names=lambda kind: f"{kind}-{next(counter)}")
    runs = alternate({"trainjob train": runner.trainjob, "plain Keras": runner.plain_keras,
                      "trainjob local --workers 2": lambda: runner.local(2)},
                     repetitions=sizes.repetitions, warmups=sizes.warmups, log=log,
                     label="P4/M1/P5 end to end")
    return _figures(runs["trainjob train"], runs["plain Keras"],
                    runs["trainjob local --workers 2"], sizes)


def _figures(ours: list[Run], theirs: list[Run], two_workers: list[Run],
             sizes: Sizes) -> list[Figure]:
    where = {"image_size": sizes.train_image_size, "batch_size": sizes.batch_size,
             "epochs": sizes.run_epochs, "precision": ours[0].precision}
    return [
        Figure.of("P4", title=f"End to end, {sizes.run_epochs} epochs (train + save)",
                  unit="s", reference_name="plain Keras script",
                  target=(P4_TARGET if ours[0].precision == "mixed_bfloat16"
                          else P4_FLOAT32_TARGET),
                  trainjob=[r.seconds for r in ours], reference=[r.seconds for r in theirs],
                  trainjob_val_accuracy=median([r.val_accuracy for r in ours]),
                  reference_val_accuracy=median([r.val_accuracy for r in theirs]),
                  trainjob_val_accuracies=[r.val_accuracy for r in ours],
                  reference_val_accuracies=[r.val_accuracy for r in theirs], **where),
        Figure.of("M1", title="Peak RSS of the training process", unit="MiB",
                  reference_name="plain Keras script", target=M1_TARGET,
                  trainjob=[r.peak_rss_mib for r in ours],
                  reference=[r.peak_rss_mib for r in theirs], **where),
        Figure.of("P5", title="Two local workers x 1 thread, steady state", unit="images/s",
                  reference_name=f"one worker x {available_cpus()} threads",
                  target=P5_TARGET, trainjob=[r.images_per_second for r in two_workers],
                  reference=[r.images_per_second for r in ours],
                  two_worker_val_accuracies=[r.val_accuracy for r in two_workers],
                  two_worker_precision=two_workers[0].precision, **where),
    ]


def _trainjob_result(child: Child, run_dir: Path) -> Run:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "history.csv", newline="") as handle:
        later = [float(row["images_per_second"]) for row in csv.DictReader(handle)][1:]
    return Run(child.seconds, child.peak_rss_bytes / MIB, metrics["val_accuracy"],
               median(later) if later else metrics["images_per_second"],
               precision=metrics["precision"])

