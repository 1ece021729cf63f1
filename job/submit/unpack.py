"""A run directory arriving as a tar stream: unpacked safely, checked, and put in place at once.

Owns: the local side of ``trainjob pull``. A staging folder beside the destination
(``staging``), so a partial download never appears under the run's name and is removed on any
failure; safe extraction (tarfile's ``data`` filter: no absolute paths, no ``..``, no links
leaving the folder, no device files, no setuid bits); checking ``model.h5`` against the
``model_sha256`` of ``metrics.json`` (``verify``); the rename into place; and the byte
progress bar (``Progress``).
Never touches: the cluster (``job.submit.kube``), the pull's order (``job.submit.pull``),
TensorFlow.

Example:
    >>> with staging(Path("models"), "shapes-x7k2p") as folder:   # doctest: +SKIP
    ...     unpack(chunks, folder, progress=Progress(sys.stdout, total=None))
    ...     verify(folder, partial=False)
    ...     place(folder, Path("models/shapes-x7k2p"))
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from job.errors import EXIT_BAD_INPUT, TrainjobError

MODEL_FILE = "model.h5"
"""The run's model, which metrics.json's model_sha256 describes."""
METRICS_FILE = "metrics.json"
"""Written last by the chief: its presence means the run finished."""
SHA_KEY = "model_sha256"
"""The key of metrics.json that holds model.h5's sha256."""
HASH_CHUNK_BYTES = 1 << 20
"""Bytes read at a time to hash the model: constant memory for any model size."""
BAR_WIDTH = 24
"""Characters in the terminal progress bar, as training's bar: the line fits 80 columns."""
REFRESH_SECONDS = 0.2
"""Minimum seconds between progress bar redraws."""


class PullFailed(TrainjobError):
    """The transfer or its content is damaged: nothing was put in place. Exit 1."""


class PullRefused(TrainjobError):
    """The pull cannot be done as asked (a folder in the way, a run not finished). Exit 2."""

    exit_code = EXIT_BAD_INPUT


@dataclass(frozen=True)
class Verified:
    """What ``verify`` found: the model's sha256 when it was checked, and notes to print."""

    sha256: str | None
    notes: tuple[str, ...] = ()


class Progress:
    """Bytes received: a bar on a terminal, nothing in between otherwise (a log stays short).

    Args:
        out: where the bar goes; it is drawn only when ``out`` is a terminal.
        total: bytes expected (from ``du``), or None: the bar then shows bytes and speed only.
    """

    def __init__(self, out: TextIO, *, total: int | None) -> None:
        self.out = out
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.ended: float | None = None
        self._tty = _isatty(out)
        self._drawn = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self._tty and now - self._drawn >= REFRESH_SECONDS:
            self._drawn = now
            self._draw()

    def finish(self, *, complete: bool = True) -> None:
        """Stop the clock and end the bar's line: drawn full when ``complete``, else as it stood."""
        self.ended = time.monotonic()
        if self._tty and (complete or self._drawn):
            self._draw(final=complete)
            self.out.write("\n")
            self.out.flush()

    @property
    def seconds(self) -> float:
        """Seconds from the first byte awaited to ``finish`` (or to now, before it)."""
        return max((self.ended or time.monotonic()) - self.started, 1e-6)

    def _draw(self, *, final: bool = False) -> None:
        rate = f"{size_text(self.done / self.seconds)}/s"
        if self.total:
            shown = self.total if final else min(self.done, self.total)
            filled = int(BAR_WIDTH * shown / self.total)
            text = (f"[{'=' * filled}{'.' * (BAR_WIDTH - filled)}] {100 * shown // self.total:3d}%"
                    f"  {size_text(shown)} / {size_text(self.total)}  {rate}")
        else:
            text = f"{size_text(self.done)}  {rate}"
        self.out.write(f"\r{text}\x1b[K")
        self.out.flush()


class ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks, counting bytes into a ``Progress``."""

    def __init__(self, chunks: Iterator[bytes], progress: Progress) -> None:
        self._chunks = chunks
        self._progress = progress
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
            self._progress.advance(len(chunk))
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def drain(self) -> None:
        """Read to the end (tar's trailing padding), so the stream's exit status arrives."""
        while self.readinto(memoryview(bytearray(HASH_CHUNK_BYTES))):
            pass


@contextlib.contextmanager
def staging(dest: Path, run_id: str) -> Iterator[Path]:
    """A fresh hidden folder beside ``dest/run_id``, removed on exit unless placed.

    Raises:
        PullRefused: ``dest/run_id`` exists already, or ``dest`` cannot be written.
    """
    target = dest / run_id
    if target.exists() or target.is_symlink():
        raise PullRefused(f"{target} already exists; remove it, or pull into another folder "
                          f"(trainjob pull {run_id} OTHER_DIR).")
    folder = dest / f".{run_id}.pull-{secrets.token_hex(4)}"
    try:
        dest.mkdir(parents=True, exist_ok=True)
        folder.mkdir()  # the mode a new folder gets under the umask, as the run's own
    except OSError as error:
        raise PullRefused(f"cannot create {folder}: {error.strerror}; choose a DEST folder "
                          "you can write to.") from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def unpack(reader: ChunkReader, folder: Path) -> int:
    """Extract the tar stream into ``folder`` with tarfile's ``data`` filter; count the files.

    Raises:
        PullFailed: an unsafe member (absolute, ``..``, a link leaving the folder, a device),
            or a stream that is not a whole tar archive.
    """
    try:
        with tarfile.open(fileobj=reader, mode="r|") as archive:
            # extractall sets folders' modes last, so a read-only folder cannot block its files.
            archive.extractall(folder, filter="data")
    except tarfile.FilterError as error:
        raise PullFailed(f"the run directory's tar stream holds an unsafe member: {error}; "
                         "nothing was written. The volume holds something trainjob did not "
                         "write; look at it before pulling again.") from None
    except (tarfile.TarError, EOFError) as error:
        raise PullFailed(f"the run directory's tar stream is damaged ({error}); nothing was "
                         "written; pull again.") from None
    reader.drain()
    return sum(len(names) for _, _, names in os.walk(folder))


def verify(folder: Path, *, partial: bool) -> Verified:
    """Check ``model.h5`` against metrics.json's sha256; without ``partial`` both must exist.

    Raises:
        PullFailed: the sha256 differs (a damaged transfer, or a damaged file on the volume).
        PullRefused: no model.h5 or metrics.json, and ``partial`` is False.
    """
    model, metrics_file = folder / MODEL_FILE, folder / METRICS_FILE
    expected, reason = _expected_sha(metrics_file)
    if not model.is_file() or expected is None:
        missing = MODEL_FILE if not model.is_file() else f"{METRICS_FILE} ({reason})"
        if not partial:
            raise PullRefused(f"the run directory has no usable {missing}: the run did not "
                              "finish, or failed; pass --partial to fetch what it left.")
        note = f"{MODEL_FILE} not checked: no usable {missing}" if model.is_file() else ""
        return Verified(sha256=None, notes=(note,) if note else ())
    actual = file_sha256(model)
    if actual != expected:
        raise PullFailed(f"{MODEL_FILE} does not match {METRICS_FILE}: sha256 {actual[:16]}... "
                         f"received, {expected[:16]}... expected; the transfer or the file on "
                         "the volume is damaged. Nothing was written; pull again, and if it "
                         "fails the same way the model on the volume is damaged.")
    return Verified(sha256=actual)


def place(folder: Path, target: Path) -> None:
    """Rename the checked folder to its name: the run appears whole, or not at all."""
    if target.exists() or target.is_symlink():
        raise PullRefused(f"{target} appeared while pulling; remove it and pull again.")
    os.rename(folder, target)


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def size_text(count: float) -> str:
    """Bytes for people: '812 B', '12.3 KiB', '4.0 MiB', '1.2 GiB'.

    Example:
        >>> size_text(812), size_text(4 * 1024 * 1024)
        ('812 B', '4.0 MiB')
    """
    if count < 1024:
        return f"{count:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024 or unit == "GiB":
            break
    return f"{count:.1f} {unit}"


def _expected_sha(metrics_file: Path) -> tuple[str | None, str]:
    if not metrics_file.is_file():
        return None, "missing"
    try:
        value = json.loads(metrics_file.read_text(encoding="utf-8")).get(SHA_KEY)
    except (ValueError, AttributeError, OSError):
        return None, "unreadable"
    if not isinstance(value, str) or len(value) != 64:
        return None, f"no {SHA_KEY}"
    return value.lower(), ""


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False
