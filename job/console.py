"""Whole lines to the user's stream from several threads (``trainjob local``, ``submit``).

Owns: writing a line (or a question) in one piece while other threads write too, flushed
at once, and going on when the reader went away: a closed pipe (``trainjob local | head``)
or a closed stream never stops the threads that print, because a reader thread blocked
on a full pipe would hang the run it follows.
Never touches: what a line says, or whether it is worth printing (``job.launcher`` prefixes
its workers' lines; ``job.submit.terminal`` drops repeated status lines); TensorFlow.
The job and the submitter both import it, so it imports nothing of theirs.

Example:
    >>> import sys
    >>> LineWriter(sys.stdout).line("[worker 0] epoch 1/3")
    [worker 0] epoch 1/3
"""

from __future__ import annotations

import threading
from typing import TextIO


class LineWriter:
    """Writes whole lines to ``out`` from several threads; a gone reader is ignored.

    Args:
        out: where lines go (the user's stdout, or a test's buffer).
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.RLock()
        """Held while writing; hold it around a check and a write to make them one step."""

    def line(self, text: str) -> None:
        """Write ``text`` and a newline in one piece."""
        self.write(text + "\n")

    def write(self, text: str) -> None:
        """Write ``text`` as it is (a question ends without a newline) and flush it."""
        with self.lock:
            try:
                self.out.write(text)
                self.out.flush()
            except (OSError, ValueError):
                # OSError: a broken pipe or a terminal that hung up; ValueError: a closed
                # stream. Either way nobody reads any more, and the writers must go on.
                pass
