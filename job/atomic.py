"""Atomic, durable file replacement: a reader sees the old file or the new one, never half.

Owns: writing under a temp name beside the target, flushing it to disk, giving it the
ordinary mode of a new file, renaming it into place (``os.replace`` is atomic within a
filesystem), flushing the folder so the rename survives a crash, and removing the temp
file when writing fails.
A folder (a SavedModel) is written under a temp name and renamed into place the same way.
Never touches: what is written; callers bring their own writer (text, HDF5,
memory-mapped ``.npy``, a SavedModel).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it goes.

    ``suffix`` keeps the ending that writers choose their format by (Keras: ``.h5``).
    The file is fsynced before the rename and its folder after, so a power cut leaves
    the old file or the new one. It gets the mode a plain ``open`` would give it
    (0644 under the usual umask), not ``mkstemp``'s 0600: colleagues read the shared
    models volume under other uids.

    Example:
        >>> with replacing("metrics.json") as tmp:      # doctest: +SKIP
        ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it takes ``path``'s place whole.

    Everything in it is fsynced before the rename. An old folder of that name is
    renamed aside first and then deleted, so a reader finds the old folder, none, or
    the new one, never half of one. On error the temp folder goes.

    Example:
        >>> with replacing_folder("saved_model") as tmp:   # doctest: +SKIP
        ...     model.export(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        for folder, _, files in os.walk(tmp):
            for name in files:
                fsync_path(os.path.join(folder, name))
            fsync_path(folder)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}-old-", dir=path.parent))
            os.replace(path, old / path.name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's or a folder's data and metadata to disk.

    A folder whose filesystem cannot fsync folders (some network mounts say EINVAL)
    is left as it is: the rename is as durable there as the mount makes it.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under this process's umask (e.g. 0o644)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # Linux shows the umask without changing it; elsewhere set and restore it at once.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
