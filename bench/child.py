"""Run one command from a small process; report its wall time and peak RSS as JSON.

Usage: ``python bench/child.py REPORT.json COMMAND [ARG...]``; exits with the
command's exit code and forwards SIGTERM and SIGINT to it.

Why a separate small process: on Linux a process's peak RSS starts from the
high-water mark of the memory it replaced at ``exec``, which for a child of
the benchmark is the benchmark's own (TensorFlow loaded, a decoded photo set in
memory). Started from this process, which holds only the interpreter, a
child's ``ru_maxrss`` is its own.
Owns: that one child. Never touches: anything else (standard library only, and
run as a script, so it never imports the benchmark package).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    report, command = argv[0], argv[1:]
    started = time.perf_counter()
    process = subprocess.Popen(command)

    def forward(signum, _frame):
        if process.returncode is None:
            process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    _, status, usage = os.wait4(process.pid, 0)
    # wait4 reaped it: tell Popen, so neither it nor ``forward`` touches the pid again.
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    # ru_maxrss is KiB on Linux and bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    with open(report, "w") as handle:
        json.dump({"seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * scale,
                   "returncode": process.returncode}, handle)
    return process.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
