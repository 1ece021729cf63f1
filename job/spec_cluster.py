"""The cluster section's values that Kubernetes has rules for, checked by those rules.

Owns: node selectors, tolerations, pod labels and annotations (keys by Kubernetes' rules, none
that trainjob or the Job controller set themselves), affinity (every key and shape by
Kubernetes' schema, ``AFFINITY``; the API server checks the values again, strictly), and
sizes (quantities, ``/dev/shm`` below the memory limit). Each reader takes the spec's
``Reader`` and fails with the key's full path, the value, what was expected and how to fix
it. ``job.spec`` owns the keys, their defaults and when each check runs.
Never touches: files, TensorFlow, kubernetes.

Example:
    >>> quantity_bytes("1Gi"), quantity_bytes("500M")
    (1073741824.0, 500000000.0)
"""

from __future__ import annotations

import re
from typing import Any

from job import names
from job.spec_yaml import Reader

TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
TOLERATION_FIELDS = ("key", "operator", "value", "effect", "tolerationSeconds")

QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?")
"""A Kubernetes quantity as a spec writes one: digits, an optional fraction and suffix."""
_SUFFIXES = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
             "E": 1e18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
             "Ei": 2**60}

RESERVED_PREFIXES = ("trainjob.dev/", "batch.kubernetes.io/")
"""Label and annotation keys trainjob and the Job controller set on every pod of a run."""
RESERVED_POD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                       "app.kubernetes.io/component", "app.kubernetes.io/managed-by",
                       "app.kubernetes.io/version", "controller-uid", "job-name")
"""Pod labels trainjob (``job.submit.manifests.labels``) or the Job controller set; the
commands find a run's pods by them, so a spec may not set them (a test holds the lists true)."""
RESERVED_POD_ANNOTATIONS = ("kubectl.kubernetes.io/default-container",)
"""Pod annotations trainjob sets besides its own prefix."""
ANNOTATIONS_MAX_BYTES = 256 * 1024
"""Kubernetes' limit on the total size of an object's annotation keys and values."""

# Kubernetes' Affinity schema (core/v1), keys and shapes: a dict is a mapping with those keys,
# a one-item list a list of that, and the strings below a leaf.
_TEXT, _TEXTS, _TEXT_MAP, _WEIGHT = "a string", "a list of strings", "a mapping of strings", \
    "an integer from 1 to 100"
_REQUIREMENT = {"key": _TEXT, "operator": _TEXT, "values": _TEXTS}
_LABEL_SELECTOR = {"matchLabels": _TEXT_MAP, "matchExpressions": [_REQUIREMENT]}
_NODE_TERM = {"matchExpressions": [_REQUIREMENT], "matchFields": [_REQUIREMENT]}
_POD_TERM = {"labelSelector": _LABEL_SELECTOR, "namespaceSelector": _LABEL_SELECTOR,
             "namespaces": _TEXTS, "topologyKey": _TEXT, "matchLabelKeys": _TEXTS,
             "mismatchLabelKeys": _TEXTS}
_POD_AFFINITY = {
    "requiredDuringSchedulingIgnoredDuringExecution": [_POD_TERM],
    "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": _WEIGHT,
                                                         "podAffinityTerm": _POD_TERM}]}
AFFINITY: dict[str, Any] = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [_NODE_TERM]},
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": _WEIGHT,
                                                             "preference": _NODE_TERM}]},
    "podAffinity": _POD_AFFINITY,
    "podAntiAffinity": _POD_AFFINITY,
}
"""PodSpec.affinity's keys and shapes, as Kubernetes 1.31 defines them."""


def quantity_bytes(text: str) -> float:
    """A quantity such as ``16Gi`` in bytes (or cores, for a CPU quantity)."""
    match = QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    suffix = match.group(2) or ""
    return float(text[:len(text) - len(suffix)]) * _SUFFIXES[suffix]


def size(r: Reader, d: dict, key: str, *, default: str | None) -> str | None:
    """A size limit: a quantity above 0, or null for none (an absent key: ``default``)."""
    name = key.rsplit(".", 1)[-1]
    raw = d.get(name, default)
    if raw is None:
        return None
    text = str(raw) if isinstance(raw, (int, float, str)) and not isinstance(raw, bool) \
        else ""
    if not QUANTITY.fullmatch(text) or quantity_bytes(text) <= 0:
        r.fail(key, raw, "a Kubernetes quantity above 0, or null for no limit",
               f"e.g. {name}: {default}")
    return text


def check_shm_size(r: Reader, *, shm_size: str | None, memory: str) -> None:
    """/dev/shm is memory-backed: what it holds counts against the container's memory limit,
    so a limit at or above it would only hide that the pod is killed first."""
    if shm_size is not None and quantity_bytes(shm_size) >= quantity_bytes(memory):
        r.fail("cluster.shm_size", shm_size, f"less than cluster.memory={memory} (/dev/shm "
               "is memory-backed and counts against the memory limit)",
               "lower it, or raise cluster.memory")


def pod_labels(r: Reader, d: dict, key: str) -> dict[str, str]:
    """Extra pod labels by Kubernetes' rules, none of those trainjob and the Job set."""
    labels = _mapping(r, d, key, example="{team: vision}")
    for label, value in labels.items():
        if not names.is_label_key(label):
            r.fail(key, {label: value}, names.LABEL_KEY_RULE, "e.g. {team: vision}")
        if not names.is_label_value(value):
            r.fail(key, {label: value}, names.LABEL_VALUE_RULE,
                   "quote numbers and booleans, e.g. {cost-centre: \"42\"}")
        _not_reserved(r, key, label, value, reserved=RESERVED_POD_LABELS)
    return dict(labels)


def pod_annotations(r: Reader, d: dict, key: str) -> dict[str, str]:
    """Extra pod annotations: keys by the label-key rule, string values, 256 KiB in all."""
    annotations = _mapping(r, d, key, example="{sidecar.istio.io/inject: \"false\"}")
    for name, value in annotations.items():
        if not names.is_label_key(name):
            r.fail(key, {name: value}, names.LABEL_KEY_RULE.replace("a label key", "an "
                   "annotation key"), "e.g. {example.com/owner: ml-team}")
        if not isinstance(value, str):
            r.fail(key, {name: value}, "a string value", "quote numbers and booleans, e.g. "
                   "{sidecar.istio.io/inject: \"false\"}")
        _not_reserved(r, key, name, value, reserved=RESERVED_POD_ANNOTATIONS)
    total = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if total > ANNOTATIONS_MAX_BYTES:
        r.fail(key, f"{total} bytes", f"at most {ANNOTATIONS_MAX_BYTES} bytes of keys and "
               "values (Kubernetes' limit)", "shorten them")
    return dict(annotations)


def affinity(r: Reader, d: dict, key: str) -> dict[str, Any]:
    """The pods' affinity as Kubernetes writes it, every key and shape checked against
    ``AFFINITY`` (an unknown key gets "did you mean"); the API server checks the values."""
    value = _mapping(r, d, key, example="{nodeAffinity: {requiredDuringScheduling"
                                        "IgnoredDuringExecution: {nodeSelectorTerms: [...]}}}")
    _schema(r, value, AFFINITY, key)
    return dict(value)


def _schema(r: Reader, value: Any, schema: Any, key: str) -> None:
    """``value`` has the keys and shapes ``schema`` allows (see ``AFFINITY``)."""
    if isinstance(schema, dict):
        r.mapping(value, key, allowed=tuple(schema))
        for name, item in value.items():
            _schema(r, item, schema[name], f"{key}.{name}")
    elif isinstance(schema, list):
        if not isinstance(value, list):
            r.fail(key, value, "a list", "write it as a YAML list, one item per '- ' line")
        for i, item in enumerate(value):
            _schema(r, item, schema[0], f"{key}[{i}]")
    elif not _is_leaf(value, schema):
        r.fail(key, value, schema, "see Kubernetes' PodSpec.affinity")


def _is_leaf(value: Any, kind: str) -> bool:
    if kind == _WEIGHT:
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100
    if kind == _TEXTS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == _TEXT_MAP:
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    return isinstance(value, str)


def _mapping(r: Reader, d: dict, key: str, *, example: str) -> dict:
    value = d.get(key.rsplit(".", 1)[-1])
    value = {} if value is None else value
    if not isinstance(value, dict):
        r.fail(key, value, "a mapping", f"e.g. {example}")
    return value


def _not_reserved(r: Reader, key: str, name: str, value: Any, *,
                  reserved: tuple[str, ...]) -> None:
    if name in reserved or name.startswith(RESERVED_PREFIXES):
        r.fail(key, {name: value}, "a key that trainjob and the Job controller do not set "
               "themselves (the commands find a run's pods by theirs)", "choose another key")


def node_selector(r: Reader, d: dict, key: str) -> dict[str, str]:
    """Node labels by Kubernetes' rules; a bad pair is shown whole, so both parts are seen."""
    selector = d.get("node_selector")
    selector = {} if selector is None else selector
    if not isinstance(selector, dict):
        r.fail(key, selector, "a mapping of node label to value", "e.g. {gpu: \"true\"}")
    for label, value in selector.items():
        if not names.is_label_key(label):
            r.fail(key, {label: value}, names.LABEL_KEY_RULE,
                   "e.g. {kubernetes.io/arch: amd64}")
        if not names.is_label_value(value):
            r.fail(key, {label: value}, names.LABEL_VALUE_RULE,
                   "quote numbers and booleans, e.g. {gpu: \"true\"}")
    return dict(selector)


def tolerations(r: Reader, d: dict, key: str) -> tuple[dict[str, Any], ...]:
    """Tolerations by Kubernetes' rules; fields set to null are dropped (null means unset)."""
    tolerations = d.get("tolerations")
    tolerations = [] if tolerations is None else tolerations
    if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
        r.fail(key, tolerations, "a list of Kubernetes toleration mappings",
               "e.g. [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]")
    checked = []
    for i, toleration in enumerate(tolerations):
        r.mapping(toleration, f"{key}[{i}]", allowed=TOLERATION_FIELDS)
        given = {k: v for k, v in toleration.items() if v is not None}
        _toleration(r, given, f"{key}[{i}]")
        checked.append(given)
    return tuple(checked)


def _toleration(r: Reader, t: dict[str, Any], at: str) -> None:
    key, operator = t.get("key", ""), t.get("operator", "Equal")
    value, effect = t.get("value", ""), t.get("effect", "")
    if key != "" and not names.is_label_key(key):
        r.fail(f"{at}.key", key, "empty or " + names.LABEL_KEY_RULE, "e.g. nvidia.com/gpu")
    if operator not in TOLERATION_OPERATORS:
        r.fail(f"{at}.operator", operator, "Exists or Equal (the default)", "pick one of those")
    if key == "" and operator != "Exists":
        r.fail(f"{at}.operator", operator, "Exists when key is empty (which tolerates every "
               "taint)", "give a key, or set operator: Exists")
    if operator == "Exists" and value != "":
        r.fail(f"{at}.value", value, "no value with operator Exists (it matches any value)",
               "remove value, or set operator: Equal")
    if not names.is_label_value(value):
        r.fail(f"{at}.value", value, names.LABEL_VALUE_RULE, "quote numbers and booleans")
    if effect not in ("", *TOLERATION_EFFECTS):
        r.fail(f"{at}.effect", effect, "empty (every effect) or one of "
               + ", ".join(TOLERATION_EFFECTS), "pick one of those")
    if "tolerationSeconds" in t:
        seconds = t["tolerationSeconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, int) \
                or not -2**63 <= seconds < 2**63:
            r.fail(f"{at}.tolerationSeconds", seconds, "an integer number of seconds",
                   "write it without quotes, e.g. 300")
        if effect != "NoExecute":
            r.fail(f"{at}.tolerationSeconds", seconds, "tolerationSeconds only with effect: "
                   "NoExecute (seconds before eviction)", "set effect: NoExecute, or remove it")
