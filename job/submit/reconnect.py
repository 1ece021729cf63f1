"""The one reconnect policy of the submitter's streams: watches, waits and followed logs.

Owns: following a resource (list, then watch from the list's resourceVersion; a connection
that times out or breaks resumes from the last resourceVersion; 410 Gone lists again),
waiting on objects with a deadline, following a log so that each line comes once across
reconnects, and how often and how long to reconnect (``Reconnecting._reconnecting``). A mixin
of ``job.submit.kube.Kube``, whose single requests (``list``, ``watch``, ``stream_log``) it
strings together, so callers still ask the one door.
Never touches: the ``kubernetes`` package (``job.submit.kube`` sends every request), what the
events mean (``job.submit.state``), threads, TensorFlow.

Example:
    >>> for change, objects in kube.follow("ml", "Pod", selector="trainjob.dev/run-id=r",
    ...                                    stopped=done.is_set, pause=time.sleep):
    ...     print(change, len(objects))                   # doctest: +SKIP
    SYNC 2
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from job.errors import ClusterError
from job.submit.api_errors import ApiUnreachable, LogNotReady, NotFound, WatchExpired

_Item = TypeVar("_Item")


class Reconnecting:
    """Following, waiting and reconnecting, on top of a client's single requests.

    The client provides ``list``, ``watch`` and ``stream_log`` (one connection each) and the
    attributes ``watch_timeout_seconds`` and ``reconnect_delays_seconds``.
    """

    watch_timeout_seconds: int
    reconnect_delays_seconds: tuple[float, ...]

    def follow(self, namespace: str, kind: str, *, selector: str, stopped: Callable[[], bool],
               pause: Callable[[float], object], deadline: float | None = None
               ) -> Iterator[tuple[str, tuple[dict, ...]]]:
        """List, then watch from the list's resourceVersion, until ``stopped()``.

        Yields ("SYNC", every object) after each listing and (ADDED, MODIFIED or DELETED,
        (the object,)) for each change. A connection that times out or breaks resumes from
        the last resourceVersion; 410 Gone lists again. Reconnects follow ``_reconnecting``.
        With a ``deadline`` (``time.monotonic()`` seconds), no watch connection outlasts it,
        so ``stopped()`` is asked again soon after it passes even when nothing changes.

        Raises:
            ApiUnreachable: the API stayed unreachable through every reconnect.
        """
        version: str | None = None

        def connect() -> Iterator[tuple[str, tuple[dict, ...]]]:
            nonlocal version
            timeout = None if deadline is None else max(1, min(
                self.watch_timeout_seconds, math.ceil(deadline - time.monotonic())))
            try:
                if version is None:
                    items, version = self.list(namespace, kind, selector=selector)
                    yield "SYNC", tuple(items)
                for change, obj in self.watch(namespace, kind, selector=selector,
                                              resource_version=version,
                                              timeout_seconds=timeout):
                    version = obj["metadata"]["resourceVersion"]
                    yield change, (obj,)
            except WatchExpired:
                version = None  # compacted away: list again for a fresh one

        return self._reconnecting(connect, retry_on=(ApiUnreachable,), stopped=stopped,
                                  pause=pause)

    def follow_log(self, namespace: str, pod: str, *, ended: Callable[[], bool],
                   stopped: Callable[[], bool], pause: Callable[[float], object]
                   ) -> Iterator[str]:
        """Yield the pod's log lines, each once, until its container ends or ``stopped()``.

        A follow stream ends when the container does; one that ends while ``ended()`` is
        still False was cut, so it is reopened and the lines already yielded are skipped.
        A pod that is gone ends its log. Reconnects follow ``_reconnecting``.

        Raises:
            ApiUnreachable, LogNotReady: still failing after every reconnect.
        """
        yielded = 0

        def connect() -> Iterator[str]:
            nonlocal yielded
            for number, line in enumerate(self.stream_log(namespace, pod)):
                if number >= yielded:
                    yielded = number + 1
                    yield line

        try:
            yield from self._reconnecting(connect, retry_on=(ApiUnreachable, LogNotReady),
                                          stopped=stopped, pause=pause, complete=ended)
        except NotFound:
            return  # the pod and its log are gone

    def wait(self, namespace: str, kind: str, *, selector: str,
             until: Callable[[tuple[dict, ...]], _Item | None], timeout_seconds: float,
             pause: Callable[[float], object] = time.sleep) -> _Item | None:
        """Watch the objects a selector picks until ``until(them)`` answers, or time runs out.

        ``until`` is asked with every object currently selected after the first listing and
        after each change; its first answer other than None is returned. Reconnects follow
        ``_reconnecting``.

        Returns:
            ``until``'s answer, or None when ``timeout_seconds`` passed without one.

        Raises:
            ApiUnreachable: the API stayed unreachable through every reconnect.
        """
        deadline = time.monotonic() + timeout_seconds
        current: dict[str, dict] = {}
        for change, objects in self.follow(namespace, kind, selector=selector,
                                           stopped=lambda: time.monotonic() >= deadline,
                                           pause=pause, deadline=deadline):
            if change == "SYNC":
                current.clear()
            for obj in objects:
                name = obj["metadata"]["name"]
                if change == "DELETED":
                    current.pop(name, None)
                else:
                    current[name] = obj
            answer = until(tuple(current.values()))
            if answer is not None:
                return answer
        return None


    def _reconnecting(self, connect: Callable[[], Iterator[_Item]], *,
                      retry_on: tuple[type[ClusterError], ...], stopped: Callable[[], bool],
                      pause: Callable[[float], object],
                      complete: Callable[[], bool] = lambda: False) -> Iterator[_Item]:
        """Open ``connect()`` again and again and pass its items on: the one reconnect policy.

        A connection that ends cleanly is reopened at once, unless ``complete()``. One that
        fails with ``retry_on`` is reopened after the next of ``reconnect_delays_seconds``,
        waited with ``pause`` (which may return early). A connection that brings an item, or
        ends cleanly, resets the count, so only more failures in a row than there are delays
        give up, raising the last. ``stopped()`` is asked before each connection and after
        each item.
        """
        failures = 0
        while not stopped():
            try:
                for item in connect():
                    failures = 0
                    yield item
                    if stopped():
                        return
            except retry_on:
                failures += 1
                if failures > len(self.reconnect_delays_seconds):
                    raise
                pause(self.reconnect_delays_seconds[failures - 1])
                continue
            failures = 0
            if complete():
                return

