"""The Kubernetes API, seen from the submitter: config, create, get, list, watch, patch, logs,
exec, delete.

Owns: the only ``import kubernetes`` in the package. Loading the kubeconfig (``KUBECONFIG``,
``~/.kube/config``, in-cluster service account), bounded timeouts and retries so a dead API
server never hangs the terminal, and turning every ``ApiException`` or transport error into
a one-line ``ClusterError`` that says what was refused and how to fix it (the table of those
lines is ``job.submit.api_errors``; its exceptions are re-exported here). The kubeconfig
context's namespace (``context_namespace``; which namespace a command uses is
``job.submit.namespace``'s rule). Starting a command in a container over the WebSocket
channel protocol (``exec_stream``; ``job.submit.exec_stream`` reads its frames). Objects go
in and come out as plain dicts in the API's own JSON shape (camelCase), so nothing above
this module depends on the client's model classes. Following, waiting and reconnecting are
methods of ``Kube`` too, strung from these single requests by ``job.submit.reconnect``.
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
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

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
from job.submit.reconnect import Reconnecting

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

# kind -> (API resource name used in RBAC and messages, create/get/delete method suffix)
_KINDS = {
    "ConfigMap": ("configmaps", "config_map", "core"),
    "Service": ("services", "service", "core"),
    "Job": ("jobs.batch", "job", "batch"),
    "Pod": ("pods", "pod", "core"),
    "PersistentVolumeClaim": ("persistentvolumeclaims", "persistent_volume_claim", "core"),
}


class Kube(Reconnecting):
    """A thin, typed door to one cluster: every method takes and returns plain dicts.

    Args:
        configuration: a loaded ``kubernetes.client.Configuration``.
        default_namespace: the kubeconfig context's namespace; None when it names none (the
            namespace rule, ``job.submit.namespace``, then falls back to its default).
        context: the kubeconfig context name, for messages.
        watch_timeout_seconds: server-side timeout of one watch connection.
        reconnect_delays_seconds: pauses between consecutive stream reconnects.
    """

    def __init__(self, configuration: client.Configuration, *,
                 default_namespace: str | None = None, context: str | None = None,
                 watch_timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
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
        """Create a ConfigMap, Service or Job from its manifest; return the stored object.

        Strict field validation: a field the cluster does not know (a typo in the spec's
        ``cluster.affinity``, say) is refused, where the default would drop it silently.
        """
        resource, suffix, group = _kind(manifest.get("kind", "?"))
        method = getattr(self._api(group), f"create_namespaced_{suffix}")
        name = manifest.get("metadata", {}).get("name")
        return self._json("create", resource, namespace, name,
                          lambda: method(namespace, dict(manifest), field_validation="Strict",
                                         **self._raw()))

    def patch(self, namespace: str, kind: str, name: str,
              changes: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``changes`` into one object (a JSON merge patch); return the stored object."""
        resource, suffix, group = _kind(kind)
        method = getattr(self._api(group), f"patch_namespaced_{suffix}")
        return self._json("patch", resource, namespace, name,
                          lambda: method(name, namespace, dict(changes),
                                         _content_type="application/merge-patch+json",
                                         **self._raw()))

    def delete(self, namespace: str, kind: str, name: str, *,
               propagation: str = "Foreground") -> None:
        """Delete one object; ``propagation`` Foreground/Background also deletes a Job's pods."""
        resource, suffix, group = _kind(kind)
        method = getattr(self._api(group), f"delete_namespaced_{suffix}")
        self._json("delete", resource, namespace, name,
                   lambda: method(name, namespace, body={"propagationPolicy": propagation},
                                  **self._raw()))

    # --- list / watch ------------------------------------------------------------------
    def list(self, namespace: str | None, kind: str, *,
             selector: str) -> tuple[list[dict], str]:
        """List Pods or Jobs by label selector, in one namespace or (None) in all of them;
        return (items, the list's resourceVersion)."""
        resource, suffix, group = _kind(kind)
        api = self._api(group)
        call = (lambda: getattr(api, f"list_{suffix}_for_all_namespaces")(
            label_selector=selector, **self._raw())) if namespace is None else (
            lambda: getattr(api, f"list_namespaced_{suffix}")(
                namespace, label_selector=selector, **self._raw()))
        body = self._json("list", resource, namespace, None, call)
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
    def read_log(self, namespace: str, pod: str, *, tail_lines: int | None = None,
                 since_seconds: int | None = None, timestamps: bool = False) -> str:
        """The pod's log as text: the last ``tail_lines`` lines, those of the last
        ``since_seconds``, each after its timestamp, as given (``kubectl logs``' options)."""
        with self._errors("get", "pods/log", namespace, pod):
            response = self._core.read_namespaced_pod_log(
                pod, namespace, **_log_options(tail_lines, since_seconds, timestamps),
                **self._raw())
            return response.data.decode("utf-8", errors="replace")

    def stream_log(self, namespace: str, pod: str, *, tail_lines: int | None = None,
                   since_seconds: int | None = None, timestamps: bool = False
                   ) -> Iterator[str]:
        """Yield the pod's log lines (from the start, or as ``read_log``'s options pick them),
        following until the container ends.

        Raises:
            LogNotReady: the container has not started yet.
            ApiUnreachable: the connection broke or stayed silent too long; reconnect.
        """
        with self._errors("get", "pods/log", namespace, pod):
            response = self._core.read_namespaced_pod_log(
                pod, namespace, follow=True, _preload_content=False,
                **_log_options(tail_lines, since_seconds, timestamps),
                _request_timeout=(CONNECT_TIMEOUT_SECONDS, LOG_IDLE_TIMEOUT_SECONDS))
            try:
                with self._open_stream(response.shutdown):
                    yield from watch.watch.iter_resp_lines(response)
            finally:
                response.release_conn()

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
    paths, existing = _kubeconfig_files()
    if existing:
        name, namespace = _context(paths, existing, context)
        try:
            config.load_kube_config(config_file=paths, context=context, persist_config=False,
                                    client_configuration=configuration)
        except (ConfigException, OSError, ValueError, KeyError, TypeError) as error:
            raise _broken(existing, error) from None
        return Kube(configuration, default_namespace=namespace, context=name, **options)
    if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as error:
            raise ClusterError(f"in-cluster Kubernetes config: {error}.") from None
        return Kube(configuration, default_namespace=_pod_namespace(), **options)
    raise ClusterError(
        f"no kubeconfig found (looked at KUBECONFIG or ~/.kube/config: {paths}); get one for "
        "your cluster (e.g. `gcloud container clusters get-credentials`, `aws eks "
        "update-kubeconfig`, `az aks get-credentials`) or set KUBECONFIG=/path/to/config.")


def context_namespace(*, context: str | None = None) -> str | None:
    """The namespace the kubeconfig context names, read without connecting or running a
    credential plugin (``render`` works offline); in a pod, the pod's own.

    Returns:
        None when the context names no namespace, or when there is no kubeconfig at all.

    Raises:
        ClusterError: the kubeconfig is unreadable, or has no context ``context``.
    """
    paths, existing = _kubeconfig_files()
    if existing:
        return _context(paths, existing, context)[1]
    if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return _pod_namespace()
    if context is not None:
        raise ClusterError(f"--context {context}: no kubeconfig found (looked at KUBECONFIG "
                           f"or ~/.kube/config: {paths}); set KUBECONFIG=/path/to/config.")
    return None


def _kubeconfig_files() -> tuple[str, list[str]]:
    """The kubeconfig search path, and the files of it that exist."""
    paths = os.environ.get("KUBECONFIG") or "~/.kube/config"
    return paths, [p for p in paths.split(os.pathsep) if p and Path(p).expanduser().is_file()]


def _context(paths: str, existing: list[str], context: str | None) -> tuple[str | None,
                                                                         str | None]:
    """The chosen context's name and namespace (None when it names none)."""
    try:
        contexts, current = config.list_kube_config_contexts(config_file=paths)
    except (ConfigException, OSError, ValueError, KeyError, TypeError) as error:
        raise _broken(existing, error) from None
    names = [c.get("name") for c in contexts]
    if context is not None and context not in names:
        raise ClusterError(f"kubeconfig {', '.join(existing)} has no context {context!r}; "
                           f"choose one of: {', '.join(map(str, names))}.")
    name = context or (current or {}).get("name")
    chosen = next((c for c in contexts if c.get("name") == name), current) or {}
    return name, (chosen.get("context") or {}).get("namespace") or None


def _broken(existing: list[str], error: BaseException) -> ClusterError:
    reason = " ".join(str(error).split()) or type(error).__name__
    return ClusterError(f"kubeconfig {', '.join(existing)}: {reason}; fix the file, or choose "
                        "another with KUBECONFIG=... or --context.")


def _pod_namespace() -> str | None:
    """In a pod: its service account's namespace, None when the file is not mounted."""
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    return None


def _log_options(tail_lines: int | None, since_seconds: int | None,
                 timestamps: bool) -> dict[str, Any]:
    options = {"tail_lines": tail_lines, "since_seconds": since_seconds,
               "timestamps": timestamps or None}
    return {key: value for key, value in options.items() if value is not None}


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
           "NotFound", "WatchExpired", "connect", "context_namespace"]
