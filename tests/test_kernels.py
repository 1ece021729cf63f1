"""TensorFlow's kernel choice: oneDNN on every x86 CPU, unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from job import kernels

CHILD = """
import json, os, sys
sys.argv = ["trainjob", sys.argv[1]]
import job.cli as cli
cli.main = lambda: print(json.dumps({"value": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                                     "loaded": "tensorflow" in sys.modules})) or 0
cli.run()
"""


def run_cli(command: str, **env: str) -> str:
    """What a trainjob command sees of the kernel switch when its work begins."""
    environment = {k: v for k, v in os.environ.items() if k != kernels.ONEDNN_ENV}
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", CHILD, command], env=environment,
                          capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


@pytest.mark.parametrize("env, expected", [
    ({}, {"TF_ENABLE_ONEDNN_OPTS": "1"}),
    ({"TF_ENABLE_ONEDNN_OPTS": "0"}, {}),
    ({"TF_ENABLE_ONEDNN_OPTS": "1"}, {}),
    ({"TF_ENABLE_ONEDNN_OPTS": ""}, {}),
])
def test_onednn_is_switched_on_unless_the_environment_already_says(env, expected):
    assert kernels.settings(env) == expected


@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "demo"])
def test_commands_that_load_tensorflow_switch_onednn_on_before_it_loads(command):
    assert run_cli(command) == '{"value": "1", "loaded": false}'


def test_a_users_choice_of_kernels_is_kept():
    assert run_cli("train", TF_ENABLE_ONEDNN_OPTS="0") == '{"value": "0", "loaded": false}'


def test_the_submitter_leaves_the_environment_alone():
    assert run_cli("status") == '{"value": null, "loaded": false}'
