"""What a run is: the spec keys and the files that decide its trained weights.

Owns: which spec keys count (every key but the cosmetic and placement ones below), the
fingerprint of a run (those keys plus a digest of each split's file listing), and the
comparison that tells a rerun which keys changed.
Never touches: files (``job.run_dir`` stores the fingerprint, ``job.data`` digests the
listings), TensorFlow.

A rerun with the same run id may resume or skip a run only if it would train the same
model: the same data, image size, model, optimizer, seed... ``train.epochs`` is the one
key a rerun may raise: training then continues from the last checkpoint.

Example:
    >>> old = make({"train": {"epochs": 2, "learning_rate": 0.01}}, listings={})
    >>> new = make({"train": {"epochs": 2, "learning_rate": 0.02}}, listings={})
    >>> [str(d) for d in differences(old, new)]
    ['train.learning_rate was 0.01, now 0.02']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

VERSION = 1
"""Bump when what a fingerprint covers changes; an older one is then compared key by key."""

EPOCHS_KEY = "train.epochs"
"""The key a rerun may raise: the run continues where it stopped."""

IGNORED_KEYS = (
    "name",                              # the run id is the run's name; it is the folder
    "data.train_dir", "data.val_dir",    # where the files are: the listings say what they are,
    "data.test_dir",                     # so data moved with its dates (cp -a) is the same run
    "data.cache", "data.cache_dir", "data.cache_memory_mb",   # the same pixels either way
    "data.decode_workers",
    "train.log_every_steps", "train.collective_timeout_seconds",   # output and waiting only
    "train.steps_per_call",              # the same steps, grouped differently per call
    "model.weights_dir", "model.allow_download",   # where ImageNet weights are found
    "output.dir", "output.checkpoint_every_steps",  # where the run goes, how often it saves
    "output.keep_checkpoints",
    "output.formats", "output.export_check",   # which files hold the weights, how checked
    "cluster",                           # where it runs; the data order is the workers' own
)
"""Dotted keys (or whole sections) that never change the trained weights."""

LEFT_OUT_WHEN_NULL = ("model.fine_tune",)
"""Sections that are off when null and were added after fingerprints were first written:
null leaves them out, so a run recorded before the key existed is still the same run."""

MAX_NAMED = 3
"""Differences named in one line; the rest are counted."""


@dataclass(frozen=True)
class Difference:
    """One key whose value differs between the recorded run and this rerun."""

    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        if self.key.startswith("files of "):
            before, after = _describe_listing(self.old), _describe_listing(self.new)
            if before == after:
                return f"{self.key} changed ({before} either way; a name, size or date differs)"
            return f"{self.key} changed ({before} before, {after} now)"
        return f"{self.key} was {_short(self.old)}, now {_short(self.new)}"


def make(spec_dict: Mapping[str, Any], *, listings: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint of a run: its weight-deciding spec keys and its file listings.

    Args:
        spec_dict: the resolved spec as ``Spec.to_dict()`` gives it.
        listings: split name -> ``{"files": count, "sha256": digest}`` (``job.data``), or
            None for a split the run does not have.
    """
    return {"version": VERSION, "spec": _flatten(spec_dict),
            "data": {name: (dict(value) if value is not None else None)
                     for name, value in sorted(listings.items())}}


def differences(old: Mapping[str, Any], new: Mapping[str, Any], *,
                ignore: tuple[str, ...] = ()) -> list[Difference]:
    """Every key whose value differs, spec keys first (sorted), then the file listings."""
    found = []
    old_spec, new_spec = old.get("spec", {}), new.get("spec", {})
    for key in sorted(set(old_spec) | set(new_spec)):
        if key in ignore:
            continue
        before, after = old_spec.get(key, "(unset)"), new_spec.get(key, "(unset)")
        if not _same(before, after):
            found.append(Difference(key, before, after))
    old_data, new_data = old.get("data", {}), new.get("data", {})
    for name in sorted(set(old_data) | set(new_data)):
        if old_data.get(name) != new_data.get(name):
            found.append(Difference(f"files of {name}", old_data.get(name),
                                    new_data.get(name)))
    return found


def describe(found: list[Difference]) -> str:
    """``found`` as one short clause: the first few differences, the rest counted."""
    named = "; ".join(str(d) for d in found[:MAX_NAMED])
    more = len(found) - MAX_NAMED
    return named + (f"; and {more} more" if more > 0 else "")


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, item in value.items():
        dotted = f"{prefix}{key}"
        if dotted in IGNORED_KEYS or (item is None and dotted in LEFT_OUT_WHEN_NULL):
            continue
        if isinstance(item, Mapping) and item and not dotted.endswith("node_selector"):
            flat.update(_flatten(item, f"{dotted}."))
        else:
            flat[dotted] = list(item) if isinstance(item, tuple) else item
    return flat


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return a == b


def _describe_listing(listing: Any) -> str:
    if listing is None:
        return "no such split"
    return f"{listing.get('files', '?')} files"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
