"""The order in which ``submit`` creates a run's objects, and the Job owning the others.

Owns: ``creation_plan``, the rendered manifests made ready to create in order (the Job first,
suspended), ``owned_by``, a ConfigMap or Service given an ownerReference to the created Job,
and ``RESUME``, the patch that lets the Job start its pods. Pure.
Never touches: the network (``job.submit.runs`` sends them), rendering
(``job.submit.manifests``), TensorFlow.

Why this order. The ConfigMap (the pods' spec) and the headless Service (their DNS) belong to
the Job: with ownerReferences, Kubernetes' garbage collector deletes them with it, whether
the Job goes by its TTL, by ``kubectl delete job`` or by ``trainjob cancel``. An
ownerReference needs the owner's uid, which exists only once the Job is created, so the Job
comes first. Created running, its pods could start before their spec exists: the kubelet
retries a missing ConfigMap volume (the pod waits in ContainerCreating, up to two minutes
between tries), and if the ConfigMap were never created (refused, Ctrl-C) the pods would wait
until the Job is deleted. So the Job is created suspended, which starts no pod at all; then
the ConfigMap and the Service, owned by it; then it is resumed (``patch`` on jobs, the one
verb this order costs). A Job that waits for a Kueue queue (``cluster.queue``) was rendered
suspended and stays so: Kueue resumes it on admission.

``blockOwnerDeletion`` is left unset: where the OwnerReferencesPermissionEnforcement admission
plugin runs, it would need ``update`` on ``jobs/finalizers``, and nothing needs the Job's
deletion to wait for its ConfigMap and Service.

``render`` prints the manifests without owners (a uid cannot be known before creation), in
the order ConfigMap, Service, Job, which ``kubectl apply -f -`` follows, so those pods never
start without their spec either; such a run's ConfigMap and Service outlive its Job.

Example:
    >>> plan = creation_plan(render_manifests(spec, run_id="shapes-x7k2p"))  # doctest: +SKIP
    >>> [(d["kind"], d["spec"].get("suspend")) for d in plan[:1]]           # doctest: +SKIP
    [('Job', True)]
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

RESUME: Mapping[str, Any] = {"spec": {"suspend": False}}
"""The merge patch that resumes a Job created suspended: the Job controller starts its pods."""


def creation_plan(docs: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """The manifests in creation order, the Job first and suspended, and whether to resume it.

    Returns:
        (the Job, then the other documents in their rendered order; True unless the Job was
        rendered suspended, for Kueue, which resumes it itself).
    """
    job = next(doc for doc in docs if doc["kind"] == "Job")
    resume = not job["spec"].get("suspend")
    job = copy.deepcopy(dict(job))
    job["spec"]["suspend"] = True
    return [job, *(copy.deepcopy(dict(d)) for d in docs if d["kind"] != "Job")], resume


def owned_by(doc: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` with an ownerReference to ``job``, as the API server returned it (with its uid).

    Example:
        >>> owned_by({"kind": "Service", "metadata": {"name": "r"}},
        ...          {"apiVersion": "batch/v1", "kind": "Job",
        ...           "metadata": {"name": "r", "uid": "0b7e"}})["metadata"]["ownerReferences"]
        [{'apiVersion': 'batch/v1', 'kind': 'Job', 'name': 'r', 'uid': '0b7e'}]
    """
    owned = copy.deepcopy(dict(doc))
    meta = job["metadata"]
    owned["metadata"]["ownerReferences"] = [{
        "apiVersion": job.get("apiVersion", "batch/v1"), "kind": job.get("kind", "Job"),
        "name": meta["name"], "uid": meta["uid"]}]
    return owned
