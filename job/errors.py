"""The exception family and the exit-code contract.

Owns: every exception the CLI turns into one clear line, and the exit codes the
launcher, the Kubernetes ``podFailurePolicy`` and users' scripts rely on.
Never touches: anything else (no imports from the rest of the package).

Exit codes:

====  ===========================================================================
 0    success
 1    the run failed (a bug, or a failure retrying would not fix)
 2    bad input: spec, data, paths, environment, or a refused cluster request; also
      storage that cannot take the run's files (read-only, full, a file in the way):
      a restart would fail the same way until someone frees or fixes it
 75   retryable: a peer was lost, or the worker was preempted (SIGTERM) after
      saving a checkpoint. Restart the whole group; it resumes from the checkpoint.
 130  interrupted by the user (Ctrl-C)
====  ===========================================================================
"""

from __future__ import annotations

EXIT_OK = 0
"""The run (or command) succeeded."""
EXIT_FAILED = 1
"""The run failed for a reason a restart would not fix."""
EXIT_BAD_INPUT = 2
"""Bad spec, data, path, environment or cluster answer: permanent, never retried."""
EXIT_RETRYABLE = 75
"""EX_TEMPFAIL from sysexits.h: lost peer or preemption; restart the group to resume."""
EXIT_INTERRUPTED = 130
"""128 + SIGINT, the shell convention for Ctrl-C."""

PERMANENT_EXIT_CODES = (EXIT_FAILED, EXIT_BAD_INPUT)
RETRYABLE_EXIT_CODES = (EXIT_RETRYABLE,)


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


class ClusterError(TrainjobError):
    """The Kubernetes API refused a request (forbidden, not found, unauthorized, ...)."""

    exit_code = EXIT_BAD_INPUT


class JobFailed(TrainjobError):
    """A submitted run ended in failure on the cluster."""

    exit_code = EXIT_FAILED
