"""The Kubernetes API, seen from the submitter: config, create, get, list, watch, logs, exec,
delete.

Owns: the only ``import kubernetes`` in the package. Loading the kubeconfig (``KUBECONFIG``,
``~/.kube/config``, in-cluster service account), bounded timeouts and retries so a dead API
server never hangs the terminal, and turning every ``ApiException`` or transport error into
a one-line ``ClusterError`` that says what was refused and how to fix it (the table of those
lines is ``job.submit.api_errors``; its exceptions are re-exported here). Following a
resource (list, then watch from its resourceVersion; 410 Gone lists again), waiting on it
with a deadline, and following a log (each line once across reconnects), all under one
reconnect policy. Starting a command in a container over the WebSocket channel protocol
(``exec_stream``; ``job.submit.exec_stream`` reads its frames). Objects go in and
come out as plain dicts in the API's own JSON shape (camelCase), so nothing above this
module depends on the client's model classes.
Never touches: manifest building (``job.submit.manifests``), what events mean
(``job.submit.state``), threads and terminal output (``job.submit.follow``,
``job.submit.terminal``), TensorFlow.

Example:
    >>> kube = connect(context=None)                       # doctest: +SKIP
    >>> kube.create("ml", {"kind": "ConfigMap", ...})      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.stream import stream as websocket_request

from job.errors import ClusterError
from job.submit.api_errors import (  # re-exported: callers catch them from this door
    RBAC_HINT,
    ApiUnreachable,
    Forbidden,
    LogNotReady,
    NotFound,
    WatchExpired,
    from_handshake,
    from_status,
    transport_reason,
)
from job.submit.exec_stream import ExecStream

CONNECT_TIMEOUT_SECONDS = 5.0
"""Seconds to open a TCP connection: an API server that cannot accept within 5 s is down."""
READ_TIMEOUT_SECONDS = 30.0
"""Seconds to wait for a non-streaming answer; real API calls answer in well under a second."""
WATCH_TIMEOUT_SECONDS = 60
"""Server-side timeoutSeconds of one watch connection; the caller reconnects from the last
resourceVersion, so a silently dead connection is noticed within a minute."""
LOG_IDLE_TIMEOUT_SECONDS = 120.0
"""Seconds a followed log may stay silent before the connection is presumed dead and the
caller reconnects (a quiet epoch is shorter than this on any sane log_every_steps)."""
CONNECT_RETRIES = 2
"""Reconnects per request on connection errors only (never re-sends a request the server may
have received): rides out a blip, while a dead server fails in about 3 x the connect timeout."""
EXEC_IDLE_TIMEOUT_SECONDS = 120.0
"""Seconds an exec stream may stay silent before it is presumed dead: ``du`` over a big run
directory on a slow volume answers well within this."""
RECONNECT_DELAYS_SECONDS = (0.0, 1.0, 2.0, 4.0, 8.0)
"""Pauses before each consecutive reconnect of a watch or log stream; its length is the number
of consecutive failures tolerated (about 15 s of outage) before giving up."""

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

_Item = TypeVar("_Item")

# kind -> (API resource name used in RBAC and messages, create/get/delete method suffix)
_KINDS = {
    "ConfigMap": ("configmaps", "config_map", "core"),
    "Service": ("services", "service", "core"),
    "Job": ("jobs.batch", "job", "batch"),
    "Pod": ("pods", "pod", "core"),
    "PersistentVolumeClaim": ("persistentvolumeclaims", "persistent_volume_claim", "core"),
}


class Kube:
    """A thin, typed door to one cluster: every method takes and returns plain dicts.

    Args:
        configuration: a loaded ``kubernetes.client.Configuration``.
        default_namespace: the kubeconfig context's namespace (else ``default``).
        context: the kubeconfig context name, for messages.
        watch_timeout_seconds: server-side timeout of one watch connection.
        reconnect_delays_seconds: pauses between consecutive stream reconnects.
    """

    def __init__(self, configuration: client.Configuration, *, default_namespace: str = "default",
                 context: str | None = None, watch_timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
                 reconnect_delays_seconds: tuple[float, ...] = RECONNECT_DELAYS_SECONDS) -> None:
        configuration.retries = urllib3.Retry(total=CONNECT_RETRIES, connect=CONNECT_RETRIES,
                                              read=0, status=0, other=0, redirect=0,
                                              backoff_factor=0.5)
        self.host = configuration.host
        self.context = context
        self.default_namespace = default_namespace
        self.watch_timeout_seconds = watch_timeout_seconds
        self.reconnect_delays_seconds = tuple(reconnect_delays_seconds)
        self._streams: set[Callable[[], None]] = set()
        self._streams_lock = threading.Lock()
        self._api_client = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api_client)
        self._batch = client.BatchV1Api(self._api_client)

    def close(self) -> None:
        """Release the connection pool."""
        self._api_client.close()

    def stop_streams(self) -> None:
        """Break every open watch and log stream, so the threads reading them can end.

        A thread blocked on a socket read at interpreter exit can abort the process.
        """
        with self._streams_lock:
            stoppers = list(self._streams)
        for stop in stoppers:
            with contextlib.suppress(Exception):
                stop()

    @contextlib.contextmanager
    def _open_stream(self, stop: Callable[[], None]) -> Iterator[None]:
        with self._streams_lock:
            self._streams.add(stop)
        try:
            yield
        finally:
            with self._streams_lock:
                self._streams.discard(stop)

    # --- existence checks --------------------------------------------------------------
    def namespace_exists(self, name: str) -> bool | None:
        """True/False, or None when RBAC does not let a namespaced user read namespaces."""
        try:
            self._json("get", "namespaces", None, name,
                       lambda: self._core.read_namespace(name, **self._raw()))
        except NotFound:
            return False
        except Forbidden:
            return None
        return True

    def get(self, namespace: str, kind: str, name: str) -> dict[str, Any]:
        """Read one ConfigMap, Service, Job, Pod or PersistentVolumeClaim."""
        resource, suffix, group = _kind(kind)
        method = getattr(self._api(group), f"read_namespaced_{suffix}")
        return self._json("get", resource, namespace, name,
                          lambda: method(name, namespace, **self._raw()))

    # --- create / delete ---------------------------------------------------------------
    def create(self, namespace: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create a ConfigMap, Service or Job from its manifest; return the stored object."""
        resource, suffix, group = _kind(manifest.get("kind", "?"))
        method = getattr(self._api(group), f"create_namespaced_{suffix}")
        name = manifest.get("metadata", {}).get("name")
        return self._json("create", resource, namespace, name,
                          lambda: method(namespace, dict(manifest), **self._raw()))

    def delete(self, namespace: str, kind: str, name: str, *,
               propagation: str = "Foreground") -> None:
        """Delete one object; ``propagation`` Foreground/Background also deletes a Job's pods."""
        resource, suffix, group = _kind(kind)
        method = getattr(self._api(group), f"delete_namespaced_{suffix}")
        self._json("delete", resource, namespace, name,
                   lambda: method(name, namespace, body={"propagationPolicy": propagation},
                                  **self._raw()))

    # --- list / watch ------------------------------------------------------------------
    def list(self, namespace: str, kind: str, *, selector: str) -> tuple[list[dict], str]:
        """List Pods or Jobs by label selector; return (items, the list's resourceVersion)."""
        resource, suffix, group = _kind(kind)
        method = getattr(self._api(group), f"list_namespaced_{suffix}")
        body = self._json("list", resource, namespace, None,
                          lambda: method(namespace, label_selector=selector, **self._raw()))
        return body.get("items") or [], body.get("metadata", {}).get("resourceVersion", "")

    def watch(self, namespace: str, kind: str, *, selector: str, resource_version: str,
              timeout_seconds: int | None = None) -> Iterator[tuple[str, dict]]:
        """Yield (event type, object) from one watch connection, starting after resource_version.

        Ends normally when the server's timeoutSeconds elapse (``timeout_seconds``, default
        the client's ``watch_timeout_seconds``); the caller reconnects from the last object's
        resourceVersion.

        Raises:
            WatchExpired: 410 Gone, the resourceVersion was compacted; list again.
            ApiUnreachable: the connection could not be made or broke mid-stream.
        """
        resource, suffix, group = _kind(kind)
        method = getattr(self._api(group), f"list_namespaced_{suffix}")
        # return_type=object keeps events as plain dicts. Passing timeoutSeconds also turns
        # off the client's own silent 410 retry, so expiry reaches the caller, who re-lists.
        timeout = timeout_seconds or self.watch_timeout_seconds
        watcher = watch.Watch(return_type=object)
        stream = watcher.stream(
            method, namespace, label_selector=selector, resource_version=resource_version,
            timeout_seconds=timeout, _request_timeout=(CONNECT_TIMEOUT_SECONDS, timeout + 15))
        with self._open_stream(watcher.stop), self._errors("watch", resource, namespace, None):
            for event in stream:
                yield event["type"], event["raw_object"]

    # --- logs --------------------------------------------------------------------------
    def read_log(self, namespace: str, pod: str, *, tail_lines: int | None = None) -> str:
        """The pod's log as text; the last ``tail_lines`` lines when given."""
        extra = {"tail_lines": tail_lines} if tail_lines else {}
        with self._errors("get", "pods/log", namespace, pod):
            response = self._core.read_namespaced_pod_log(pod, namespace, **extra, **self._raw())
            return response.data.decode("utf-8", errors="replace")

    def stream_log(self, namespace: str, pod: str) -> Iterator[str]:
        """Yield the pod's log lines from the start, following until the container ends.

        Raises:
            LogNotReady: the container has not started yet.
            ApiUnreachable: the connection broke or stayed silent too long; reconnect.
        """
        with self._errors("get", "pods/log", namespace, pod):
            response = self._core.read_namespaced_pod_log(
                pod, namespace, follow=True, _preload_content=False,
                _request_timeout=(CONNECT_TIMEOUT_SECONDS, LOG_IDLE_TIMEOUT_SECONDS))
            try:
                with self._open_stream(response.shutdown):
                    yield from watch.watch.iter_resp_lines(response)
            finally:
                response.release_conn()

    # --- following: one reconnect policy for watches and logs ----------------------------
    def follow(self, namespace: str, kind: str, *, selector: str, stopped: Callable[[], bool],
               pause: Callable[[float], object], deadline: float | None = None
               ) -> Iterator[tuple[str, tuple[dict, ...]]]:
        """List, then watch from the list's resourceVersion, until ``stopped()``.

        Yields ("SYNC", every object) after each listing and (ADDED, MODIFIED or DELETED,
        (the object,)) for each change. A connection that times out or breaks resumes from
        the last resourceVersion; 410 Gone lists again. Reconnects follow ``_reconnecting``.
        With a ``deadline`` (``time.monotonic()`` seconds), no watch connection outlasts it,
        so ``stopped()`` is asked again soon after it passes even when nothing changes.

        Raises:
            ApiUnreachable: the API stayed unreachable through every reconnect.
        """
        version: str | None = None

        def connect() -> Iterator[tuple[str, tuple[dict, ...]]]:
            nonlocal version
            timeout = None if deadline is None else max(1, min(
                self.watch_timeout_seconds, math.ceil(deadline - time.monotonic())))
            try:
                if version is None:
                    items, version = self.list(namespace, kind, selector=selector)
                    yield "SYNC", tuple(items)
                for change, obj in self.watch(namespace, kind, selector=selector,
                                              resource_version=version,
                                              timeout_seconds=timeout):
                    version = obj["metadata"]["resourceVersion"]
                    yield change, (obj,)
            except WatchExpired:
                version = None  # compacted away: list again for a fresh one

        return self._reconnecting(connect, retry_on=(ApiUnreachable,), stopped=stopped,
                                  pause=pause)

    def follow_log(self, namespace: str, pod: str, *, ended: Callable[[], bool],
                   stopped: Callable[[], bool], pause: Callable[[float], object]
                   ) -> Iterator[str]:
        """Yield the pod's log lines, each once, until its container ends or ``stopped()``.

        A follow stream ends when the container does; one that ends while ``ended()`` is
        still False was cut, so it is reopened and the lines already yielded are skipped.
        A pod that is gone ends its log. Reconnects follow ``_reconnecting``.

        Raises:
            ApiUnreachable, LogNotReady: still failing after every reconnect.
        """
        yielded = 0

        def connect() -> Iterator[str]:
            nonlocal yielded
            for number, line in enumerate(self.stream_log(namespace, pod)):
                if number >= yielded:
                    yielded = number + 1
                    yield line

        try:
            yield from self._reconnecting(connect, retry_on=(ApiUnreachable, LogNotReady),
                                          stopped=stopped, pause=pause, complete=ended)
        except NotFound:
            return  # the pod and its log are gone

    def wait(self, namespace: str, kind: str, *, selector: str,
             until: Callable[[tuple[dict, ...]], _Item | None], timeout_seconds: float,
             pause: Callable[[float], object] = time.sleep) -> _Item | None:
        """Watch the objects a selector picks until ``until(them)`` answers, or time runs out.

        ``until`` is asked with every object currently selected after the first listing and
        after each change; its first answer other than None is returned. Reconnects follow
        ``_reconnecting``.

        Returns:
            ``until``'s answer, or None when ``timeout_seconds`` passed without one.

        Raises:
            ApiUnreachable: the API stayed unreachable through every reconnect.
        """
        deadline = time.monotonic() + timeout_seconds
        current: dict[str, dict] = {}
        for change, objects in self.follow(namespace, kind, selector=selector,
                                           stopped=lambda: time.monotonic() >= deadline,
                                           pause=pause, deadline=deadline):
            if change == "SYNC":
                current.clear()
            for obj in objects:
                name = obj["metadata"]["name"]
                if change == "DELETED":
                    current.pop(name, None)
                else:
                    current[name] = obj
            answer = until(tuple(current.values()))
            if answer is not None:
                return answer
        return None

    # --- exec ----------------------------------------------------------------------------
    def exec_stream(self, namespace: str, pod: str, command: list[str], *,
                    container: str) -> ExecStream:
        """Start ``command`` in a running container; read its stdout from the returned stream.

        The official client's WebSocket transport (v4/v5.channel.k8s.io): a GET upgraded to a
        WebSocket, which RBAC authorizes as ``get`` on ``pods/exec`` and, from Kubernetes
        1.35, also as ``create``. No stdin, no TTY.

        Raises:
            Forbidden, NotFound, ClusterError: the API refused the exec (one line each).
            ApiUnreachable: the connection could not be made.
        """
        where = (namespace, pod)
        try:
            connection = websocket_request(
                self._core.connect_get_namespaced_pod_exec, pod, namespace, command=command,
                container=container, stderr=True, stdin=False, stdout=True, tty=False,
                _preload_content=False, binary=True)
        except ApiException as error:
            raise from_handshake(error.__context__ or error, *where, self) from None
        connection.sock.settimeout(EXEC_IDLE_TIMEOUT_SECONDS)
        return ExecStream(connection.sock, command=command, pod=pod,
                          registered=self._open_stream)

    def _reconnecting(self, connect: Callable[[], Iterator[_Item]], *,
                      retry_on: tuple[type[ClusterError], ...], stopped: Callable[[], bool],
                      pause: Callable[[float], object],
                      complete: Callable[[], bool] = lambda: False) -> Iterator[_Item]:
        """Open ``connect()`` again and again and pass its items on: the one reconnect policy.

        A connection that ends cleanly is reopened at once, unless ``complete()``. One that
        fails with ``retry_on`` is reopened after the next of ``reconnect_delays_seconds``,
        waited with ``pause`` (which may return early). A connection that brings an item, or
        ends cleanly, resets the count, so only more failures in a row than there are delays
        give up, raising the last. ``stopped()`` is asked before each connection and after
        each item.
        """
        failures = 0
        while not stopped():
            try:
                for item in connect():
                    failures = 0
                    yield item
                    if stopped():
                        return
            except retry_on:
                failures += 1
                if failures > len(self.reconnect_delays_seconds):
                    raise
                pause(self.reconnect_delays_seconds[failures - 1])
                continue
            failures = 0
            if complete():
                return

    # --- plumbing ----------------------------------------------------------------------
    def _api(self, group: str) -> Any:
        return self._batch if group == "batch" else self._core

    @staticmethod
    def _raw() -> dict[str, Any]:
        # Raw JSON, not model classes: plain dicts are all the callers need, and this skips
        # the client's strict deserialisation of fields it may not know yet.
        return {"_preload_content": False,
                "_request_timeout": (CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS)}

    def _json(self, verb: str, resource: str, namespace: str | None, name: str | None,
              call: Any) -> dict[str, Any]:
        with self._errors(verb, resource, namespace, name):
            response = call()
            return json.loads(response.data or b"{}")

    @contextlib.contextmanager
    def _errors(self, verb: str, resource: str, namespace: str | None,
                name: str | None) -> Iterator[None]:
        try:
            yield
        except ApiException as error:
            raise _from_api_exception(error, verb, resource, namespace, name, self) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ApiUnreachable(f"cannot reach the Kubernetes API at {self.host}: "
                                 f"{transport_reason(error)}; check that the cluster is up "
                                 f"and that {self.credentials} points at it "
                                 "(kubectl cluster-info).") from None

    @property
    def credentials(self) -> str:
        """Where the credentials came from, for messages."""
        return f"kubeconfig context {self.context!r}" if self.context else "your kubeconfig"


def connect(*, context: str | None = None, **options: Any) -> Kube:
    """Load credentials from KUBECONFIG, ~/.kube/config or the in-cluster service account.

    Args:
        context: kubeconfig context name; None: the current context.
        options: passed to ``Kube`` (timeouts, reconnect delays).

    Raises:
        ClusterError: no usable configuration, naming the files tried and how to fix it.
    """
    configuration = client.Configuration()
    paths = os.environ.get("KUBECONFIG") or "~/.kube/config"
    existing = [p for p in paths.split(os.pathsep) if p and Path(p).expanduser().is_file()]
    if existing:
        try:
            contexts, current = config.list_kube_config_contexts(config_file=paths)
            names = [c.get("name") for c in contexts]
            if context is not None and context not in names:
                raise ClusterError(f"kubeconfig {', '.join(existing)} has no context "
                                   f"{context!r}; choose one of: {', '.join(map(str, names))}.")
            config.load_kube_config(config_file=paths, context=context, persist_config=False,
                                    client_configuration=configuration)
        except (ConfigException, OSError, ValueError, KeyError, TypeError) as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise ClusterError(f"kubeconfig {', '.join(existing)}: {reason}; fix the file, "
                               "or choose another with KUBECONFIG=... or --context.") from None
        name = context or (current or {}).get("name")
        chosen = next((c for c in contexts if c.get("name") == name), current) or {}
        namespace = (chosen.get("context") or {}).get("namespace") or "default"
        return Kube(configuration, default_namespace=namespace, context=name, **options)
    if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as error:
            raise ClusterError(f"in-cluster Kubernetes config: {error}.") from None
        namespace = (SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
                     if SERVICE_ACCOUNT_NAMESPACE.is_file() else "default")
        return Kube(configuration, default_namespace=namespace, **options)
    raise ClusterError(
        f"no kubeconfig found (looked at KUBECONFIG or ~/.kube/config: {paths}); get one for "
        "your cluster (e.g. `gcloud container clusters get-credentials`, `aws eks "
        "update-kubeconfig`, `az aks get-credentials`) or set KUBECONFIG=/path/to/config.")


def _kind(kind: str) -> tuple[str, str, str]:
    try:
        return _KINDS[kind]
    except KeyError:
        raise ClusterError(f"kind {kind!r} is not handled by the submitter; expected one of "
                           f"{', '.join(_KINDS)}.") from None


def _from_api_exception(error: ApiException, verb: str, resource: str,
                        namespace: str | None, name: str | None, kube: Kube) -> ClusterError:
    try:
        status = json.loads(error.body) if error.body else {}
    except ValueError:
        status = {}
    if not isinstance(status, dict) or status.get("kind") != "Status":
        status = {"code": error.status, "message": str(error.reason or error.status)}
    status.setdefault("code", error.status)
    return from_status(status, verb, resource, namespace, name, kube)


__all__ = ["RBAC_HINT", "ApiUnreachable", "ExecStream", "Forbidden", "Kube", "LogNotReady",
           "NotFound", "WatchExpired", "connect"]
