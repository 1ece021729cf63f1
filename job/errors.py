"""The exception family and the exit-code contract.

Owns: every exception the CLI turns into one clear line, how a file name is written in
such a line (``printable_path``), and the one exit-code table,
``EXIT_CODES``: what each code means and how it is treated (permanent, retryable,
interrupted). The launcher's restart rule, the Kubernetes ``podFailurePolicy``, the
submitter's status lines and the CLI's help all read it; users' scripts rely on it.
Never touches: anything else (no imports from the rest of the package).

Example:
    >>> exit_kind(EXIT_BAD_INPUT), describe_exit_code(EXIT_BAD_INPUT)
    ('permanent', 'bad input, permanent')
    >>> exit_codes_summary().split(", ")[:3]
    ['0 success', '1 run failed', '2 bad input']
"""

from __future__ import annotations

import os
from dataclasses import dataclass

EXIT_OK = 0
"""The run (or command) succeeded."""
EXIT_FAILED = 1
"""The run failed: a bug, or a failure a restart would not fix."""
EXIT_BAD_INPUT = 2
"""Bad input: spec, data, paths, environment, or a refused cluster request; also storage
that cannot take the run's files (read-only, full, a file in the way): a restart would fail
the same way until someone frees or fixes it. Permanent, never retried."""
EXIT_RETRYABLE = 75
"""EX_TEMPFAIL from sysexits.h: a peer was lost, or the worker was preempted (SIGTERM) after
saving a checkpoint. Restart the whole group; it resumes from the checkpoint."""
EXIT_INTERRUPTED = 130
"""128 + SIGINT, the shell convention for Ctrl-C: interrupted by the user."""

OK = "ok"
"""The kind of the success code: done."""
PERMANENT = "permanent"
"""Fail the run at once: a restart would fail the same way."""
RETRYABLE = "retryable"
"""Restart the whole group (up to the restart budget); it resumes from the checkpoint."""
INTERRUPTED = "interrupted"
"""Stop, and never retry: the user asked for it."""
EXIT_KINDS = (OK, PERMANENT, RETRYABLE, INTERRUPTED)


@dataclass(frozen=True)
class ExitCode:
    """One row of the exit-code table."""

    code: int
    meaning: str
    """A few words, as the CLI's help and the submitter's status lines print them."""
    kind: str
    """One of EXIT_KINDS."""
    when: str = ""
    """When the code is used, if the meaning does not say: shown in the CLI's help."""


EXIT_CODES = (
    ExitCode(EXIT_OK, "success", OK),
    ExitCode(EXIT_FAILED, "run failed", PERMANENT),
    ExitCode(EXIT_BAD_INPUT, "bad input", PERMANENT),
    ExitCode(EXIT_RETRYABLE, "retryable", RETRYABLE, "lost peer or preempted; restart resumes"),
    ExitCode(EXIT_INTERRUPTED, "interrupted", INTERRUPTED),
)
"""Every exit code trainjob itself gives; any other code is not ours (a signal, a crash)."""
PERMANENT_EXIT_CODES = tuple(row.code for row in EXIT_CODES if row.kind == PERMANENT)
RETRYABLE_EXIT_CODES = tuple(row.code for row in EXIT_CODES if row.kind == RETRYABLE)


def exit_kind(code: int) -> str | None:
    """The kind (one of EXIT_KINDS) of one of our exit codes; None for any other code."""
    return next((row.kind for row in EXIT_CODES if row.code == code), None)


def describe_exit_code(code: int) -> str | None:
    """``'bad input, permanent'``, ``'retryable'``...; None for a code that is not ours."""
    row = next((row for row in EXIT_CODES if row.code == code), None)
    if row is None:
        return None
    # Only "permanent" is not already said by the meaning's own words.
    return f"{row.meaning}, {row.kind}" if row.kind == PERMANENT else row.meaning


def exit_codes_summary() -> str:
    """The whole table on one line, as ``trainjob --help`` ends."""
    return ", ".join(f"{row.code} {row.meaning}" + (f" ({row.when})" if row.when else "")
                     for row in EXIT_CODES)


class TrainjobError(Exception):
    """Base of every error the CLI reports as one line; ``exit_code`` says how to exit."""

    exit_code = EXIT_FAILED


class SpecError(TrainjobError, ValueError):
    """The spec file is missing, malformed, or has a bad key or value."""

    exit_code = EXIT_BAD_INPUT


class DataError(TrainjobError, ValueError):
    """The dataset on disk is unusable: a missing folder, no classes, a bad image under `fail`."""

    exit_code = EXIT_BAD_INPUT


class EnvironmentConfigError(TrainjobError, ValueError):
    """A cluster environment variable (TF_CONFIG, JOB_COMPLETION_INDEX, ...) is bad."""

    exit_code = EXIT_BAD_INPUT


class StorageError(TrainjobError):
    """The run directory cannot be written: read-only, full, a file in its way, a name too long.

    Exit 2, not retryable: a group restart on a full or read-only volume fails the same way
    and would only burn the Job's restarts. The run's checkpoints stay where they were, so
    after freeing space a rerun with the same run id resumes.
    """

    exit_code = EXIT_BAD_INPUT


class WeightsError(TrainjobError):
    """ImageNet weights cannot be found, downloaded or trusted: the message names the file,
    where it was looked for or fetched from, and the command that provides it."""

    exit_code = EXIT_BAD_INPUT


class RunInUse(TrainjobError):
    """Another process holds the run directory's lock."""

    exit_code = EXIT_BAD_INPUT


class RunMismatch(TrainjobError):
    """The run directory holds a run trained with other weight-deciding keys or data."""

    exit_code = EXIT_BAD_INPUT


class RetryableError(TrainjobError):
    """The run stopped for a reason a group restart fixes (lost peer, preemption)."""

    exit_code = EXIT_RETRYABLE


class RunFailed(TrainjobError):
    """The run failed and retrying will not help."""

    exit_code = EXIT_FAILED


class Diverged(RunFailed):
    """The loss became NaN or infinite: a restart would diverge again (exit 1)."""


class ClusterError(TrainjobError):
    """The Kubernetes API refused a request (forbidden, not found, unauthorized, ...)."""

    exit_code = EXIT_BAD_INPUT


class JobFailed(TrainjobError):
    """A submitted run ended in failure on the cluster."""

    exit_code = EXIT_FAILED


def printable_path(path: str | bytes | os.PathLike) -> str:
    r"""A file name as one printable UTF-8 line, for messages; a printable name is unchanged.

    Else control characters, bytes that are not UTF-8 and backslashes are escaped as in a
    Python string literal. Example:
        >>> printable_path("cats/two\nlines.png"), printable_path(b"caf\xe9.png")
        ('cats/two\\nlines.png', 'caf\\xe9.png')
    """
    text = os.fsdecode(path)
    return text if text.isprintable() else "".join(map(_escape, text))


def _escape(char: str) -> str:
    if 0xDC80 <= ord(char) <= 0xDCFF:  # a byte that is not UTF-8, as os.fsdecode keeps it
        return f"\\x{ord(char) - 0xDC00:02x}"
    return "\\\\" if char == "\\" else char if char.isprintable() else repr(char)[1:-1]
