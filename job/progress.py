"""What a run prints while it trains: one line per N steps, or a progress bar on a terminal.

Owns: the wording and pacing of the chief's progress output (``Progress``), and
``Lines``, the lines every worker prints about itself, tagged with which worker it is.
Never touches: training state; it is handed numbers. Both print from the thread that
runs the story of a run, so neither takes a lock (``job.console`` is for printers
shared by threads).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import TextIO

BAR_WIDTH = (10, 30)
"""Fewest and most characters of the terminal progress bar; it takes what the line leaves."""
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
        self._first: tuple[int, float] | None = None
        """(step, time) of the first report, for the elapsed time and the ETA."""

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
        now = time.monotonic()
        if self._first is None:
            self._first = (step, now)  # The clock starts at the first report (a resume too).
        in_epoch = (step - 1) % self.steps_per_epoch + 1
        figures = Figures(epoch=epoch + 1, epochs=-(-self.total_steps // self.steps_per_epoch),
                          in_epoch=in_epoch, steps_per_epoch=self.steps_per_epoch,
                          loss=loss, accuracy=accuracy, images_per_second=images_per_second,
                          elapsed=now - self._first[1], left=self._left(step, now))
        if self.tty:
            if now - self._last_draw < REFRESH_SECONDS and in_epoch != self.steps_per_epoch:
                return crossed
            self._last_draw = now
            self.out.write("\r" + figures.bar_line(width=_columns(self.out)) + "\x1b[K")
            self.out.flush()
            self._bar_open = True
        elif crossed or in_epoch == self.steps_per_epoch:
            self.out.write(figures.log_line(step=step, total_steps=self.total_steps) + "\n")
            self.out.flush()
        return crossed

    def _left(self, step: int, now: float) -> float | None:
        """Seconds to the last step at the pace since the first report; None before any."""
        first_step, began = self._first
        if step <= first_step or now <= began:
            return None
        return (self.total_steps - step) * (now - began) / (step - first_step)

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


@dataclass(frozen=True)
class Figures:
    """One progress report, drawn as a bar that fits the terminal or as a log line."""

    epoch: int
    epochs: int
    in_epoch: int
    steps_per_epoch: int
    loss: float
    accuracy: float
    images_per_second: float
    elapsed: float
    left: float | None
    """Seconds to the run's last step; None until the pace is known."""

    def bar_line(self, *, width: int) -> str:
        """``epoch 3/12 [=====.....] 17/40 loss 0.4123 acc 0.912 812 img/s 0:12<1:05``,
        shortened (figures dropped from the right, then cut) to fit ``width`` columns."""
        clock = f"{_clock(self.elapsed)}<{_clock(self.left)}"
        parts = [f"{self.in_epoch}/{self.steps_per_epoch}", f"loss {self.loss:.4f}",
                 f"acc {self.accuracy:.3f}", f"{self.images_per_second:.0f} img/s", clock]
        head = f"epoch {self.epoch}/{self.epochs} "
        while True:
            tail = " " + " ".join(parts)
            room = width - 1 - len(head) - len(tail) - 2
            if room >= BAR_WIDTH[0] or len(parts) == 1:
                break
            parts.pop(-2 if len(parts) > 2 else -1)  # Keep the clock as long as possible.
        size = max(BAR_WIDTH[0], min(BAR_WIDTH[1], room))
        done = size * self.in_epoch // self.steps_per_epoch
        return (head + "[" + "=" * done + "." * (size - done) + "]" + tail)[:width - 1]

    def log_line(self, *, step: int, total_steps: int) -> str:
        """The line written every ``log_every_steps`` when stdout is not a terminal: under 80
        columns up to 10,000 steps ('... 0:05<1:02', elapsed then left, as the bar)."""
        return (f"epoch {self.epoch} step {self.in_epoch}/{self.steps_per_epoch} "
                f"(global {step}/{total_steps}) loss {self.loss:.4f} acc {self.accuracy:.4f} "
                f"{self.images_per_second:.0f} img/s {_clock(self.elapsed)}<{_clock(self.left)}")


def _clock(seconds: float | None) -> str:
    """``0:07``, ``12:30``, ``1:02:03``; ``?`` when not known yet."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _columns(out: TextIO) -> int:
    """The terminal's width for ``out`` (COLUMNS wins, as for every program), else 80."""
    try:
        return shutil.get_terminal_size((80, 24)).columns if os.environ.get("COLUMNS") \
            else os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 80
