"""trainjob local: worker environment, log prefixing, exit codes, group restart, Ctrl-C.

The workers here are tiny fake Python scripts written into tmp_path; they read the
environment the launcher gives them and exit, hang or kill themselves on cue. They
coordinate through files in tmp_path (polled with a deadline), never through sleeps.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from job.cluster import cluster_from_env, indexed_job_env
from job.errors import EXIT_CODES, EnvironmentConfigError, RunFailed
from job.launcher import (
    LaunchOptions,
    classify,
    describe_exit,
    free_ports,
    run_local,
    worker_command,
    worker_env,
)

DEADLINE_SECONDS = 60.0
"""Upper bound for a file or process state a test waits for; reached only on a bug."""

FAKE_PREAMBLE = '''
import json, os, signal, subprocess, sys, time
from pathlib import Path

index = int(os.environ["JOB_COMPLETION_INDEX"])
shared = Path(sys.argv[1])


def mark(name, text=""):
    """Write a file atomically, so a poller never reads half of it."""
    temp = shared / f".{name}.{os.getpid()}.tmp"
    temp.write_text(text)
    temp.rename(shared / name)


def wait_for(name):
    deadline = time.monotonic() + 60
    while not (shared / name).exists():
        if time.monotonic() > deadline:
            sys.exit(99)
        time.sleep(0.01)


def start():
    """Record this start with its environment; return the attempt number (1, 2, ...)."""
    attempt = 1
    while (shared / f"start-{index}-{attempt}").exists():
        attempt += 1
    mark(f"start-{index}-{attempt}", json.dumps(dict(os.environ)))
    return attempt


def hang():
    while True:
        time.sleep(3600)
'''


def fake_worker(tmp_path: Path, body: str) -> list[str]:
    """The command line of a fake worker running ``body`` after the preamble."""
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_PREAMBLE + textwrap.dedent(body))
    return [sys.executable, str(script), str(tmp_path)]


class ChoppyStream(io.StringIO):
    """A stream that, like a pipe or terminal under load, may let other threads run in
    the middle of one write; writers that do not hold a lock interleave on it."""

    def write(self, text: str) -> int:
        middle = len(text) // 2
        super().write(text[:middle])
        time.sleep(0)  # yield the GIL mid-write (not synchronisation)
        return middle + super().write(text[middle:])


def launch(tmp_path: Path, body: str, *, workers: int = 2, max_restarts: int = 0,
           grace_seconds: float = 10.0, **options) -> tuple[int, list[str]]:
    out = ChoppyStream()
    options = LaunchOptions(grace_seconds=grace_seconds, command=fake_worker(tmp_path, body),
                            **options)
    code = run_local(tmp_path / "spec.yaml", workers=workers, max_restarts=max_restarts,
                     run_id="run-1", out=out, options=options)
    return code, out.getvalue().splitlines()


def starts(tmp_path: Path, index: int) -> list[dict[str, str]]:
    """The environments worker ``index`` was started with, one per attempt."""
    found = []
    while (tmp_path / f"start-{index}-{len(found) + 1}").exists():
        found.append(json.loads((tmp_path / f"start-{index}-{len(found) + 1}").read_text()))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # A zombie still answers kill(0) but is dead; its parent just has not reaped it.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def survivors(pids: list[int]) -> list[int]:
    """The pids still alive once each had until the deadline to die."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [pid for pid in pids if alive(pid)]


def wait_for_files(paths: list[Path]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not all(path.exists() for path in paths):
        assert time.monotonic() < deadline, f"never appeared: {paths}"
        time.sleep(0.02)


# --- pure builders -----------------------------------------------------------------------


def test_worker_command_runs_the_job_cli_with_the_run_id():
    assert worker_command(Path("specs/a.yaml"), run_id="a-1", python="/usr/bin/python3") == [
        "/usr/bin/python3", "-m", "job", "train", "specs/a.yaml", "--run-id", "a-1"]


def test_worker_env_sets_the_cluster_contract_and_drops_tf_config():
    base = {"PATH": "/bin", "TF_CONFIG": '{"cluster": {}}', "JOB_COMPLETION_INDEX": "7"}

    env = worker_env(base, index=1, num_workers=2, ports=[4001, 4002], run_id="r-9", cores=4)

    assert env["JOB_COMPLETION_INDEX"] == "1"
    assert env["TRAINJOB_WORKERS"] == "2"
    assert env["TRAINJOB_WORKER_HOSTS"] == "127.0.0.1:4001,127.0.0.1:4002"
    assert env["TRAINJOB_RUN_ID"] == "r-9"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"] == "/bin"
    assert "TF_CONFIG" not in env
    assert base["TF_CONFIG"] == '{"cluster": {}}' and base["JOB_COMPLETION_INDEX"] == "7"


@pytest.mark.parametrize("cores, num_workers, threads", [(8, 2, "4"), (8, 3, "2"), (2, 2, "1"),
                                                         (2, 4, "1"), (1, 1, "1")])
def test_worker_env_shares_cpu_threads_fairly(cores, num_workers, threads):
    env = worker_env({}, index=0, num_workers=num_workers, ports=list(range(num_workers)),
                     run_id="r", cores=cores)

    assert [env[name] for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                                   "OMP_NUM_THREADS")] == [threads] * 3


def test_worker_env_keeps_thread_counts_the_user_set():
    env = worker_env({"OMP_NUM_THREADS": "3"}, index=0, num_workers=2, ports=[1, 2],
                     run_id="r", cores=8)

    assert env["OMP_NUM_THREADS"] == "3"
    assert env["TF_NUM_INTRAOP_THREADS"] == "4"


def test_worker_env_is_read_back_by_cluster_discovery():
    for index in range(3):
        cluster = cluster_from_env(worker_env({}, index=index, num_workers=3,
                                              ports=[5001, 5002, 5003], run_id="r", cores=2))

        assert (cluster.index, cluster.num_workers, cluster.is_chief) == (index, 3, index == 0)
        assert cluster.worker_addresses == ("127.0.0.1:5001", "127.0.0.1:5002",
                                            "127.0.0.1:5003")


def test_worker_env_sets_the_env_contract_with_every_worker_on_this_machine():
    env = worker_env({}, index=1, num_workers=2, ports=[4001, 4002], run_id="r-9", cores=4)

    assert indexed_job_env(num_workers=2, index=1, run_id="r-9",
                           hosts=["127.0.0.1:4001", "127.0.0.1:4002"]).items() <= env.items()


def test_worker_env_refuses_ports_that_do_not_match_the_worker_count():
    with pytest.raises(ValueError, match="num_workers=3"):
        worker_env({}, index=0, num_workers=3, ports=[1, 2], run_id="r", cores=1)


@pytest.mark.parametrize("returncode, kind, description", [
    (0, "ok", "exited with 0"),
    (1, "permanent", "exited with 1"),
    (2, "permanent", "exited with 2"),
    (75, "retryable", "exited with 75"),
    (-9, "retryable", "was killed by SIGKILL"),
    (-15, "retryable", "was killed by SIGTERM"),
    (137, "retryable", "exited with 137 (SIGKILL)"),
    (130, "interrupted", "exited with 130 (SIGINT)"),
    (3, "unexplained", "exited with 3"),
    (255, "unexplained", "exited with 255"),
])
def test_exit_codes_follow_the_cluster_contract(returncode, kind, description):
    assert classify(returncode) == kind
    assert describe_exit(returncode) == description


@pytest.mark.parametrize("row", EXIT_CODES, ids=lambda row: str(row.code))
def test_the_launcher_treats_each_code_of_the_exit_table_as_its_kind(row):
    assert classify(row.code) == row.kind


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(4)

    assert len(set(ports)) == 4
    assert all(1024 <= port <= 65535 for port in ports)


# --- processes -----------------------------------------------------------------------------


def test_all_workers_exiting_zero_returns_zero(tmp_path):
    code, lines = launch(tmp_path, """
        start()
        print(f"hello from {index}")
    """)

    assert code == 0
    assert "[worker 0] hello from 0" in lines and "[worker 1] hello from 1" in lines
    assert lines[-1] == "trainjob local: all workers finished"


def test_workers_get_the_cluster_environment(tmp_path):
    code, _ = launch(tmp_path, "start()", workers=3, extra_env={
        "TF_CONFIG": json.dumps({"cluster": {"worker": ["x:1"]},
                                 "task": {"type": "worker", "index": 0}}),
        "OMP_NUM_THREADS": "5", "CUSTOM_FLAG": "on"})

    envs = [starts(tmp_path, index)[0] for index in range(3)]
    assert code == 0
    hosts = envs[0]["TRAINJOB_WORKER_HOSTS"].split(",")
    assert len({host.rsplit(":", 1)[1] for host in hosts}) == 3
    for index, env in enumerate(envs):
        assert env["JOB_COMPLETION_INDEX"] == str(index)
        assert env["TRAINJOB_WORKERS"] == "3"
        assert env["TRAINJOB_WORKER_HOSTS"] == envs[0]["TRAINJOB_WORKER_HOSTS"]
        assert env["TRAINJOB_RUN_ID"] == "run-1"
        assert "TF_CONFIG" not in env
        assert env["OMP_NUM_THREADS"] == "5" and env["CUSTOM_FLAG"] == "on"
        assert int(env["TF_NUM_INTRAOP_THREADS"]) >= 1
        cluster = cluster_from_env(env)
        assert (cluster.index, cluster.num_workers) == (index, 3)
        assert cluster.worker_addresses == tuple(hosts)


def test_log_lines_are_prefixed_whole_and_in_order(tmp_path):
    code, lines = launch(tmp_path, """
        for n in range(300):
            os.write(1 + n % 2, f"{index}:{n}:{'x' * 2000}\\n".encode())
        os.write(2, f"tail {index} without newline".encode())
    """)

    assert code == 0
    worker_lines = [line for line in lines if line.startswith("[worker")]
    assert len(worker_lines) == 2 * 301
    seen: dict[int, list[int]] = {0: [], 1: []}
    for line in worker_lines:
        tail = re.fullmatch(r"\[worker (\d)\] tail (\d) without newline", line)
        if tail:
            assert tail[1] == tail[2]
            continue
        match = re.fullmatch(r"\[worker (\d)\] (\d):(\d+):x{2000}", line)
        assert match and match[1] == match[2], line[:80]
        seen[int(match[1])].append(int(match[3]))
    assert seen == {0: list(range(300)), 1: list(range(300))}


@pytest.mark.parametrize("permanent_code", [1, 2])
def test_permanent_exit_stops_the_group_and_is_returned(tmp_path, permanent_code):
    code, lines = launch(tmp_path, f"""
        start()
        if index == 1:
            wait_for("start-0-1")
            sys.exit({permanent_code})
        hang()
    """, max_restarts=3)

    assert code == permanent_code
    assert f"trainjob local: worker 1 exited with {permanent_code} (permanent); stopped the group" \
        in lines
    assert not any("restarting" in line for line in lines)
    assert len(starts(tmp_path, 0)) == len(starts(tmp_path, 1)) == 1


def test_unexplained_exit_code_is_a_permanent_failure(tmp_path):
    code, lines = launch(tmp_path, """
        start()
        sys.exit(3 if index == 1 else 0)
    """, max_restarts=3)

    assert code == 1
    assert len(starts(tmp_path, 1)) == 1
    assert any("worker 1 exited with 3 (not a trainjob exit code" in line for line in lines)


def test_retryable_exit_restarts_the_whole_group_with_the_same_run_id(tmp_path):
    code, lines = launch(tmp_path, """
        attempt = start()
        if attempt == 1 and index == 1:
            wait_for("start-0-1")
            sys.exit(75)
        if attempt == 1:
            hang()
    """, max_restarts=3)

    assert code == 0
    restart = "trainjob local: worker 1 exited with 75 (retryable); restarting the group " \
              "(attempt 2 of 4)"
    assert lines.count(restart) == 1
    assert lines[-1] == "trainjob local: all workers finished"
    for index in range(2):
        envs = starts(tmp_path, index)
        assert len(envs) == 2
        assert {env["TRAINJOB_RUN_ID"] for env in envs} == {"run-1"}


def test_worker_killed_by_a_signal_is_restarted(tmp_path):
    code, lines = launch(tmp_path, """
        attempt = start()
        if attempt == 1 and index == 0:
            os.kill(os.getpid(), signal.SIGKILL)
    """, max_restarts=1)

    assert code == 0
    assert "trainjob local: worker 0 was killed by SIGKILL (retryable); restarting the group " \
           "(attempt 2 of 2)" in lines
    assert len(starts(tmp_path, 0)) == 2


def test_always_retryable_returns_75_after_max_restarts_plus_one_attempts(tmp_path):
    code, lines = launch(tmp_path, """
        attempt = start()
        if index == 1:
            wait_for(f"start-0-{attempt}")  # so both workers' starts are on record
            sys.exit(75)
    """, max_restarts=2)

    assert code == 75
    assert len(starts(tmp_path, 0)) == len(starts(tmp_path, 1)) == 3
    assert sum("restarting the group" in line for line in lines) == 2
    assert "no restarts left after 3 attempt(s)" in lines[-1]


def test_peers_of_a_failed_worker_get_sigterm_first_so_they_can_checkpoint(tmp_path):
    code, lines = launch(tmp_path, """
        def on_sigterm(signum, frame):
            mark(f"terminated-{index}")
            sys.exit(75)

        signal.signal(signal.SIGTERM, on_sigterm)
        start()
        if index == 1:
            wait_for("start-0-1")
            sys.exit(2)
        hang()
    """, grace_seconds=DEADLINE_SECONDS)

    assert code == 2
    assert (tmp_path / "terminated-0").exists()
    assert not any("did not stop" in line for line in lines)


def test_hung_worker_and_its_children_are_killed_after_the_grace_period(tmp_path):
    code, lines = launch(tmp_path, """
        start()
        if index == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the child too
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            mark("pids-0", f"{os.getpid()} {child.pid}")
            hang()
        wait_for("pids-0")
        sys.exit(75)
    """, max_restarts=0, grace_seconds=0.5)

    pids = [int(pid) for pid in (tmp_path / "pids-0").read_text().split()]
    assert code == 75
    assert "trainjob local: worker 0 did not stop within 0.5s of SIGTERM; killing it" in lines
    assert survivors(pids) == []


LAUNCHER_SCRIPT = """
import signal, sys
# A shell may start background jobs with SIGINT ignored; the test needs Python's default.
signal.signal(signal.SIGINT, signal.default_int_handler)
from job.launcher import LaunchOptions, run_local
sys.exit(run_local("spec.yaml", workers=2, max_restarts=3, run_id="run-1",
                   options=LaunchOptions(grace_seconds=2, command=sys.argv[1:])))
"""


@pytest.mark.parametrize("signum, expected_code, expected_line", [
    (signal.SIGINT, 130, "trainjob local: interrupted; all workers stopped"),
    (signal.SIGTERM, 75, "trainjob local: terminated; all workers stopped"),
])
def test_interrupting_the_launcher_stops_every_worker(tmp_path, signum, expected_code,
                                                     expected_line):
    command = fake_worker(tmp_path, """
        start()
        if index == 1:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a straggler needing SIGKILL
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        mark(f"pids-{index}", f"{os.getpid()} {child.pid}")
        hang()
    """)
    log = tmp_path / "launcher.log"
    with log.open("wb") as stdout:
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER_SCRIPT, *command],
                                    stdout=stdout, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        pid_files = [tmp_path / "pids-0", tmp_path / "pids-1"]
        wait_for_files(pid_files)
        launcher.send_signal(signum)
        try:
            code = launcher.wait(timeout=DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail("the launcher hung after the signal:\n" + log.read_text())
    finally:
        if launcher.poll() is None:
            launcher.kill()

    pids = [int(pid) for path in pid_files for pid in path.read_text().split()]
    lines = log.read_text().splitlines()
    assert code == expected_code, lines
    assert any(line.startswith(expected_line) for line in lines)
    assert survivors(pids) == []
    assert len(starts(tmp_path, 0)) == 1


def test_bad_options_are_bad_input(tmp_path):
    with pytest.raises(EnvironmentConfigError, match="--workers=0"):
        run_local(tmp_path / "s.yaml", workers=0, max_restarts=0, run_id="r")
    with pytest.raises(EnvironmentConfigError, match="--max-restarts=-1"):
        run_local(tmp_path / "s.yaml", workers=1, max_restarts=-1, run_id="r")


def test_a_worker_that_cannot_start_is_a_run_failure(tmp_path):
    with pytest.raises(RunFailed, match="could not start worker 0"):
        run_local(tmp_path / "s.yaml", workers=2, max_restarts=0, run_id="r", out=io.StringIO(),
                  options=LaunchOptions(command=[str(tmp_path / "no-such-interpreter")]))
