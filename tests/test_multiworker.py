"""Real multi-worker training: several processes on localhost through `trainjob local`.

These runs are the loud alarm for a TensorFlow or Keras upgrade that breaks
two-worker training (the distributed path leans on their internals).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny_spec, write_spec

pytestmark = pytest.mark.slow

RUN_DEADLINE_SECONDS = 300
"""Generous bound on one multi-worker run on a busy 2-core machine; only a hang reaches it."""


class Launcher:
    """`trainjob local` in a subprocess, its output collected line by line in a thread."""

    def __init__(self, spec_path: Path, *, workers: int, max_restarts: int, run_id: str,
                 env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "job", "local", "--workers", str(workers),
             "--max-restarts", str(max_restarts), "--run-id", run_id, str(spec_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, predicate, *, timeout: float = RUN_DEADLINE_SECONDS) -> str:
        """Block until a line satisfies ``predicate``; fail with the log on timeout or exit."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                if not self._reader.is_alive() or time.monotonic() > deadline:
                    pytest.fail("expected line never came; log:\n" + self.log())
                self._changed.wait(timeout=1.0)

    def signal_worker_at_step(self, run_id: str, index: int, sig: signal.Signals, *,
                              step: int) -> None:
        """Send ``sig`` to worker ``index`` once the chief has logged global ``step`` or later."""
        self.wait_for_line(lambda line: (global_step(line) or 0) >= step)
        os.kill(worker_pid(run_id, index), sig)

    def wait(self) -> int:
        code = self.process.wait(timeout=RUN_DEADLINE_SECONDS)
        self._reader.join(timeout=10)
        return code

    def log(self) -> str:
        return "\n".join(self.lines)


def worker_pid(run_id: str, index: int) -> int:
    """The pid of worker ``index`` of run ``run_id``, found by its environment."""
    wanted = {f"TRAINJOB_RUN_ID={run_id}".encode(), f"JOB_COMPLETION_INDEX={index}".encode()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted <= environ and b"train" in cmdline:
            return int(entry.name)
    raise AssertionError(f"no worker {index} of run {run_id} is running")


def steps_logged(log: str, phrase: str) -> list[int]:
    """The N of every log line that says '<phrase> ... at step N'."""
    return [int(step) for step in re.findall(rf"{phrase}.*? at step (\d+)", log)]


def global_step(line: str) -> int | None:
    """The global step of a chief progress line ('... (global 12/40) ...'), else None."""
    if "(global " not in line:
        return None
    return int(line.split("(global ", 1)[1].split("/", 1)[0])


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {**os.environ, "TRAINJOB_SCRATCH_DIR": str(tmp_path / "scratch"),
            "TF_CPP_MIN_LOG_LEVEL": "3"}


def test_two_workers_train_to_identical_weights(shapes_data, tmp_path, env):
    out = tmp_path / "models"
    spec_path = write_spec(tmp_path, tiny_spec(shapes_data, out))
    launcher = Launcher(spec_path, workers=2, max_restarts=0, run_id="pair", env=env)
    assert launcher.wait() == 0, launcher.log()

    run = out / "pair"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["workers"] == 2
    assert metrics["replicas"] == 2
    assert metrics["steps"] == 2 * (180 // 16)
    chief_hash = (run / "weights.sha256").read_text().strip()
    worker_hash = (tmp_path / "scratch" / "worker-1" / "weights.sha256").read_text().strip()
    assert chief_hash == worker_hash == metrics["weights_sha256"]
    # Only the chief wrote the shared run directory; worker 1's model stayed in its scratch.
    # model.keras: the second of output.formats' default formats.
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["checkpoints", "fingerprint.json", "history.csv", "labels.json", "logs", "metrics.json",
         "model.h5", "model.keras", "report", "spec.yaml", "weights.sha256"])
    assert not list((run / "checkpoints").glob("*worker*"))
    assert "[worker 0]" in launcher.log() and "[worker 1]" in launcher.log()

    import keras

    model = keras.models.load_model(run / "model.h5")
    assert model.output_shape == (None, 4)


def test_two_workers_report_the_confusion_matrix_one_worker_computes(shapes_data, tmp_path,
                                                                    env):
    """Each worker evaluates its own shard; the all-reduced counts are the whole split's.

    72 validation images, 36 per worker in batches of 8 (so 4 padding images each, which
    must count nowhere), and the 40 test images: the matrices in metrics.json must equal
    the ones computed here, in one process, from model.h5 over every image. Float32, so
    that the run's predictions and model.h5's are the same arithmetic.
    """
    import keras

    from job import data, metrics
    from job import spec as spec_module

    out = tmp_path / "models"
    spec = tiny_spec(shapes_data, out, data={"val_split": 0.3},
                     train={"epochs": 1, "mixed_precision": False})
    launcher = Launcher(write_spec(tmp_path, spec), workers=2, max_restarts=0, run_id="cm",
                        env=env)
    assert launcher.wait() == 0, launcher.log()

    run = out / "cm"
    found = json.loads((run / "metrics.json").read_text())
    loaded = spec_module.load(run / "spec.yaml")
    splits = data.make_splits(loaded.data, seed=loaded.train.seed)
    model = keras.models.load_model(run / "model.h5", compile=False)
    for split in ("val", "test"):
        decoded = data.decode(getattr(splits, split), spec=loaded.data, cache_dir=None)
        predicted = model.predict(np.asarray(decoded.pixels), verbose=0).argmax(axis=1)
        expected = metrics.confusion_matrix(decoded.labels, predicted, num_classes=4)
        np.testing.assert_array_equal(np.array(found[f"{split}_confusion_matrix"]), expected)
    assert len(splits.val) == 72 and sum(map(sum, found["val_confusion_matrix"])) == 72
    # The worst-image grid is drawn from the chief's shard, and the report says so.
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert "the 36 of the 72 validation images (50%) that the chief evaluated" in page


def start_long_run(data: Path, tmp_path: Path, env: dict[str, str], *, checkpoint_every: int,
                   max_restarts: int) -> tuple[Launcher, Path, str]:
    """Two workers on a 12-epoch run, long enough to interfere with; (launcher, out, run_id)."""
    out = tmp_path / "models"
    spec = tiny_spec(data, out, train={"epochs": 12, "log_every_steps": 2},
                     output={"dir": str(out), "checkpoint_every_steps": checkpoint_every})
    run_id = f"run-{uuid.uuid4().hex[:6]}"
    launcher = Launcher(write_spec(tmp_path, spec), workers=2, max_restarts=max_restarts,
                        run_id=run_id, env=env)
    return launcher, out, run_id


def test_killed_worker_restarts_group_which_resumes_from_checkpoint(shapes_data, tmp_path, env):
    launcher, out, run_id = start_long_run(shapes_data, tmp_path, env, checkpoint_every=4,
                                           max_restarts=1)
    # Kill once a checkpoint exists (step 4) and the run is well under way.
    launcher.signal_worker_at_step(run_id, 1, signal.SIGKILL, step=10)
    assert launcher.wait() == 0, launcher.log()

    assert "restarting the group" in launcher.log()
    steps_resumed = set(steps_logged(launcher.log(), "resumed from checkpoint"))
    assert steps_resumed, launcher.log()
    assert all(step > 0 for step in steps_resumed)
    metrics = json.loads((out / run_id / "metrics.json").read_text())
    assert metrics["steps"] == 12 * (180 // 16)
    assert metrics["resumed_from_step"] in steps_resumed


def test_sigterm_saves_a_checkpoint_and_exits_retryable(shapes_data, tmp_path, env):
    # Checkpoints only at epoch ends (and on SIGTERM): the preemption save is the one we see.
    launcher, out, run_id = start_long_run(shapes_data, tmp_path, env, checkpoint_every=1000,
                                           max_restarts=0)
    launcher.signal_worker_at_step(run_id, 1, signal.SIGTERM, step=6)
    assert launcher.wait() == 75, launcher.log()

    saved = steps_logged(launcher.log(), "checkpoint saved")
    assert saved, launcher.log()
    step = saved[0]
    # Both workers stopped at the same step, and the chief's checkpoint for it is on disk.
    assert set(saved) == {step}
    assert (out / run_id / "checkpoints" / f"ckpt-{step}.index").exists()
    assert not (out / run_id / "model.h5").exists()


def test_peers_of_a_dead_worker_exit_retryable_on_their_own(shapes_data, tmp_path, env):
    """Without a launcher to stop it (as on Kubernetes), the chief notices the lost peer.

    Both workers run as plain `trainjob train` processes with the environment a pod
    gets; worker 1 is SIGKILLed mid-run and the chief must exit 75, not hang.
    """
    from job.launcher import free_ports, worker_command, worker_env

    out = tmp_path / "models"
    spec = tiny_spec(shapes_data, out, train={"epochs": 40, "log_every_steps": 2,
                                              "collective_timeout_seconds": 60})
    spec_path = write_spec(tmp_path, spec)
    ports = free_ports(2)
    command = worker_command(spec_path, run_id="orphaned", python=sys.executable)
    chief_log = tmp_path / "chief.log"
    with chief_log.open("w") as log:
        chief = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                 env=worker_env(env, index=0, num_workers=2, ports=ports,
                                                run_id="orphaned"))
        peer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=worker_env(env, index=1, num_workers=2, ports=ports,
                                               run_id="orphaned"))
        try:
            deadline = time.monotonic() + RUN_DEADLINE_SECONDS
            while max(map(lambda line: global_step(line) or 0,
                          chief_log.read_text().splitlines()), default=0) < 10:
                assert chief.poll() is None, chief_log.read_text()
                assert time.monotonic() < deadline, chief_log.read_text()
                time.sleep(0.2)  # Polling a file for a condition, not timing the test.
            peer.kill()
            code = chief.wait(timeout=RUN_DEADLINE_SECONDS)
        finally:
            for process in (chief, peer):
                if process.poll() is None:
                    process.kill()
                process.wait()
    assert code == 75, chief_log.read_text()
    assert "lost contact with a peer worker" in chief_log.read_text()


def test_two_workers_stop_early_after_the_same_epoch_with_the_same_weights(shapes_data,
                                                                          tmp_path, env):
    """The stop decision comes from all-reduced validation figures: every worker makes it
    at the same step, so none is left waiting on a collective."""
    out = tmp_path / "models"
    spec_path = write_spec(tmp_path, tiny_spec(shapes_data, out, train={
        "epochs": 5, "early_stopping": {"monitor": "val_loss", "patience": 1,
                                        "min_delta": 1.0}}))
    launcher = Launcher(spec_path, workers=2, max_restarts=0, run_id="early", env=env)
    assert launcher.wait() == 0, launcher.log()

    run = out / "early"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped_early"] is True and metrics["epochs_trained"] == 2
    assert metrics["steps"] == 2 * (180 // 16)
    chief_hash = (run / "weights.sha256").read_text().strip()
    worker_hash = (tmp_path / "scratch" / "worker-1" / "weights.sha256").read_text().strip()
    assert chief_hash == worker_hash == metrics["weights_sha256"]
