"""The submitter's pure core: watch events to a run's state, and the state to lines.

Owns: ``Event`` -> ``reduce`` -> ``RunState`` -> ``describe``. Objects carry their whole
state, so replaying an event, or a whole listing after a reconnect, gives the same state and
prints nothing twice: that is what makes reconnects safe. Also the pure readings of raw
objects that the commands print: why a pod failed, a Job's one-word state, where the model
is, ages and tables; and what ``status`` and ``list`` print, as plain data first
(``run_summary``, ``run_row``), then as lines and tables, wide tables, JSON or YAML
(``-o``).
Never touches: the network (``job.submit.kube``), threads, the terminal, TensorFlow.

Example:
    >>> state, _ = reduce(RunState(workers=2), Event("Pod", "SYNC", ()))
    >>> describe(state)
    'pending: 0/2 running (no pods yet)'
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from job.errors import EXIT_OK, PERMANENT_EXIT_CODES, describe_exit_code
from job.submit import manifests

INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
"""Set by the Job controller on every pod of an Indexed Job."""
CHIEF_INDEX = 0
"""The worker that writes the model and whose log the submitter streams."""
MESSAGE_MAX_CHARS = 240
"""Longest reason message kept from the API: scheduler messages can list every node."""
CHIEF = "worker 0"
"""How status lines and log prefixes name the chief."""
NONE = "<none>"
"""A table cell with nothing in it, as kubectl writes it."""


@dataclass(frozen=True)
class Event:
    """One change seen by a watch, or a whole fresh listing (``type`` SYNC)."""

    kind: str
    """Pod or Job."""
    type: str
    """ADDED, MODIFIED, DELETED, or SYNC (objects is the complete current list)."""
    objects: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class PodView:
    """What the terminal needs to know about one pod."""

    name: str
    index: int
    seq: int
    """Order in which the submitter first saw the pod: a replacement has a higher seq."""
    phase: str
    waiting: str | None = None
    """Why a pod is not running yet: 'Unschedulable: ...', 'ImagePullBackOff: ...'."""
    exit_code: int | None = None
    reason: str | None = None
    """The container's terminated reason: Error, OOMKilled, Completed."""
    disrupted: bool = False
    """DisruptionTarget: preempted, evicted or drained; not the job's fault."""
    gone: bool = False


@dataclass(frozen=True)
class JobView:
    outcome: str | None = None
    """succeeded, failed, or None while running."""
    reason: str = ""
    message: str = ""
    suspended: bool = False
    queue: str | None = None
    gone: bool = False


@dataclass(frozen=True)
class RunState:
    workers: int
    pods: tuple[PodView, ...] = ()
    job: JobView | None = None
    announced: frozenset[str] = frozenset()
    """Replacement pods whose restart line was printed: never print it again."""

    @property
    def finished(self) -> bool:
        return self.job is not None and (self.job.outcome is not None or self.job.gone)


def reduce(state: RunState, event: Event) -> tuple[RunState, list[str]]:
    """Apply one event; return the new state and any one-off lines (restarts).

    Objects carry their whole state, so applying an event twice, or a listing after a
    reconnect, changes nothing and prints nothing.
    """
    if event.kind == "Job":
        job = state.job
        for obj in event.objects:
            job = dataclasses.replace(job_view(obj), gone=event.type == "DELETED")
        if event.type == "SYNC" and not event.objects:
            job = dataclasses.replace(state.job or JobView(), gone=True)
        return dataclasses.replace(state, job=job), []
    pods = {p.name: p for p in state.pods}
    seq = max((p.seq for p in state.pods), default=-1)
    objects = sorted(event.objects, key=creation_order) if event.type == "SYNC" \
        else event.objects
    for obj in objects:
        name = obj["metadata"]["name"]
        known = pods.get(name)
        if known is None:
            seq += 1
        pods[name] = pod_view(obj, seq=known.seq if known else seq,
                              gone=event.type == "DELETED")
    if event.type == "SYNC":
        listed = {obj["metadata"]["name"] for obj in event.objects}
        pods = {n: p if n in listed else dataclasses.replace(p, gone=True)
                for n, p in pods.items()}
    state = dataclasses.replace(state, pods=tuple(sorted(pods.values(), key=lambda p: p.seq)))
    return _announce_restarts(state)


def _announce_restarts(state: RunState) -> tuple[RunState, list[str]]:
    lines = []
    announced = set(state.announced)
    for pod in state.pods:
        if pod.name in announced or pod.gone:
            continue
        earlier = [p for p in state.pods if p.index == pod.index and p.seq < pod.seq
                   and p.phase == "Failed"]
        if earlier:
            lines.append(f"worker {pod.index} restarted ({why_failed(earlier[-1])}): "
                         f"new pod {pod.name}")
            announced.add(pod.name)
    return dataclasses.replace(state, announced=frozenset(announced)), lines


def describe(state: RunState) -> str:
    """The one status line for a state, e.g. 'running: 2/2 workers'."""
    job, workers = state.job, state.workers
    if job is not None and job.gone:
        return "deleted: the run's Job is gone (cancelled, or removed by its TTL)"
    if job is not None and job.outcome == "succeeded":
        return "succeeded"
    if job is not None and job.outcome == "failed":
        return f"failed: {job.reason}" + (f": {job.message}" if job.message else "")
    if job is not None and job.suspended:
        where = f"Kueue queue {job.queue!r}" if job.queue else "its queue"
        return f"queued: the Job is suspended until {where} admits it"
    current = current_pods(state)
    chief = current.get(CHIEF_INDEX)
    if chief is not None and chief.phase == "Succeeded":
        return f"finishing: {CHIEF} (chief) succeeded"
    running = sum(p.phase == "Running" for p in current.values())
    finished = sum(p.phase == "Succeeded" for p in current.values())
    if running and running + finished == workers:
        return f"running: {running}/{workers} workers" + (
            f", {finished} finished" if finished else "")
    detail = next((d for d in (_holdup(p) for _, p in sorted(current.items())) if d), None)
    if not current:
        detail = "no pods yet"
    return f"pending: {running}/{workers} running" + (f" ({detail})" if detail else "")


def _holdup(pod: PodView) -> str | None:
    if pod.phase == "Pending" and pod.waiting:
        return f"worker {pod.index}: {pod.waiting}"
    if pod.phase == "Failed":
        return f"worker {pod.index}: {why_failed(pod)}"
    return None


def current_pods(state: RunState) -> dict[int, PodView]:
    """For each index, the pod that counts now: the newest live one, else the newest failed."""
    current: dict[int, PodView] = {}
    for pod in state.pods:  # in seq order, so later pods win
        if pod.gone:
            continue
        held = current.get(pod.index)
        if held is None or pod.phase != "Failed" or held.phase == "Failed":
            current[pod.index] = pod
    return current


def failed_pod(state: RunState) -> PodView | None:
    """The pod to blame for a failed run: a permanent exit code first, else the latest failure."""
    failed = [p for p in state.pods if p.phase == "Failed"]
    permanent = [p for p in failed if p.exit_code in PERMANENT_EXIT_CODES]
    return (permanent or failed or [None])[-1]


def why_failed(pod: PodView) -> str:
    """'exit 75, retryable', 'exit 2, bad input, permanent', 'preempted', 'exit 137, OOMKilled'.

    Our exit codes are named by the table in ``job.errors``; a failed pod that exited 0 was
    stopped from outside, so its reason says more than 'success'.
    """
    if pod.disrupted:
        return "preempted or evicted" + (f", exit {pod.exit_code}" if pod.exit_code else "")
    if pod.exit_code is None:
        return pod.reason or "failed"
    meaning = describe_exit_code(pod.exit_code) if pod.exit_code != EXIT_OK else None
    if meaning is None or pod.reason not in (None, "Error", "Completed"):
        meaning = pod.reason or "killed"
    return f"exit {pod.exit_code}, {meaning}"


def pod_view(obj: Mapping[str, Any], *, seq: int, gone: bool = False) -> PodView:
    """Read the fields the terminal cares about from a raw pod."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    labels = meta.get("labels") or {}
    index = labels.get(INDEX_LABEL) or (meta.get("annotations") or {}).get(INDEX_LABEL)
    waiting = exit_code = reason = None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            waiting = _reason_text(condition)
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "waiting" in state and (state["waiting"] or {}).get("reason") not in (
                None, "ContainerCreating", "PodInitializing"):
            waiting = _reason_text(state["waiting"])
        if "terminated" in state:
            exit_code = (state["terminated"] or {}).get("exitCode")
            reason = (state["terminated"] or {}).get("reason")
    disrupted = any(c.get("type") == "DisruptionTarget" and c.get("status") == "True"
                    for c in status.get("conditions") or [])
    return PodView(name=meta.get("name", "?"), index=int(index) if index is not None else -1,
                   seq=seq, phase=status.get("phase") or "Pending", waiting=waiting,
                   exit_code=exit_code, reason=reason, disrupted=disrupted, gone=gone)


def job_view(obj: Mapping[str, Any]) -> JobView:
    """Read a raw Job: its outcome (from conditions), suspension and queue."""
    outcome, reason, message = None, "", ""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        kind = condition.get("type")
        if kind in ("Complete", "SuccessCriteriaMet") and outcome is None:
            outcome = "succeeded"
        elif kind == "Failed":
            outcome = "failed"
            reason = condition.get("reason") or ""
            message = _clip(condition.get("message") or "")
    spec = obj.get("spec") or {}
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return JobView(outcome=outcome, reason=reason, message=message,
                   suspended=bool(spec.get("suspend")), queue=labels.get(manifests.LABEL_QUEUE))


def job_state(obj: Mapping[str, Any]) -> str:
    """One word for ``list``: succeeded, failed, deleting, queued, running or pending."""
    view = job_view(obj)
    if view.outcome:
        return view.outcome
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return "deleting"
    if view.suspended:
        return "queued"
    status = obj.get("status") or {}
    completions = (obj.get("spec") or {}).get("completions") or 1
    return "running" if (status.get("ready") or 0) >= completions else "pending"


def model_location(pod_spec: Mapping[str, Any], *, run_id: str) -> str:
    """Where the chief writes the model, as '<claim>:<path in the pod>' when on a PVC.

    Example:
        >>> model_location({"output": {"dir": "/models"}, "cluster": {"models_volume": {
        ...     "claim": "trainjob-models", "mount": "/models"}}}, run_id="shapes-x7k2p")
        'trainjob-models:/models/shapes-x7k2p/model.h5'
    """
    path = f"{str(pod_spec['output']['dir']).rstrip('/')}/{run_id}/model.h5"
    volume = (pod_spec.get("cluster") or {}).get("models_volume")
    if volume:
        return f"{volume['claim']}:{path}"
    return (f"{path} in the pod's emptyDir, deleted with the pod (set cluster.models_volume "
            "to keep models)")


def format_age(seconds: float) -> str:
    """'45s', '5m12s', '3h04m', '2d03h': the two largest units, like kubectl."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                   .rstrip() + "\n" for row in rows)


def _reason_text(obj: Mapping[str, Any]) -> str:
    reason, message = obj.get("reason") or "", _clip(obj.get("message") or "")
    return f"{reason}: {message}" if reason and message else reason or message


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MESSAGE_MAX_CHARS else text[:MESSAGE_MAX_CHARS - 3] + "..."


def creation_order(obj: Mapping[str, Any]) -> tuple[str, int]:
    """Sort key: oldest first, by creation time, then by resourceVersion within a second."""
    meta = obj.get("metadata") or {}
    version = str(meta.get("resourceVersion") or "0")
    return meta.get("creationTimestamp") or "", int(version) if version.isdigit() else 0


def age(obj: Mapping[str, Any], *, now: datetime.datetime) -> str:
    """How long ago the object was created, as ``format_age`` writes it; '?' when unknown."""
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return "?"
    created = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return format_age((now - created).total_seconds())



# --- what status and list print -------------------------------------------------------------
def run_summary(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], *, model: str,
                now: datetime.datetime) -> dict[str, Any]:
    """Everything ``status`` says about a run, as plain data (``-o json`` prints it as is)."""
    meta = job.get("metadata") or {}
    workers = (job.get("spec") or {}).get("completions") or 1
    state, _ = reduce(RunState(workers=workers), Event("Job", "SYNC", (job,)))
    state, _ = reduce(state, Event("Pod", "SYNC", tuple(pods)))
    current = current_pods(state)
    culprit = failed_pod(state)
    return {
        "run": meta.get("name"), "namespace": meta.get("namespace"),
        "state": job_state(job), "status": describe(state), "workers": workers,
        "running": sum(p.phase == "Running" for p in current.values()),
        "succeeded": sum(p.phase == "Succeeded" for p in current.values()),
        "failed_pods": sum(p.phase == "Failed" for p in state.pods),
        "created": meta.get("creationTimestamp"), "age": age(job, now=now),
        "image": _image(job), "model": model,
        "model_written": state.job is not None and state.job.outcome == "succeeded",
        "failed": None if culprit is None else {
            "worker": culprit.index, "pod": culprit.name, "reason": why_failed(culprit)},
        "pods": [{"worker": index, "pod": pod.name, "phase": pod.phase,
                  "detail": (why_failed(pod) if pod.phase == "Failed" else pod.waiting) or ""}
                 for index, pod in sorted(current.items())],
    }


def summary_lines(summary: Mapping[str, Any], *, wide: bool = False) -> list[str]:
    """``status``'s lines for a ``run_summary``; ``wide`` adds the image and a pod table."""
    model = summary["model"] + ("" if summary["model_written"]
                                else " (written when the run succeeds)")
    lines = [
        f"run:     {summary['run']} (namespace {summary['namespace']})",
        f"state:   {summary['status']}",
        f"workers: {summary['running']} running, {summary['succeeded']} succeeded, "
        f"{summary['failed_pods']} failed pods, of {summary['workers']}",
        f"age:     {summary['age']}",
        f"model:   {model}",
    ]
    failed = summary["failed"]
    if failed is not None:
        lines.append(f"failed:  worker {failed['worker']} (pod {failed['pod']}): "
                     f"{failed['reason']}")
    if wide:
        lines.append(f"image:   {summary['image'] or NONE}")
        rows = [("WORKER", "POD", "PHASE", "DETAIL")] + [
            (str(p["worker"]), p["pod"], p["phase"], p["detail"]) for p in summary["pods"]]
        lines += ["pods:"] + ["  " + row for row in format_table(rows).splitlines()]
    return lines


def run_row(job: Mapping[str, Any], *, now: datetime.datetime) -> dict[str, Any]:
    """One run as ``list`` shows it, as plain data (``-o json`` prints a list of them)."""
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    labels = meta.get("labels") or {}
    return {"run": meta.get("name"), "namespace": meta.get("namespace"),
            "state": job_state(job), "workers": (job.get("spec") or {}).get("completions") or 1,
            "running": status.get("ready") or 0, "succeeded": status.get("succeeded") or 0,
            "failed": status.get("failed") or 0, "created": meta.get("creationTimestamp"),
            "age": age(job, now=now), "spec": labels.get(manifests.LABEL_NAME),
            "image": _image(job), "queue": labels.get(manifests.LABEL_QUEUE)}


def runs_table(rows: Sequence[Mapping[str, Any]], *, namespaces: bool = False,
               wide: bool = False) -> str:
    """``list``'s table: NAMESPACE first with ``namespaces`` (``-A``), and with ``wide`` the
    spec's name, the image and the Kueue queue after the rest, as ``kubectl get -o wide``."""
    columns = (["namespace"] if namespaces else []) + [
        "run", "state", "workers", "running", "succeeded", "failed", "age"] + (
        ["spec", "image", "queue"] if wide else [])
    return format_table([[c.upper() for c in columns]] + [
        [NONE if row[c] is None else str(row[c]) for c in columns] for row in rows])


def dump(data: Any, output: str) -> str:
    """``data`` as ``-o json`` (indented, one trailing newline) or ``-o yaml`` prints it."""
    if output == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _image(job: Mapping[str, Any]) -> str | None:
    template = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = template.get("containers") or [{}]
    return containers[0].get("image")
