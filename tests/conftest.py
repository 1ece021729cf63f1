"""Shared fixtures: the sample dataset (drawn once per session) and spec writing."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

# Quiet TensorFlow's C++ logs in every test process and its children.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A shell may start a background job with SIGINT ignored, and every process it starts
# inherits that; the Ctrl-C tests need Python's own handler here and in their children.
signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """A small copy of the bundled sample data: 4 classes x 60 train + 10 test images, 32 px."""
    from job import sample_data

    root = tmp_path_factory.mktemp("shapes")
    return sample_data.generate(root / "data", images_per_class=60, test_per_class=10,
                                image_size=32)


def write_spec(folder: Path, spec: dict) -> Path:
    """Write ``spec`` as YAML into ``folder``/spec.yaml and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tiny_spec(data_root: Path, out_dir: Path, **overrides) -> dict:
    """A spec that trains in seconds on ``shapes_data``; sections in ``overrides`` are merged."""
    spec = {
        "name": "tiny",
        "data": {"train_dir": str(data_root / "train"), "test_dir": str(data_root / "test"),
                 "image_size": [32, 32], "val_split": 0.25, "decode_workers": 1},
        "model": {"augment": {"flip": "none"}},
        "train": {"epochs": 2, "global_batch_size": 16, "learning_rate": 0.003,
                  "log_every_steps": 5},
        "output": {"dir": str(out_dir), "checkpoint_every_steps": 4},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            spec[section] = {**spec.get(section, {}), **values}
        else:
            spec[section] = values
    return spec


KERAS_SAVE_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning:keras")
"""Keras's HDF5 writer trips numpy 2's copy-keyword deprecation once per weight: noise."""

CLUSTER_VARIABLES = ("TF_CONFIG", "JOB_COMPLETION_INDEX", "TRAINJOB_WORKERS",
                     "TRAINJOB_WORKER_HOSTS", "TRAINJOB_RUN_ID")


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str
    run_dir: Path

    def metrics(self) -> dict:
        return json.loads((self.run_dir / "metrics.json").read_text())

    def history(self) -> list[dict[str, str]]:
        with (self.run_dir / "history.csv").open(newline="") as handle:
            return list(csv.DictReader(handle))


def train(folder: Path, spec: dict, *, run_id: str, args: tuple[str, ...] = ()) -> Run:
    """Write ``spec`` in ``folder`` and run ``trainjob train`` on it, capturing its output."""
    from job import cli

    path = write_spec(folder, spec)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["train", str(path), "--run-id", run_id, *args])
    return Run(code, out.getvalue(), err.getvalue(), Path(spec["output"]["dir"]) / run_id)


def succeeded(run: Run) -> Run:
    assert run.code == 0, f"exit {run.code}\nstdout:\n{run.out}\nstderr:\n{run.err}"
    return run


@pytest.fixture(scope="module")
def one_local_worker():
    """Train as a single worker whatever the shell exports (module-wide, so module-scoped
    fixtures that train see it too)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in CLUSTER_VARIABLES:
            patch.delenv(name, raising=False)
        yield


def one_error_line(run: Run, *, code: int) -> str:
    """The run's one ``trainjob: error:`` line (warnings aside), after checking its exit code
    and that no traceback was printed."""
    assert run.code == code, f"exit {run.code}\n{run.out}\n{run.err}"
    assert "Traceback" not in run.err
    errors = [line for line in run.err.splitlines() if not line.startswith("warning: ")]
    assert len(errors) == 1 and errors[0].startswith("trainjob: error: "), run.err
    return errors[0]
