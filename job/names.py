"""Names that Kubernetes and the run directory rely on: DNS names, labels and run ids.

Owns: Kubernetes' naming rules (DNS-1123 labels and subdomains, label keys and values),
each matched against the whole value with ``re.fullmatch`` so that a trailing newline
never slips through; ``check_run_id``, the one run-id rule shared by ``train``, ``local``,
``render``, ``submit`` and ``TRAINJOB_RUN_ID``; and ``excerpt``, the short quoted form in
which every error message shows a rejected value.
Never touches: files, the spec's keys, TensorFlow, kubernetes. The job and the submitter
both import it, so it imports nothing of theirs.

Example:
    >>> is_label_key("nvidia.com/gpu"), is_label_key("gpu\\n")
    (True, False)
    >>> check_run_id("../../x")   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    job.errors.SpecError: --run-id='../../x' is invalid: expected a DNS-1123 label ...
"""

from __future__ import annotations

import re
from typing import Any

from job.errors import SpecError

DNS_LABEL_MAX_LENGTH = 63
"""Characters in a DNS-1123 label: Job, Service, namespace and pod host names."""
DNS_SUBDOMAIN_MAX_LENGTH = 253
"""Characters in a DNS-1123 subdomain: most object names and a label key's prefix."""
LABEL_NAME_MAX_LENGTH = 63
"""Characters in a label value and in the name part of a label key."""
POD_NAME_RESERVE = len("-1023-") + 5
"""Characters the Job controller appends to the Job name for a pod name (index up to 1023)."""
RUN_ID_MAX_LENGTH = DNS_LABEL_MAX_LENGTH - POD_NAME_RESERVE
"""A run id is a Job name; its pods' names and hostnames must stay 63-character DNS labels."""
EXCERPT_CHARS = 60
"""Characters of a rejected value quoted in a message: enough to spot it, never a flood."""

LABEL_KEY_RULE = ("a label key: an optional lowercase DNS subdomain (at most 253 characters) "
                  "and '/', then at most 63 letters, digits, '-', '_' or '.', alphanumeric at "
                  "both ends")
LABEL_VALUE_RULE = ("a label value: empty, or at most 63 letters, digits, '-', '_' or '.', "
                    "alphanumeric at both ends")

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def is_dns_label(value: Any, *, max_length: int = DNS_LABEL_MAX_LENGTH) -> bool:
    """True for a DNS-1123 label: lowercase letters, digits and '-', alphanumeric at both ends."""
    return (isinstance(value, str) and 0 < len(value) <= max_length
            and _DNS_LABEL.fullmatch(value) is not None)


def is_dns_subdomain(value: Any) -> bool:
    """True for a DNS-1123 subdomain: dot-separated DNS labels, at most 253 characters."""
    return (isinstance(value, str) and 0 < len(value) <= DNS_SUBDOMAIN_MAX_LENGTH
            and _DNS_SUBDOMAIN.fullmatch(value) is not None)


def is_label_key(value: Any) -> bool:
    """True for a Kubernetes label key such as ``gpu`` or ``nvidia.com/gpu.present``."""
    if not isinstance(value, str):
        return False
    prefix, slash, name = value.rpartition("/")
    if slash and not is_dns_subdomain(prefix):
        return False
    return 0 < len(name) <= LABEL_NAME_MAX_LENGTH and _LABEL_NAME.fullmatch(name) is not None


def is_label_value(value: Any) -> bool:
    """True for a Kubernetes label value; the empty string is one."""
    return (isinstance(value, str) and len(value) <= LABEL_NAME_MAX_LENGTH
            and (value == "" or _LABEL_NAME.fullmatch(value) is not None))


def check_run_id(run_id: Any, *, source: str = "--run-id",
                 hint: str = "or leave it out for a generated id") -> None:
    """Raise SpecError unless ``run_id`` can name a run directory, a Job, its pods and hosts.

    One rule everywhere: a path (``../x``, ``/abs``, ``a/b``) would leave ``output.dir``, and a
    run trained here can be submitted, pulled or listed under the same id on the cluster.

    Args:
        run_id: the id to check.
        source: what held it, named in the message: ``--run-id`` or ``TRAINJOB_RUN_ID``.
        hint: the way out when no id fits, appended to the message.
    """
    if not is_dns_label(run_id, max_length=RUN_ID_MAX_LENGTH):
        raise SpecError(
            f"{source}={excerpt(run_id)} is invalid: expected a DNS-1123 label (lowercase "
            f"letters, digits and '-', starting and ending with a letter or digit) of at most "
            f"{RUN_ID_MAX_LENGTH} characters, so pod names fit in 63; e.g. 'shapes-try2', "
            f"{hint}.")


def excerpt(value: Any) -> str:
    """``repr(value)``, cut to EXCERPT_CHARS characters and '...' when longer.

    Example:
        >>> excerpt("x" * 100)
        "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx..."
    """
    text = repr(value)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."
