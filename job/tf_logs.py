"""TensorFlow's C++ log lines on stderr: hidden from users unless asked for.

Owns: filtering stderr at the file-descriptor level, where TensorFlow's C++ code writes
(``I0000 ... cudart_stub.cc:31] Could not find cuda drivers``, oneDNN and CPU-feature
notices), so a run's own lines stay readable. TensorFlow 2.19 and later print these
through absl before ``TF_CPP_MIN_LOG_LEVEL`` is read, so that variable alone cannot
hide them (tensorflow/tensorflow#100442). Real failures still surface as Python
exceptions, which the CLI prints as one line. ``TRAINJOB_TF_LOGS=1`` shows everything.
Never touches: Python-level logging, stdout, what the program prints itself (every
other line passes through unchanged and in order).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Mapping

SHOW_ENV = "TRAINJOB_TF_LOGS"
"""Set to 1 to see TensorFlow's C++ log lines (for debugging TensorFlow itself)."""

NOISE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] "      # absl: I0000 00:00:...
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] [\w./-]+:\d+\] "  # TF: 2026-11-30 ...: I
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow "
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$)")   # LiteRT's interpreter
"""The start of a TensorFlow C++ log line (and the tail of its CPU-feature notice)."""


def hide(env: Mapping[str, str] | None = None) -> Callable[[], None]:
    """Filter TensorFlow's C++ log lines out of this process's stderr; return ``restore``.

    ``restore()`` puts the real stderr back and forwards everything still in flight:
    call it before the process exits, or lines could be lost.
    """
    env = os.environ if env is None else env
    if env.get(SHOW_ENV) == "1":
        return lambda: None
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarder = threading.Thread(target=_forward, args=(read_end, real), daemon=True,
                                 name="stderr-filter")
    forwarder.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)  # The pipe's last writer closes: the forwarder reads to the end.
        forwarder.join(timeout=5)
        os.close(real)

    return restore


def _forward(read_end: int, real: int) -> None:
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            _write(real, [line + b"\n" for line in lines])
    _write(real, [pending] if pending else [])


def _write(fd: int, lines: list[bytes]) -> None:
    kept = b"".join(line for line in lines if not NOISE.match(line))
    while kept:
        try:
            kept = kept[os.write(fd, kept):]
        except OSError:
            return  # The reader went away; nothing is left to tell.
