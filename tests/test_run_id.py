"""One run-id check serves train, local, render, submit and TRAINJOB_RUN_ID; names match fully.

A run id names the run directory under ``output.dir`` and, on the cluster, the Job, its
Service and its pods. An id that is a path (``../../x``, ``/abs``, ``a/b``), too long, or not a
DNS-1123 label is bad input: exit 2 with one line naming the flag or variable, before anything
is written or sent. Every name pattern matches the whole value, so ``"abc\\n"`` is refused too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from job import cli, names, spec
from job.cluster import cluster_from_env
from job.errors import EnvironmentConfigError, SpecError
from job.submit import manifests

BAD_RUN_IDS = {
    "parent path": "../../x",
    "absolute path": "{tmp}/elsewhere",
    "nested path": "a/b",
    "300 characters": "r" * 300,
    "53 characters": "r" * 53,
    "trailing newline": "run-1\n",
    "uppercase": "Run-1",
    "underscore": "run_1",
    "leading dash": "-run",
    "empty": "",
}


@pytest.fixture
def spec_path(tmp_path, monkeypatch) -> Path:
    """A valid spec whose data folder does not exist, so nothing would train even if allowed."""
    monkeypatch.delenv("TRAINJOB_RUN_ID", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    folder = tmp_path / "a" / "b" / "project"
    folder.mkdir(parents=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({
        "name": "shapes", "data": {"train_dir": "missing"},
        "output": {"dir": str(folder / "models")},
        "cluster": {"image": "ghcr.io/example/trainjob:0.1.0"}}))
    return path


def one_line_exit_2(capsys, argv: list[str]) -> str:
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""
    return captured.err


def nothing_written(tmp_path: Path) -> bool:
    """Only the spec file is there: no run directory inside or beside the project's folder."""
    files = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.is_dir()}
    return files == {"a/b/project/spec.yaml"}


@pytest.mark.parametrize("command", ["train", "local", "render", "submit"])
@pytest.mark.parametrize("run_id", BAD_RUN_IDS.values(), ids=BAD_RUN_IDS.keys())
def test_bad_run_id_flag_is_one_line_and_writes_nothing(tmp_path, capsys, spec_path, command,
                                                        run_id):
    run_id = run_id.format(tmp=tmp_path)
    err = one_line_exit_2(capsys, [command, str(spec_path), f"--run-id={run_id}"])
    assert "--run-id=" in err
    assert "DNS-1123 label" in err and f"at most {names.RUN_ID_MAX_LENGTH}" in err
    assert len(err) < 400
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("run_id", ["../../x", "a/b", "r" * 300, "run-1\n"],
                         ids=["parent path", "nested path", "300 characters", "newline"])
def test_bad_trainjob_run_id_variable_is_named(tmp_path, capsys, spec_path, monkeypatch, run_id):
    monkeypatch.setenv("TRAINJOB_RUN_ID", run_id)
    err = one_line_exit_2(capsys, ["train", str(spec_path)])
    assert "TRAINJOB_RUN_ID=" in err and "--run-id" not in err.split("=")[0]
    assert nothing_written(tmp_path)


def test_run_id_flag_wins_over_the_variable(tmp_path, capsys, spec_path, monkeypatch):
    monkeypatch.setenv("TRAINJOB_RUN_ID", "fine-id")
    err = one_line_exit_2(capsys, ["train", str(spec_path), "--run-id", "../x"])
    assert err.startswith("trainjob: error: --run-id='../x'")


@pytest.mark.parametrize("run_id", ["shapes", "a", "shapes-x7k2p", "0run", "r" * 52])
def test_good_run_ids_pass(run_id):
    names.check_run_id(run_id)
    manifests.check_run_id(run_id)


@pytest.mark.parametrize("run_id", BAD_RUN_IDS.values(), ids=BAD_RUN_IDS.keys())
def test_check_run_id_refuses_bad_ids_with_a_short_excerpt(run_id):
    run_id = run_id.format(tmp="/tmp")
    with pytest.raises(SpecError, match=r"^TRAINJOB_RUN_ID=") as caught:
        names.check_run_id(run_id, source="TRAINJOB_RUN_ID")
    assert len(str(caught.value)) < 330


def test_render_and_new_run_id_refuse_a_trailing_newline(tmp_path):
    with pytest.raises(SpecError, match="--run-id"):
        manifests.check_run_id("shapes-x7k2p\n")
    with pytest.raises(SpecError, match="name="):
        manifests.new_run_id("shapes\n")


@pytest.mark.parametrize("key", ["name", "cluster.namespace", "cluster.queue",
                                 "cluster.service_account", "cluster.models_volume.claim"])
def test_spec_names_with_a_trailing_newline_are_refused(tmp_path, key):
    document = {"name": "shapes", "data": {"train_dir": "d"},
                "cluster": {"models_volume": {"claim": "models", "mount": "/models"}}}
    *parents, last = key.split(".")
    node = document
    for part in parents:
        node = node[part]
    node[last] = "fine\n"
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        spec.from_dict(document, base_dir=tmp_path)


def test_spec_quantity_with_a_trailing_newline_is_refused(tmp_path):
    document = {"name": "shapes", "data": {"train_dir": "d"}, "cluster": {"cpu": "4\n"}}
    with pytest.raises(SpecError, match=r"cluster\.cpu"):
        spec.from_dict(document, base_dir=tmp_path)


def test_cluster_address_with_a_trailing_newline_is_refused():
    env = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["w0:2222\n", "w1:2222"]},
                                    "task": {"type": "worker", "index": 0}})}
    with pytest.raises(EnvironmentConfigError, match="w0:2222"):
        cluster_from_env(env)

