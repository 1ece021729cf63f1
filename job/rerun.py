"""What happens when a run id is used again: resume, continue, report, or refuse.

Owns: the rules for a run directory that already exists. The same run (the same
fingerprint, ``job.fingerprint``) resumes from its last checkpoint, or, when it is
complete, is reported and left as it is. Raising ``train.epochs`` continues the run.
Anything else that changes the trained weights is refused, naming the keys, with
both ways out: a new ``--run-id``, or ``--restart`` to discard the old run. The
chief holds the run's lock for the whole run, so two processes never train into
one folder.
Never touches: TensorFlow, training, what a fingerprint covers, file layout
(``job.run_dir``).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from job import fingerprint
from job.errors import RunMismatch, SpecError
from job.run_dir import RunDir, RunLock


@dataclass
class Claim:
    """This worker's hold on the run: the chief's lock, and the run's state when it began."""

    lock: RunLock | None
    complete: dict[str, Any] | None
    """metrics.json of a run that is already complete with this very spec; None: train."""
    created: bool = False
    """Whether this claim created the run folder (a failed start then removes it)."""

    def abandon(self, run: RunDir) -> None:
        """After a failure: drop what a failed save left, and a folder that never got going."""
        run.remove_temp_checkpoints()
        if self.created:
            run.remove_if_unstarted()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def claim(run: RunDir, spec, splits, *, restart: bool, multi_worker: bool) -> Claim:
    """Lock the run (chief), apply ``--restart``, check the fingerprint, record it (chief).

    Raises:
        RunInUse: another process trains this run.
        RunMismatch: the run directory holds a run with other weight-deciding keys.
        SpecError: ``--restart`` in a multi-worker run (it must happen once, before any
            worker starts: ``trainjob local --restart`` does that).
    """
    from job import data

    if restart and multi_worker:
        raise SpecError("--restart with several workers: each worker would discard the run "
                        "on its own; use `trainjob local --restart`, or delete the run "
                        "folder before starting the workers")
    lock = RunLock.acquire(run.lock_path, run=str(run.shared)) if run.is_chief else None
    try:
        if restart and run.discard():
            print(f"discarded the old run in {run.shared} (--restart)", flush=True)
        new = fingerprint.make(_spec_with_weights_file(spec), listings={
            name: data.listing_digest(getattr(splits, name)) for name in ("train", "val",
                                                                         "test")})
        complete = _check(run, new)
        created = complete is None and run.is_chief and not run.shared.exists()
        if complete is None and run.is_chief:
            run.create()
            run.write_fingerprint(new)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Claim(lock=lock, complete=complete, created=created)


def _spec_with_weights_file(spec) -> dict[str, Any]:
    """The spec as a dict, with the size and date of ``model.weights``'s file.

    The path alone would let a weights file rewritten in place pass for the same run.
    """
    spec_dict = spec.to_dict()
    if spec.model.weights is not None and str(spec.model.weights) != "imagenet":
        try:
            stat = os.stat(spec.model.weights)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stat.st_mtime))
            facts = f"{stat.st_size} bytes, modified {when}.{stat.st_mtime_ns % 10**9:09d} UTC"
        except OSError as error:
            facts = f"unreadable ({error.strerror})"
        spec_dict["model"]["weights_file"] = facts
    return spec_dict


def _check(run: RunDir, new: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse a different run; return the metrics of a complete identical one, else None."""
    old = run.read_fingerprint()
    if old is None:
        if run.shared.is_dir() and any(run.shared.iterdir()) and run.is_chief:
            print(f"warning: {run.shared} has no {run.fingerprint_path.name} (written by an "
                  "older trainjob): trusting that it holds this spec's run",
                  file=sys.stderr, flush=True)
        return None
    found = fingerprint.differences(old, new, ignore=(fingerprint.EPOCHS_KEY,))
    if found:
        raise RunMismatch(f"{run.shared} holds a different run: {fingerprint.describe(found)}; "
                          "use a new --run-id to keep both, or --restart to discard the old "
                          "run")
    _check_epochs(run, old_epochs=old["spec"].get(fingerprint.EPOCHS_KEY),
                  new_epochs=new["spec"][fingerprint.EPOCHS_KEY])
    if fingerprint.differences(old, new) or not run.is_complete():
        return None
    return run.read_metrics()


def _check_epochs(run: RunDir, *, old_epochs: Any, new_epochs: int) -> None:
    """Fewer epochs than the run already trained cannot be had without starting over."""
    if not isinstance(old_epochs, int) or new_epochs >= old_epochs:
        return
    trained = max((int(row.get("epoch") or 0) for row in run.read_history()), default=0)
    if trained > new_epochs:
        raise RunMismatch(f"{run.shared} already trained {trained} epochs: train.epochs was "
                          f"{old_epochs}, now {new_epochs}; raise train.epochs to at least "
                          f"{trained}, use a new --run-id, or --restart to train it again")


def describe_complete(run: RunDir, metrics: dict[str, Any]) -> str:
    """The one line a rerun of a complete run prints."""
    accuracy = metrics.get("val_accuracy")
    shown = f"{accuracy:.4f}" if isinstance(accuracy, (int, float)) else "unknown"
    return (f"run {run.shared.name} is complete (val_accuracy {shown}); model: "
            f"{run.model_path}; nothing to do (--restart trains it again)")


def discard(spec, run_id: str) -> None:
    """``trainjob local --restart``: discard the run once, under its lock, before any worker."""
    run = RunDir.open(spec.output.dir, run_id, is_chief=True, worker=0)
    with RunLock.acquire(run.lock_path, run=str(run.shared)):
        if run.discard():
            print(f"discarded the old run in {run.shared} (--restart)", flush=True)
