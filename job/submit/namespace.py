"""The one rule that picks the namespace of every cluster command.

Owns: ``resolve_namespace``, which render, submit, status, logs, cancel, list and pull all
ask, so that a run is looked for where it was created, and ``DEFAULT_NAMESPACE``. Pure: the
kubeconfig is read by the caller, and only when the rule gets that far.
Never touches: the ``kubernetes`` package, files, the network, TensorFlow.

The rule, first answer wins:

1. ``-n/--namespace``;
2. the spec's ``cluster.namespace``, for the commands that read a spec (render, submit);
3. the namespace of the kubeconfig context (``--context``, else the current one), when the
   context names one; in a pod, the pod's own namespace;
4. ``trainjob``, the namespace ``kubectl apply -k k8s/`` creates.

So a user who follows the README (``kubectl apply -k k8s/``, a context without a namespace,
the example spec's ``cluster.namespace: trainjob``) finds the run they just submitted with a
plain ``trainjob list``; one whose context names a namespace works there, like kubectl.

Example:
    >>> resolve_namespace(flag=None, spec=None, context=lambda: None)
    'trainjob'
    >>> resolve_namespace(flag=None, spec="ml", context=lambda: "team-a")
    'ml'
"""

from __future__ import annotations

from collections.abc import Callable

DEFAULT_NAMESPACE = "trainjob"
"""The kustomize base's namespace (k8s/kustomization.yaml; a test holds them equal): where
the Role, the volumes and so the runs are, unless a flag, the spec or the context says."""


def resolve_namespace(*, flag: str | None, spec: str | None = None,
                      context: Callable[[], str | None]) -> str:
    """The namespace a command works in, by the rule in the module docstring.

    Args:
        flag: ``-n/--namespace``; None when not given.
        spec: the spec's ``cluster.namespace``; None when the spec leaves it out, or for a
            command without a spec.
        context: returns the kubeconfig context's namespace, or None when it names none;
            called only when neither the flag nor the spec decides.
    """
    return flag or spec or context() or DEFAULT_NAMESPACE
