"""The user's terminal while ``submit`` watches a run: status lines, log lines, one question.

Owns: never printing the same status line twice in a row, and asking the Ctrl-C question
only when there is a terminal to answer it.
Never touches: the cluster (``job.submit.kube``), what a line says (``job.submit.state`` and
the flows in ``job.submit.runs`` write them), writing a line whole from several threads and
going on when the reader went away (``job.console``), TensorFlow.

Example:
    >>> import sys
    >>> terminal = Terminal(sys.stdout, stdin=None)
    >>> terminal.status("running: 2/2 workers"); terminal.status("running: 2/2 workers")
    running: 2/2 workers
    >>> terminal.ask("cancel the run (c) or detach (d)? [d] ")  # no terminal: no question
    ''
"""

from __future__ import annotations

from typing import TextIO

from job.console import LineWriter


class Terminal:
    """Writes status and log lines from several threads; never repeats a status line.

    Args:
        out: where lines go (the user's stdout, or a test's buffer).
        stdin: where an answer comes from; None, or not a terminal: nobody to ask.
    """

    def __init__(self, out: TextIO, *, stdin: TextIO | None) -> None:
        self._writer = LineWriter(out)
        self._stdin = stdin
        self._last: str | None = None

    def status(self, line: str) -> None:
        with self._writer.lock:  # the check and the write as one step
            if line == self._last:
                return
            self._last = line
            self._writer.line(line)

    def log(self, line: str) -> None:
        self._writer.line(line)

    def ask(self, question: str) -> str:
        """Read one answer from a terminal; no terminal, a closed one or a 2nd Ctrl-C: ''."""
        stdin = self._stdin
        try:
            if stdin is None or stdin.closed or not stdin.isatty():
                return ""
            self._writer.write(question)
            return stdin.readline().strip().lower()
        except (KeyboardInterrupt, EOFError, OSError, ValueError):
            return ""
