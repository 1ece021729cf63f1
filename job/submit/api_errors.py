"""The Kubernetes API's refusals and broken connections, each as one line a user can act on.

Owns: the submitter's cluster exceptions (``NotFound``, ``Forbidden``, ``ApiUnreachable``,
``WatchExpired``, ``LogNotReady``) and the one table from a Kubernetes ``Status`` (HTTP code,
reason, message) to one of them, with a message that says what was refused and how to fix it
(``from_status``). Pure: the API door (``job.submit.kube``) hands it what the server said.
Never touches: the ``kubernetes`` package, the network, TensorFlow.

Example:
    >>> class Api:
    ...     host, credentials = "https://k8s.example", "your kubeconfig"
    >>> str(from_status({"code": 404}, "get", "jobs.batch", "ml", "shapes-x7k2p", Api()))
    "not found: job 'shapes-x7k2p' in namespace 'ml'."
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

import urllib3

from job.errors import ClusterError

RBAC_HINT = "ask your cluster admin to bind the trainjob Role (k8s/rbac.yaml) to you"


class Endpoint(Protocol):
    """The API server a request went to, as messages name it."""

    host: str

    @property
    def credentials(self) -> str: ...


class ApiUnreachable(ClusterError):
    """The API server could not be reached or the connection broke; a retry may succeed."""


class NotFound(ClusterError):
    """The object (or its namespace) does not exist (HTTP 404)."""


class Forbidden(ClusterError):
    """RBAC refused the request (HTTP 403)."""


class WatchExpired(ClusterError):
    """The resourceVersion is too old (HTTP 410 Gone); list again for a fresh one."""


class LogNotReady(ClusterError):
    """The container has not started, so it has no log yet (HTTP 400 from the log endpoint)."""


def from_handshake(cause: BaseException, namespace: str, pod: str,
                   kube: Endpoint) -> ClusterError:
    """One line for an exec that never started, from the WebSocket handshake's HTTP answer.

    ``cause`` is what the WebSocket library raised: a bad handshake status carries the
    HTTP code and the API's ``Status`` body; anything else is a transport failure.
    """
    status_code = getattr(cause, "status_code", None)
    if status_code is None:
        return ApiUnreachable(f"cannot reach the Kubernetes API at {kube.host} to exec in pod "
                              f"{pod!r}: {transport_reason(cause)}; check that the cluster is "
                              f"up and that {kube.credentials} points at it "
                              "(kubectl cluster-info).")
    try:
        status = json.loads(getattr(cause, "resp_body", None) or b"{}")
    except ValueError:
        status = {}
    if not isinstance(status, dict) or status.get("kind") != "Status":
        status = {"message": str(getattr(cause, "status_message", "") or status_code)}
    status["code"] = status_code
    return from_status(status, "create", "pods/exec", namespace, pod, kube)


def from_status(status: Mapping[str, Any], verb: str, resource: str, namespace: str | None,
                name: str | None, kube: Endpoint) -> ClusterError:
    """One clear line for a Kubernetes Status: what was refused, and how to fix it."""
    code = status.get("code")
    message = " ".join(str(status.get("message") or status.get("reason") or "").split())
    details = status.get("details") or {}
    where = f" in namespace {namespace!r}" if namespace else ""
    target = f"{singular(resource)} {name!r}" if name else resource
    if code == 401:
        return ClusterError(f"unauthorized: the Kubernetes API at {kube.host} rejected the "
                            f"credentials of {kube.credentials}; refresh them (e.g. re-run your "
                            "cloud's get-credentials command) or check KUBECONFIG.")
    if code == 403:
        user = re.search(r'User "([^"]+)"', message)
        who = f"user {user.group(1)!r}" if user else "you"
        # The server names the verb it checked: an exec is checked as get, then as create.
        refused = re.search(r'cannot (\w+) resource', message)
        verb = refused.group(1) if refused else verb
        return Forbidden(f"forbidden: {who} cannot {verb} {resource}{where}; {RBAC_HINT}.")
    if code == 404:
        missing_kind, missing = details.get("kind"), details.get("name")
        if missing_kind in ("namespaces", "namespace") and missing:
            return NotFound(f"not found: namespace {missing!r} does not exist; create it "
                            "(kubectl create namespace ...) or pass --namespace.")
        return NotFound(f"not found: {target}{where}.")
    if code == 409:
        return ClusterError(f"already exists: {target}{where}; submit again without --run-id "
                            "(or with a new one) to get a fresh run id.")
    if code == 410:
        return WatchExpired(f"watch of {resource}{where} expired (410 Gone): {message}.")
    if code == 400 and resource == "pods/log":
        return LogNotReady(f"no log yet for pod {name!r}{where}: {message}.")
    if code == 422:
        return ClusterError(f"invalid {target}{where}: {message}; the cluster may be older than "
                            "Kubernetes 1.31, which the manifests need.")
    if code in (500, 502, 503, 504):
        return ApiUnreachable(f"the Kubernetes API at {kube.host} answered {code} to {verb} "
                              f"{resource}{where}: {message}.")
    return ClusterError(f"the Kubernetes API refused to {verb} {target}{where}: HTTP {code} "
                        f"{message}.")


def singular(resource: str) -> str:
    """'jobs.batch' -> 'job', 'pods/log' -> 'pod': a resource's name for one object."""
    base = resource.split(".", 1)[0].split("/", 1)[0]
    names = {"configmaps": "configmap", "services": "service", "jobs": "job", "pods": "pod",
             "persistentvolumeclaims": "persistentvolumeclaim", "namespaces": "namespace"}
    return names.get(base, base)


def transport_reason(error: BaseException) -> str:
    """Why a connection failed, in a few words: refused, timed out, broke mid-response..."""
    reason = getattr(error, "reason", None) or error
    text = " ".join(str(reason).split())
    if "refused" in text.lower():
        return "connection refused"
    if isinstance(reason, (urllib3.exceptions.TimeoutError, TimeoutError)) \
            or "timed out" in text.lower():
        return "timed out"
    if isinstance(error, urllib3.exceptions.ProtocolError):
        return "the connection broke mid-response"
    # The pool's repr (with object ids) adds nothing for the user.
    return re.sub(r"<[^>]*>: ?", "", text)[:200]
