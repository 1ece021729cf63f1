"""Reruns with the same run id: the same run resumes or is left alone; another is refused.

Real runs through ``trainjob train`` on the tiny sample data, one worker in-process,
and a second process where the lock is what is tested.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from job import data, fingerprint
from job import spec as spec_module
from job.run_dir import RunLock
from tests.conftest import KERAS_SAVE_WARNING, ROOT, one_error_line, succeeded, tiny_spec, train

pytestmark = [pytest.mark.usefixtures("one_local_worker"), KERAS_SAVE_WARNING]




def one_epoch(shapes_data: Path, out_dir: Path, **overrides) -> dict:
    spec = tiny_spec(shapes_data, out_dir, **overrides)
    spec["train"] = {**spec["train"], "epochs": overrides.get("train", {}).get("epochs", 1)}
    return spec


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}




@pytest.fixture(scope="module")
def finished(shapes_data, tmp_path_factory):
    """One complete one-epoch run, and the snapshot of its folder."""
    folder = tmp_path_factory.mktemp("finished")
    spec = one_epoch(shapes_data, folder / "models")
    run = succeeded(train(folder, spec, run_id="done"))
    return folder, spec, run, snapshot(run.run_dir)


# --- the same run --------------------------------------------------------------------


def test_a_rerun_of_a_complete_run_rewrites_nothing_and_says_where_the_model_is(finished):
    folder, spec, first, before = finished

    again = succeeded(train(folder, spec, run_id="done"))

    assert snapshot(first.run_dir) == before
    line = again.out.strip().splitlines()
    assert len(line) == 1, again.out
    assert "is complete" in line[0] and str(first.run_dir / "model.h5") in line[0]
    assert f"val_accuracy {first.metrics()['val_accuracy']:.4f}" in line[0]


def test_cosmetic_keys_do_not_make_a_different_run(finished, tmp_path):
    folder, spec, first, before = finished
    cosmetic = {**spec, "train": {**spec["train"], "log_every_steps": 1, "steps_per_call": 3},
                "data": {**spec["data"], "cache": "disk", "cache_dir": str(tmp_path),
                         "decode_workers": 2},
                "output": {**spec["output"], "checkpoint_every_steps": 7}}

    again = succeeded(train(tmp_path / "cosmetic", cosmetic, run_id="done"))

    assert "is complete" in again.out
    assert snapshot(first.run_dir) == before


@pytest.mark.parametrize(("section", "key", "value", "shown"), [
    ("data", "image_size", [48, 48], "data.image_size was [32, 32], now [48, 48]"),
    ("train", "learning_rate", 0.001, "train.learning_rate was 0.003, now 0.001"),
    ("train", "seed", 7, "train.seed was 1234, now 7"),
])
def test_a_rerun_with_other_weights_deciding_keys_is_refused_naming_them(
        finished, tmp_path, section, key, value, shown):
    folder, spec, first, before = finished
    changed = {**spec, section: {**spec[section], key: value}}

    again = train(tmp_path, changed, run_id="done")

    line = one_error_line(again, code=2)
    assert shown in line
    assert "--run-id" in line and "--restart" in line
    assert snapshot(first.run_dir) == before  # spec.yaml still records the old value


def test_a_rerun_on_changed_files_is_refused(shapes_data, tmp_path):
    copy = tmp_path / "data"
    subprocess.run(["cp", "-a", str(shapes_data), str(copy)], check=True)
    spec = one_epoch(copy, tmp_path / "models")
    first = succeeded(train(tmp_path, spec, run_id="files"))
    (copy / "train" / "circle" / "circle_00000.png").unlink()

    line = one_error_line(train(tmp_path, spec, run_id="files"), code=2)

    assert "files of" in line and "--restart" in line
    assert first.run_dir.joinpath("model.h5").is_file()


def test_data_moved_with_its_dates_is_the_same_run(finished, tmp_path):
    folder, spec, first, before = finished
    moved = tmp_path / "moved"
    subprocess.run(["cp", "-a", str(Path(spec["data"]["train_dir"]).parent), str(moved)],
                   check=True)
    elsewhere = tiny_spec(moved, Path(spec["output"]["dir"]), train={"epochs": 1})

    again = succeeded(train(tmp_path, elsewhere, run_id="done"))

    assert "is complete" in again.out


def test_raising_epochs_continues_and_lowering_them_below_the_trained_ones_is_refused(
        shapes_data, tmp_path):
    spec = one_epoch(shapes_data, tmp_path / "models", train={"epochs": 2})
    succeeded(train(tmp_path, spec, run_id="epochs"))
    more = {**spec, "train": {**spec["train"], "epochs": 3}}

    continued = succeeded(train(tmp_path, more, run_id="epochs"))
    fewer = train(tmp_path, {**spec, "train": {**spec["train"], "epochs": 1}}, run_id="epochs")

    assert "resumed from checkpoint" in continued.out
    assert [row["epoch"] for row in continued.history()] == ["1", "2", "3"]
    assert continued.metrics()["train_loss"] is not None
    line = one_error_line(fewer, code=2)
    assert "already trained 3 epochs" in line and "train.epochs was 3, now 1" in line


def test_restart_discards_the_old_run_and_trains_from_the_start(finished, tmp_path):
    folder, spec, first, _ = finished
    other = {**spec, "train": {**spec["train"], "learning_rate": 0.002}}
    target = tmp_path / "models"
    shutil.copytree(first.run_dir, target / "again")
    other["output"] = {**other["output"], "dir": str(target)}

    again = succeeded(train(tmp_path, other, run_id="again", args=("--restart",)))

    assert "discarded the old run" in again.out
    assert "resumed from checkpoint" not in again.out
    assert spec_module.load(again.run_dir / "spec.yaml").train.learning_rate == 0.002
    assert not list(target.glob(".again.discarded-*"))


# --- the lock ------------------------------------------------------------------------

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from job.run_dir import RunLock
    lock = RunLock.acquire(Path(sys.argv[1]), run="held")
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    """A second process that holds the lock of run ``busy`` under ``tmp_path/models``."""
    lock_path = tmp_path / "models" / ".busy.lock"
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_path)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield process
    process.kill()
    process.wait()


def test_a_second_process_on_a_run_in_use_exits_2_naming_the_holder(shapes_data, tmp_path,
                                                                      holder):
    spec = one_epoch(shapes_data, tmp_path / "models")

    line = one_error_line(train(tmp_path, spec, run_id="busy"), code=2)

    assert f"pid {holder.pid} on host {socket.gethostname()}" in line
    assert not (tmp_path / "models" / "busy").exists()


def test_the_lock_of_a_killed_holder_is_free_again(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    with RunLock.acquire(tmp_path / "models" / ".busy.lock", run="busy") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / "models" / ".busy.lock").exists()


# --- the fingerprint itself ----------------------------------------------------------


def test_the_fingerprint_covers_weight_deciding_keys_and_not_placement(shapes_data, tmp_path):
    spec = spec_module.from_dict(tiny_spec(shapes_data, tmp_path), base_dir=tmp_path)
    keys = set(fingerprint.make(spec.to_dict(), listings={})["spec"])

    assert {"data.image_size", "data.color_mode", "data.val_split", "model.backbone",
            "model.augment.flip", "train.learning_rate", "train.global_batch_size",
            "train.seed", "train.epochs", "train.mixed_precision"} <= keys
    assert not keys & {"train.log_every_steps", "data.cache", "data.cache_dir",
                       "data.decode_workers", "output.dir", "cluster.workers", "name"}


def test_the_listing_digest_sees_a_relabelled_file(shapes_data):
    items = data.list_images(shapes_data / "train", key="data.train_dir")
    relabelled = data.ImageList(items.root, items.class_names, items.paths,
                                items.labels[::-1].copy())

    assert data.listing_digest(items) != data.listing_digest(relabelled)
    assert data.listing_digest(items)["files"] == len(items)


def test_run_files_are_readable_by_other_users(finished):
    _, _, first, _ = finished
    previous = os.umask(0o022)
    os.umask(previous)
    if previous != 0o022:
        pytest.skip(f"this process's umask is {previous:o}, not the usual 022")
    for name in ("model.h5", "metrics.json", "labels.json", "history.csv", "spec.yaml",
                 "fingerprint.json"):
        assert (first.run_dir / name).stat().st_mode & 0o777 == 0o644, name
