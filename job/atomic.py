"""Atomic file replacement: a reader sees the old file or the new one, never half of one.

Owns: writing under a temp name beside the target and renaming it into place
(``os.replace`` is atomic within a filesystem), and removing the temp file when
writing fails.
Never touches: what is written; callers bring their own writer (text, HDF5,
memory-mapped ``.npy``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it goes.

    ``suffix`` keeps the ending that writers choose their format by (Keras: ``.h5``).

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
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
