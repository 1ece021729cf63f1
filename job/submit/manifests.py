"""Kubernetes manifests for one run: a spec ConfigMap, a headless Service and an Indexed Job.

Owns: turning a ``Spec`` into plain manifest dicts (``render_manifests``), the names of a
run's objects (``config_map_name``, ``job_name``, ``service_name``; the commands look them up
by these), run ids (``new_run_id``) and the multi-document YAML text (``to_yaml``). The pod's
view of the spec (``pod_spec_dict``: paths rewritten for the volumes) lives in
``job.submit.pod_spec`` and the pods' security profile in ``job.submit.pods``; both are
re-exported here. Everything here is pure: same input, same output.
Never touches: the ``kubernetes`` package, the network, files, TensorFlow. Sending the
manifests is ``job.submit.kube``'s job.

What the pod sees:

- the spec at ``/etc/trainjob/spec.yaml`` (from the ConfigMap ``config_map_name(run_id)``);
- the command ``trainjob train /etc/trainjob/spec.yaml --run-id <run id>``;
- the environment contract, rendered by ``job.cluster.indexed_job_env`` (whose inverse,
  ``cluster_from_env``, the job reads) without the worker's index: the Job controller
  injects that into every pod of an Indexed Job;
- worker ``i`` is reachable at ``<run id>-<i>.<run id>:<port>`` (``job.cluster.JobDns``):
  the Job and the headless Service are both named after the run (``job_name``,
  ``service_name``), an Indexed Job names each pod's hostname ``<job>-<index>`` and the
  Service (the pod's ``subdomain``) gives it a DNS record.

Paths in the pod's spec point into the pod's volumes: ``output.dir`` onto the models volume,
data paths onto the data volume's mount, which acts as a root (the rules are
``job.submit.pod_spec``'s). Without a models volume the model is written to an ``emptyDir``
and deleted with the pod (``render_warnings`` says so).

The rendered order, ConfigMap, Service, Job, is the order ``kubectl apply`` must create them
in, so no pod starts without its spec; ``submit`` creates them in another order, with the Job
owning the others (``job.submit.ownership``).

Example:
    >>> docs = render_manifests(spec, run_id="shapes-x7k2p", image="ghcr.io/me/trainjob:1")
    >>> [d["kind"] for d in docs]                         # doctest: +SKIP
    ['ConfigMap', 'Service', 'Job']
    >>> print(to_yaml(docs))                              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import secrets
from typing import Any

import yaml

from job import __version__, weights
from job.cluster import JobDns, indexed_job_env
from job.errors import PERMANENT_EXIT_CODES, RETRYABLE_EXIT_CODES, SpecError
from job.names import POD_NAME_RESERVE, RUN_ID_MAX_LENGTH, check_run_id, excerpt, is_dns_label
from job.spec import Spec
from job.submit.namespace import resolve_namespace
from job.submit.pod_spec import EMPTYDIR_MODELS_MOUNT, pod_spec_dict, pod_spec_yaml
from job.submit.pods import RUN_USER_ID, container_security_context, pod_security_context

CONTAINER_NAME = "trainjob"
"""The training container's name; podFailurePolicy exit-code rules refer to it."""
SPEC_MOUNT_DIR = "/etc/trainjob"
"""Where the spec ConfigMap is mounted (read-only)."""
SPEC_FILE_NAME = "spec.yaml"
"""Key in the ConfigMap and file name in SPEC_MOUNT_DIR."""
POD_SPEC_PATH = f"{SPEC_MOUNT_DIR}/{SPEC_FILE_NAME}"
"""The spec path the training command reads inside the pod."""
TMP_MOUNT = "/tmp"
"""emptyDir for scratch files and HOME: the root filesystem is read-only."""
SHM_MOUNT = "/dev/shm"
"""Memory-backed emptyDir: the runtime's default 64 MiB /dev/shm starves decoders and TF."""
TERMINATION_GRACE_SECONDS = 120
"""Seconds between SIGTERM and SIGKILL: time for a worker to save a checkpoint and exit 75."""
PORT_NAME = "collective"
"""Name of the worker port on the container and the Service (at most 15 characters)."""

LABEL_RUN_ID = "trainjob.dev/run-id"
"""On every object of a run: the submitter finds a run's objects with this label."""
LABEL_NAME = "trainjob.dev/name"
"""The spec's name, to list all runs of one spec."""
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
"""Kueue's label naming the LocalQueue that admits the Job."""
ANNOTATION_SPEC_SHA = "trainjob.dev/spec-sha256"
"""SHA-256 of the ConfigMap's spec.yaml: tells which spec a Job and its pods ran."""

RUN_SUFFIX_LENGTH = 5
"""Random characters after the spec name: 27**5 ≈ 14 million ids per name."""
RUN_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
"""Kubernetes' own generateName alphabet: no vowels, so no accidental words."""
# POD_NAME_RESERVE and RUN_ID_MAX_LENGTH live in job.names with check_run_id, the one run-id
# rule that train, local, render and submit share; they are re-exported here.


def config_map_name(run_id: str) -> str:
    """The run's ConfigMap, which holds its spec: ``<run id>-spec``."""
    return f"{run_id}-spec"


def job_name(run_id: str) -> str:
    """The run's Indexed Job: the run id itself, so worker i's hostname is ``<run id>-<i>``."""
    return run_id


def service_name(run_id: str) -> str:
    """The run's headless Service, every pod's DNS subdomain: the run id itself."""
    return run_id


def new_run_id(name: str) -> str:
    """A fresh run id: ``<name>-<5 random characters>``, a DNS label with room for pod names.

    Raises:
        SpecError: when ``name`` is not a DNS label short enough to leave that room.

    Example:
        >>> new_run_id("shapes")                          # doctest: +SKIP
        'shapes-x7k2p'
    """
    suffix = "".join(secrets.choice(RUN_SUFFIX_ALPHABET) for _ in range(RUN_SUFFIX_LENGTH))
    run_id = f"{name}-{suffix}"
    if not is_dns_label(name) or len(run_id) > RUN_ID_MAX_LENGTH:
        raise SpecError(
            f"name={excerpt(name)} cannot start a run id: expected a DNS-1123 label of at most "
            f"{RUN_ID_MAX_LENGTH - RUN_SUFFIX_LENGTH - 1} characters; shorten or fix the "
            "spec's name.")
    return run_id


def render_manifests(spec: Spec, *, run_id: str, image: str | None = None,
                     namespace: str | None = None) -> list[dict[str, Any]]:
    """Build the run's ConfigMap, headless Service and Indexed Job as plain dicts.

    Args:
        spec: the loaded spec; its ``cluster`` section shapes the Job.
        run_id: names the Job, the Service and the run directory (see ``new_run_id``).
        image: container image; overrides ``cluster.image``.
        namespace: the namespace, as the command chose it by the rule of
            ``job.submit.namespace``; None: that rule without a kubeconfig (the spec's
            ``cluster.namespace``, else ``trainjob``).

    Returns:
        ``[ConfigMap, Service, Job]``, in the order ``kubectl apply`` must create them
        (``submit`` has its own, ``job.submit.ownership``).

    Raises:
        SpecError: no image, or an invalid run id.

    Example:
        >>> [d["kind"] for d in render_manifests(spec, run_id="shapes-x7k2p",
        ...                                      image="ghcr.io/me/trainjob:1")]  # doctest: +SKIP
        ['ConfigMap', 'Service', 'Job']
    """
    check_run_id(run_id)
    image = image or spec.cluster.image
    if not image:
        raise missing_image()
    if spec.cluster.models_volume and spec.cluster.models_volume.read_only:
        raise SpecError(
            "cluster.models_volume.read_only=True is invalid: the chief writes the model, "
            "checkpoints and logs there; set read_only: false (or remove it).")
    namespace = resolve_namespace(flag=namespace, spec=spec.cluster.namespace,
                                  context=lambda: None)
    spec_text = pod_spec_yaml(spec, run_id=run_id, image=image, namespace=namespace)
    spec_sha = hashlib.sha256(spec_text.encode("utf-8")).hexdigest()
    return [
        _config_map(spec, run_id=run_id, namespace=namespace, spec_text=spec_text,
                    spec_sha=spec_sha),
        _service(spec, run_id=run_id, namespace=namespace),
        _job(spec, run_id=run_id, namespace=namespace, image=image, spec_sha=spec_sha),
    ]


def missing_image(*, how: str = "pass --image (e.g. --image ghcr.io/you/trainjob:0.1.0)"
                  ) -> SpecError:
    """The one line for a spec without ``cluster.image`` and no image given; ``how`` says how
    to give one (the Makefile's targets say IMAGE=)."""
    return SpecError(f"cluster.image is not set; {how} or set cluster.image in the spec to "
                     "the image you built with `make image`.")


def render_warnings(spec: Spec) -> list[str]:
    """Lines worth telling the user before submitting: choices that lose work or data, and
    what can be told about the pods' ImageNet weights (``job.weights.launch_warnings``).

    Example:
        >>> render_warnings(spec_without_volumes)         # doctest: +SKIP
        ['cluster.models_volume is not set: ...', 'cluster.data_volume is not set: ...']
    """
    lines = []
    if spec.cluster.models_volume is None:
        lines.append(
            f"cluster.models_volume is not set: the model is written to an emptyDir at "
            f"{EMPTYDIR_MODELS_MOUNT} and deleted with the pod; set cluster.models_volume "
            "to a ReadWriteMany PVC (see k8s/pvc-models.yaml) to keep it.")
    if spec.cluster.data_volume is None:
        lines.append(
            "cluster.data_volume is not set: data paths are used as written and must exist "
            "inside the image; set cluster.data_volume to the PVC holding the images.")
    lines += weights.launch_warnings(spec, pod_model=pod_spec_dict(spec, image="")["model"])
    return lines


def to_yaml(docs: list[dict[str, Any]]) -> str:
    """Multi-document YAML, keys in the order rendered, multi-line strings as ``|`` blocks.

    The output is byte-for-byte stable for the same input (golden files rely on it).
    """
    return "".join(
        "---\n" + yaml.dump(doc, Dumper=_ManifestDumper, sort_keys=False,
                            default_flow_style=False, width=1000, allow_unicode=True)
        for doc in docs)


def backoff_limit(*, max_restarts: int, workers: int) -> int:
    """The Job's backoffLimit for ``max_restarts`` group restarts of ``workers`` pods.

    Kubernetes counts failed pods, not group restarts. When one worker is lost, its peers
    give up after ``train.collective_timeout_seconds`` and exit 75 as well, so one group
    restart can cost up to ``workers`` failed pods. ``max_restarts * workers`` therefore
    allows ``max_restarts`` whole-group restarts; failures that hit fewer pods leave more
    room. 0 keeps its meaning: the first failure fails the Job.
    """
    return max_restarts * workers


def pod_failure_policy() -> dict[str, Any]:
    """How the Job treats a failed pod, mapping the exit-code table ``job.errors.EXIT_CODES``.

    Rules apply in order, first match wins:

    1. ``DisruptionTarget`` (preemption, eviction, node drain): Count. A disruption is the
       cluster's doing, never the job's, so it must not fail the Job even if the worker died
       with a permanent-looking code mid-shutdown; but it counts toward backoffLimit, so a
       cluster that keeps preempting the run cannot restart it forever. (``status: "True"``
       is spelled out: the strict 1.31 schema requires it.)
    2. A permanent code (1 run failed, 2 bad input): FailJob at once; a restart would fail the
       same way.
    3. A retryable code (75: lost peer, or preempted after a checkpoint): Count; the group
       restarts and resumes from the checkpoint. Listed although Count is the default, so
       the contract is readable here.

    Any other failure (OOMKilled, a signal) is counted by the default rule.
    """
    return {"rules": [
        {"action": "Count",
         "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob",
         "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In",
                         "values": sorted(PERMANENT_EXIT_CODES)}},
        {"action": "Count",
         "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In",
                         "values": sorted(RETRYABLE_EXIT_CODES)}},
    ]}


def labels(spec: Spec, *, run_id: str, component: str) -> dict[str, str]:
    """The labels on every object of a run (and its pods)."""
    return {
        "app.kubernetes.io/name": "trainjob",
        "app.kubernetes.io/instance": run_id,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "trainjob",
        "app.kubernetes.io/version": __version__,
        LABEL_RUN_ID: run_id,
        LABEL_NAME: spec.name,
    }


def _config_map(spec: Spec, *, run_id: str, namespace: str, spec_text: str,
                spec_sha: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(run_id),
            "namespace": namespace,
            "labels": labels(spec, run_id=run_id, component="spec"),
            "annotations": {ANNOTATION_SPEC_SHA: spec_sha},
        },
        # A run's spec never changes; immutable ConfigMaps also spare the API server a watch.
        "immutable": True,
        "data": {SPEC_FILE_NAME: spec_text},
    }


def _service(spec: Spec, *, run_id: str, namespace: str) -> dict[str, Any]:
    port = spec.cluster.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(run_id),
            "namespace": namespace,
            "labels": labels(spec, run_id=run_id, component="discovery"),
        },
        "spec": {
            # Headless: DNS answers with each pod's own address, <run>-<i>.<run>.
            "clusterIP": "None",
            # Workers resolve each other while starting up, before any is Ready.
            "publishNotReadyAddresses": True,
            "selector": {LABEL_RUN_ID: run_id},
            "ports": [{"name": PORT_NAME, "port": port, "targetPort": port,
                       "protocol": "TCP"}],
        },
    }


def _job(spec: Spec, *, run_id: str, namespace: str, image: str,
         spec_sha: str) -> dict[str, Any]:
    cluster = spec.cluster
    job_labels = labels(spec, run_id=run_id, component="training")
    if cluster.queue:
        job_labels[LABEL_QUEUE] = cluster.queue
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": cluster.workers,
        "parallelism": cluster.workers,
        "backoffLimit": backoff_limit(max_restarts=cluster.max_restarts,
                                      workers=cluster.workers),
        # Never two pods with one index: a replacement waits until the old pod is gone.
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": pod_failure_policy(),
        # The chief (index 0) saves the model; once it succeeds the run is done.
        "successPolicy": {"rules": [{"succeededIndexes": "0"}]},
    }
    if cluster.queue:
        # Kueue's documented pattern: create the Job suspended and let Kueue unsuspend it on
        # admission. Kueue's webhook would suspend it too, but only if the webhook is up;
        # this way no pod starts before admission even if it is not.
        job_spec["suspend"] = True
    if cluster.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = cluster.active_deadline_seconds
    if cluster.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = cluster.ttl_seconds_after_finished
    job_spec["template"] = {"metadata": _pod_metadata(spec, run_id=run_id, spec_sha=spec_sha),
                            "spec": _pod_spec(spec, run_id=run_id, image=image)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(run_id),
            "namespace": namespace,
            "labels": job_labels,
            "annotations": {ANNOTATION_SPEC_SHA: spec_sha},
        },
        "spec": job_spec,
    }


def _pod_metadata(spec: Spec, *, run_id: str, spec_sha: str) -> dict[str, Any]:
    cluster = spec.cluster
    return {
        # The spec's own first: job.spec_cluster refuses any key of ours among them.
        "labels": {**cluster.pod_labels, **labels(spec, run_id=run_id, component="worker")},
        "annotations": {
            **cluster.pod_annotations,
            ANNOTATION_SPEC_SHA: spec_sha,
            # kubectl logs/exec pick this container without -c.
            "kubectl.kubernetes.io/default-container": CONTAINER_NAME,
        },
    }


def _pod_spec(spec: Spec, *, run_id: str, image: str) -> dict[str, Any]:
    cluster = spec.cluster
    pod: dict[str, Any] = {
        # Pod hostname <run>-<i> + this subdomain = the DNS name peers dial.
        "subdomain": service_name(run_id),
        # Required by podFailurePolicy; restarts are the Job's decision, per pod.
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        # The job never calls the Kubernetes API: no token in the pod.
        "automountServiceAccountToken": False,
        # No <SERVICE>_PORT variables from every Service in the namespace.
        "enableServiceLinks": False,
        # The restricted profile, shared with the pull pod (job.submit.pods).
        "securityContext": pod_security_context(),
        "containers": [_container(spec, run_id=run_id, image=image)],
        "volumes": _volumes(spec, run_id=run_id),
    }
    if cluster.service_account:
        pod["serviceAccountName"] = cluster.service_account
    if cluster.node_selector:
        pod["nodeSelector"] = dict(cluster.node_selector)
    if cluster.tolerations:
        pod["tolerations"] = [dict(t) for t in cluster.tolerations]
    if cluster.affinity:
        pod["affinity"] = copy.deepcopy(dict(cluster.affinity))
    if cluster.priority_class:
        pod["priorityClassName"] = cluster.priority_class
    return pod


def _container(spec: Spec, *, run_id: str, image: str) -> dict[str, Any]:
    cluster = spec.cluster
    quantities = {"cpu": cluster.cpu, "memory": cluster.memory}
    limits = dict(quantities)
    if cluster.gpus_per_worker > 0:
        # Extended resources take the limit as the request. Quantities are strings: the
        # API takes either, but the kubernetes client rejects numbers.
        limits["nvidia.com/gpu"] = str(cluster.gpus_per_worker)
    return {
        "name": CONTAINER_NAME,
        "image": image,
        # command as well as args, so any image with trainjob installed works, whatever its
        # ENTRYPOINT.
        "command": ["trainjob"],
        "args": ["train", POD_SPEC_PATH, "--run-id", run_id],
        "env": _env(spec, run_id=run_id),
        "ports": [{"name": PORT_NAME, "containerPort": cluster.port, "protocol": "TCP"}],
        # Requests = limits: Guaranteed QoS, so a busy node evicts someone else first.
        "resources": {"requests": dict(quantities), "limits": limits},
        "volumeMounts": _volume_mounts(spec),
        # When the log is gone, the pod status still holds the last lines of a failure.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }


def _env(spec: Spec, *, run_id: str) -> list[dict[str, str]]:
    dns = JobDns(job_name=job_name(run_id), service=service_name(run_id),
                 port=spec.cluster.port)
    values = {
        **indexed_job_env(num_workers=spec.cluster.workers, run_id=run_id, dns=dns),
        # The root filesystem is read-only: every tool's home and cache goes to /tmp.
        "HOME": TMP_MOUNT,
        "KERAS_HOME": f"{TMP_MOUNT}/.keras",
        "MPLCONFIGDIR": f"{TMP_MOUNT}/.matplotlib",
        # Log lines reach `kubectl logs` (and the submitter) as they are printed.
        "PYTHONUNBUFFERED": "1",
        # Hide TensorFlow's C++ INFO chatter; warnings and errors still show.
        "TF_CPP_MIN_LOG_LEVEL": "1",
    }
    return [{"name": k, "value": v} for k, v in values.items()]


def _volume_mounts(spec: Spec) -> list[dict[str, Any]]:
    cluster = spec.cluster
    mounts: list[dict[str, Any]] = [
        {"name": "spec", "mountPath": SPEC_MOUNT_DIR, "readOnly": True},
        {"name": "models", "mountPath": cluster.models_volume.mount
         if cluster.models_volume else EMPTYDIR_MODELS_MOUNT},
    ]
    if cluster.data_volume:
        mounts.append({"name": "data", "mountPath": cluster.data_volume.mount,
                       "readOnly": cluster.data_volume.read_only})
    mounts += [{"name": "tmp", "mountPath": TMP_MOUNT},
               {"name": "dshm", "mountPath": SHM_MOUNT}]
    return mounts


def _volumes(spec: Spec, *, run_id: str) -> list[dict[str, Any]]:
    cluster = spec.cluster
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {
            "name": config_map_name(run_id),
            "items": [{"key": SPEC_FILE_NAME, "path": SPEC_FILE_NAME}]}},
    ]
    if cluster.models_volume:
        volumes.append({"name": "models", "persistentVolumeClaim": {
            "claimName": cluster.models_volume.claim}})
    else:
        volumes.append({"name": "models", "emptyDir": {}})
    if cluster.data_volume:
        volumes.append({"name": "data", "persistentVolumeClaim": {
            "claimName": cluster.data_volume.claim,
            "readOnly": cluster.data_volume.read_only}})
    # Sized (cluster.tmp_size, shm_size): a full /tmp evicts this pod, not its neighbours;
    # /dev/shm counts against the memory limit, which also bounds it.
    volumes += [{"name": "tmp", "emptyDir": _sized({}, cluster.tmp_size)},
                {"name": "dshm", "emptyDir": _sized({"medium": "Memory"}, cluster.shm_size)}]
    return volumes


def _sized(empty_dir: dict[str, Any], size: str | None) -> dict[str, Any]:
    return {**empty_dir, "sizeLimit": size} if size is not None else empty_dir


class _ManifestDumper(yaml.SafeDumper):
    """Safe YAML with ``|`` blocks for multi-line strings and no anchors or aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ManifestDumper.add_representer(str, _represent_str)

__all__ = [
    "EMPTYDIR_MODELS_MOUNT", "POD_NAME_RESERVE", "RUN_ID_MAX_LENGTH", "RUN_USER_ID",
    "backoff_limit", "check_run_id", "config_map_name", "job_name", "labels", "missing_image",
    "new_run_id", "pod_failure_policy", "service_name", "pod_spec_dict", "pod_spec_yaml",
    "render_manifests", "render_warnings", "to_yaml",
]
