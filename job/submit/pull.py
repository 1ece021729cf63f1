"""``trainjob pull``: a run directory from the models volume to this machine, over the API alone.

Owns: the story of a pull. Find where the run's directory is from what the cluster still
knows (the Job, else the spec in its ConfigMap, else ``--claim``); refuse a run that is still
running or failed unless ``--partial``; start a short-lived pull pod that mounts the models
claim read-only; wait for it with a deadline (an image that cannot be pulled ends the wait at
once); measure the directory with ``du``; stream it out with ``tar`` over exec; unpack, check
and place it (``job.submit.unpack``); and delete the pod on every way out: success, error,
Ctrl-C. If this machine vanishes, the pod ends by itself (``job.submit.pods``).

The pull pod's image: ``--image``, else the run's own image (from its Job, else from the spec
in its ConfigMap), which the cluster could already pull and which has GNU tar and du. When the
cluster no longer knows the run, ``--image`` is required: clusters often cannot reach public
registries, so no small default image is assumed.
Never touches: the ``kubernetes`` package (``job.submit.kube``), pod rendering
(``job.submit.pods``), local files beyond ``job.submit.unpack``, TensorFlow.

Example:
    >>> pull("shapes-x7k2p", Path("models"), options=PullOptions(namespace="ml"))  # doctest: +SKIP
    pulling shapes-x7k2p (2.1 MiB) from trainjob-models:/models/shapes-x7k2p
    pulled shapes-x7k2p to models/shapes-x7k2p: 9 files, 2.1 MiB in 1.2 s (1.8 MiB/s)
    model.h5 matches metrics.json (sha256 470058475c7349f0...)
    checkpoints/ stayed on the volume (--with-checkpoints fetches it)
"""

from __future__ import annotations

import contextlib
import posixpath
import secrets
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from job.errors import EXIT_OK, ClusterError
from job.names import check_run_id
from job.submit import kube as kube_module
from job.submit import manifests, pods
from job.submit.kube import Kube, NotFound
from job.submit.namespace import resolve_namespace
from job.submit.state import job_view, pod_view
from job.submit.unpack import (
    ChunkReader,
    Progress,
    PullFailed,
    PullRefused,
    Verified,
    place,
    size_text,
    staging,
    unpack,
    verify,
)

PULL_POD_LIFETIME_SECONDS = 3600
"""How long a pull pod may live: an hour moves 20 GiB at 6 MiB/s, and a pod whose machine
vanished frees its node after that at the latest."""
START_TIMEOUT_SECONDS = 300.0
"""How long the pull pod may take to start: pulling a multi-GiB training image onto a node
that lacks it takes minutes; an unschedulable pod gets this long for an autoscaler."""
DEFAULT_MODELS_CLAIM = "trainjob-models"
"""The claim of k8s/pvc-models.yaml, the kustomize base's models volume (a test holds them
equal): where a run the cluster has forgotten is looked for, unless ``--claim``."""
CHECKPOINTS_DIR = "checkpoints"
"""Left on the volume unless --with-checkpoints: they are most of a run's bytes, and only a
rerun of the run needs them."""
IMAGE_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                  "CreateContainerConfigError", "CreateContainerError")
"""Waiting reasons that will not resolve by waiting: the pull fails at once."""
TAR_SOME_FILES_DIFFER = 1
"""GNU tar's exit code when a file changed while it was read: expected for a running run."""


@dataclass(frozen=True)
class PullOptions:
    """How to pull; every field has the default a user gets without the flag."""

    namespace: str | None = None
    """-n; None: the namespace rule decides (``job.submit.namespace``)."""
    context: str | None = None
    """The kubeconfig context; None: the current one."""
    claim: str | None = None
    """The models claim when the cluster no longer knows the run; None: DEFAULT_MODELS_CLAIM."""
    image: str | None = None
    """The pull pod's image; None: the run's own."""
    with_checkpoints: bool = False
    partial: bool = False
    """Pull a run that is still running or that failed: whatever it has written."""
    lifetime_seconds: int = PULL_POD_LIFETIME_SECONDS
    start_timeout_seconds: float = START_TIMEOUT_SECONDS


@dataclass(frozen=True)
class Source:
    """Where a run's directory is, and what the cluster knows of the run."""

    claim: str
    mount: str
    """Where the pull pod mounts the claim: the run's own models mount."""
    run_dir: str
    """The run directory's path in the pod: <output.dir>/<run id>."""
    image: str | None
    service_account: str | None
    state: str
    """succeeded, failed, running, or unknown (the Job is gone)."""
    detail: str = ""


def pull(run_id: str, dest: Path, *, options: PullOptions = PullOptions(),
         kube: Kube | None = None, out: TextIO | None = None) -> int:
    """Copy the run directory ``<output.dir>/<run id>`` of the models volume to ``dest/<run id>``.

    Returns:
        0 when the run directory is in place (and its model.h5 matched metrics.json).

    Raises:
        PullRefused: a run still running or failed without ``partial``, ``dest/<run id>``
            exists, no such run directory (exit 2).
        PullFailed: the model does not match its sha256, or the stream was damaged (exit 1).
        ClusterError: the cluster refused a request, or the pull pod could not start (exit 2).
    """
    check_run_id(run_id, source="RUN", hint="as `trainjob list` shows it")
    out = out or sys.stdout
    kube = kube or kube_module.connect(context=options.context)
    namespace = resolve_namespace(flag=options.namespace, context=lambda: kube.default_namespace)
    source = locate(kube, namespace, run_id, options=options)
    _check_state(source, run_id, options=options, out=out)
    image = _image(source, run_id, options=options)
    _check_claim(kube, namespace, source.claim)
    with staging(dest, run_id) as folder, \
            _pull_pod(kube, namespace, run_id, source=source, image=image,
                      options=options) as pod:
        total = _measure(kube, namespace, pod, source=source, options=options)
        size = size_text(total) if total is not None else "size unknown"
        out.write(f"pulling {run_id} ({size}) from {source.claim}:{source.run_dir}\n")
        out.flush()
        progress = Progress(out, total=total)
        files = _transfer(kube, namespace, pod, source=source, options=options,
                          unpack_into=(folder, progress))
        checked = verify(folder, partial=options.partial)
        place(folder, dest / run_id)
    _report(out, target=dest / run_id, files=files, progress=progress,
            checked=checked, left=() if options.with_checkpoints else (CHECKPOINTS_DIR,))
    return EXIT_OK


# --- where the run is ----------------------------------------------------------------------
def locate(kube: Kube, namespace: str, run_id: str, *, options: PullOptions) -> Source:
    """The run's claim, path, image and state, from the Job, else the ConfigMap, else flags."""
    job = _get(kube, namespace, "Job", manifests.job_name(run_id))
    config_map = _get(kube, namespace, "ConfigMap", manifests.config_map_name(run_id))
    pod_spec = _pod_spec(config_map)
    if job is None and pod_spec is None:
        claim = options.claim or DEFAULT_MODELS_CLAIM
        mount = manifests.EMPTYDIR_MODELS_MOUNT
        return Source(claim=claim, mount=mount, run_dir=posixpath.join(mount, run_id),
                      image=None, service_account=None, state="unknown",
                      detail="the cluster does not know it (no Job, no ConfigMap: cleaned "
                             "up, cancelled, or a typo)")
    cluster = (pod_spec or {}).get("cluster") or {}
    volume = cluster.get("models_volume") or _job_models_volume(job)
    if not volume:
        raise PullRefused(f"run {run_id} wrote to an emptyDir (cluster.models_volume was not "
                          "set): its run directory was deleted with its pods; nothing to pull.")
    output_dir = ((pod_spec or {}).get("output") or {}).get("dir") or volume["mount"]
    template = _job_pod_spec(job)
    containers = template.get("containers") or [{}]
    state, detail = _job_state(job)
    return Source(claim=volume["claim"], mount=volume["mount"],
                  run_dir=posixpath.join(str(output_dir), run_id),
                  image=containers[0].get("image") or cluster.get("image"),
                  service_account=template.get("serviceAccountName")
                  or cluster.get("service_account"), state=state, detail=detail)


def _get(kube: Kube, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    try:
        return kube.get(namespace, kind, name)
    except NotFound:
        return None


def _pod_spec(config_map: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The spec in the run's ConfigMap, as its pods read it; None if missing or unreadable."""
    try:
        loaded = yaml.safe_load((config_map or {})["data"][manifests.SPEC_FILE_NAME])
    except (KeyError, TypeError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _job_pod_spec(job: Mapping[str, Any] | None) -> dict[str, Any]:
    return (((job or {}).get("spec") or {}).get("template") or {}).get("spec") or {}


def _job_models_volume(job: Mapping[str, Any] | None) -> dict[str, str] | None:
    """{claim, mount} of the Job's ``models`` volume, when it is a claim."""
    template = _job_pod_spec(job)
    claims = {v.get("name"): (v.get("persistentVolumeClaim") or {}).get("claimName")
              for v in template.get("volumes") or []}
    for container in template.get("containers") or []:
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") == "models" and claims.get("models"):
                return {"claim": claims["models"], "mount": mount["mountPath"]}
    return None


def _job_state(job: Mapping[str, Any] | None) -> tuple[str, str]:
    if job is None:
        return "unknown", "its Job is gone (removed after its TTL, or cancelled)"
    view = job_view(job)
    if view.outcome == "failed":
        return "failed", f"{view.reason}: {view.message}" if view.message else view.reason
    return (view.outcome or "running"), ""


def _check_state(source: Source, run_id: str, *, options: PullOptions, out: TextIO) -> None:
    """Refuse a run that is still running or failed, unless ``partial``; say what is known."""
    partial = options.partial
    if source.state == "running" and not partial:
        raise PullRefused(f"run {run_id} is still running; its model is written when it "
                          f"succeeds. Wait for it (trainjob status {run_id}), or pass "
                          "--partial to fetch what it has written so far.")
    if source.state == "failed" and not partial:
        raise PullRefused(f"run {run_id} failed ({source.detail}), so it has no model; pass "
                          "--partial to fetch what it left (add --with-checkpoints for its "
                          "checkpoints).")
    if source.state in ("running", "failed"):
        how = "is still running" if source.state == "running" else "failed"
        out.write(f"note: run {run_id} {how}; pulling what it has written\n")
    if source.detail.startswith("the cluster does not know it"):
        out.write(f"note: run {run_id}: {source.detail}; looking for it on claim "
                  f"{source.claim!r} at {source.run_dir}\n")
    elif options.claim and options.claim != source.claim:
        out.write(f"note: --claim {options.claim!r} is not used: run {run_id} wrote to "
                  f"claim {source.claim!r}\n")


def _image(source: Source, run_id: str, *, options: PullOptions) -> str:
    image = options.image or source.image
    if not image:
        raise PullRefused(f"run {run_id} is no longer on the cluster, so its image is unknown; "
                          "pass --image with the training image (it has tar, and the cluster "
                          "can pull it), e.g. --image registry.example.com/you/trainjob:0.1.0.")
    return image


def _check_claim(kube: Kube, namespace: str, claim: str) -> None:
    try:
        kube.get(namespace, "PersistentVolumeClaim", claim)
    except NotFound:
        raise ClusterError(f"PersistentVolumeClaim {claim!r} not found in namespace "
                           f"{namespace!r}; pass --claim with the claim of the spec's "
                           "cluster.models_volume (or -n with the run's namespace).") from None


# --- the pull pod ---------------------------------------------------------------------------
@contextlib.contextmanager
def _pull_pod(kube: Kube, namespace: str, run_id: str, *, source: Source, image: str,
              options: PullOptions) -> Iterator[str]:
    """Create the pull pod, wait until it runs, yield its name; delete it on every way out."""
    _delete_ended_pull_pods(kube, namespace, run_id)
    suffix = "".join(secrets.choice(manifests.RUN_SUFFIX_ALPHABET)
                     for _ in range(manifests.RUN_SUFFIX_LENGTH))
    name = pods.pull_pod_name(run_id, suffix=suffix)
    kube.create(namespace, pods.render_pull_pod(pods.PullPod(
        name=name, run_id=run_id, claim=source.claim, mount=source.mount, image=image,
        lifetime_seconds=options.lifetime_seconds, service_account=source.service_account)))
    try:
        _wait_running(kube, namespace, name, timeout_seconds=options.start_timeout_seconds)
        yield name
    finally:
        with contextlib.suppress(NotFound):
            kube.delete(namespace, "Pod", name, propagation="Background")


def _delete_ended_pull_pods(kube: Kube, namespace: str, run_id: str) -> None:
    """Pull pods of this run left by a machine that vanished, and ended by their deadline."""
    ended, _ = kube.list(namespace, "Pod", selector=f"{pods.LABEL_PULL_OF}={run_id}")
    for pod in ended:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            with contextlib.suppress(NotFound):
                kube.delete(namespace, "Pod", pod["metadata"]["name"],
                            propagation="Background")


def _wait_running(kube: Kube, namespace: str, name: str, *, timeout_seconds: float) -> None:
    """Watch the pull pod until it runs; an image it cannot pull, or the deadline, ends it."""
    last = ["no reason given"]

    def verdict(found: tuple[dict, ...]) -> str | None:
        if not found:
            return None
        view = pod_view(found[0], seq=0)
        if view.phase == "Running":
            return "running"
        if view.phase in ("Succeeded", "Failed"):
            return f"it ended ({view.phase}) before it could be used"
        if view.waiting and view.waiting.split(":", 1)[0] in IMAGE_FAILURES:
            return f"{view.waiting}; pass --image with an image the cluster can pull"
        last[0] = view.waiting or last[0]
        return None

    answer = kube.wait(namespace, "Pod", selector=f"{pods.LABEL_PULL_POD}={name}",
                       until=verdict, timeout_seconds=timeout_seconds)
    if answer is None:
        raise ClusterError(f"the pull pod {name} did not start within {timeout_seconds:g} s "
                           f"({last[0]}); the pod is deleted. Check the cluster's capacity "
                           "and that the models claim can be mounted here, then pull again.")
    if answer != "running":
        raise ClusterError(f"the pull pod {name} cannot start: {answer}; the pod is deleted.")


# --- measure and transfer ------------------------------------------------------------------
def _measure(kube: Kube, namespace: str, pod: str, *, source: Source,
             options: PullOptions) -> int | None:
    """Bytes to transfer, from ``du``; None when this image's du cannot say (e.g. busybox).

    Raises:
        PullRefused: the run directory does not exist on the claim.
    """
    excludes = [] if options.with_checkpoints else \
        [f"--exclude={posixpath.join(source.run_dir, CHECKPOINTS_DIR)}"]
    command = ["du", "-s", "-b", *excludes, source.run_dir]
    with kube.exec_stream(namespace, pod, command, container=pods.PULL_CONTAINER_NAME) as run:
        text = b"".join(run).decode("utf-8", errors="replace")
    if run.exit_code == 0 and text.split() and text.split()[0].isdigit():
        return int(text.split()[0])
    if "No such file or directory" in run.stderr:
        raise PullRefused(f"there is no run directory {source.run_dir} on claim "
                          f"{source.claim!r}; check the run id (trainjob list), or pass "
                          "--claim with the claim the run wrote to.")
    return None


def _transfer(kube: Kube, namespace: str, pod: str, *, source: Source, options: PullOptions,
              unpack_into: tuple[Path, Progress]) -> int:
    """Stream ``tar`` of the run directory out of the pod and unpack it; count the files."""
    folder, progress = unpack_into
    excludes = [] if options.with_checkpoints else [f"--exclude=./{CHECKPOINTS_DIR}"]
    command = ["tar", "-c", "-f", "-", "-C", source.run_dir, *excludes, "."]
    complete = False
    try:
        with kube.exec_stream(namespace, pod, command,
                              container=pods.PULL_CONTAINER_NAME) as run:
            files = unpack(ChunkReader(iter(run), progress), folder)
        complete = True
    finally:
        progress.finish(complete=complete)
    tolerated = (0, TAR_SOME_FILES_DIFFER) if options.partial else (0,)
    if run.exit_code not in tolerated:
        why = run.stderr or run.failure or f"exit {run.exit_code}"
        raise PullFailed(f"tar in the pull pod failed: {why}; nothing was written.")
    return files


def _report(out: TextIO, *, target: Path, files: int, progress: Progress, checked: Verified,
            left: tuple[str, ...]) -> None:
    """What arrived where (``target``, named after the run) and how fast, what was checked,
    and what stayed behind."""
    lines = [f"note: {note}" for note in checked.notes]
    lines.append(f"pulled {target.name} to {target}: {files} files, {size_text(progress.done)} in "
                 f"{progress.seconds:.1f} s ({size_text(progress.done / progress.seconds)}/s)")
    if checked.sha256:
        lines.append(f"model.h5 matches metrics.json (sha256 {checked.sha256[:16]}...)")
    lines += [f"{name}/ stayed on the volume (--with-{name} fetches it)" for name in left]
    out.write("".join(f"{line}\n" for line in lines))
    out.flush()
