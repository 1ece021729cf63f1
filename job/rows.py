"""Rows of one result filled by several threads, each taking the next row when it is free.

Owns: handing out row numbers from one shared counter (so the threads finish together,
whatever each row costs), the decoder threads' lifetime, stopping between rows on Ctrl-C
or a bug in one of them, and ``aborting``: a stop asked from another thread.
Never touches: what a row is (the caller's ``work`` decodes it and writes it), files,
Pillow, or what to do with a bad row.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

WAIT_SLICE_SECONDS = 0.2
"""Longest the calling thread blocks at a time on the threads: Ctrl-C acts within it."""


def fill(count: int, work: Callable[[int], None], *, threads: int) -> None:
    """Run ``work(row)`` for every row in ``range(count)``, on ``threads`` threads
    (1: in the calling thread), each taking the next row when it is free.

    Raises what ``work`` raised, and stops every thread after the row in hand; on
    Ctrl-C too, and while ``aborting`` (checked before each row) it raises
    ``Stopped``.
    """
    rows = itertools.count()  # next(rows) is atomic under the GIL
    if threads == 1:
        _work_through(count, work, rows=rows)
        return
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
    try:
        pending = {pool.submit(_work_through, count, work, rows=rows, stop=stop)
                   for _ in range(threads)}
        while pending:  # in short slices, so that Ctrl-C reaches this thread at once
            done, pending = wait(pending, timeout=WAIT_SLICE_SECONDS, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # raises what a thread raised
    except BaseException:
        # Ctrl-C or a bug: every thread stops after the row in hand instead of going on
        # through the rest.
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


class Stopped(Exception):
    """The rows were abandoned by ``aborting``, or a thread was told to stop."""


_ABORT = threading.Event()
"""Set while ``aborting``: every ``fill`` in this process stops before its next row."""


@contextlib.contextmanager
def aborting() -> Iterator[None]:
    """Stop every ``fill`` in this process, between rows, while the block runs.

    For Ctrl-C during a decode in another thread (a run decodes its shard in the
    background while the strategy starts): wait for that thread inside the block,
    and it returns after the image in hand instead of after the whole shard, its
    temp cache file removed.
    """
    _ABORT.set()
    try:
        yield
    finally:
        _ABORT.clear()


def _work_through(count: int, work: Callable[[int], None], *, rows: Iterator[int],
                  stop: threading.Event | None = None) -> None:
    """``work`` the rows that ``rows`` hands out until none are left; ``Stopped`` once
    ``stop`` is set or while ``aborting``."""
    for row in rows:
        if row >= count:
            return
        if (stop is not None and stop.is_set()) or _ABORT.is_set():
            raise Stopped
        work(row)
