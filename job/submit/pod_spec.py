"""The spec as a run's pods read it: paths rewritten for the pods' volumes.

Owns: ``pod_spec_dict`` and ``pod_spec_yaml``, the text of ``spec.yaml`` in a run's ConfigMap
(``job.submit.manifests`` renders the ConfigMap around it), and where a path of the laptop's
spec lands inside a pod. Pure: same input, same output.
Never touches: the ``kubernetes`` package, the network, files, TensorFlow.

The rules (the README's "Where the pod looks for your data" says them for users):

- ``output.dir`` becomes ``cluster.models_volume.mount``, unless it already lies under that
  mount. Without a models volume it becomes ``/models`` on an ``emptyDir``: the run works but
  the model is deleted with the pod.
- Data paths (``data.train_dir``, ``val_dir``, ``test_dir``), a ``model.weights`` file and
  ``model.weights_dir`` resolve against ``cluster.data_volume.mount`` instead of the spec
  file's folder. The mount acts as a root: leading ``..`` cannot climb out of it, as ``/..``
  is ``/``. A path already under a pod mount is kept as written. Without a data volume every
  path is kept as is.
- ``data.cache_dir`` is kept if it lies under a writable volume, else reset to null.
- ``model.allow_download: auto`` becomes false: the pods never download ImageNet weights
  unless the spec says true.

Example:
    >>> pod_spec_dict(spec, image="ghcr.io/me/trainjob:1")["output"]["dir"]  # doctest: +SKIP
    '/models'
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from job import __version__
from job.spec import Spec

EMPTYDIR_MODELS_MOUNT = "/models"
"""output.dir when cluster.models_volume is null: an emptyDir, deleted with the pod."""


def pod_spec_dict(spec: Spec, *, image: str, namespace: str | None = None) -> dict[str, Any]:
    """The spec as the pod must see it: ``spec.to_dict()`` with paths rewritten for the volumes.

    The rules are in the module docstring. ``image`` and ``namespace`` record the values the
    run was rendered with.
    """
    cluster = spec.cluster
    data_mount = cluster.data_volume.mount if cluster.data_volume else None
    models_mount = cluster.models_volume.mount if cluster.models_volume \
        else EMPTYDIR_MODELS_MOUNT
    mounts = [m for m in (data_mount, models_mount) if m]
    writable = [models_mount]
    if cluster.data_volume and not cluster.data_volume.read_only:
        writable.append(data_mount)

    def data_path(path: Path | None) -> str | None:
        if path is None:
            return None
        if data_mount is None or _under_any(path, mounts):
            return str(path)
        return str(_rebase(path, base_dir=spec.base_dir, mount=data_mount))

    out = spec.to_dict()
    out["data"]["train_dir"] = data_path(spec.data.train_dir)
    out["data"]["val_dir"] = data_path(spec.data.val_dir)
    out["data"]["test_dir"] = data_path(spec.data.test_dir)
    cache_dir = spec.data.cache_dir
    out["data"]["cache_dir"] = str(cache_dir) \
        if cache_dir is not None and _under_any(cache_dir, writable) else None
    weights = spec.model.weights
    out["model"]["weights"] = data_path(weights) if isinstance(weights, Path) else weights
    out["model"]["weights_dir"] = data_path(spec.model.weights_dir)
    # auto means "not in the pods": N workers would each fetch the same file at once.
    out["model"]["allow_download"] = spec.model.allow_download is True
    out["output"]["dir"] = str(spec.output.dir) \
        if _under_any(spec.output.dir, [models_mount]) else models_mount
    out["cluster"]["image"] = image
    out["cluster"]["namespace"] = namespace or cluster.namespace
    return out


def pod_spec_yaml(spec: Spec, *, run_id: str, image: str, namespace: str | None = None) -> str:
    """The text of ``spec.yaml`` in the run's ConfigMap."""
    body = yaml.safe_dump(pod_spec_dict(spec, image=image, namespace=namespace),
                          sort_keys=False, default_flow_style=False, width=1000)
    return (f"# Spec of run {run_id}, rendered by trainjob {__version__} for the pod:\n"
            "# paths point into the pod's volumes.\n" + body)


def _under_any(path: Path | str, roots: list[str]) -> bool:
    pure = PurePosixPath(os.path.normpath(str(path)))
    return any(pure == PurePosixPath(root) or PurePosixPath(root) in pure.parents
               for root in roots)


def _rebase(path: Path, *, base_dir: Path, mount: str) -> PurePosixPath:
    """``path`` relative to ``base_dir``, re-rooted at ``mount``; '..' stops at the mount."""
    relative = PurePosixPath(os.path.relpath(path, base_dir))
    parts = list(relative.parts)
    while parts and parts[0] == "..":
        parts.pop(0)
    return PurePosixPath(mount, *[p for p in parts if p != "."])
