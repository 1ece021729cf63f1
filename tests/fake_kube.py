"""A fake Kubernetes API server over real HTTP, driven by the real ``kubernetes`` client.

Owns: an in-memory object store (namespaces, PVCs, ConfigMaps, Services, Jobs, Pods) with
uids, a global resourceVersion counter and creation timestamps; create/get/list/delete and
merge-patch, with label selectors (and a list of Jobs or Pods across all namespaces) and
propagation; a garbage collector that deletes the objects an ownerReference ties to a deleted
owner (and those whose owner's uid does not exist, as the real one does; Orphan keeps them,
without the reference); proper ``Status`` errors (403/404/409/410/401); watch
streams of newline-delimited JSON events from a resourceVersion, honouring timeoutSeconds;
pod logs as text (``follow``, ``tailLines``, ``sinceSeconds``, ``timestamps``); exec over
WebSocket in the channel protocol
the official client speaks (v4.channel.k8s.io: each binary frame's first byte is its channel,
1 stdout, 2 stderr, 3 the end as a JSON Status), running the command for real on this machine
with the pod's volume mounts mapped to host folders; pods created directly (not by a Job)
scheduled and started by a small kubelet (or held Pending by a script, or by a claim that does
not exist); and a small Indexed-Job controller thread
that creates one pod per index, moves it Pending -> Running -> Succeeded/Failed from a
scripted ``Scenario`` (or by running the pod's command as a local process), applies
podFailurePolicy, backoffLimit, successPolicy and podReplacementPolicy: Failed, and keeps
the Job's conditions and counts; a suspended Job starts no pod until resumed, and a pod whose
ConfigMap volume does not exist waits in ContainerCreating, as the kubelet makes it wait
(recorded in ``mount_failures``).
Hooks for tests: ``forbid`` a verb on a resource, ``expire_next_watch`` (410 Gone, in the
stream or as HTTP), ``drop_next_watch`` (the connection breaks mid-stream), ``tokens`` (401),
``script_pod_start`` (how directly created pods start), ``hold_exec_after`` (an exec's output
stops after N bytes until its pod is deleted), ``age_log`` (log lines written earlier);
``history`` shows every change of a resource.
RBAC mode (opt-in): ``enforce_rbac(Rbac.load())`` answers 403 to every request the bound
Roles of k8s/rbac.yaml do not allow, mapping method, path and ``watch=true`` to the RBAC
verb as the API server does (an exec, a GET upgraded to a WebSocket, is checked as ``get``
and then, as from Kubernetes 1.35, as ``create``); ``access`` records the (verb, group,
resource) of every request,
so a test can prove that the Role grants exactly what a client uses.
Never touches: the code under test; it is stdlib only (PyYAML is imported only to read the
RBAC files, ``websockets`` only for the exec handshake and frames), so it fakes the edge and
nothing else.

Example:
    >>> with FakeKube(scenario={0: [Attempt(logs=("hello",))]}) as fake:   # doctest: +SKIP
    ...     fake.add_namespace("ml")
    ...     kube = Kube(fake.configuration(), default_namespace="ml")
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from job.launcher import free_ports

REPO_ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = REPO_ROOT / "k8s"
"""The kustomize base whose rbac.yaml the RBAC mode enforces."""
TICK_SECONDS = 0.01
"""The controller's step: each pod advances one scripted state per tick."""
TERMINAL = ("Succeeded", "Failed")

_CORE = ("pods", "services", "configmaps", "persistentvolumeclaims")
_ROUTES = [
    (re.compile(r"^/api/v1/namespaces/?$"), "namespaces", False),
    (re.compile(r"^/api/v1/namespaces/(?P<name>[^/]+)$"), "namespaces", False),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$"), "pods/log",
     True),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/exec$"), "pods/exec",
     True),
    (re.compile(rf"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<res>{'|'.join(_CORE)})"
                r"(?:/(?P<name>[^/]+))?$"), None, True),
    (re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/(?P<res>jobs)(?:/(?P<name>[^/]+))?$"),
     None, True),
    # A namespaced resource across every namespace: list only, authorized at the cluster scope.
    (re.compile(r"^/apis/batch/v1/(?P<res>jobs)$"), None, False),
    (re.compile(r"^/api/v1/(?P<res>pods)$"), None, False),
]
_KIND = {"namespaces": "Namespace", "pods": "Pod", "services": "Service",
         "configmaps": "ConfigMap", "persistentvolumeclaims": "PersistentVolumeClaim",
         "jobs": "Job"}
_GROUP = {"jobs": "batch"}
_VERBS = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}
"""The RBAC verb of each write method; GET is get, list or watch (see ``_verb``)."""

EXEC_PROTOCOL = "v4.channel.k8s.io"
"""The exec subprotocol the fake speaks (the client offers v5 and v4)."""
EXEC_CHUNK_BYTES = 64 * 1024
"""Bytes of a command's output per WebSocket frame."""
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
"""On pods the Job controller made; pods without it were created directly."""

Permission = tuple[str, str, str]
"""(verb, API group, resource) as RBAC names them, e.g. ("get", "", "pods/log")."""


@dataclass(frozen=True)
class Attempt:
    """What one pod of one index does, in order: pending states, logs, then an exit code."""

    exit_code: int = 0
    logs: tuple[str, ...] = ("working",)
    pending: tuple[tuple[str, str], ...] = ()
    """(reason, message) states shown while Pending; 'Unschedulable' is a scheduling
    condition, anything else (ImagePullBackOff, ...) a container waiting reason."""
    hold: bool = False
    """Stay Running after the logs until the pod is deleted (cancel and Ctrl-C tests)."""


Scenario = Mapping[int, Sequence[Attempt]]
"""Per completion index, the attempts in order; the last one repeats."""


@dataclass(frozen=True)
class _Rule:
    """One PolicyRule; an empty ``names`` means any object."""

    verbs: frozenset[str]
    groups: frozenset[str]
    resources: frozenset[str]
    names: frozenset[str]

    def allows(self, verb: str, group: str, resource: str, name: str | None) -> bool:
        # Like the real authorizer, resourceNames never matches a request without a name
        # (create, or list and watch of a whole collection).
        return (_matches(self.verbs, verb) and _matches(self.groups, group)
                and _matches(self.resources, resource)
                and (not self.names or name in self.names))


@dataclass(frozen=True)
class Rbac:
    """The bound Roles and ClusterRoles of an RBAC file, as the API server applies them.

    The fake's one user is taken to be a subject of every binding (that is what the cluster
    admin sets up); a Role or ClusterRole that no binding references grants nothing.

    Args:
        namespace: where the Roles and RoleBindings live (kustomize puts them there).
        namespaced_rules: rules granted in ``namespace`` only (through RoleBindings).
        cluster_rules: rules granted everywhere (through ClusterRoleBindings).
    """

    namespace: str
    namespaced_rules: tuple[_Rule, ...]
    cluster_rules: tuple[_Rule, ...]

    @classmethod
    def load(cls, folder: Path = K8S_DIR) -> Rbac:
        """Read ``rbac.yaml`` and the namespace from the ``kustomization.yaml`` beside it."""
        import yaml

        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        documents = [d for d in yaml.safe_load_all((folder / "rbac.yaml").read_text()) if d]
        return cls.from_documents(documents, namespace=kustomization["namespace"])

    @classmethod
    def from_documents(cls, documents: Sequence[Mapping[str, Any]], *,
                       namespace: str) -> Rbac:
        roles = {(d["kind"], d["metadata"]["name"]): d for d in documents
                 if d["kind"] in ("Role", "ClusterRole")}
        namespaced: list[_Rule] = []
        cluster: list[_Rule] = []
        for binding in documents:
            if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding") \
                    or not binding.get("subjects"):
                continue
            ref = binding["roleRef"]
            role = roles.get((ref["kind"], ref["name"]))
            if role is None:  # a dangling roleRef grants nothing
                continue
            rules = [_Rule(verbs=frozenset(r["verbs"]), groups=frozenset(r["apiGroups"]),
                           resources=frozenset(r["resources"]),
                           names=frozenset(r.get("resourceNames") or ()))
                     for r in role.get("rules") or []]
            # A RoleBinding grants in its namespace, even a ClusterRole's rules.
            (cluster if binding["kind"] == "ClusterRoleBinding" else namespaced).extend(rules)
        return cls(namespace=namespace, namespaced_rules=tuple(namespaced),
                   cluster_rules=tuple(cluster))

    def allows(self, verb: str, group: str, resource: str, *, namespace: str,
               name: str | None) -> bool:
        """Whether a request is allowed; ``namespace`` is '' for cluster-scoped resources."""
        rules = self.cluster_rules + (self.namespaced_rules if namespace == self.namespace
                                      else ())
        return any(rule.allows(verb, group, resource, name) for rule in rules)

    def granted(self) -> set[Permission]:
        """Every (verb, group, resource) some bound rule grants, wildcards as '*'."""
        return {(verb, group, resource)
                for rule in self.namespaced_rules + self.cluster_rules
                for verb in rule.verbs for group in rule.groups for resource in rule.resources}


@dataclass
class _Runtime:
    index: int
    attempt: Attempt
    step: int = 0
    logged: int = 0
    process: subprocess.Popen | None = None
    exit_code: int | None = None
    counted: bool | None = None
    """Whether this failed pod counts toward backoffLimit; None until judged."""


@dataclass
class _Hooks:
    forbidden: set[tuple[str, str]] = field(default_factory=set)
    watch: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    """Per resource, what the next watch connections do, one action per connection."""
    drop_log: list[int] = field(default_factory=list)
    pod_start: tuple[tuple[str, str], ...] = ()
    """(reason, message) Pending states a directly created pod shows before it runs."""
    pod_starts: bool = True
    """False: a directly created pod stays in its last Pending state for ever."""
    hold_exec_after: int | None = None
    """Exec output stops after this many bytes until the pod is deleted (Ctrl-C tests)."""


class FakeKube:
    """The fake API server and its Job controller; start with ``with FakeKube(...) as fake``.

    Args:
        scenario: per-index attempts for every Job created; default: each index logs one line
            and exits 0.
        run_processes: run each pod's command as a local process instead of the scenario.
        volumes: PVC claim name -> host folder, for ``run_processes``.
        namespaces: namespaces that exist from the start.
        pvcs: (namespace, claim) pairs that exist from the start.
        start_on_watch: a Job's pods start only once someone has watched pods in its
            namespace, as on a real cluster where scheduling takes longer than opening a
            watch; so every state change is seen, whatever the machine's speed.
    """

    def __init__(self, *, scenario: Scenario | None = None, run_processes: bool = False,
                 volumes: Mapping[str, Path] | None = None,
                 namespaces: Sequence[str] = ("default",),
                 pvcs: Sequence[tuple[str, str]] = (), start_on_watch: bool = True) -> None:
        self.scenario = scenario or {}
        self.start_on_watch = start_on_watch
        self._watched: set[str] = set()
        self.run_processes = run_processes
        self.volumes = {k: Path(v) for k, v in (volumes or {}).items()}
        self.tokens: set[str] | None = None
        """Bearer tokens accepted; None accepts any request (401 tests set it)."""
        self.requests: list[tuple[str, str, str]] = []
        """(method, path, query) of every request, in order."""
        self.access: list[Permission] = []
        """(verb, group, resource) of every request for a resource we serve, in order,
        refused ones included."""
        self.refused: list[Permission] = []
        """(verb, group, resource) of every request answered 403, in order."""
        self.rbac: Rbac | None = None
        """When set (``enforce_rbac``), requests it does not allow get 403."""
        self.mount_failures: list[tuple[str, str]] = []
        """(pod, ConfigMap) for every pod that found its ConfigMap volume missing, as the
        kubelet's FailedMount events would say."""
        self._cond = threading.Condition()
        self._objects: dict[tuple[str, str, str], dict] = {}
        self._events: list[tuple[int, str, str, str, dict]] = []
        self._logs: dict[tuple[str, str], list[str]] = {}
        self._log_times: dict[tuple[str, str], list[datetime.datetime]] = {}
        """When each log line was written, for sinceSeconds and timestamps."""
        self._runtime: dict[tuple[str, str], _Runtime] = {}
        self._job_ports: dict[str, list[int]] = {}
        self._execs: dict[tuple[str, str], list[subprocess.Popen]] = {}
        """Commands running in each pod through exec; they die with their pod."""
        self._rv = 0
        self._hooks = _Hooks()
        self._stopping = False
        self._stop_event = threading.Event()
        self._workdir = Path(tempfile.mkdtemp(prefix="fake-kube-"))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self._threads: list[threading.Thread] = []
        for name in namespaces:
            self.add_namespace(name)
        for namespace, claim in pvcs:
            self.add_pvc(namespace, claim)

    # --- lifecycle ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeKube:
        serve = lambda: self._server.serve_forever(poll_interval=0.05)  # noqa: E731
        for target in (serve, self._controller_loop):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving: open streams end, local processes are killed, their folders removed."""
        self._stop_event.set()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            runtimes = list(self._runtime.values())
        for runtime in runtimes:
            _kill(runtime.process)
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        shutil.rmtree(self._workdir, ignore_errors=True)  # the pods' folders: nothing is left

    def configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` pointing at this server."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        configuration.api_key = {"authorization": "Bearer fake-token"}
        return configuration

    def write_kubeconfig(self, path: Path, *, namespace: str | None = None,
                         token: str = "fake-token", context: str = "fake") -> Path:
        """Write a kubeconfig file whose current context points here."""
        ctx: dict[str, Any] = {"cluster": "fake", "user": "fake"}
        if namespace:
            ctx["namespace"] = namespace
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": context,
               "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
               "users": [{"name": "fake", "user": {"token": token}}],
               "contexts": [{"name": context, "context": ctx}]}
        path.write_text(json.dumps(doc, indent=2))  # JSON is YAML
        return path

    # --- seeding and hooks -------------------------------------------------------------
    def add_namespace(self, name: str) -> None:
        with self._cond:
            self._store("namespaces", "", {"metadata": {"name": name},
                                           "status": {"phase": "Active"}}, "ADDED")

    def add_pvc(self, namespace: str, claim: str) -> None:
        with self._cond:
            self._store("persistentvolumeclaims", namespace, {
                "metadata": {"name": claim, "namespace": namespace},
                "spec": {"accessModes": ["ReadWriteMany"],
                         "resources": {"requests": {"storage": "10Gi"}}},
                "status": {"phase": "Bound"}}, "ADDED")

    def forbid(self, verb: str, resource: str) -> None:
        """Answer 403 to ``verb`` (get, list, watch, create, delete) on ``resource``."""
        self._hooks.forbidden.add((verb, resource))

    def enforce_rbac(self, rbac: Rbac) -> None:
        """From now on, answer 403 to every request ``rbac`` does not allow.

        Example:
            >>> fake.enforce_rbac(Rbac.load())   # doctest: +SKIP
        """
        self.rbac = rbac

    def expire_next_watch(self, resource: str, *, in_stream: bool = True) -> None:
        """The next watch of ``resource`` gets 410 Gone: an ERROR event, or an HTTP 410."""
        self._hooks.watch.setdefault(resource, []).append(("expire", in_stream))

    def drop_next_watch(self, resource: str, *, after_events: int) -> None:
        """The next watch of ``resource`` breaks (no chunked terminator) after N events."""
        self._hooks.watch.setdefault(resource, []).append(("drop", after_events))

    def drop_next_log(self, *, after_lines: int) -> None:
        """The next followed log stream breaks after N lines."""
        self._hooks.drop_log.append(after_lines)

    def script_pod_start(self, *pending: tuple[str, str], starts: bool = True) -> None:
        """Pods created directly show these (reason, message) Pending states, then run.

        'Unschedulable' is a scheduling condition, anything else (ErrImagePull, ...) a
        container waiting reason. With ``starts=False`` the last state stays for ever.
        """
        self._hooks.pod_start = tuple(pending)
        self._hooks.pod_starts = starts

    def hold_exec_after(self, *, output_bytes: int) -> None:
        """Every exec's output stops after ``output_bytes`` until its pod is deleted."""
        self._hooks.hold_exec_after = output_bytes

    # --- inspection --------------------------------------------------------------------
    def objects(self, resource: str, namespace: str | None = None) -> list[dict]:
        """Deep copies of the stored objects of one resource, oldest first."""
        with self._cond:
            return [copy.deepcopy(o) for (r, ns, _), o in self._objects.items()
                    if r == resource and (namespace is None or ns == namespace)]

    def history(self, resource: str, namespace: str | None = None) -> list[tuple[str, dict]]:
        """(ADDED, MODIFIED or DELETED, a deep copy of the object) for every change of one
        resource, oldest first: what a watch from the beginning would have seen."""
        with self._cond:
            return [(event, copy.deepcopy(obj)) for _, r, ns, event, obj in self._events
                    if r == resource and (namespace is None or ns == namespace)]

    def age_log(self, namespace: str, pod: str, *, seconds: float) -> None:
        """Make every log line the pod has written so far ``seconds`` older (sinceSeconds)."""
        with self._cond:
            self._log_times[(namespace, pod)] = [
                written - datetime.timedelta(seconds=seconds)
                for written in self._log_times.get((namespace, pod), [])]

    def log(self, namespace: str, pod: str) -> list[str]:
        with self._cond:
            return list(self._logs.get((namespace, pod), []))

    def logs(self, namespace: str) -> dict[str, list[str]]:
        """Every pod's log by pod name, deleted pods included (for failure messages)."""
        with self._cond:
            return {name: list(lines) for (ns, name), lines in self._logs.items()
                    if ns == namespace}

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float = 30.0) -> None:
        """Block until ``predicate()`` holds after some change; fail the test on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("the fake cluster never reached the expected state")
                self._cond.wait(left)

    # --- the store ---------------------------------------------------------------------
    def _store(self, resource: str, namespace: str, obj: dict, event: str) -> dict:
        self._rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self._rv)
        if event == "ADDED":
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            if namespace:
                meta["namespace"] = namespace
            obj.setdefault("kind", _KIND[resource])
            obj.setdefault("apiVersion", f"{_GROUP[resource]}/v1" if resource in _GROUP
                           else "v1")
        key = (resource, namespace, meta["name"])
        if event == "DELETED":
            self._objects.pop(key, None)
        else:
            self._objects[key] = obj
        self._events.append((self._rv, resource, namespace, event, copy.deepcopy(obj)))
        self._cond.notify_all()
        return obj

    def _write_log(self, key: tuple[str, str], line: str) -> None:
        self._logs.setdefault(key, []).append(line)
        self._log_times.setdefault(key, []).append(datetime.datetime.now(datetime.timezone.utc))

    def _delete(self, resource: str, namespace: str, name: str, propagation: str) -> dict:
        obj = self._objects[(resource, namespace, name)]
        # The garbage collector, at once: dependents go first (Foreground, and Background in
        # effect), or keep living without the reference (Orphan).
        for (kind, _, dependent), owned in self._dependents(namespace, obj["metadata"]["uid"]):
            if propagation == "Orphan":
                owned = copy.deepcopy(owned)
                owned["metadata"]["ownerReferences"] = [
                    ref for ref in owned["metadata"]["ownerReferences"]
                    if ref.get("uid") != obj["metadata"]["uid"]]
                self._store(kind, namespace, owned, "MODIFIED")
            elif (kind, namespace, dependent) in self._objects:
                self._delete(kind, namespace, dependent, "Background")
        if resource == "pods":
            runtime = self._runtime.pop((namespace, name), None)
            if runtime:
                _kill(runtime.process)
            for process in self._execs.pop((namespace, name), []):
                _kill(process)
        obj = copy.deepcopy(obj)
        obj["metadata"]["deletionTimestamp"] = _now()
        return self._store(resource, namespace, obj, "DELETED")

    def _dependents(self, namespace: str, uid: str) -> list[tuple[tuple[str, str, str], dict]]:
        """The objects an ownerReference ties to the owner ``uid``."""
        return [(key, o) for key, o in list(self._objects.items()) if key[1] == namespace
                and any(ref.get("uid") == uid
                        for ref in o["metadata"].get("ownerReferences") or [])]

    def _collect_garbage(self) -> None:
        """Delete the objects none of whose owners exist, as the garbage collector does for
        an ownerReference whose uid names nothing (a wrong uid, or an owner deleted first)."""
        uids = {o["metadata"].get("uid") for o in self._objects.values()}
        for (kind, namespace, name), obj in list(self._objects.items()):
            owners = obj["metadata"].get("ownerReferences") or []
            if owners and not any(ref.get("uid") in uids for ref in owners) \
                    and (kind, namespace, name) in self._objects:
                self._delete(kind, namespace, name, "Background")

    def _pods_of(self, namespace: str, job_uid: str) -> list[dict]:
        return [o for (r, ns, _), o in list(self._objects.items())
                if r == "pods" and ns == namespace
                and o["metadata"]["labels"].get("batch.kubernetes.io/controller-uid") == job_uid]

    # --- the Job controller ------------------------------------------------------------
    def _controller_loop(self) -> None:
        # The controller's own clock: one scripted step per tick, whatever the client does.
        while not self._stop_event.wait(TICK_SECONDS):
            with self._cond:
                self._collect_garbage()
                for (resource, namespace, _), obj in list(self._objects.items()):
                    if resource == "jobs" and not _finished(obj) and (
                            namespace in self._watched or not self.start_on_watch):
                        self._reconcile(namespace, obj)
                    elif resource == "pods" and CONTROLLER_UID_LABEL not in (
                            obj["metadata"].get("labels") or {}):
                        self._kubelet(namespace, obj)

    def _reconcile(self, namespace: str, job: dict) -> None:
        spec = job["spec"]
        uid = job["metadata"]["uid"]
        if self._suspension(namespace, job):
            return
        completions = spec.get("completions", 1)
        for pod in self._pods_of(namespace, uid):
            if pod["status"]["phase"] not in TERMINAL:
                self._advance(namespace, pod)
        pods = sorted(self._pods_of(namespace, uid), key=lambda p: int(
            p["metadata"]["labels"]["fake.trainjob.dev/seq"]))
        verdict = self._failure_verdict(namespace, job, pods)
        failed = sum(1 for p in pods if p["status"]["phase"] == "Failed"
                     and self._counts(namespace, p))
        if verdict is None and failed > spec.get("backoffLimit", 6):
            verdict = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        succeeded = {_index(p) for p in pods if p["status"]["phase"] == "Succeeded"}
        if verdict:
            self._terminate(namespace, job, pods, "Failed", *verdict)
            return
        if _success(spec, succeeded, completions):
            self._terminate(namespace, job, pods, "Complete", "CompletionsReached",
                            "Reached expected number of succeeded pods")
            return
        for index in range(completions):
            mine = [p for p in pods if _index(p) == index]
            if index not in succeeded and all(p["status"]["phase"] == "Failed" for p in mine):
                pods.append(self._create_pod(namespace, job, index, attempt=len(mine)))
        self._update_job_status(namespace, job, pods)

    def _suspension(self, namespace: str, job: dict) -> bool:
        """Whether the Job is suspended (then it has no pods), keeping its Suspended condition
        as the real controller does."""
        suspended = bool(job["spec"].get("suspend"))
        conditions = job["status"].get("conditions") or []
        was = any(c["type"] == "Suspended" and c["status"] == "True" for c in conditions)
        if suspended != was and (suspended or conditions):
            job = copy.deepcopy(job)
            condition = _condition("Suspended", "JobSuspended" if suspended else "JobResumed",
                                   "Job suspended" if suspended else "Job resumed")
            condition["status"] = "True" if suspended else "False"
            job["status"]["conditions"] = [c for c in conditions if c["type"] != "Suspended"] \
                + [condition]
            self._store("jobs", namespace, job, "MODIFIED")
        return suspended

    def _missing_config_maps(self, namespace: str, pod: dict) -> list[str]:
        """The ConfigMaps of the pod's volumes that do not exist; the kubelet retries them."""
        return [v["configMap"]["name"] for v in pod["spec"].get("volumes") or []
                if "configMap" in v
                and ("configmaps", namespace, v["configMap"]["name"]) not in self._objects]

    def _kubelet(self, namespace: str, pod: dict) -> None:
        """A pod created directly: scheduled, then Running, one step per tick (or held)."""
        runtime = self._runtime.get((namespace, pod["metadata"]["name"]))
        if runtime is None or pod["status"].get("phase") != "Pending":
            return
        missing = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"].get("volumes")
                   or [] if "persistentVolumeClaim" in v and ("persistentvolumeclaims", namespace,
                   v["persistentVolumeClaim"]["claimName"]) not in self._objects]
        script = [("Unschedulable", f'0/1 nodes are available: persistentvolumeclaim '
                                    f'"{missing[0]}" not found.')] if missing \
            else list(self._hooks.pod_start)
        if runtime.step < len(script) or (script and (missing or not self._hooks.pod_starts)):
            status = _pending_status(*script[min(runtime.step, len(script) - 1)])
        else:
            status = _running_status()
        runtime.step += 1
        if status != pod["status"]:
            pod = copy.deepcopy(pod)
            pod["status"] = status
            self._store("pods", namespace, pod, "MODIFIED")

    def _counts(self, namespace: str, pod: dict) -> bool:
        runtime = self._runtime.get((namespace, pod["metadata"]["name"]))
        return runtime is None or runtime.counted is not False

    def _failure_verdict(self, namespace: str, job: dict,
                         pods: list[dict]) -> tuple[str, str] | None:
        """Apply podFailurePolicy to newly failed pods: FailJob, Ignore, or Count."""
        rules = (job["spec"].get("podFailurePolicy") or {}).get("rules") or []
        for pod in pods:
            runtime = self._runtime.get((namespace, pod["metadata"]["name"]))
            if pod["status"]["phase"] != "Failed" or runtime is None \
                    or runtime.counted is not None:
                continue
            runtime.counted = True
            code = _exit_code(pod)
            for rule in rules:
                if not _rule_matches(rule, pod, code):
                    continue
                if rule["action"] == "FailJob":
                    return ("PodFailurePolicy",
                            f"Container trainjob for pod {namespace}/{pod['metadata']['name']} "
                            f"failed with exit code {code} matching FailJob rule at index "
                            f"{rules.index(rule)}")
                if rule["action"] == "Ignore":
                    runtime.counted = False
                break
        return None

    def _terminate(self, namespace: str, job: dict, pods: list[dict], outcome: str,
                   reason: str, message: str) -> None:
        # Like the real controller: the target condition first, then the active pods go,
        # then the terminal condition.
        first = "SuccessCriteriaMet" if outcome == "Complete" else "FailureTarget"
        job = copy.deepcopy(job)
        job["status"].setdefault("conditions", []).append(_condition(first, reason, message))
        self._store("jobs", namespace, job, "MODIFIED")
        for pod in pods:
            if pod["status"]["phase"] not in TERMINAL and \
                    ("pods", namespace, pod["metadata"]["name"]) in self._objects:
                self._delete("pods", namespace, pod["metadata"]["name"], "Background")
        self._update_job_status(namespace, job, pods)
        job = copy.deepcopy(self._objects[("jobs", namespace, job["metadata"]["name"])])
        job["status"]["conditions"].append(_condition(outcome, reason, message))
        job["status"]["completionTime" if outcome == "Complete" else "failedTime"] = _now()
        job["status"]["active"] = 0
        self._store("jobs", namespace, job, "MODIFIED")

    def _update_job_status(self, namespace: str, job: dict, pods: list[dict]) -> None:
        live = [p for p in pods if ("pods", namespace, p["metadata"]["name"]) in self._objects]
        phases = [p["status"]["phase"] for p in live]
        done = sorted({_index(p) for p in live if p["status"]["phase"] == "Succeeded"})
        status = dict(job["status"], active=sum(ph not in TERMINAL for ph in phases),
                      ready=phases.count("Running"), succeeded=phases.count("Succeeded"),
                      failed=phases.count("Failed"),
                      completedIndexes=",".join(map(str, done)))
        status.setdefault("startTime", _now())
        if status != job["status"]:
            job = copy.deepcopy(job)
            job["status"] = status
            self._store("jobs", namespace, job, "MODIFIED")

    def _create_pod(self, namespace: str, job: dict, index: int, *, attempt: int) -> dict:
        name = job["metadata"]["name"]
        template = copy.deepcopy(job["spec"]["template"])
        meta = template.get("metadata") or {}
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        labels = dict(meta.get("labels") or {}, **{
            "batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
            "batch.kubernetes.io/job-name": name, "controller-uid": job["metadata"]["uid"],
            "job-name": name, "batch.kubernetes.io/job-completion-index": str(index),
            "fake.trainjob.dev/seq": str(self._rv)})
        annotations = dict(meta.get("annotations") or {},
                           **{"batch.kubernetes.io/job-completion-index": str(index)})
        pod_spec = template["spec"]
        pod_spec["hostname"] = f"{name}-{index}"
        for container in pod_spec.get("containers", []):
            container.setdefault("env", []).append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/"
                                          "job-completion-index']"}}})
        pod = {"metadata": {"name": f"{name}-{index}-{suffix}", "labels": labels,
                            "annotations": annotations,
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                                 "name": name, "uid": job["metadata"]["uid"],
                                                 "controller": True,
                                                 "blockOwnerDeletion": True}]},
               "spec": pod_spec,
               "status": {"phase": "Pending", "conditions": [], "containerStatuses": []}}
        attempts = self.scenario.get(index) or [Attempt()]
        script = attempts[min(attempt, len(attempts) - 1)]
        self._runtime[(namespace, pod["metadata"]["name"])] = _Runtime(index=index,
                                                                       attempt=script)
        self._logs[(namespace, pod["metadata"]["name"])] = []
        self._log_times[(namespace, pod["metadata"]["name"])] = []
        return self._store("pods", namespace, pod, "ADDED")

    def _advance(self, namespace: str, pod: dict) -> None:
        key = (namespace, pod["metadata"]["name"])
        runtime = self._runtime.get(key)
        if runtime is None:
            return
        missing = self._missing_config_maps(namespace, pod)
        if missing:
            if (pod["metadata"]["name"], missing[0]) not in self.mount_failures:
                self.mount_failures.append((pod["metadata"]["name"], missing[0]))
            return
        if self.run_processes:
            self._advance_process(namespace, pod, runtime)
            return
        script = runtime.attempt
        pod = copy.deepcopy(pod)
        if runtime.step < len(script.pending):
            reason, message = script.pending[runtime.step]
            pod["status"] = _pending_status(reason, message)
        elif runtime.step == len(script.pending):
            pod["status"] = _running_status()
        elif runtime.logged < len(script.logs):
            self._write_log(key, script.logs[runtime.logged])
            runtime.logged += 1
            self._cond.notify_all()
            runtime.step += 1
            return
        elif script.hold:
            return
        else:
            pod["status"] = _terminated_status(script.exit_code)
        runtime.step += 1
        self._store("pods", namespace, pod, "MODIFIED")

    # --- local processes (end-to-end mode) ---------------------------------------------
    def _advance_process(self, namespace: str, pod: dict, runtime: _Runtime) -> None:
        if runtime.process is None:
            try:
                runtime.process = self._start_process(namespace, pod, runtime)
            except Exception as error:  # a broken manifest shows as a failed pod, like kubelet
                self._write_log((namespace, pod["metadata"]["name"]), f"fake kubelet: {error}")
                runtime.exit_code = 128
                return
            pod = copy.deepcopy(pod)
            pod["status"] = _running_status()
            self._store("pods", namespace, pod, "MODIFIED")
        elif runtime.exit_code is not None:
            pod = copy.deepcopy(pod)
            pod["status"] = _terminated_status(runtime.exit_code)
            self._store("pods", namespace, pod, "MODIFIED")

    def _start_process(self, namespace: str, pod: dict,
                       runtime: _Runtime) -> subprocess.Popen:
        name = pod["metadata"]["name"]
        pod_dir = self._workdir / name
        (pod_dir / "work").mkdir(parents=True)
        container = pod["spec"]["containers"][0]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts: dict[str, Path] = {}
        config_maps: list[tuple[dict, Path]] = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if claim not in self.volumes:
                    raise RuntimeError(f"no host folder for PVC {claim!r}")
                host = self.volumes[claim]
            elif "configMap" in volume:
                host = pod_dir / f"configmap-{mount['name']}"
                config_maps.append((volume["configMap"], host))
            else:
                host = pod_dir / f"emptydir-{mount['name']}"
            host = host / mount["subPath"] if mount.get("subPath") else host
            host.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = host

        on_host = _host_rewriter(mounts)
        for source, host in config_maps:
            data = self._objects[("configmaps", namespace, source["name"])].get("data") or {}
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                (host / item["path"]).write_text(on_host(data[item["key"]]))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TRAINJOB_", "TF_CONFIG", "KUBECONFIG"))}
        env.update(PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="",
                   TF_CPP_MIN_LOG_LEVEL="2", HOME=str(pod_dir / "work"))
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = on_host(str(var["value"]))
            elif "fieldRef" in (var.get("valueFrom") or {}):
                env[var["name"]] = _field(pod, var["valueFrom"]["fieldRef"]["fieldPath"])
        ports = self._job_ports[pod["metadata"]["labels"]["job-name"]]
        env["TRAINJOB_WORKER_HOSTS"] = ",".join(f"127.0.0.1:{port}" for port in ports)
        command = list(container.get("command") or [])
        argv = command[1:] + list(container.get("args") or []) if command and \
            Path(command[0]).name == "trainjob" else list(container.get("args") or [])
        process = subprocess.Popen(
            [sys.executable, "-m", "job", *(on_host(a) for a in argv)], env=env,
            cwd=pod_dir / "work", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
        reader = threading.Thread(target=self._pump, args=(namespace, name, runtime, process),
                                  daemon=True)
        reader.start()
        return process

    def _pump(self, namespace: str, name: str, runtime: _Runtime,
              process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._cond:
                self._write_log((namespace, name), line.rstrip("\n"))
                self._cond.notify_all()
        code = process.wait()
        with self._cond:
            runtime.exit_code = code if code >= 0 else 128 - code
            self._cond.notify_all()

    def _on_job_created(self, job: dict) -> None:
        if self.run_processes:
            self._job_ports[job["metadata"]["name"]] = free_ports(
                job["spec"].get("completions", 1))


# --- HTTP ------------------------------------------------------------------------------
def _handler_class(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.fake = fake
    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeKube

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null") if length else None
        fake = self.fake
        if fake._stopping:  # a stopped server answers nothing, even on kept-alive connections
            return self._break_stream()
        fake.requests.append((method, url.path, url.query))
        if fake.tokens is not None:
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if token not in fake.tokens:
                return self._status(401, "Unauthorized", "Unauthorized")
        route = _route(url.path)
        if route is None:
            return self._status(404, "NotFound", f"the server could not find {url.path}")
        resource, namespace, name = route
        verb = _verb(method, name=name, query=query)
        group = _GROUP.get(resource, "")
        # An exec over WebSocket is a GET: authorized as get, then (Kubernetes 1.35+,
        # AuthorizePodWebsocketUpgradeCreatePermission) also as create, like SPDY's POST.
        for checked in (verb, "create") if resource == "pods/exec" and verb == "get" \
                else (verb,):
            fake.access.append((checked, group, resource))
            if (checked, resource) in fake._hooks.forbidden or (
                    fake.rbac is not None and not fake.rbac.allows(
                        checked, group, resource, namespace=namespace, name=name)):
                fake.refused.append((checked, group, resource))
                return self._forbidden(checked, group, resource, namespace, name)
        if resource == "pods/log":
            return self._log(namespace, name, query)
        if resource == "pods/exec":
            return self._exec(namespace, name, parse_qs(url.query))
        if verb == "watch":
            return self._watch(resource, namespace, query)
        with fake._cond:
            if verb == "list":
                everywhere = not namespace and resource != "namespaces"
                items = [copy.deepcopy(o) for (r, ns, _), o in fake._objects.items()
                         if r == resource and (ns == namespace or everywhere)
                         and _selects(query.get("labelSelector", ""), o)]
                return self._json(200, {"kind": f"{_KIND[resource]}List", "apiVersion": "v1",
                                        "metadata": {"resourceVersion": str(fake._rv)},
                                        "items": items})
            if namespace and ("namespaces", "", namespace) not in fake._objects:
                return self._status(404, "NotFound", f'namespaces "{namespace}" not found',
                                    details={"kind": "namespaces", "name": namespace})
            key = (resource, namespace, name or (body or {}).get("metadata", {}).get("name"))
            if verb == "create":
                if key in fake._objects:
                    return self._status(409, "AlreadyExists",
                                        f'{resource} "{key[2]}" already exists',
                                        details={"kind": resource, "name": key[2]})
                obj = copy.deepcopy(body)
                if resource == "jobs":
                    obj["status"] = {}
                    fake._on_job_created(obj)
                if resource == "pods":
                    obj["status"] = {"phase": "Pending"}
                    fake._runtime[(namespace, key[2])] = _Runtime(index=-1, attempt=Attempt())
                return self._json(201, copy.deepcopy(fake._store(resource, namespace, obj,
                                                                 "ADDED")))
            if key not in fake._objects:
                return self._status(404, "NotFound", f'{resource} "{name}" not found',
                                    details={"kind": resource, "name": name})
            if verb == "get":
                return self._json(200, copy.deepcopy(fake._objects[key]))
            if verb == "patch":
                if self.headers.get("Content-Type") != "application/merge-patch+json" \
                        or not isinstance(body, dict):
                    return self._status(415, "UnsupportedMediaType", "the fake takes JSON "
                                        "merge patches (application/merge-patch+json) only")
                patched = _merge(copy.deepcopy(fake._objects[key]), body)
                return self._json(200, copy.deepcopy(fake._store(resource, namespace, patched,
                                                                 "MODIFIED")))
            if verb == "delete":
                propagation = (body or {}).get("propagationPolicy") \
                    or query.get("propagationPolicy") or "Background"
                fake._delete(resource, namespace, name, propagation)
                return self._json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                        "status": "Success",
                                        "details": {"name": name, "kind": resource}})
        return self._status(405, "MethodNotAllowed", f"{method} is not supported by the fake")

    # --- responses ---------------------------------------------------------------------
    def _json(self, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str, *,
                details: Mapping[str, Any] | None = None) -> None:
        self._json(code, _status_object(code, reason, message, details))

    def _forbidden(self, verb: str, group: str, resource: str, namespace: str,
                   name: str | None) -> None:
        # The real API server's wording, which the client parses for the user name.
        kind, _, _ = resource.partition("/")
        api = f"{kind}.{group}" if group else kind
        what = f'{api} "{name}"' if name else api
        where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        self._status(403, "Forbidden",
                     f'{what} is forbidden: User "alice" cannot {verb} resource "{resource}" '
                     f'in API group "{group}" {where}',
                     details={"kind": kind, "group": group or None, "name": name})

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _break_stream(self) -> None:
        # No terminating chunk and a hard close: the client sees a broken response.
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    # --- exec ----------------------------------------------------------------------------
    def _exec(self, namespace: str, name: str, query: Mapping[str, list[str]]) -> None:
        """Run the command on this machine, the pod's claims mapped to their host folders,
        and stream it back over a WebSocket in the v4 channel protocol."""
        fake = self.fake
        with fake._cond:
            pod = copy.deepcopy(fake._objects.get(("pods", namespace, name)))
        if pod is None:
            return self._status(404, "NotFound", f'pods "{name}" not found',
                                details={"kind": "pods", "name": name})
        if pod["status"].get("phase") != "Running":
            return self._status(400, "BadRequest", "unable to upgrade connection: container "
                                f"not found ({query.get('container', ['?'])[0]!r})")
        if (self.headers.get("Upgrade") or "").lower() != "websocket":
            return self._status(400, "BadRequest", "the fake speaks exec over WebSocket only")
        socket_ = _ExecSocket(self)
        if not socket_.handshake():
            return
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod["spec"].get("volumes") or [] if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: fake.volumes[claims[m["name"]]]
                  for m in pod["spec"]["containers"][0].get("volumeMounts") or []
                  if claims.get(m["name"]) in fake.volumes}
        on_host = _host_rewriter(mounts)
        try:
            process = subprocess.Popen([on_host(a) for a in query.get("command", [])],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as error:
            socket_.finish({"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "reason": "InternalError",
                            "message": f"exec failed: {error.strerror}"})
            return
        with fake._cond:
            fake._execs.setdefault((namespace, name), []).append(process)
        try:
            self._pump_exec(namespace, name, process, socket_)
        finally:
            _kill(process)

    def _pump_exec(self, namespace: str, name: str, process: subprocess.Popen,
                   socket_: _ExecSocket) -> None:
        fake = self.fake
        assert process.stdout is not None and process.stderr is not None
        stderr = process.stderr
        errors = threading.Thread(target=lambda: [socket_.send(2, chunk) for chunk in iter(
            lambda: stderr.read1(EXEC_CHUNK_BYTES), b"")], daemon=True)
        errors.start()
        sent = 0
        hold = fake._hooks.hold_exec_after
        while socket_.open:
            chunk = process.stdout.read1(EXEC_CHUNK_BYTES)
            if not chunk:
                break
            if hold is not None and sent + len(chunk) > hold:
                socket_.send(1, chunk[:max(0, hold - sent)])
                return self._hold_exec(namespace, name, socket_)
            socket_.send(1, chunk)
            sent += len(chunk)
        code = process.wait()
        errors.join(timeout=10)
        code = code if code >= 0 else 128 - code
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"} \
            if code == 0 else {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": "NonZeroExitCode",
                "message": f"command terminated with non-zero exit code: exit status {code}",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
        socket_.finish(status)

    def _hold_exec(self, namespace: str, name: str, socket_: _ExecSocket) -> None:
        """Send nothing more until the pod goes (its command dies with it), then cut."""
        fake = self.fake
        with fake._cond:
            while ("pods", namespace, name) in fake._objects and not fake._stopping \
                    and not _peer_closed(self.connection):
                fake._cond.wait(0.1)
        socket_.cut()

    # --- watch and logs ----------------------------------------------------------------
    def _watch(self, resource: str, namespace: str, query: Mapping[str, str]) -> None:
        fake = self.fake
        selector = query.get("labelSelector", "")
        timeout = float(query.get("timeoutSeconds") or 300)
        with fake._cond:
            actions = fake._hooks.watch.get(resource)
            action, argument = actions.pop(0) if actions else (None, None)
            in_stream = argument if action == "expire" else None
            drop_after = argument if action == "drop" else None
            start = query.get("resourceVersion") or "0"
            if resource == "pods":
                fake._watched.add(namespace)
            backlog: list[tuple[str, dict]] = []
            if start == "0":  # like the real API: the current state as ADDED, then changes
                backlog = [("ADDED", copy.deepcopy(o)) for (r, ns, _), o in
                           fake._objects.items() if r == resource and ns == namespace]
                cursor = fake._rv
            else:
                cursor = int(start)
        if in_stream is False:
            return self._status(410, "Expired", "too old resource version")
        self._start_stream("application/json")
        try:
            if in_stream:
                self._chunk(json.dumps({"type": "ERROR", "object": _status_object(
                    410, "Expired", f"too old resource version: {start}")}).encode() + b"\n")
                return self._end_stream()
            sent = 0
            deadline = time.monotonic() + timeout
            while True:
                with fake._cond:
                    events = [(rv, kind, obj) for rv, r, ns, kind, obj in fake._events
                              if rv > cursor and r == resource and ns == namespace]
                    if not events and not backlog:
                        left = deadline - time.monotonic()
                        if left <= 0 or fake._stopping:
                            break
                        fake._cond.wait(min(left, 0.5))
                        continue
                for kind, obj in backlog + [(kind, obj) for _, kind, obj in events]:
                    cursor = max(cursor, int(obj["metadata"]["resourceVersion"]))
                    if not _selects(selector, obj):
                        continue
                    if drop_after is not None and sent >= drop_after:
                        return self._break_stream()
                    self._chunk(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                    sent += 1
                backlog = []
            self._end_stream()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _log(self, namespace: str, name: str, query: Mapping[str, str]) -> None:
        fake = self.fake
        with fake._cond:
            pod = fake._objects.get(("pods", namespace, name))
            if pod is None:
                return self._status(404, "NotFound", f'pods "{name}" not found',
                                    details={"kind": "pods", "name": name})
            if pod["status"]["phase"] == "Pending":
                return self._status(400, "BadRequest", f'container "trainjob" in pod "{name}" '
                                    "is waiting to start: ContainerCreating")
            lines = list(fake._logs.get((namespace, name), []))
            times = list(fake._log_times.get((namespace, name), []))
        start = _log_start(times, query)
        stamped = query.get("timestamps") in ("true", "1")

        def text(number: int, line: str) -> str:
            if not stamped:
                return line
            return times[number].strftime("%Y-%m-%dT%H:%M:%S.%f000Z ") + line

        if query.get("follow") not in ("true", "1"):
            data = "".join(f"{text(start + i, line)}\n"
                           for i, line in enumerate(lines[start:])).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        with fake._cond:
            drop_after = fake._hooks.drop_log.pop(0) if fake._hooks.drop_log else None
        self._start_stream("text/plain")
        sent = start
        try:
            while True:
                with fake._cond:
                    lines = fake._logs.get((namespace, name), [])
                    times = list(fake._log_times.get((namespace, name), []))
                    pod = fake._objects.get(("pods", namespace, name))
                    ended = pod is None or pod["status"]["phase"] in TERMINAL or fake._stopping
                    new = lines[sent:]
                    if not new and not ended:
                        fake._cond.wait(0.5)
                        continue
                for line in new:
                    if drop_after is not None and sent - start >= drop_after:
                        return self._break_stream()
                    self._chunk(f"{text(sent, line)}\n".encode())
                    sent += 1
                if ended and not new:
                    break
            self._end_stream()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _ExecSocket:
    """The server side of one exec WebSocket, on the handler's connection (sans-I/O
    ``websockets`` protocol: it builds the handshake and frames, we move the bytes)."""

    def __init__(self, handler: _Handler) -> None:
        from websockets.server import ServerProtocol
        from websockets.typing import Subprotocol

        self._handler = handler
        self._protocol = ServerProtocol(subprotocols=[Subprotocol(EXEC_PROTOCOL)])
        self._lock = threading.Lock()
        self.open = True
        handler.close_connection = True

    def handshake(self) -> bool:
        from websockets.datastructures import Headers
        from websockets.http11 import Request

        request = Request(path=self._handler.path,
                          headers=Headers(list(self._handler.headers.items())))
        response = self._protocol.accept(request)
        self._protocol.send_response(response)
        self._flush()
        return response.status_code == 101

    def send(self, channel: int, data: bytes) -> None:
        with self._lock:
            if self.open:
                self._protocol.send_binary(bytes([channel]) + data)
                self._flush()

    def finish(self, status: Mapping[str, Any]) -> None:
        """Channel 3 says how the command ended; then a normal close."""
        self.send(3, json.dumps(status).encode())
        with self._lock:
            if self.open:
                self._protocol.send_close(1000)
                self._flush()
                self.open = False

    def cut(self) -> None:
        """End the connection without a status, as a dying container would."""
        with self._lock:
            self.open = False
            with contextlib.suppress(OSError):
                self._handler.connection.shutdown(socket.SHUT_RDWR)

    def _flush(self) -> None:
        try:
            for data in self._protocol.data_to_send():
                if data:
                    self._handler.wfile.write(data)
            self._handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client went away
            self.open = False
        if self.open and _peer_closed(self._handler.connection):
            self.open = False


def _peer_closed(connection: socket.socket) -> bool:
    """Whether the client closed its end (readable, and nothing or a close frame to read)."""
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK) in (b"", b"\x88")
    except OSError:
        return True


# --- what a chief leaves on the models volume ---------------------------------------------
def write_run_directory(folder: Path, *, model: bytes, sha256: str | None = None) -> Path:
    """A finished run's directory, as the chief writes it: model.h5 and its sha256 in
    metrics.json (``sha256`` overrides it, to fake damage), labels, history, the spec,
    TensorBoard logs and checkpoints. Returns ``folder``."""
    import hashlib

    digest = sha256 or hashlib.sha256(model).hexdigest()
    files = {
        "model.h5": model,
        "metrics.json": json.dumps({"val_accuracy": 0.93, "model_sha256": digest}).encode(),
        "labels.json": b'["circle", "square"]',
        "history.csv": b"epoch,loss\n1,0.5\n",
        "spec.yaml": b"name: tiny\n",
        "logs/train/events.out.tfevents.1": os.urandom(3000),
        "checkpoints/checkpoint": b'model_checkpoint_path: "ckpt-2"\n',
        "checkpoints/ckpt-2.index": os.urandom(500),
        "checkpoints/ckpt-2.data-00000-of-00001": os.urandom(200_000),
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


# --- pure helpers ----------------------------------------------------------------------
def _host_rewriter(mounts: Mapping[str, Path]) -> Callable[[str], str]:
    """Rewrite pod paths under any of ``mounts`` (mount path -> host folder) to host paths."""
    if not mounts:
        return lambda text: text
    # One pass, longest mount first: a host folder that itself lies under /tmp must not be
    # rewritten again by the /tmp mount.
    alternatives = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w./-])({alternatives})(?=/|$|[\s'\",\]}}])", re.M)
    return lambda text: pattern.sub(lambda m: str(mounts[m.group(1)]), text)


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: mappings merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    target = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge(target.get(key), value)
    return target


def _verb(method: str, *, name: str | None, query: Mapping[str, str]) -> str:
    """The RBAC verb of a request: GET on an item is get, on a collection list, or watch."""
    if method == "GET":
        return "watch" if query.get("watch") in ("true", "1") else "get" if name else "list"
    return _VERBS.get(method, method.lower())


def _matches(allowed: frozenset[str], value: str) -> bool:
    return value in allowed or "*" in allowed


def _route(path: str) -> tuple[str, str, str | None] | None:
    """(resource, namespace or '', name or None) for an API path we serve."""
    for pattern, fixed, namespaced in _ROUTES:
        match = pattern.match(path)
        if match:
            groups = match.groupdict()
            namespace = (groups.get("ns") or "") if namespaced else ""
            return fixed or groups["res"], namespace, groups.get("name")
    return None


def _log_start(times: Sequence[datetime.datetime], query: Mapping[str, str]) -> int:
    """The first log line to send: the last ``tailLines`` of those after ``sinceSeconds``."""
    start = 0
    if query.get("sinceSeconds"):
        since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
            seconds=int(query["sinceSeconds"]))
        start = next((i for i, written in enumerate(times) if written >= since), len(times))
    if query.get("tailLines"):
        start = max(start, len(times) - int(query["tailLines"]))
    return start


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status_object(code: int, reason: str, message: str,
                   details: Mapping[str, Any] | None = None) -> dict:
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
              "message": message, "reason": reason, "code": code}
    if details:
        status["details"] = {k: v for k, v in details.items() if v is not None}
    return status


def _condition(kind: str, reason: str, message: str) -> dict:
    now = _now()
    return {"type": kind, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": now, "lastTransitionTime": now}


def _pending_status(reason: str, message: str) -> dict:
    if reason == "Unschedulable":
        return {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                    "reason": reason, "message": message}]}
    return {"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "trainjob", "ready": False, "restartCount": 0,
                                   "state": {"waiting": {"reason": reason,
                                                         "message": message}}}]}


def _running_status() -> dict:
    return {"phase": "Running", "podIP": "10.0.0.1", "startTime": _now(),
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "trainjob", "ready": True, "restartCount": 0,
                                   "state": {"running": {"startedAt": _now()}}}]}


def _terminated_status(code: int) -> dict:
    return {"phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "trainjob", "ready": False, "restartCount": 0,
                                   "state": {"terminated": {
                                       "exitCode": code, "finishedAt": _now(),
                                       "reason": "Completed" if code == 0 else "Error"}}}]}


def _index(pod: dict) -> int:
    return int(pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"])


def _exit_code(pod: dict) -> int | None:
    for status in pod["status"].get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return terminated.get("exitCode")
    return None


def _rule_matches(rule: Mapping[str, Any], pod: dict, code: int | None) -> bool:
    on_codes = rule.get("onExitCodes")
    if on_codes:
        inside = code in on_codes.get("values", [])
        return inside if on_codes.get("operator", "In") == "In" else (code is not None
                                                                       and not inside)
    wanted = {(c.get("type"), c.get("status", "True")) for c in rule.get("onPodConditions", [])}
    have = {(c.get("type"), c.get("status")) for c in pod["status"].get("conditions") or []}
    return bool(wanted & have)


def _success(spec: Mapping[str, Any], succeeded: set[int], completions: int) -> bool:
    for rule in (spec.get("successPolicy") or {}).get("rules") or []:
        indexes = _parse_indexes(rule.get("succeededIndexes")) if rule.get(
            "succeededIndexes") else set(range(completions))
        count = rule.get("succeededCount", len(indexes))
        if len(indexes & succeeded) >= count:
            return True
    return len(succeeded) >= completions


def _parse_indexes(text: str) -> set[int]:
    out: set[int] = set()
    for part in str(text).split(","):
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return out


def _finished(job: dict) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in job.get("status", {}).get("conditions") or [])


def _selects(selector: str, obj: Mapping[str, Any]) -> bool:
    """Equality and existence label selectors: a=b, a==b, a!=b, a, !a (comma = and)."""
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field(pod: dict, path: str) -> str:
    match = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
    if match:
        return pod["metadata"].get(match.group(1), {}).get(match.group(2), "")
    simple = {"metadata.name": pod["metadata"]["name"],
              "metadata.namespace": pod["metadata"].get("namespace", ""),
              "status.podIP": "127.0.0.1", "spec.nodeName": "fake-node"}
    return simple.get(path, "")


def _kill(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)  # like kubelet: SIGTERM, then SIGKILL
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
