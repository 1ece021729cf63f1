"""Where a cluster command points: the cluster, the namespace, and the run it opens.

Owns: ``Target``, the cluster and namespace a command was pointed at (``--context``, ``-n``),
connected, with the namespace chosen by the one rule (``job.submit.namespace``); ``RunRef``,
the run every command opens: its cluster, its namespace, the names of its objects, deleting
them, and the commands to paste for it (with ``-n`` only where the rule would not find it).
Never touches: TensorFlow, the ``kubernetes`` package (``job.submit.kube`` is the door), the
flows of the commands (``job.submit.runs``, ``job.submit.pull``).

Example:
    >>> run = Target(namespace="ml").run("shapes-x7k2p")     # doctest: +SKIP
    >>> run.hint("logs", "-f")                               # doctest: +SKIP
    'trainjob logs shapes-x7k2p -n ml -f'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from job.errors import ClusterError
from job.submit import kube as kube_module
from job.submit import manifests
from job.submit.kube import Kube, NotFound
from job.submit.namespace import resolve_namespace


@dataclass(frozen=True)
class Target:
    """The cluster and namespace a command talks to, as the user chose them (--context, -n)."""

    namespace: str | None = None
    """-n; None: the namespace rule decides (``job.submit.namespace``)."""
    context: str | None = None
    """The kubeconfig context; None: the current one."""
    kube: Kube | None = None
    """A connected client; None: connect from the kubeconfig (tests pass their own)."""

    def connect(self, *, spec_namespace: str | None = None) -> tuple[Kube, str]:
        """The cluster (from the kubeconfig unless given) and the namespace, by the rule.

        Args:
            spec_namespace: the spec's ``cluster.namespace``, for the commands with a spec.
        """
        kube = self.kube or kube_module.connect(context=self.context)
        namespace = resolve_namespace(flag=self.namespace, spec=spec_namespace,
                                      context=lambda: kube.default_namespace)
        return kube, namespace

    def run(self, run_id: str, *, spec_namespace: str | None = None) -> RunRef:
        """The run ``run_id`` on this cluster, connected."""
        kube, namespace = self.connect(spec_namespace=spec_namespace)
        return RunRef(kube, namespace, run_id, self.context)


@dataclass(frozen=True)
class RunRef:
    """One run on one cluster: where it is, and how to name it in a ready-to-paste command."""

    kube: Kube
    namespace: str
    run_id: str
    context: str | None = None
    """The kubeconfig context the user chose, repeated in hints; None: the current one."""

    @property
    def config_map(self) -> str:
        """The name of the ConfigMap that holds the run's spec, as the manifests name it."""
        return manifests.config_map_name(self.run_id)

    @property
    def selector(self) -> str:
        """The label selector of the run's pods and Job."""
        return f"{manifests.LABEL_RUN_ID}={self.run_id}"

    def hint(self, command: str, extra: str = "") -> str:
        """A command for this run, with -n only where the namespace rule would not find it
        without (and --context when the user chose one)."""
        found = resolve_namespace(flag=None, context=lambda: self.kube.default_namespace)
        flags = "" if self.namespace == found else f" -n {self.namespace}"
        flags += f" --context {self.context}" if self.context else ""
        return f"trainjob {command} {self.run_id}{flags}" + (f" {extra}" if extra else "")

    def job(self) -> dict[str, Any]:
        """The run's Job. Raises ClusterError when there is no such run."""
        try:
            return self.kube.get(self.namespace, "Job", manifests.job_name(self.run_id))
        except NotFound:
            raise self.missing() from None

    def missing(self) -> ClusterError:
        """The one line for a run that is not there."""
        return ClusterError(f"no run named {self.run_id!r} in namespace {self.namespace!r}; "
                            "`trainjob list` shows the runs there (`trainjob list -A`, those "
                            "of every namespace).")

    def objects(self) -> list[dict[str, Any]]:
        """The names of the run's objects, in deletion order: the Job (and its pods) first.

        The Job owns the Service and the ConfigMap (``job.submit.ownership``), so deleting it
        deletes them too; they are deleted by name as well, for runs whose objects were
        created without owners (``render`` piped to ``kubectl apply``).
        """
        return [{"kind": "Job", "metadata": {"name": manifests.job_name(self.run_id)}},
                {"kind": "Service", "metadata": {"name": manifests.service_name(self.run_id)}},
                {"kind": "ConfigMap", "metadata": {"name": self.config_map}}]

    def delete(self, docs: Iterable[Mapping[str, Any]], *,
               propagation: str) -> tuple[list[str], dict[str, ClusterError]]:
        """Delete each object, skipping those already gone.

        Returns:
            The objects deleted ('Job name'), and those that resisted with why.
        """
        deleted: list[str] = []
        refused: dict[str, ClusterError] = {}
        for doc in docs:
            kind, name = doc["kind"], doc["metadata"]["name"]
            try:
                self.kube.delete(self.namespace, kind, name, propagation=propagation)
                deleted.append(f"{kind} {name}")
            except NotFound:
                pass
            except ClusterError as error:
                refused[f"{kind} {name}"] = error
        return deleted, refused
