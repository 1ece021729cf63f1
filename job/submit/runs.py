"""Runs on the cluster: submit and watch, status, logs, cancel and list.

Owns: the submitter's flows and what they print. The story of ``submit``: check the namespace
and volumes, create the Job (suspended), the ConfigMap and Service it owns, and resume it,
all or none (``job.submit.ownership`` says why in that order), then watch pod and Job events
until the Job ends, printing one status line per change and the chief's log, and finally
where the model is, or which pod failed and why (and, with ``pull_to``, the run directory
pulled to this machine by ``job.submit.pull``). Then status, logs, cancel and list, each on
the run (or namespace) that ``job.submit.target`` points it at.
Never touches: TensorFlow, the ``kubernetes`` package (``job.submit.kube`` is the door),
manifest building (``job.submit.manifests``), turning events into state, lines and outputs
(``job.submit.state``), the threads that follow a run (``job.submit.follow``), how a pull
works (``job.submit.pull``), which namespace a command uses (``job.submit.namespace``).

Example:
    >>> submit(load("examples/shapes.yaml"),  # doctest: +SKIP
    ...        options=SubmitOptions(image="ghcr.io/me/trainjob:1"))
    submitted run shapes-x7k2p to namespace 'trainjob' ...
    pending: 0/2 running (worker 1: Unschedulable: 0/3 nodes are available: ...)
    running: 2/2 workers
    [worker 0] epoch 1/10 ...
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from job.errors import EXIT_INTERRUPTED, EXIT_OK, ClusterError, JobFailed
from job.spec import Spec
from job.submit import manifests, pull
from job.submit.follow import RunFollow
from job.submit.kube import Forbidden, Kube, NotFound
from job.submit.ownership import RESUME, creation_plan, owned_by
from job.submit.state import (
    INDEX_LABEL,
    Event,
    RunState,
    creation_order,
    current_pods,
    describe,
    dump,
    failed_pod,
    model_location,
    reduce,
    run_row,
    run_summary,
    runs_table,
    summary_lines,
    why_failed,
)
from job.submit.target import RunRef, Target
from job.submit.terminal import Terminal
from job.submit.unpack import PullRefused

LOG_TAIL_LINES = 20
"""Lines of a failed pod's log shown with the failure: enough for a traceback's end."""
LOG_DRAIN_SECONDS = 30.0
"""After the Job ends, how long to wait for the chief's last log lines to arrive."""


# --- options -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubmitOptions:
    """How ``submit`` creates a run and what it shows (``trainjob submit``'s flags)."""

    image: str | None = None
    """Overrides cluster.image; None: the spec's."""
    run_id: str | None = None
    """None: ``<name>-<5 random characters>``, new for every submit."""
    wait: bool = True
    """Watch until the Job ends; False prints the run id and returns at once."""
    follow: bool = True
    """Stream the chief's log while watching: the run's progress, as ``trainjob local`` shows."""
    pull_to: Path | None = None
    """Once the run succeeds, pull its directory into this folder (``trainjob pull``); None:
    leave it on the models volume."""


@dataclass(frozen=True)
class LogOptions:
    """Which lines ``logs`` prints, as ``kubectl logs`` picks them (``trainjob logs``' flags)."""

    tail_lines: int | None = None
    """The last N lines; None: all of them."""
    since_seconds: int | None = None
    """The lines of the last N seconds; None: from the container's start."""
    timestamps: bool = False
    """Each line after the time the container wrote it (RFC 3339)."""


# --- submit: the story of one run ------------------------------------------------------------
def submit(spec: Spec, *, options: SubmitOptions | None = None, target: Target | None = None,
           out: TextIO | None = None, stdin: TextIO | None = None) -> int:
    """Create a run on the cluster and, unless ``options.wait`` is False, watch it to the end.

    Args:
        spec: the loaded spec.
        options: image, run id, wait and follow (default: ``SubmitOptions()``).
        target: the cluster; its namespace overrides cluster.namespace (default: the
            kubeconfig's current context).
        out, stdin: the terminal (default: sys.stdout and sys.stdin); tests pass their own.

    Returns:
        0 when the run succeeded (or was submitted with ``wait=False``); 130 on Ctrl-C.

    Raises:
        JobFailed: the Job failed; the failed pod, its exit code and log tail are printed.
        ClusterError: the cluster refused a request or could not be reached.
    """
    options, target = options or SubmitOptions(), target or Target()
    if options.pull_to is not None and not options.wait:
        raise PullRefused("--pull needs submit to watch the run to its end; drop --no-wait, or "
                          "pull later with `trainjob pull RUN`.")
    run_id = options.run_id or manifests.new_run_id(spec.name)
    manifests.render_manifests(spec, run_id=run_id, image=options.image)  # spec errors first
    run = target.run(run_id, spec_namespace=spec.cluster.namespace)
    docs = manifests.render_manifests(spec, run_id=run_id, image=options.image,
                                      namespace=run.namespace)
    terminal = Terminal(out or sys.stdout, stdin=sys.stdin if stdin is None else stdin)
    for warning in manifests.render_warnings(spec):
        terminal.status(f"warning: {warning}")
    _check_prerequisites(run, spec, terminal)
    _create_all(run, docs)
    objects = ", ".join(f"{doc['kind']} {doc['metadata']['name']}" for doc in docs)
    terminal.status(f"submitted run {run_id} to namespace {run.namespace!r}\n"
                    f"  objects: {objects}")
    terminal.status(f"  status: {run.hint('status')}\n  logs:   {run.hint('logs', '-f')}\n"
                    f"  cancel: {run.hint('cancel')}")
    if not options.wait:
        return EXIT_OK
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    pod_spec = yaml.safe_load(config_map["data"][manifests.SPEC_FILE_NAME])
    code = _watch_run(run, workers=spec.cluster.workers, follow=options.follow,
                      terminal=terminal,
                      model=model_location(pod_spec, run_id=run_id))
    if code != EXIT_OK or options.pull_to is None:
        return code
    return pull.pull(run_id, options.pull_to, kube=run.kube, out=out,
                     options=pull.PullOptions(namespace=run.namespace, context=target.context))


def _check_prerequisites(run: RunRef, spec: Spec, terminal: Terminal) -> None:
    """Fail before creating anything when the namespace or a volume does not exist."""
    kube, namespace = run.kube, run.namespace
    exists = kube.namespace_exists(namespace)
    if exists is False:
        raise ClusterError(f"namespace {namespace!r} does not exist on {kube.host}; create it "
                           f"(kubectl apply -k k8s/, or kubectl create namespace {namespace}) "
                           "or choose another with -n or cluster.namespace.")
    if exists is None:
        terminal.status(f"note: cannot check that namespace {namespace!r} exists (no "
                        "permission to read namespaces); continuing")
    missing = []
    for key, volume in (("cluster.models_volume", spec.cluster.models_volume),
                        ("cluster.data_volume", spec.cluster.data_volume)):
        if volume is None:
            continue
        try:
            kube.get(namespace, "PersistentVolumeClaim", volume.claim)
        except NotFound:
            missing.append(f"{volume.claim!r} ({key}.claim)")
    if missing:
        raise ClusterError(f"PersistentVolumeClaim {' and '.join(missing)} not found in "
                           f"namespace {namespace!r}; create it (see k8s/pvc-models.yaml and "
                           "k8s/pvc-data.yaml) or change the claim in the spec. Nothing was "
                           "created.")


def _create_all(run: RunRef, docs: Sequence[Mapping[str, Any]]) -> None:
    """Create the Job suspended, then the ConfigMap and Service it owns, then resume it (the
    order ``job.submit.ownership`` explains); if a step fails, delete those already made:
    all or none."""
    plan, resume = creation_plan(docs)
    created: list[Mapping[str, Any]] = []
    try:
        job = run.kube.create(run.namespace, plan[0])
        created.append(plan[0])
        for doc in plan[1:]:
            run.kube.create(run.namespace, owned_by(doc, job))
            created.append(doc)
        if resume:
            run.kube.patch(run.namespace, "Job", job["metadata"]["name"], RESUME)
    except (ClusterError, KeyboardInterrupt) as error:
        _, left = run.delete(reversed(created), propagation="Background")
        if left and isinstance(error, ClusterError):
            raise ClusterError(f"{error} Could not remove the objects already created "
                               f"({', '.join(left)}); run `trainjob cancel {run.run_id}`."
                               ) from None
        raise


def _watch_run(run: RunRef, *, workers: int, model: str, follow: bool,
               terminal: Terminal) -> int:
    """Print one line per change until the Job ends; the outcome decides the return."""
    following = RunFollow(run.kube, run.namespace, run_id=run.run_id, selector=run.selector,
                          terminal=terminal if follow else None)
    state = RunState(workers=workers)
    try:
        while not state.finished:
            state, lines = reduce(state, following.next_event())
            for line in [*lines, describe(state)]:
                terminal.status(line)
            following.update(state)
        following.drain(LOG_DRAIN_SECONDS)
    except KeyboardInterrupt:
        following.stop()
        return _interrupted(run, terminal)
    finally:
        following.stop()
    if state.job is not None and state.job.outcome == "succeeded":
        terminal.status(f"model: {model}")
        return EXIT_OK
    raise _failure(run, state, terminal)


def _failure(run: RunRef, state: RunState, terminal: Terminal) -> JobFailed:
    """The run ended without success: print the failed pod and its log tail; say why."""
    if state.job is not None and state.job.gone:
        return JobFailed(f"run {run.run_id} was deleted before it finished (trainjob cancel, "
                         "or kubectl delete).")
    # The Job's watch can be ahead of the pods' watch: list the pods once more, so the failed
    # pod's final state is known before it is reported.
    pods, _ = run.kube.list(run.namespace, "Pod", selector=run.selector)
    state, _ = reduce(state, Event("Pod", "SYNC", tuple(pods)))
    _report_failure(run, state, terminal)
    culprit = failed_pod(state)
    blame = f"worker {culprit.index} exited ({why_failed(culprit)})" if culprit \
        else (state.job.reason if state.job else "unknown reason")
    return JobFailed(f"run {run.run_id} failed: {blame}; the log tail is above, the full "
                     f"log: {run.hint('logs', f'--worker {culprit.index}' if culprit else '')}")


def _report_failure(run: RunRef, state: RunState, terminal: Terminal) -> None:
    culprit = failed_pod(state)
    if culprit is None:
        return
    terminal.status(f"worker {culprit.index} (pod {culprit.name}) failed: "
                    f"{why_failed(culprit)} (container reason: {culprit.reason or 'none'})")
    try:
        tail = run.kube.read_log(run.namespace, culprit.name, tail_lines=LOG_TAIL_LINES)
    except ClusterError as error:
        terminal.status(f"its log is not available: {error}")
        return
    terminal.status(f"last {LOG_TAIL_LINES} lines of {culprit.name}:")
    for line in tail.splitlines()[-LOG_TAIL_LINES:]:
        terminal.log(f"[worker {culprit.index}] {line}")


def _interrupted(run: RunRef, terminal: Terminal) -> int:
    """Ctrl-C: cancel the run, or (the default, and without a terminal) detach from it."""
    if terminal.ask("cancel the run (c) or detach (d)? [d] ") in ("c", "cancel"):
        _, left = run.delete(run.objects(), propagation="Foreground")
        if left:
            raise ClusterError(f"could not delete {', '.join(left)} of run {run.run_id}; try "
                               f"{run.hint('cancel')}.")
        terminal.status(f"cancelled run {run.run_id}: deleted its Job (and pods), Service and "
                        "ConfigMap")
    else:
        terminal.status(f"detached; run {run.run_id} goes on. Reattach with "
                        f"{run.hint('status')} or {run.hint('logs', '-f')}; stop it with "
                        f"{run.hint('cancel')}")
    return EXIT_INTERRUPTED


# --- status, logs, cancel, list ---------------------------------------------------------------
def status(run_id: str, *, target: Target | None = None, output: str | None = None,
           out: TextIO | None = None) -> int:
    """Print one summary of a run: state, workers, age, and where the model is.

    Args:
        output: None for the summary's lines; ``wide`` adds the image and a table of the
            workers' pods; ``json`` or ``yaml`` print all of it as data (``state.OUTPUTS``).

    Raises:
        ClusterError: no run by that id in the namespace.
    """
    run = (target or Target()).run(run_id)
    job = run.job()
    pods, _ = run.kube.list(run.namespace, "Pod", selector=run.selector)
    summary = run_summary(job, pods, model=_model(run),
                          now=datetime.datetime.now(datetime.timezone.utc))
    text = dump(summary, output) if output in ("json", "yaml") else "".join(
        f"{line}\n" for line in summary_lines(summary, wide=output == "wide"))
    (out or sys.stdout).write(text)
    return EXIT_OK


def _model(run: RunRef) -> str:
    """Where the run's model is, read from the spec in its ConfigMap."""
    try:
        config_map = run.kube.get(run.namespace, "ConfigMap", run.config_map)
        pod_spec = yaml.safe_load(config_map["data"][manifests.SPEC_FILE_NAME])
        return model_location(pod_spec, run_id=run.run_id)
    except (NotFound, KeyError, TypeError, yaml.YAMLError):
        return f"unknown: the run's ConfigMap {run.config_map} is missing or unreadable"


def logs(run_id: str, *, follow: bool = False, worker: int = 0, target: Target | None = None,
         options: LogOptions = LogOptions(), out: TextIO | None = None) -> int:
    """Print the log of one worker's current pod (the chief by default).

    Raises:
        ClusterError: no such run, worker index out of range, or no pod for it yet.
    """
    run = (target or Target()).run(run_id)
    out = out or sys.stdout
    workers = (run.job().get("spec") or {}).get("completions") or 1
    if not 0 <= worker < workers:
        raise ClusterError(f"--worker {worker} is out of range: run {run_id} has workers "
                           f"0 to {workers - 1}.")
    pods, _ = run.kube.list(run.namespace, "Pod",
                            selector=f"{run.selector},{INDEX_LABEL}={worker}")
    state, _ = reduce(RunState(workers=workers), Event("Pod", "SYNC", tuple(pods)))
    pod = current_pods(state).get(worker)
    if pod is None:
        raise ClusterError(f"run {run_id} has no pod for worker {worker} (any more); see "
                           f"{run.hint('status')}.")
    lines = {"tail_lines": options.tail_lines, "since_seconds": options.since_seconds,
             "timestamps": options.timestamps}
    if not follow:
        out.write(run.kube.read_log(run.namespace, pod.name, **lines))
        out.flush()
        return EXIT_OK
    for line in run.kube.stream_log(run.namespace, pod.name, **lines):
        out.write(line + "\n")
        out.flush()
    return EXIT_OK


def cancel(run_id: str, *, target: Target | None = None, out: TextIO | None = None) -> int:
    """Delete a run's Job (its pods, and the Service and ConfigMap it owns, go with it), and
    the Service and ConfigMap by name as well; keep its outputs.

    Raises:
        ClusterError: none of the run's objects exist, or a delete was refused.
    """
    run = (target or Target()).run(run_id)
    deleted, refused = run.delete(run.objects(), propagation="Foreground")
    if refused:
        raise ClusterError(str(next(iter(refused.values()))))
    if not deleted:
        raise run.missing()
    what = "its Job, pods, Service and ConfigMap" if deleted[0].startswith("Job ") \
        else ", ".join(deleted)  # the Job owns the rest, unless it was created without owners
    (out or sys.stdout).write(f"cancelled run {run_id}: deleted {what}\n"
                              "its run directory stays on the models volume\n")
    return EXIT_OK


def list_runs(*, target: Target | None = None, all_namespaces: bool = False,
              output: str | None = None, out: TextIO | None = None) -> int:
    """Print the runs in the namespace (``all_namespaces``: in every namespace), newest first,
    as a table (``output`` None or ``wide``) or as data (``json``, ``yaml``).

    Raises:
        ClusterError: the cluster refused the list; for every namespace, in one line saying
            that it takes a ClusterRole.
    """
    kube, namespace = (target or Target()).connect()
    out = out or sys.stdout
    jobs = _list_jobs(kube, None if all_namespaces else namespace)
    now = datetime.datetime.now(datetime.timezone.utc)
    rows = [run_row(job, now=now) for job in sorted(jobs, key=creation_order, reverse=True)]
    if output in ("json", "yaml"):
        out.write(dump({"runs": rows}, output))
    elif not rows:
        where = "any namespace" if all_namespaces else f"namespace {namespace!r}"
        out.write(f"no trainjob runs in {where}\n")
    else:
        out.write(runs_table(rows, namespaces=all_namespaces, wide=output == "wide"))
    return EXIT_OK


def _list_jobs(kube: Kube, namespace: str | None) -> list[dict[str, Any]]:
    """The runs' Jobs in ``namespace``, or in every namespace (None)."""
    try:
        jobs, _ = kube.list(namespace, "Job", selector=manifests.LABEL_RUN_ID)
    except Forbidden:
        if namespace is not None:
            raise
        raise Forbidden("forbidden: listing the runs of every namespace (-A) needs list on "
                        "jobs.batch at the cluster scope, a ClusterRole that k8s/rbac.yaml "
                        "does not grant; ask your cluster admin for one, or list one namespace "
                        "with -n.") from None
    return jobs
