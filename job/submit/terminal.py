"""The user's terminal while ``submit`` watches a run: status lines, log lines, one question.

Owns: writing to the terminal from several threads without tearing a line, never printing
the same status line twice in a row, and asking the Ctrl-C question only when there is a
terminal to answer it. A reader that went away (a closed pipe) never stops the watch.
Never touches: the cluster (``job.submit.kube``), what a line says (``job.submit.state`` and
the flows in ``job.submit.runs`` write them), TensorFlow.

Example:
    >>> import sys
    >>> terminal = Terminal(sys.stdout, stdin=None)
    >>> terminal.status("running: 2/2 workers"); terminal.status("running: 2/2 workers")
    running: 2/2 workers
    >>> terminal.ask("cancel the run (c) or detach (d)? [d] ")  # no terminal: no question
    ''
"""

from __future__ import annotations

import threading
from typing import TextIO


class Terminal:
    """Writes status and log lines from several threads; never repeats a status line.

    Args:
        out: where lines go (the user's stdout, or a test's buffer).
        stdin: where an answer comes from; None, or not a terminal: nobody to ask.
    """

    def __init__(self, out: TextIO, *, stdin: TextIO | None) -> None:
        self._out = out
        self._stdin = stdin
        self._lock = threading.Lock()
        self._last: str | None = None

    def status(self, line: str) -> None:
        with self._lock:
            if line == self._last:
                return
            self._last = line
            self._write(line + "\n")

    def log(self, line: str) -> None:
        with self._lock:
            self._write(line + "\n")

    def ask(self, question: str) -> str:
        """Read one answer from a terminal; no terminal, a closed one or a 2nd Ctrl-C: ''."""
        stdin = self._stdin
        try:
            if stdin is None or stdin.closed or not stdin.isatty():
                return ""
            with self._lock:
                self._write(question)
            return stdin.readline().strip().lower()
        except (KeyboardInterrupt, EOFError, OSError, ValueError):
            return ""

    def _write(self, text: str) -> None:
        try:
            self._out.write(text)
            self._out.flush()
        except (BrokenPipeError, ValueError):  # the reader went away: keep watching anyway
            pass
