"""The threads that follow one run while ``submit`` waits: its two watches and the chief's log.

Owns: one thread per watch (the run's Job, its Pods) feeding a single queue of ``Event``s,
one thread printing the chief's log as it comes, one pod after another as the chief is
replaced, and stopping them all by breaking their streams. The main thread reads the events
and decides; these threads only move events and log lines.
Never touches: the ``kubernetes`` package and reconnecting (``job.submit.kube`` is the door
and owns the one reconnect policy), what the events mean (``job.submit.state``), TensorFlow.

Example:
    >>> follow = RunFollow(kube, "ml", run_id="shapes-x7k2p",           # doctest: +SKIP
    ...                    selector="trainjob.dev/run-id=shapes-x7k2p", terminal=terminal)
    >>> follow.next_event()                                             # doctest: +SKIP
    Event(kind='Job', type='SYNC', objects=(...))
"""

from __future__ import annotations

import queue
import threading
import time

from job.errors import ClusterError
from job.submit.kube import ApiUnreachable, Kube, LogNotReady
from job.submit.state import CHIEF, CHIEF_INDEX, Event, RunState
from job.submit.terminal import Terminal

THREAD_STOP_SECONDS = 5.0
"""How long to wait for the watch and log threads to end once their streams are broken."""


class RunFollow:
    """Follow one run: watch its Job and its Pods and, given a terminal, print the chief's log.

    Args:
        kube: the door to the cluster.
        namespace: the run's namespace.
        run_id: the run to follow, for messages.
        selector: the label selector of the run's Job and Pods.
        terminal: where the chief's log goes; None: do not follow the log.
    """

    def __init__(self, kube: Kube, namespace: str, *, run_id: str, selector: str,
                 terminal: Terminal | None) -> None:
        self._kube, self._namespace, self._run_id = kube, namespace, run_id
        self._selector = selector
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch, args=(kind,), daemon=True,
                                          name=f"watch-{kind}") for kind in ("Job", "Pod")]
        for thread in self._threads:
            thread.start()
        self._log = ChiefLog(kube, namespace, terminal) if terminal else None

    def next_event(self) -> Event:
        """The next change seen by either watch; raises the error that ended a watch."""
        item = self._events.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def update(self, state: RunState) -> None:
        """Tell the chief's log which pods exist now and which have ended."""
        if self._log:
            self._log.update(state)

    def drain(self, timeout: float) -> None:
        """The Job is over: let the chief's log print what is left, for up to ``timeout`` s."""
        if self._log:
            self._log.drain(timeout)

    def stop(self) -> None:
        """End the watch and log threads: set ``stop``, break their streams, wait a little."""
        self._stop.set()
        threads = self._threads
        if self._log:
            self._log.close()
            threads = [*threads, self._log.thread]
        deadline = time.monotonic() + THREAD_STOP_SECONDS
        for thread in threads:
            # Breaking the streams again covers a thread that was just reconnecting.
            while thread.is_alive() and time.monotonic() < deadline:
                self._kube.stop_streams()
                thread.join(0.1)

    def _watch(self, kind: str) -> None:
        """One watch thread: every change goes on the queue, and so does the error ending it."""
        try:
            for change, objects in self._kube.follow(self._namespace, kind,
                                                     selector=self._selector,
                                                     stopped=self._stop.is_set,
                                                     pause=self._stop.wait):
                self._events.put(Event(kind, change, objects))
        except ApiUnreachable as error:
            self._events.put(ClusterError(
                f"lost the watch on run {self._run_id} after "
                f"{len(self._kube.reconnect_delays_seconds)} reconnects: {error} The run itself "
                f"goes on: `trainjob status {self._run_id}`."))
        except Exception as error:  # noqa: BLE001 - the main thread reports it
            self._events.put(error)


class ChiefLog:
    """Streams the chief's log in a thread, one pod after another, each line printed once.

    When the chief pod is replaced, the new pod's log follows the old one's. A stream that
    breaks is reopened by ``Kube.follow_log``, which skips the lines already printed.
    """

    def __init__(self, kube: Kube, namespace: str, terminal: Terminal) -> None:
        self._kube, self._namespace, self._terminal = kube, namespace, terminal
        self._cond = threading.Condition()
        self._pods: list[str] = []
        self._ended: set[str] = set()
        self._draining = False
        self._closed = False
        self.thread = threading.Thread(target=self._run, name="chief-log", daemon=True)
        self.thread.start()

    def update(self, state: RunState) -> None:
        with self._cond:
            for pod in state.pods:
                if pod.index != CHIEF_INDEX or pod.phase == "Pending":
                    continue  # a pending container has no log yet
                if pod.name not in self._pods and not pod.gone:
                    self._pods.append(pod.name)
                if pod.gone or pod.phase in ("Succeeded", "Failed"):
                    self._ended.add(pod.name)
            self._cond.notify_all()

    def drain(self, timeout: float) -> None:
        """The Job is over: print what is left of the chief's log, then stop."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()
        self.thread.join(timeout)

    def close(self) -> None:
        """Stop following at once (the caller also breaks the open stream)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        position = 0
        while (name := self._next_pod(position)) is not None:
            if not self._print(name):
                return
            position += 1

    def _next_pod(self, position: int) -> str | None:
        """Wait for the chief's pod number ``position``; None when there is none to come."""
        with self._cond:
            while position >= len(self._pods) and not (self._draining or self._closed):
                self._cond.wait()
            if self._closed or position >= len(self._pods):
                return None
            return self._pods[position]

    def _print(self, name: str) -> bool:
        """Print one pod's log to its end; False when no log can be streamed at all."""
        try:
            for line in self._kube.follow_log(self._namespace, name,
                                              ended=lambda: self._log_complete(name),
                                              stopped=lambda: self._closed, pause=self._pause):
                self._terminal.log(f"[{CHIEF}] {line}")
        except (ApiUnreachable, LogNotReady) as error:  # a replacement gets a fresh start
            self._terminal.status(f"skipped the rest of {name}'s log: {error}")
        except ClusterError as error:
            self._terminal.status(f"cannot stream the chief's log: {error}")
            return False
        return True

    def _log_complete(self, name: str) -> bool:
        with self._cond:
            # A follow stream ends when the container does; if we do not know it ended, the
            # connection was cut and the stream is reopened.
            return name in self._ended or self._draining

    def _pause(self, seconds: float) -> None:
        """Wait before a reconnect; a new pod, the drain or the close cuts it short."""
        with self._cond:
            self._cond.wait(seconds)
