"""A calm terminal: a progress bar that fits, elapsed time and ETA, short summary lines."""

from __future__ import annotations

import io
import re

import pytest

from job import cli
from job.progress import Figures, Progress
from tests.conftest import CLUSTER_VARIABLES, ROOT, succeeded, tiny_spec, train


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def figures(**changes) -> Figures:
    values = dict(epoch=3, epochs=12, in_epoch=17, steps_per_epoch=40, loss=0.41234,
                  accuracy=0.9123, images_per_second=1812.0, elapsed=75.0, left=3725.0)
    return Figures(**{**values, **changes})


@pytest.mark.parametrize("width", [200, 100, 80, 60, 40, 24])
def test_the_bar_never_reaches_the_last_column(width):
    line = figures().bar_line(width=width)

    assert len(line) <= width - 1
    assert line.startswith("epoch 3/12 [")


def test_the_bar_shows_elapsed_time_and_eta_at_80_columns():
    line = figures().bar_line(width=80)

    assert line.endswith(" 1:15<1:02:05"), line
    assert "17/40" in line and "loss 0.4123" in line


def test_every_redraw_of_a_run_fits_80_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = Terminal()
    progress = Progress(total_steps=400, steps_per_epoch=40, every=5, out=out)

    for step in range(1, 401, 3):
        progress.step(step=step, epoch=(step - 1) // 40, loss=1.23456, accuracy=0.5,
                      images_per_second=98765.0)

    redraws = [chunk.replace("\x1b[K", "") for chunk in out.getvalue().split("\r") if chunk]
    assert redraws and all(len(chunk) <= 79 for chunk in redraws), max(redraws, key=len)


def test_log_lines_carry_the_global_step_elapsed_and_left():
    out = io.StringIO()
    progress = Progress(total_steps=40, steps_per_epoch=20, every=10, out=out)

    for step in (10, 20, 30):
        progress.step(step=step, epoch=(step - 1) // 20, loss=1.0, accuracy=0.5,
                      images_per_second=100.0)

    lines = out.getvalue().splitlines()
    assert "(global 30/40)" in lines[-1]
    assert re.search(r" \d+:\d\d<\d+:\d\d$", lines[-1]), lines[-1]
    assert lines[0].endswith(" 0:00<?")  # no pace yet at the first report


@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning:keras")
def test_a_run_s_summary_and_epoch_lines_fit_80_columns(shapes_data, tmp_path, monkeypatch):
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    run = succeeded(train(tmp_path, tiny_spec(shapes_data, tmp_path / "m"), run_id="calm"))

    own = [line for line in run.out.splitlines()
           if not line.startswith(("model: ", "metrics: ", "report: "))]  # these name paths
    assert any(line.startswith("epoch 2/2: ") for line in own)
    assert all(len(line) <= 80 for line in own), max(own, key=len)


def test_local_checks_the_batch_divides_among_the_workers_before_starting(tmp_path):
    err = io.StringIO()
    spec = tmp_path / "spec.yaml"
    spec.write_text((ROOT / "examples" / "shapes.yaml").read_text())
    monkey_out = io.StringIO()
    from contextlib import redirect_stderr, redirect_stdout

    with redirect_stdout(monkey_out), redirect_stderr(err):
        code = cli.main(["local", "--workers", "3", str(spec)])

    assert code == 2
    assert "a multiple of --workers=3" in err.getvalue()
    assert "starting" not in monkey_out.getvalue()
