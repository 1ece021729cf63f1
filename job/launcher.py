"""``trainjob local``: N worker processes on this machine, with the cluster's restart rules.

Owns: the worker environment and command line (pure ``worker_env`` and
``worker_command``), free ports, starting the workers in their own process groups,
prefixing their log lines (``job.console`` writes each line whole), and the group-restart
loop with the same exit-code rules as the cluster (the kinds are those of the table
``job.errors.EXIT_CODES``):

* every worker exits 0 -> 0;
* a worker exits with a permanent code (1, 2) -> stop the others, return that code;
* a worker exits with a retryable code (75), or is killed by a signal -> stop the
  others and start the whole group again with fresh ports and the same run id, up to
  ``max_restarts`` times; then return 75;
* a worker exits 130 (interrupted) -> stop the others, return 130;
* any other exit code is an unexplained failure -> stop the others, return 1;
* Ctrl-C -> stop every worker, return 130; SIGTERM (as from a batch scheduler's
  preemption) -> stop every worker, return 75.

"Stop" means SIGTERM to each worker (as Kubernetes does, so it can checkpoint),
then SIGKILL to its whole process group after ``grace_seconds``. Peers of a dead
worker are stopped at once rather than left to hit their collective timeout.

Never touches: TensorFlow, the spec's contents, the run directory.

Example:
    >>> run_local("examples/shapes.yaml", workers=2, max_restarts=1,
    ...           run_id="shapes-local")   # doctest: +SKIP
    0
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

from job.cluster import TF_CONFIG_ENV, indexed_job_env
from job.console import LineWriter
from job.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RETRYABLE,
    INTERRUPTED,
    OK,
    PERMANENT,
    RETRYABLE,
    EnvironmentConfigError,
    RunFailed,
    exit_kind,
)
from job.machine import available_cpus

LOCALHOST = "127.0.0.1"
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
"""Thread-pool sizes each worker gets, so N workers share the cores instead of N-fold
oversubscribing them; a value the user already set is kept."""
SIGNAL_EXIT_CODES = range(128 + 1, 128 + 65)
"""128+n: how a shell or container runtime reports a child killed by signal n (1..64)."""
UNEXPLAINED = "unexplained"
"""The kind of a code that is neither in ``job.errors.EXIT_CODES`` nor a signal's."""
PREFIX = "trainjob local: "
READER_JOIN_SECONDS = 5.0
"""Seconds to wait for a worker's output after its process group is killed: a process
that left the group may hold the pipe open, and the launcher must not hang on it."""


# --- build (pure) ------------------------------------------------------------------------


def worker_command(spec_path: str | Path, *, run_id: str, python: str,
                   overrides: Sequence[str] = ()) -> list[str]:
    """The command line of one worker: ``python -m job train SPEC --run-id RUN [--set K=V]``.

    Example:
        >>> worker_command("s.yaml", run_id="r1", python="py", overrides=["train.epochs=2"])
        ['py', '-m', 'job', 'train', 's.yaml', '--run-id', 'r1', '--set', 'train.epochs=2']
    """
    sets = [arg for override in overrides for arg in ("--set", override)]
    return [python, "-m", "job", "train", str(spec_path), "--run-id", run_id, *sets]


def worker_env(base_env: Mapping[str, str], *, index: int, num_workers: int,
               ports: Sequence[int], run_id: str, cores: int | None = None) -> dict[str, str]:
    """The environment the cluster would give worker ``index`` of ``num_workers``.

    The cluster variables are ``job.cluster.indexed_job_env``'s, with every worker's
    address on this machine.

    Args:
        base_env: the launcher's environment; copied, never changed. Its TF_CONFIG is
            dropped, because TF_CONFIG would win over the variables set here.
        index: this worker's JOB_COMPLETION_INDEX.
        num_workers: the number of workers; equals ``len(ports)``.
        ports: one free localhost port per worker, in index order.
        run_id: the run directory name every worker shares.
        cores: CPU cores to share out; None: the cores this process may use, capped by a
            container CPU limit (``job.machine.available_cpus``, as the decoder counts).

    Example:
        >>> env = worker_env({}, index=1, num_workers=2, ports=[4001, 4002], run_id="r1",
        ...                  cores=4)
        >>> env["TRAINJOB_WORKER_HOSTS"], env["OMP_NUM_THREADS"]
        ('127.0.0.1:4001,127.0.0.1:4002', '2')
    """
    if len(ports) != num_workers or not 0 <= index < num_workers:
        raise ValueError(f"worker_env: index={index} and {len(ports)} ports do not fit "
                         f"num_workers={num_workers}.")
    env = {key: value for key, value in base_env.items() if key != TF_CONFIG_ENV}
    threads = str(max(1, (cores or available_cpus()) // num_workers))
    for name in THREAD_VARIABLES:
        env.setdefault(name, threads)
    # N processes on one GPU would each reserve all of its memory at start-up.
    env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    env.update(indexed_job_env(num_workers=num_workers, index=index, run_id=run_id,
                               hosts=[f"{LOCALHOST}:{port}" for port in ports]))
    # Lines reach the prefixer as they are printed, not when a buffer fills.
    env["PYTHONUNBUFFERED"] = "1"
    return env


def classify(returncode: int) -> str:
    """``ok``, ``permanent``, ``interrupted``, ``retryable`` or ``unexplained``.

    Our own codes are classified by the table in ``job.errors`` (so 130, the contract's
    "interrupted by the user", is honoured rather than retried). Any other negative code
    (killed by a signal) or 128+n (a shell reporting signal n) is retryable: the process
    was killed from outside, as by the OOM killer or a drain.

    Example:
        >>> [classify(code) for code in (0, 2, 130, 75, -9, 137, 3)]
        ['ok', 'permanent', 'interrupted', 'retryable', 'retryable', 'retryable', 'unexplained']
    """
    kind = exit_kind(returncode)
    if kind is not None:
        return kind
    if returncode < 0 or returncode in SIGNAL_EXIT_CODES:
        return RETRYABLE
    return UNEXPLAINED


def describe_exit(returncode: int) -> str:
    """``exited with 75`` or ``was killed by SIGKILL``, for the launcher's lines."""
    if returncode < 0:
        return f"was killed by {_signal_name(-returncode)}"
    if returncode in SIGNAL_EXIT_CODES:
        return f"exited with {returncode} ({_signal_name(returncode - 128)})"
    return f"exited with {returncode}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# --- I/O ---------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago.

    All sockets stay bound until every port is chosen, so the ports are distinct.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((LOCALHOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class LaunchOptions:
    """How ``run_local`` starts and stops its workers; the defaults are ``trainjob local``'s."""

    python: str = sys.executable
    """The interpreter that runs ``python -m job train``: this one, with the same packages."""
    extra_env: Mapping[str, str] = field(default_factory=dict)
    """Variables added to this process's environment for every worker."""
    grace_seconds: float = 15.0
    """How long a worker has after SIGTERM before SIGKILL: time to save a checkpoint."""
    command: Sequence[str] | None = None
    """Replaces the worker command line (for tests and custom entry points); None: the
    ``worker_command`` of ``python``."""
    overrides: Sequence[str] = ()
    """``--set KEY=VALUE`` overrides every worker applies to the spec, as given."""


def run_local(spec_path: str | Path, *, workers: int, max_restarts: int, run_id: str,
              out: TextIO | None = None, options: LaunchOptions | None = None) -> int:
    """Run ``workers`` worker processes here until the run ends; return its exit code.

    Args:
        spec_path: the spec every worker trains.
        workers: how many worker processes, 1 or more.
        max_restarts: group restarts allowed after retryable failures.
        run_id: the run directory name; kept across restarts so the run resumes.
        out: where prefixed worker lines and the launcher's own lines go; None: stdout.
        options: the interpreter, extra variables, grace period and command line
            (default: ``LaunchOptions()``).

    Returns:
        0, 1, 2, 75 or 130 as described in the module docstring.

    Raises:
        EnvironmentConfigError: ``workers`` < 1 or ``max_restarts`` < 0.
        RunFailed: a worker could not be started at all.
    """
    _check_counts(workers=workers, max_restarts=max_restarts)
    options = options or LaunchOptions()
    printer = LineWriter(out if out is not None else sys.stdout)
    argv = list(options.command) if options.command is not None else worker_command(
        spec_path, run_id=run_id, python=options.python, overrides=options.overrides)
    base_env = {**os.environ, **options.extra_env}
    attempts = max_restarts + 1
    try:
        with _sigterm_raises():
            for attempt in range(1, attempts + 1):
                ports = free_ports(workers)
                envs = [worker_env(base_env, index=i, num_workers=workers, ports=ports,
                                   run_id=run_id) for i in range(workers)]
                printer.line(f"{PREFIX}starting {workers} worker(s) for run {run_id} "
                             f"(attempt {attempt} of {attempts})")
                failure = _run_group(argv, envs, printer=printer,
                                     grace_seconds=options.grace_seconds)
                code = _outcome(failure, printer=printer, attempt=attempt, attempts=attempts)
                if code is not None:
                    return code
    except KeyboardInterrupt:
        printer.line(f"{PREFIX}interrupted; all workers stopped")
        return EXIT_INTERRUPTED
    except _Terminated:
        printer.line(f"{PREFIX}terminated; all workers stopped (retryable: the same run id "
                     "resumes from its last checkpoint)")
        return EXIT_RETRYABLE
    raise AssertionError("unreachable: the last attempt always returns")


def _check_counts(*, workers: int, max_restarts: int) -> None:
    """Raise EnvironmentConfigError, naming the flag, for a count ``trainjob local`` cannot use."""
    if workers < 1:
        raise EnvironmentConfigError(f"--workers={workers} is not valid; expected 1 or more.")
    if max_restarts < 0:
        raise EnvironmentConfigError(f"--max-restarts={max_restarts} is not valid; expected "
                                     "0 or more.")


@dataclass(frozen=True)
class _Exit:
    index: int
    returncode: int


def _outcome(failure: _Exit | None, *, printer: LineWriter, attempt: int,
             attempts: int) -> int | None:
    """The launcher's exit code for one attempt's result, or None to restart the group."""
    if failure is None:
        printer.line(f"{PREFIX}all workers finished")
        return EXIT_OK
    what = f"worker {failure.index} {describe_exit(failure.returncode)}"
    kind = classify(failure.returncode)
    if kind in (PERMANENT, INTERRUPTED):
        printer.line(f"{PREFIX}{what} ({kind}); stopped the group")
        return failure.returncode
    if kind == UNEXPLAINED:
        printer.line(f"{PREFIX}{what} (not a trainjob exit code, treated as a permanent "
                     "failure); stopped the group")
        return EXIT_FAILED
    if attempt < attempts:
        printer.line(f"{PREFIX}{what} (retryable); restarting the group "
                     f"(attempt {attempt + 1} of {attempts})")
        return None
    printer.line(f"{PREFIX}{what} (retryable); no restarts left after {attempts} attempt(s), "
                 "raise --max-restarts to keep going")
    return EXIT_RETRYABLE


def _run_group(argv: Sequence[str], envs: Sequence[Mapping[str, str]], *, printer: LineWriter,
               grace_seconds: float) -> _Exit | None:
    """Start one worker per env, wait for the first failure (None: all exited 0), stop all."""
    group = _Group(printer)
    try:
        group.start(argv, envs)
        return group.wait_for_failure()
    except (KeyboardInterrupt, _Terminated):
        printer.line(f"{PREFIX}stopping all workers")
        raise
    finally:
        group.stop(grace_seconds=grace_seconds)


class _Group:
    """The worker processes of one attempt, their output readers and exit watchers."""

    def __init__(self, printer: LineWriter) -> None:
        self.printer = printer
        self.processes: list[subprocess.Popen] = []
        self.readers: list[threading.Thread] = []
        self.returncodes: dict[int, int] = {}
        # Filled by one watcher thread per worker, so the main thread can block on
        # "any worker exited" (interruptibly) instead of polling.
        self.exits: queue.Queue[_Exit] = queue.Queue()

    def start(self, argv: Sequence[str], envs: Sequence[Mapping[str, str]]) -> None:
        for index, env in enumerate(envs):
            process = None
            try:
                # A session of its own: terminal Ctrl-C reaches only the launcher, which
                # stops the workers once, and killpg reaches the worker's children too.
                process = subprocess.Popen(
                    list(argv), env=dict(env), stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as error:
                raise RunFailed(f"could not start worker {index} with {list(argv)!r}: {error}; "
                                "check the interpreter path and the command.") from None
            finally:
                # Recorded even if Ctrl-C lands right after the start, so stop() reaches it.
                if process is not None:
                    self.processes.append(process)
            self._thread(_pump, process.stdout, f"[worker {index}] ", self.printer,
                         keep=self.readers)
            self._thread(self._watch, index, process)

    def _thread(self, target, *args, keep: list[threading.Thread] | None = None) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        if keep is not None:
            keep.append(thread)

    def _watch(self, index: int, process: subprocess.Popen) -> None:
        self.exits.put(_Exit(index, process.wait()))

    def running(self) -> list[int]:
        """Workers whose exit has not been recorded yet."""
        return [i for i in range(len(self.processes)) if i not in self.returncodes]

    def _collect(self, *, deadline: float | None) -> None:
        """Record exits until every worker has exited or ``deadline`` (monotonic) passes."""
        while self.running():
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                event = self.exits.get(timeout=timeout)
            except queue.Empty:
                return
            self.returncodes[event.index] = event.returncode

    def wait_for_failure(self) -> _Exit | None:
        """Block until a worker fails (returned) or every worker has exited 0 (None)."""
        while self.running():
            batch = [self.exits.get()]
            while True:  # Exits that arrive together: a permanent one explains the rest.
                try:
                    batch.append(self.exits.get_nowait())
                except queue.Empty:
                    break
            for event in batch:
                self.returncodes[event.index] = event.returncode
            failures = [e for e in batch if classify(e.returncode) != OK]
            if failures:
                return min(failures, key=lambda e: classify(e.returncode) == RETRYABLE)
        return None

    def stop(self, *, grace_seconds: float) -> None:
        """SIGTERM the running workers, SIGKILL every group after the grace, reap, drain."""
        deferred: BaseException | None = None
        running = self.running()
        if running:
            for index in running:
                _send(self.processes[index].send_signal, signal.SIGTERM)
            try:
                self._collect(deadline=time.monotonic() + grace_seconds)
                for index in self.running():
                    if self.processes[index].poll() is None:
                        self.printer.line(f"{PREFIX}worker {index} did not stop within "
                                          f"{grace_seconds:g}s of SIGTERM; killing it")
            except (KeyboardInterrupt, _Terminated) as interrupt:
                deferred = interrupt  # Asked again: skip the rest of the grace period.
        # Every group, finished workers' too: a worker's own children must not outlive it.
        for process in self.processes:
            _send(lambda sig, pid=process.pid: os.killpg(pid, sig), signal.SIGKILL)
        for index in self.running():
            # wait() itself, not the exit queue: an interrupt during start() or inside
            # queue.get() can leave a worker without its exit event.
            while index not in self.returncodes:
                try:
                    self.returncodes[index] = self.processes[index].wait()
                except (KeyboardInterrupt, _Terminated) as interrupt:
                    deferred = interrupt
        for reader in self.readers:
            reader.join(timeout=READER_JOIN_SECONDS)
        if deferred is not None:
            raise deferred


def _send(send, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # Already gone.
        send(sig)


def _pump(pipe: IO[bytes], prefix: str, printer: LineWriter) -> None:
    """Copy one worker's output to the printer, a whole line at a time."""
    with pipe:
        for raw in iter(pipe.readline, b""):
            printer.line(prefix + raw.decode("utf-8", errors="replace").rstrip("\r\n"))


class _Terminated(BaseException):
    """SIGTERM reached the launcher; a BaseException so it unwinds like Ctrl-C."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into ``_Terminated`` in the main thread while the workers run."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Signal handlers can only be set from the main thread.
        return

    def handler(signum: int, frame: object) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
