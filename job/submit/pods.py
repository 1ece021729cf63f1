"""The pods trainjob starts: the security profile they share, and the pull pod.

Owns: the restricted security profile every pod of ours meets (``pod_security_context``,
``container_security_context``: non-root uid/gid 1000, no privilege escalation, no
capabilities, RuntimeDefault seccomp, a read-only root filesystem), which the training pods
(``job.submit.manifests``) and the pull pod both use; and rendering the pull pod
(``render_pull_pod``), a short-lived pod that mounts the models claim read-only so that
``trainjob pull`` can stream the run directory out of it with ``tar``. Everything here is
pure: same input, same output.
Never touches: the ``kubernetes`` package, the network, files, TensorFlow.

Example:
    >>> pod = render_pull_pod(PullPod(
    ...     name="shapes-x7k2p-pull-b4k9z", run_id="shapes-x7k2p", claim="trainjob-models",
    ...     mount="/models", image="ghcr.io/me/trainjob:1", lifetime_seconds=3600))
    >>> pod["spec"]["containers"][0]["command"]
    ['sleep', '3600']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from job import __version__

RUN_USER_ID = 1000
"""uid/gid our pods run as: the image's non-root user, and the group owning the volumes."""
PULL_CONTAINER_NAME = "pull"
"""The pull pod's one container, named in its exec requests."""
PULL_POD_SUFFIX = "-pull-"
"""The pull pod's name is ``<run id>-pull-<5 characters>``: 52 + 11 fits a 63-character label."""
LABEL_PULL_OF = "trainjob.dev/pull-of"
"""On a pull pod: the run it pulls. Not ``trainjob.dev/run-id``, so that a run's commands
(status, logs, submit's watch) never count it as one of the run's workers."""
LABEL_PULL_POD = "trainjob.dev/pull-pod"
"""On a pull pod: its own name, so a watch by label selector sees that pod alone."""
PULL_GRACE_SECONDS = 1
"""Seconds between SIGTERM and SIGKILL on delete: ``sleep`` as PID 1 ignores SIGTERM, and
nothing in the pod is worth waiting for."""
PULL_RESOURCES = {"requests": {"cpu": "100m", "memory": "64Mi"},
                  "limits": {"cpu": "1", "memory": "256Mi"}}
"""tar and du need little: enough to fit any namespace's quota, as the volume shell asks."""


def pod_security_context() -> dict[str, Any]:
    """The pod-level half of the restricted profile: uid/gid 1000 and RuntimeDefault seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_USER_ID,
        "runAsGroup": RUN_USER_ID,
        "fsGroup": RUN_USER_ID,
        # Chown a big volume once, not at every pod start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """The container-level half: no privilege escalation, no capabilities, read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


@dataclass(frozen=True)
class PullPod:
    """What a pull pod is made of."""

    name: str
    """The pod's name (see ``pull_pod_name``)."""
    run_id: str
    """The run being pulled, for the ``LABEL_PULL_OF`` label."""
    claim: str
    """The models PersistentVolumeClaim."""
    mount: str
    """Where the pod mounts it: the run's own models mount, so paths read as in the run."""
    image: str
    """Any image with ``tar``, ``du`` and ``sleep``; the run's own image has them."""
    lifetime_seconds: int
    """How long the pod may live at most."""
    service_account: str | None = None
    """The run's ServiceAccount, whose imagePullSecrets may be needed for its image."""


def render_pull_pod(pod: PullPod) -> dict[str, Any]:
    """The pull pod: the models claim mounted read-only, and ``sleep`` to exec into.

    It ends by itself after ``lifetime_seconds`` twice over, in case the machine that started
    it vanishes: ``sleep`` exits (the pod completes and frees its resources), and
    ``activeDeadlineSeconds`` stops it even if the container hangs.
    """
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": pod.lifetime_seconds,
        "terminationGracePeriodSeconds": PULL_GRACE_SECONDS,
        # It never calls the Kubernetes API: no token in the pod.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [_pull_container(pod)],
        "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": pod.claim,
                                                                 "readOnly": True}}],
    }
    if pod.service_account:
        pod_spec["serviceAccountName"] = pod.service_account
    labels = {"app.kubernetes.io/name": "trainjob", "app.kubernetes.io/component": "pull",
              "app.kubernetes.io/managed-by": "trainjob",
              "app.kubernetes.io/version": __version__,
              LABEL_PULL_OF: pod.run_id, LABEL_PULL_POD: pod.name}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "labels": labels}, "spec": pod_spec}


def _pull_container(pod: PullPod) -> dict[str, Any]:
    return {
        "name": PULL_CONTAINER_NAME,
        "image": pod.image,
        # command replaces the image's ENTRYPOINT (trainjob in ours).
        "command": ["sleep", str(pod.lifetime_seconds)],
        "resources": {k: dict(v) for k, v in PULL_RESOURCES.items()},
        "volumeMounts": [{"name": "models", "mountPath": pod.mount, "readOnly": True}],
        "securityContext": container_security_context(),
    }


def pull_pod_name(run_id: str, *, suffix: str) -> str:
    """``<run id>-pull-<suffix>``: the pull pod of one pull of ``run_id``."""
    return f"{run_id}{PULL_POD_SUFFIX}{suffix}"
