"""The threads that follow one run while ``submit`` waits: its two watches and the chief's log.

Owns: one thread per watch (the run's Job, its Pods) feeding a single queue of ``Event``s,
one thread printing the chief's log as it comes (one pod after another, each line once), and
stopping them all by breaking their streams. The main thread reads the events and decides;
these threads only move events and log lines.
Never touches: the ``kubernetes`` package (``job.submit.kube`` is the door), what the events
mean (``job.submit.state``), TensorFlow.

Example:
    >>> follow = RunFollow(kube, "ml", run_id="shapes-x7k2p", terminal=terminal)  # doctest: +SKIP
    >>> follow.next_event()                                                 # doctest: +SKIP
    Event(kind='Job', type='SYNC', objects=(...))
"""

from __future__ import annotations

import queue
import threading
import time

from job.errors import ClusterError
from job.submit import manifests
from job.submit.kube import ApiUnreachable, Kube, LogNotReady, NotFound, WatchExpired
from job.submit.state import CHIEF, CHIEF_INDEX, Event, RunState
from job.submit.terminal import Terminal

THREAD_STOP_SECONDS = 5.0
"""How long to wait for the watch and log threads to end once their streams are broken."""


class RunFollow:
    """Start following one run: watch its Job and its Pods and, given a terminal, print the
    chief's log there.

    Args:
        kube: the door to the cluster.
        namespace: the run's namespace.
        run_id: the run to follow.
        terminal: where the chief's log goes; None: do not follow the log.
    """

    def __init__(self, kube: Kube, namespace: str, *, run_id: str,
                 terminal: Terminal | None) -> None:
        self._kube = kube
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        selector = f"{manifests.LABEL_RUN_ID}={run_id}"
        self._threads = [threading.Thread(target=_watch_loop, name=f"watch-{kind}", daemon=True,
                                          args=(kube, namespace, kind, selector, self._events,
                                                self._stop, run_id))
                         for kind in ("Job", "Pod")]
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


def _watch_loop(kube: Kube, namespace: str, kind: str, selector: str, events: queue.Queue,
                stop: threading.Event, run_id: str) -> None:
    """List, then watch from the list's resourceVersion; reconnect and re-list as needed.

    Runs in a thread; everything it learns (events, or the error that ends it) goes on
    ``events``. A timeout or a dropped connection resumes from the last resourceVersion;
    410 Gone re-lists. Only ``len(kube.reconnect_delays_seconds)`` consecutive failures
    in a row end it.
    """
    version: str | None = None
    failures = 0
    try:
        while not stop.is_set():
            try:
                if version is None:
                    items, version = kube.list(namespace, kind, selector=selector)
                    events.put(Event(kind, "SYNC", tuple(items)))
                for kind_of_change, obj in kube.watch(namespace, kind, selector=selector,
                                                      resource_version=version):
                    version = obj["metadata"]["resourceVersion"]
                    events.put(Event(kind, kind_of_change, (obj,)))
                    failures = 0
                    if stop.is_set():
                        return
                failures = 0
            except WatchExpired:
                version = None
            except ApiUnreachable as error:
                failures += 1
                if failures > len(kube.reconnect_delays_seconds):
                    events.put(ClusterError(
                        f"lost the watch on run {run_id} after {failures - 1} reconnects: "
                        f"{error} The run itself goes on: `trainjob status {run_id}`."))
                    return
                stop.wait(kube.reconnect_delays_seconds[failures - 1])
    except Exception as error:  # noqa: BLE001 - the main thread reports it
        events.put(error)


class ChiefLog:
    """Streams the chief's log in a thread, one pod after another, each line printed once.

    When the chief pod is replaced, the new pod's log follows the old one's. A stream that
    breaks is reopened and the lines already printed are skipped.
    """

    def __init__(self, kube: Kube, namespace: str, terminal: Terminal) -> None:
        self._kube, self._namespace, self._terminal = kube, namespace, terminal
        self._cond = threading.Condition()
        self._pods: list[str] = []
        self._ended: set[str] = set()
        self._printed: dict[str, int] = {}
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
        failures = 0
        while True:
            with self._cond:
                while position >= len(self._pods) and not (self._draining or self._closed):
                    self._cond.wait()
                if self._closed or position >= len(self._pods):
                    return
                name = self._pods[position]
            try:
                complete = self._stream(name)
                failures = 0
            except (ApiUnreachable, LogNotReady) as error:
                failures += 1
                complete = failures > len(self._kube.reconnect_delays_seconds)
                if complete:  # give up on this pod; a replacement gets a fresh start
                    self._terminal.status(f"skipped the rest of {name}'s log: {error}")
                    failures = 0
                else:
                    with self._cond:
                        self._cond.wait(self._kube.reconnect_delays_seconds[failures - 1])
            except NotFound:
                complete = True  # the pod and its log are gone
            except ClusterError as error:
                self._terminal.status(f"cannot stream the chief's log: {error}")
                return
            if complete:
                position += 1

    def _stream(self, name: str) -> bool:
        """Print the pod's new lines; True when its log is complete."""
        skip = self._printed.get(name, 0)
        for number, line in enumerate(self._kube.stream_log(self._namespace, name)):
            if number >= skip:
                self._terminal.log(f"[{CHIEF}] {line}")
                self._printed[name] = number + 1
            if self._closed:
                return True
        with self._cond:
            # A follow stream ends when the container does; if we do not know it ended, the
            # connection was cut and the stream is reopened.
            return name in self._ended or self._draining
