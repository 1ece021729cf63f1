"""TensorFlow's C++ start-up chatter is filtered out of stderr; our own lines are not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from job import tf_logs
from tests.conftest import CLUSTER_VARIABLES, ROOT, tiny_spec, write_spec

FILTER = textwrap.dedent("""
    import os, sys
    from job import tf_logs
    restore = tf_logs.hide()
    os.write(2, b"I0000 00:00:1796074826.506094   13312 cpu_feature_guard.cc:227] noise\\n")
    os.write(2, b"2026-11-30 21:00:00.123456: W tensorflow/core/x.cc:12] noise\\n")
    print("ours, first", file=sys.stderr, flush=True)
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are"
                b" written to STDERR\\nours, second\\nno newline at the end")
    restore()
    print("after restore", file=sys.stderr)
""")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


def test_tensorflow_lines_are_dropped_and_ours_pass_in_order():
    done = run_python(FILTER)

    assert done.stderr == "ours, first\nours, second\nno newline at the endafter restore\n"


def test_trainjob_tf_logs_1_shows_everything():
    done = run_python(FILTER, **{tf_logs.SHOW_ENV: "1"})

    assert done.stderr.count("noise") == 2 and "absl::InitializeLog" in done.stderr


@pytest.mark.slow
def test_a_training_run_prints_its_warnings_and_none_of_tensorflow_s(shapes_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_data / "train", data / "train")
    (data / "train" / "circle" / "broken.png").write_bytes(b"not a png")
    spec = write_spec(tmp_path, tiny_spec(data, tmp_path / "models",
                                          data={"test_dir": None}, train={"epochs": 1}))
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARIABLES}
    env.pop(tf_logs.SHOW_ENV, None)

    quiet = subprocess.run([sys.executable, "-m", "job", "train", str(spec)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)

    assert quiet.returncode == 0, quiet.stderr
    assert "warning: skipping unreadable image" in quiet.stderr
    assert not [line for line in quiet.stderr.splitlines()
                if tf_logs.NOISE.match(line.encode())], quiet.stderr
