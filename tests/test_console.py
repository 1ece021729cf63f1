"""The one line writer that ``trainjob local`` and ``submit`` share (job.console)."""

from __future__ import annotations

import errno
import io
import threading
import time

import pytest

from job.console import LineWriter
from job.submit.terminal import Terminal


class ChoppyStream(io.StringIO):
    """A stream that, like a pipe or terminal under load, may let other threads run in
    the middle of one write; writers that do not hold a lock interleave on it."""

    def write(self, text: str) -> int:
        middle = len(text) // 2
        super().write(text[:middle])
        time.sleep(0)  # yield the GIL mid-write (not synchronisation)
        return middle + super().write(text[middle:])


class GoneReader(io.StringIO):
    """A stream whose reader went away: every write fails as ``error`` says."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.attempts = 0

    def write(self, text: str) -> int:
        self.attempts += 1
        raise self.error


def test_lines_from_several_threads_arrive_whole():
    out = ChoppyStream()
    writer = LineWriter(out)

    def write_many(name: str) -> None:
        for number in range(200):
            writer.line(f"[{name}] line {number} " + name * 20)

    threads = [threading.Thread(target=write_many, args=(name,)) for name in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    lines = out.getvalue().splitlines()
    assert len(lines) == 800
    assert all(line == f"[{line[1]}] line {line.split()[2]} " + line[1] * 20 for line in lines)


@pytest.mark.parametrize("error", [BrokenPipeError(errno.EPIPE, "Broken pipe"),
                                   OSError(errno.EIO, "Input/output error"),
                                   ValueError("I/O operation on closed file.")],
                         ids=["closed pipe", "terminal hung up", "closed stream"])
def test_a_reader_that_went_away_never_stops_the_writers(error):
    out = GoneReader(error)
    writer = LineWriter(out)

    writer.line("[worker 0] epoch 1/3")
    writer.write("cancel the run (c) or detach (d)? [d] ")

    assert out.attempts == 2  # each write was tried, and neither raised


def test_the_terminal_drops_a_repeated_status_line_but_never_a_log_line():
    out = io.StringIO()
    terminal = Terminal(out, stdin=None)

    for line in ("pending: 0/2 running", "pending: 0/2 running", "running: 2/2 workers"):
        terminal.status(line)
    terminal.log("[worker 0] epoch 1")
    terminal.log("[worker 0] epoch 1")
    terminal.status("running: 2/2 workers")

    assert out.getvalue().splitlines() == ["pending: 0/2 running", "running: 2/2 workers",
                                           "[worker 0] epoch 1", "[worker 0] epoch 1"]


def test_the_terminal_keeps_watching_after_the_terminal_hung_up():
    terminal = Terminal(GoneReader(OSError(errno.EIO, "Input/output error")), stdin=None)

    terminal.status("running: 2/2 workers")
    terminal.log("[worker 0] epoch 1")
