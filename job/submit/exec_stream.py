"""A command running in a container, read over the Kubernetes exec WebSocket protocol.

Owns: reading the channel frames of one exec connection (v4/v5.channel.k8s.io): stdout
as it arrives, in constant memory; the end of stderr; the command's end (channel 3, a JSON
``Status``) as an exit code. A stream cut before that end is an ``ApiUnreachable``.
Never touches: opening the connection and its refusals (``job.submit.kube``), what the
command is for (``job.submit.pull``), TensorFlow.

Example:
    >>> with kube.exec_stream("ml", "pod", ["cat", "/etc/hostname"], container="c") as run:
    ...     data = b"".join(run)                             # doctest: +SKIP
    >>> run.exit_code                                        # doctest: +SKIP
    0
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import websocket

from job.submit.api_errors import ApiUnreachable, transport_reason

EXEC_STDERR_KEPT_BYTES = 4096
"""The end of a command's stderr kept for its error message."""
STDOUT, STDERR, STATUS = 1, 2, 3
"""The channels (first byte of each frame) of the exec protocol that a command without stdin
or a TTY uses."""


class ExecStream:
    """One command running in a container: iterate for its stdout, then read how it ended.

    Each WebSocket frame's first byte is its channel: 1 stdout, 2 stderr, 3 the command's
    end as a JSON ``Status`` (Success, or NonZeroExitCode with the code in its causes).
    Iterating yields stdout bytes as they arrive, keeps the end of stderr, and stops when the
    server closes the stream; ``exit_code`` is then set. Memory stays constant whatever the
    output's size. Use it as a context manager, so the connection closes on any exit.
    """

    def __init__(self, connection: Any, *, command: list[str], pod: str,
                 registered: Callable[[Callable[[], None]],
                                      contextlib.AbstractContextManager[None]]) -> None:
        self._connection = connection
        self._registered = registered
        self.command = command
        self.pod = pod
        self.exit_code: int | None = None
        """The command's exit code once the stream ended; None before, or if it never said."""
        self.failure = ""
        """The API's message when the command did not run (not found, not executable)."""
        self._stderr = bytearray()

    @property
    def stderr(self) -> str:
        """The end of the command's stderr, as one line."""
        return " ".join(self._stderr.decode("utf-8", errors="replace").split())

    def __iter__(self) -> Iterator[bytes]:
        with self._registered(self.close):
            while True:
                try:
                    opcode, frame = self._connection.recv_data_frame(True)
                except websocket.WebSocketConnectionClosedException:
                    break
                except (websocket.WebSocketException, OSError) as error:
                    raise ApiUnreachable(
                        f"the exec stream of {self.command[0]} in pod {self.pod!r} broke: "
                        f"{transport_reason(error)}.") from None
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                if opcode not in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT) \
                        or not frame.data:
                    continue
                data = frame.data if isinstance(frame.data, bytes) else frame.data.encode()
                channel, payload = data[0], data[1:]
                if channel == STDOUT and payload:
                    yield payload
                elif channel == STDERR:
                    self._stderr += payload
                    del self._stderr[:-EXEC_STDERR_KEPT_BYTES]
                elif channel == STATUS:
                    self._ended(payload)
        if self.exit_code is None and not self.failure:
            raise ApiUnreachable(f"the exec stream of {self.command[0]} in pod {self.pod!r} "
                                 "ended without the command's exit status; the connection "
                                 "was cut.")

    def _ended(self, payload: bytes) -> None:
        try:
            status = json.loads(payload or b"{}")
        except ValueError:
            status = {}
        if status.get("status") == "Success":
            self.exit_code = 0
            return
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode" and str(cause.get("message", "")).isdigit():
                self.exit_code = int(cause["message"])
                return
        self.failure = " ".join(str(status.get("message") or "unknown failure").split())

    def close(self) -> None:
        """Close the connection at once (a command still running is left to its pod's end).

        A close frame, then the socket: no waiting for the server's reply, which a cut
        connection never sends (the client library would wait 3 s for it).
        """
        with contextlib.suppress(Exception):
            self._connection.send_close()
        with contextlib.suppress(Exception):
            self._connection.shutdown()

    def __enter__(self) -> ExecStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
