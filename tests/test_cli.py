"""The command line as a user meets it: help for everything, the command's own usage on a bad
flag, and the Makefile's front door (only YAML from `make render`, IMAGE= in its messages)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from job import cli

ROOT = Path(__file__).resolve().parent.parent
SPEC_WITHOUT_IMAGE = {"name": "shapes", "data": {"train_dir": "data/train"},
                      "cluster": {"namespace": "trainjob"}}


def parsers(parser: argparse.ArgumentParser, name: str = "trainjob"
            ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """The parser and every subcommand's, with the command line that reaches each."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from parsers(sub, f"{name} {command}")


def test_every_flag_and_positional_argument_has_help_text():
    missing = []
    for name, parser in parsers(cli._parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                # Each command's one line in the list of commands.
                missing += [f"{name} {choice.dest}" for choice in action._choices_actions
                            if not (choice.help or "").strip()]
            elif not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"no help text: {missing}"


def test_the_walk_above_sees_every_command():
    names = {name for name, _ in parsers(cli._parser())}
    assert {"trainjob list", "trainjob logs", "trainjob submit", "trainjob render",
            "trainjob pull", "trainjob weights fetch"} <= names


@pytest.mark.parametrize("argv", [
    ["list", "--bogus"],
    ["logs", "shapes-x7k2p", "--bogus"],
    ["status", "shapes-x7k2p", "extra"],
    ["render", "spec.yaml", "--namespace=ml", "--bogus", "1"],
    ["weights", "fetch", "vgg16", "--bogus"],
], ids=lambda argv: " ".join(argv[:2]))
def test_an_unknown_argument_prints_the_command_s_own_usage(argv, capsys):
    with pytest.raises(SystemExit) as refused:
        cli.main(argv)

    err = capsys.readouterr().err
    command = "trainjob " + " ".join(a for a in argv[:2] if a in ("list", "logs", "status",
                                                                  "render", "weights", "fetch"))
    assert refused.value.code == 2
    assert err.startswith(f"usage: {command} "), err
    unknown = " ".join(argv[-1:] if argv[-1] != "1" else argv[-2:])
    assert err.endswith(f"{command}: error: unrecognized arguments: {unknown}\n"), err


def test_an_unknown_flag_before_the_command_prints_the_top_level_usage(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--bogus", "list"])
    err = capsys.readouterr().err
    assert err.startswith("usage: trainjob [-h]")
    assert err.endswith("trainjob: error: unrecognized arguments: --bogus\n")


@pytest.mark.parametrize("command", ["render", "submit"])
def test_a_missing_image_is_asked_for_as_the_user_gives_it(tmp_path, capsys, monkeypatch,
                                                           command):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC_WITHOUT_IMAGE))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-cluster-needed"))
    monkeypatch.delenv(cli.MAKE_TARGET_ENV, raising=False)

    assert cli.main([command, str(spec)]) == 2
    assert capsys.readouterr().err == (
        "trainjob: error: cluster.image is not set; pass --image (e.g. --image "
        "ghcr.io/you/trainjob:0.1.0) or set cluster.image in the spec to the image you built "
        "with `make image`.\n")

    monkeypatch.setenv(cli.MAKE_TARGET_ENV, f"make {command}")
    assert cli.main([command, str(spec)]) == 2
    assert f"pass IMAGE= (e.g. make {command} IMAGE=ghcr.io/you/trainjob:0.1.0)" in \
        capsys.readouterr().err


def make(*arguments: str) -> subprocess.CompletedProcess:
    """The Makefile's target, with the venv taken as set up (-o: never reinstall it here)."""
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed",
                           *arguments], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_render_prints_only_the_manifests_so_they_pipe_into_kubectl(tmp_path):
    result = make("render", f"SPEC={ROOT / 'examples' / 'shapes.yaml'}", "NAMESPACE=ml",
                  "IMAGE=registry.example.com/you/trainjob:1")

    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "Job"]
    assert {d["metadata"]["namespace"] for d in docs} == {"ml"}
    assert result.stdout.startswith("---\napiVersion: v1\n")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_names_the_image_variable_when_the_spec_has_no_image(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC_WITHOUT_IMAGE))

    result = make("render", f"SPEC={spec}")

    assert result.returncode != 0
    assert result.stdout == ""
    assert "trainjob: error: cluster.image is not set; pass IMAGE= (e.g. make render " \
           "IMAGE=ghcr.io/you/trainjob:0.1.0)" in result.stderr
