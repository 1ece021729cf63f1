"""Runs that go wrong: a diverging loss, storage that refuses, damaged checkpoints, Ctrl-C.

Each ends in one line and a documented exit code, and leaves nothing half-written.
Full and read-only disks are real: small tmpfs mounts (root only; skipped elsewhere).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from job import atomic
from job.run_dir import RunDir
from tests.conftest import (
    CLUSTER_VARIABLES,
    KERAS_SAVE_WARNING,
    ROOT,
    one_error_line,
    succeeded,
    tiny_spec,
    train,
    write_spec,
)

pytestmark = [pytest.mark.usefixtures("one_local_worker"), KERAS_SAVE_WARNING]






class Mount:
    """A small tmpfs at ``path``: a disk that fills, or one that turns read-only."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(path)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root")

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def mount(tmp_path):
    mounts = []

    def make(size: str) -> Mount:
        mounts.append(Mount(tmp_path / f"disk{len(mounts)}", size))
        return mounts[-1]

    yield make
    for m in mounts:
        m.unmount()


# --- divergence ----------------------------------------------------------------------


def nan_weights(tmp_path: Path) -> Path:
    """Full-model weights of the tiny spec's small_cnn, one kernel poisoned with NaN."""
    from job.model import build_model
    from job.spec import AugmentSpec, ModelSpec

    model = build_model(input_shape=(32, 32, 3), num_classes=4, seed=1, model=ModelSpec(
        backbone="small_cnn", weights=None, dropout=0.0, augment=AugmentSpec(flip="none")))
    kernel = next(w for w in model.weights if w.path.endswith("kernel"))
    kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))
    path = tmp_path / "poisoned.weights.h5"
    model.save_weights(path)
    return path


def test_a_diverging_loss_stops_with_exit_1_and_exports_nothing(shapes_data, tmp_path):
    spec = tiny_spec(shapes_data, tmp_path / "models",
                     model={"weights": str(nan_weights(tmp_path)), "augment": {"flip": "none"}},
                     train={"steps_per_call": 1})

    run = train(tmp_path, spec, run_id="nan")

    line = one_error_line(run, code=1)
    assert "training diverged" in line and "by step 1 (epoch 1)" in line
    assert "train.learning_rate" in line
    for name in ("model.h5", "metrics.json"):
        assert not (run.run_dir / name).exists(), name
    assert not list(run.run_dir.glob("checkpoints/ckpt-*"))


def test_metrics_json_is_strict_json_even_for_non_finite_numbers(tmp_path):
    run = RunDir.open(tmp_path, "r", is_chief=True, worker=0)
    run.create()

    path = run.write_json("metrics.json", {"val_loss": math.nan, "rates": [math.inf, 1.0]})

    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {
        "val_loss": None, "rates": [None, 1.0]}


# --- storage -------------------------------------------------------------------------


def test_an_output_dir_that_is_a_file_exits_2_naming_it(shapes_data, tmp_path):
    in_the_way = tmp_path / "models"
    in_the_way.write_text("not a folder")

    line = one_error_line(train(tmp_path, tiny_spec(shapes_data, in_the_way), run_id="x"),
                          code=2)

    assert str(in_the_way) in line and "move it, or set output.dir" in line
    assert in_the_way.read_text() == "not a folder"


def test_an_output_dir_name_too_long_for_the_file_system_exits_2(shapes_data, tmp_path):
    too_long = tmp_path / ("d" * 300)

    line = one_error_line(train(tmp_path, tiny_spec(shapes_data, too_long), run_id="x"),
                          code=2)

    assert "File name too long" in line and "shorter" in line


def test_a_read_only_output_dir_exits_2_naming_it(shapes_data, tmp_path, mount):
    disk = mount("1m")
    disk.remount("ro")

    line = one_error_line(train(tmp_path, tiny_spec(shapes_data, disk.path), run_id="ro"),
                          code=2)

    assert str(disk.path) in line and "Read-only file system" in line


def test_a_disk_that_fills_mid_run_exits_2_leaves_no_debris_and_resumes_after(
        shapes_data, tmp_path, mount):
    disk = mount("3500k")  # one 2.3 MB checkpoint fits, a second does not
    # export_model: last keeps no copy of the best weights, so a checkpoint is 2.3 MB.
    spec = tiny_spec(shapes_data, disk.path, train={"epochs": 1},
                     output={"export_model": "last"})

    full = train(tmp_path, spec, run_id="full")

    line = one_error_line(full, code=2)
    assert "No space left on device" in line and "resume" in line
    checkpoints = full.run_dir / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if p.name.endswith("_temp")]
    assert sorted(p.name for p in checkpoints.glob("ckpt-*.index")) == ["ckpt-4.index"]
    assert not (full.run_dir / "model.h5").exists()

    disk.remount("size=64m")
    resumed = succeeded(train(tmp_path, spec, run_id="full"))
    assert "resumed from checkpoint ckpt-4 at step 4" in resumed.out


def test_atomic_writes_flush_the_file_and_its_folder(tmp_path, monkeypatch):
    flushed = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    target = tmp_path / "metrics.json"

    with atomic.replacing(target) as tmp:
        tmp.write_text("{}")

    assert flushed[0] == str(tmp) and flushed[-1] == str(tmp_path)
    assert target.stat().st_mode & 0o777 == atomic.new_file_mode()


# --- damaged checkpoints -------------------------------------------------------------


@pytest.fixture
def checkpointed(shapes_data, tmp_path):
    """A complete one-epoch run with checkpoints at steps 4, 8 and 11."""
    spec = tiny_spec(shapes_data, tmp_path / "models", train={"epochs": 1})
    first = succeeded(train(tmp_path, spec, run_id="ck"))
    names = sorted(p.name for p in (first.run_dir / "checkpoints").glob("ckpt-*.index"))
    assert names == ["ckpt-11.index", "ckpt-4.index", "ckpt-8.index"]
    return spec, first.run_dir / "checkpoints"


@pytest.mark.parametrize("damaged", ["ckpt-11.index", "ckpt-11.data-00000-of-00001"])
def test_a_truncated_newest_checkpoint_falls_back_to_the_older_one(tmp_path, checkpointed,
                                                                   damaged):
    spec, checkpoints = checkpointed
    with (checkpoints / damaged).open("r+b") as handle:
        handle.truncate(40)
    more = {**spec, "train": {**spec["train"], "epochs": 2}}

    run = succeeded(train(tmp_path, more, run_id="ck"))

    assert f"cannot read checkpoint {checkpoints / 'ckpt-11'}" in run.err
    assert "resumed from checkpoint ckpt-8 at step 8" in run.out
    assert run.metrics()["steps"] == 22


def test_when_no_checkpoint_can_be_read_the_run_fails_naming_the_folder(tmp_path,
                                                                        checkpointed):
    spec, checkpoints = checkpointed
    for index in checkpoints.glob("ckpt-*.index"):
        index.write_bytes(b"")
    more = {**spec, "train": {**spec["train"], "epochs": 2}}

    line = one_error_line(train(tmp_path, more, run_id="ck"), code=1)

    assert str(checkpoints) in line and "--restart" in line


# --- interrupts ----------------------------------------------------------------------


def test_a_ctrl_c_that_escapes_the_command_exits_130_without_a_traceback():
    # main() handles Ctrl-C during a command; this is one that lands while it prints
    # its last line (a second press), which reaches run() itself.
    code = ("import job.cli as cli\n"
            "def interrupted(argv=None):\n"
            "    raise KeyboardInterrupt\n"
            "cli.main = interrupted\n"
            "cli.run()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)

    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr


def test_ctrl_c_while_a_run_decodes_exits_130_without_finishing_the_decode(tmp_path):
    """Ctrl-C lands while the shard still decodes (TensorFlow has loaded by then):
    the run stops at once instead of decoding the rest of the shard first, which it
    would show by finishing the disk cache."""
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (6000, 6000), (200, 30, 30)).save(big, compress_level=1)
    for label in ("a", "b"):
        (tmp_path / "train" / label).mkdir(parents=True)
        for i in range(90):  # copies, not links: a linked file is listed once
            shutil.copyfile(big, tmp_path / "train" / label / f"{i}.png")
    cache = tmp_path / "cache"
    spec = write_spec(tmp_path, {
        "name": "slow", "data": {"train_dir": "train", "image_size": [32, 32], "cache": "disk",
                                 "cache_dir": str(cache), "decode_workers": 1},
        "output": {"dir": "models"}})
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARIABLES}
    process = subprocess.Popen([sys.executable, "-m", "job", "train", str(spec)], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    for line in process.stdout:
        if ": run slow:" in line:
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)

    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert not list(cache.glob("*.json")), "the decode ran to the end after Ctrl-C"
    assert not list(cache.glob("*")), "a half-written cache file was left behind"


# --- data a model cannot learn -------------------------------------------------------


def test_a_class_whose_training_images_are_all_unreadable_is_refused_before_training(
        shapes_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_data / "train", data / "train")
    for image in (data / "train" / "star").iterdir():
        image.write_bytes(b"not an image at all")
    spec = tiny_spec(data, tmp_path / "models", data={"test_dir": None})

    run = train(tmp_path, spec, run_id="blind")

    line = one_error_line(run, code=2)
    assert "'star'" in line and "no readable training images" in line
    assert not run.run_dir.exists()


def test_a_class_without_validation_images_is_a_warning(shapes_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_data / "train", data / "train")
    shutil.copytree(shapes_data / "test", data / "val")
    for image in (data / "val" / "circle").iterdir():
        image.write_bytes(b"")
    spec = tiny_spec(data, tmp_path / "models", data={"val_dir": str(data / "val"),
                                                      "test_dir": None},
                     train={"epochs": 1})

    run = succeeded(train(tmp_path, spec, run_id="unmeasured"))

    assert "warning: class 'circle' has no readable validation images" in run.err
