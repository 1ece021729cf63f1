"""What a run prints while it trains: one line per N steps, or a progress bar on a terminal.

Owns: the wording and pacing of the chief's progress output (``Progress``), and
``Lines``, the lines every worker prints about itself, tagged with which worker it is.
Never touches: training state; it is handed numbers. Both print from the thread that
runs the story of a run, so neither takes a lock (``job.console`` is for printers
shared by threads).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

BAR_WIDTH = 24
"""Characters in the terminal progress bar."""
REFRESH_SECONDS = 0.2
"""Minimum seconds between terminal bar redraws, so drawing never slows training."""


class Progress:
    """Reports steps of one epoch; ``line`` prints a plain line in either mode."""

    def __init__(self, *, total_steps: int, steps_per_epoch: int, every: int,
                 out: TextIO | None = None, enabled: bool = True) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.every = every
        self.enabled = enabled
        self._last_draw = 0.0
        self._bar_open = False
        self._last_step = 0

    def step(self, *, step: int, epoch: int, loss: float, accuracy: float,
             images_per_second: float) -> bool:
        """Report that steps up to global ``step`` finished, with running epoch averages.

        Steps arrive in chunks, so a line is due when a multiple of ``every`` was
        crossed since the last report. Returns whether one was (summaries follow it).
        """
        crossed = step // self.every > self._last_step // self.every
        self._last_step = step
        if not self.enabled:
            return crossed
        in_epoch = (step - 1) % self.steps_per_epoch + 1
        text = (f"epoch {epoch + 1} step {in_epoch}/{self.steps_per_epoch} "
                f"(global {step}/{self.total_steps}) loss {loss:.4f} accuracy {accuracy:.4f} "
                f"{images_per_second:.0f} images/s")
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw < REFRESH_SECONDS and in_epoch != self.steps_per_epoch:
                return crossed
            self._last_draw = now
            done = int(BAR_WIDTH * in_epoch / self.steps_per_epoch)
            bar = "=" * done + "." * (BAR_WIDTH - done)
            self.out.write(f"\r[{bar}] {text}\x1b[K")
            self.out.flush()
            self._bar_open = True
        elif crossed or in_epoch == self.steps_per_epoch:
            self.out.write(text + "\n")
            self.out.flush()
        return crossed

    def line(self, text: str) -> None:
        """Print a whole line (ends an open progress bar first)."""
        if not self.enabled:
            return
        if self._bar_open:
            self.out.write("\n")
            self._bar_open = False
        self.out.write(text + "\n")
        self.out.flush()


@dataclass(frozen=True)
class Lines:
    """Prints a worker's own lines (every worker's, unlike the chief-only progress)."""

    out: TextIO
    tag: str
    """'worker i/n', naming this worker in lines that differ between workers."""

    def __call__(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def tagged(self, text: str) -> None:
        self(f"{self.tag}: {text}")
