"""``--set key=value``: changing a spec's keys from the command line, and "did you mean".

Owns: parsing ``KEY=VALUE`` (the value read as YAML, in the spec's own dialect, so
``--set data.image_size=[48,48]`` is a list and ``--set train.mixed_precision=false``
a boolean), placing it into the parsed spec before it is checked (so an override is
checked exactly like the file), and suggesting the key a user meant, for ``--set`` and
for typos in the file alike (``epoch`` -> ``train.epochs``).
Never touches: what a key means or accepts (``job.spec``), reading files.

Example:
    >>> apply({"train": {"epochs": 3}}, ["train.epochs=5", "model.dropout=0.1"],
    ...       known=("train.epochs", "model.dropout"))
    {'train': {'epochs': 5}, 'model': {'dropout': 0.1}}
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from job.errors import SpecError
from job.names import excerpt


def apply(data: Any, overrides: Sequence[str], *, known: Iterable[str]) -> Any:
    """``data`` (a parsed spec) with every ``KEY=VALUE`` of ``overrides`` set, in order.

    Raises:
        SpecError: an override without ``=``, an unknown key (with the nearest known
            one), a value that is not YAML, or a key under a value that is not a mapping.
    """
    if not overrides:
        return data
    from job import spec_yaml

    known = tuple(known)
    result = copy.deepcopy(data) if isinstance(data, dict) else {}
    for override in overrides:
        key, equals, text = override.partition("=")
        key = key.strip()
        if not equals or not key:
            raise SpecError(f"--set {excerpt(override)}: expected KEY=VALUE, e.g. "
                            "--set train.epochs=2")
        if not _is_known(key, known):
            raise SpecError(f"--set {excerpt(override)}: unknown key {excerpt(key)}"
                            f"{did_you_mean(key, known)}")
        value = spec_yaml.parse(text, source=f"--set {key}")
        _place(result, key.split("."), value, override=override)
    return result


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """``"; did you mean 'train.epochs'?"`` for an unknown ``key``, or ``""``.

    Compares the whole dotted key, then its last part with the last part of every known
    key, so a key at the wrong level (``epoch`` at the top) finds its home.

    Example:
        >>> did_you_mean("epoch", ["train.epochs", "data.image_size"])
        "; did you mean 'train.epochs'?"
    """
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if not close:
        leaves: dict[str, str] = {}
        for candidate in known:
            leaves.setdefault(candidate.rsplit(".", 1)[-1], candidate)
        leaf = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=1,
                                         cutoff=0.75)
        close = [leaves[leaf[0]]] if leaf else []
    return f"; did you mean {close[0]!r}?" if close else ""


def _is_known(key: str, known: tuple[str, ...]) -> bool:
    """A key of the schema, a section of it, or a key inside a free-form mapping of it
    (``cluster.node_selector.gpu``: the spec's own checks judge what lies below)."""
    if key in known or any(k.startswith(key + ".") for k in known):
        return True
    leaves = [k for k in known if not any(other.startswith(k + ".") for other in known)]
    return any(key.startswith(leaf + ".") for leaf in leaves)


def _place(data: dict, parts: list[str], value: Any, *, override: str) -> None:
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[:depth + 1])
            raise SpecError(f"--set {excerpt(override)}: {where} is "
                            f"{excerpt(child)} in the spec, not a mapping of keys")
        node = child
    node[parts[-1]] = value
