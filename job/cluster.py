"""The environment contract between the job and what starts it, in both directions.

Owns: the names of the contract's variables (``*_ENV`` below, spelled nowhere else);
``cluster_from_env(env) -> Cluster``, a pure function of the environment mapping, and its
inverse ``indexed_job_env(...)``, which the local launcher and the Kubernetes manifests
render; and ``tf_config_for(cluster)``, the TF_CONFIG JSON the job sets before it creates
``MultiWorkerMirroredStrategy``. ``cluster_from_env`` understands, in this order:

1. ``TF_CONFIG`` as set by Kubeflow TFJob, Vertex AI or Ray Train (it wins when
   present): roles ``chief``, ``worker`` and ``evaluator``.
2. An Indexed Kubernetes Job: ``JOB_COMPLETION_INDEX`` and ``TRAINJOB_WORKERS``,
   with addresses from ``TRAINJOB_WORKER_HOSTS`` or the pattern
   ``{TRAINJOB_JOB_NAME}-{i}.{TRAINJOB_SERVICE}:{TRAINJOB_PORT}``.
3. Nothing set: a single worker, which is the chief.

Never touches: TensorFlow, files, ``os.environ`` (callers pass the mapping in and
set the returned TF_CONFIG themselves).

Example:
    >>> cluster = cluster_from_env({"JOB_COMPLETION_INDEX": "1", "TRAINJOB_WORKERS": "2",
    ...     "TRAINJOB_WORKER_HOSTS": "127.0.0.1:4001,127.0.0.1:4002"})
    >>> cluster.index, cluster.is_chief, cluster.num_workers
    (1, False, 2)
    >>> json.loads(tf_config_for(cluster))["task"]
    {'type': 'worker', 'index': 1}
    >>> cluster_from_env(indexed_job_env(num_workers=2, index=1, run_id="r1",
    ...     hosts=["127.0.0.1:4001", "127.0.0.1:4002"])) == cluster
    True
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from job.errors import EnvironmentConfigError

# --- the contract's variables ------------------------------------------------------------
TF_CONFIG_ENV = "TF_CONFIG"
"""TensorFlow's cluster description, as Kubeflow TFJob, Vertex AI or Ray Train set it."""
INDEX_ENV = "JOB_COMPLETION_INDEX"
"""This worker's index: set by the Job controller in every pod of an Indexed Job."""
WORKERS_ENV = "TRAINJOB_WORKERS"
"""How many workers train together: the Indexed Job's completions."""
WORKER_HOSTS_ENV = "TRAINJOB_WORKER_HOSTS"
"""Comma-separated host:port of every worker, in index order (the local launcher's)."""
JOB_NAME_ENV = "TRAINJOB_JOB_NAME"
"""The Job's name: worker i's pod hostname is ``<job name>-<i>``."""
SERVICE_ENV = "TRAINJOB_SERVICE"
"""The headless Service that is every pod's subdomain, so ``<job>-<i>.<service>`` resolves."""
PORT_ENV = "TRAINJOB_PORT"
"""The port every worker listens on for collectives."""
RUN_ID_ENV = "TRAINJOB_RUN_ID"
"""The run every worker shares; ``trainjob train`` reads it when --run-id is not given."""
ENV_PREFIX = "TRAINJOB_"
"""Every variable trainjob itself defines starts with this."""

SOURCES = ("tf_config", "indexed_job", "single")
TASK_TYPES = ("chief", "worker")
"""The TF_CONFIG task types that train; an evaluator or a parameter server does not."""
TF_CONFIG_ROLES = ("chief", "worker", "evaluator", "ps")
"""Every role TensorFlow accepts in TF_CONFIG's cluster; ps and evaluator are refused."""
PORT_RANGE = (1, 65535)

_DIGITS = re.compile(r"[0-9]+")
"""Whole-number text; always used with fullmatch, so a trailing newline is refused."""
_EXCERPT_CHARS = 120
"""Characters of a bad TF_CONFIG quoted in an error: enough to spot the mistake."""


@dataclass(frozen=True)
class Cluster:
    """The training cluster as this worker sees it.

    ``index`` numbers the training workers 0..N-1 the way MultiWorkerMirroredStrategy
    does: with a separate ``chief`` task the chief is 0 and ``worker`` i is i+1;
    without one, ``worker`` i is i and worker 0 is the chief. Data is sharded by it.
    """

    num_workers: int
    index: int
    """This worker's position among the training workers, 0..num_workers-1."""
    is_chief: bool
    """The chief alone writes shared outputs: model, metrics, checkpoints, logs."""
    worker_addresses: tuple[str, ...]
    """host:port of every training worker in index order; empty for a single worker."""
    source: str
    """Where the cluster came from: one of SOURCES."""
    task_type: str
    """This task's TF_CONFIG type: 'chief' or 'worker'."""
    has_chief_task: bool = False
    """True when TF_CONFIG names a separate 'chief' task (TFJob, Vertex AI), so the
    TF_CONFIG handed to TensorFlow keeps that role and TensorFlow's own numbering."""

    def __post_init__(self) -> None:
        # Programming errors, not user input: the builders below never break these.
        if self.source not in SOURCES or self.task_type not in TASK_TYPES:
            raise ValueError(f"Cluster source={self.source!r} task_type={self.task_type!r}; "
                             f"expected one of {SOURCES} and one of {TASK_TYPES}.")
        if not 0 <= self.index < self.num_workers:
            raise ValueError(f"Cluster index={self.index} is outside 0..{self.num_workers - 1}.")
        expected = 0 if self.num_workers == 1 else self.num_workers
        if len(self.worker_addresses) != expected:
            raise ValueError(f"Cluster has {len(self.worker_addresses)} addresses for "
                             f"{self.num_workers} workers; expected {expected}.")

    @property
    def is_multi_worker(self) -> bool:
        """True when more than one process trains together."""
        return self.num_workers > 1

    @property
    def task_index(self) -> int:
        """This task's index within its TF_CONFIG type (``index`` minus the chief, if any)."""
        if self.task_type == "chief":
            return 0
        return self.index - 1 if self.has_chief_task else self.index

    def describe(self) -> str:
        """One line for the log, e.g. ``worker 1 of 2 (from indexed_job)``."""
        role = ", chief" if self.is_chief else ""
        return f"worker {self.index} of {self.num_workers}{role} (from {self.source})"


def cluster_from_env(env: Mapping[str, str]) -> Cluster:
    """Work out the training cluster from environment variables.

    Args:
        env: the environment, usually ``os.environ``; only read.

    Returns:
        The cluster; a single chief worker when no cluster variable is set.

    Raises:
        EnvironmentConfigError: naming the variable, what it held, what was expected
            and how to fix it.

    Example:
        >>> cluster_from_env({}).num_workers
        1
    """
    tf_config = env.get(TF_CONFIG_ENV, "")
    if tf_config.strip():
        return _from_tf_config(tf_config)
    if env.get(INDEX_ENV, "").strip():
        return _from_indexed_job(env)
    workers = env.get(WORKERS_ENV, "").strip()
    if workers and _parse_int(WORKERS_ENV, workers, low=1) > 1:
        # Every pod would otherwise believe it is the only, chief, worker and write
        # the shared outputs at once.
        raise EnvironmentConfigError(
            f"{WORKERS_ENV}={workers} but {INDEX_ENV} is not set, so this worker "
            "cannot tell which of them it is; run as an Indexed Job (completionMode: Indexed), "
            f"set {INDEX_ENV}, or set {WORKERS_ENV}=1.")
    return Cluster(num_workers=1, index=0, is_chief=True, worker_addresses=(),
                   source="single", task_type="chief")


def tf_config_for(cluster: Cluster) -> str | None:
    """The TF_CONFIG JSON to set before creating MultiWorkerMirroredStrategy.

    Returns:
        None for a single worker (the caller should then unset TF_CONFIG); otherwise a
        training-only TF_CONFIG: no evaluator, no extra keys, the original roles kept.

    Example:
        >>> tf_config_for(cluster_from_env({})) is None
        True
    """
    if not cluster.is_multi_worker:
        return None
    addresses = list(cluster.worker_addresses)
    if cluster.has_chief_task:
        roles: dict[str, list[str]] = {"chief": addresses[:1], "worker": addresses[1:]}
    else:
        roles = {"worker": addresses}
    return json.dumps({"cluster": roles,
                       "task": {"type": cluster.task_type, "index": cluster.task_index}})


# --- the inverse: what the launcher and the manifests set --------------------------------


@dataclass(frozen=True)
class JobDns:
    """How the pods of an Indexed Job reach each other: worker i at ``<job>-<i>.<service>:<port>``.

    The Job controller names pod i's hostname ``<job name>-<i>``; the headless Service that
    is every pod's ``subdomain`` gives that hostname a DNS record under ``<service>``.
    """

    PATTERN: ClassVar[str] = f"{{{JOB_NAME_ENV}}}-{{i}}.{{{SERVICE_ENV}}}:{{{PORT_ENV}}}"
    """The addressing rule as messages show it, in the contract's variable names."""

    job_name: str
    service: str
    port: int

    def addresses(self, num_workers: int) -> tuple[str, ...]:
        """``host:port`` of workers 0..num_workers-1, in index order."""
        return tuple(f"{self.job_name}-{i}.{self.service}:{self.port}"
                     for i in range(num_workers))


def indexed_job_env(*, num_workers: int, run_id: str, index: int | None = None,
                    hosts: Sequence[str] = (), dns: JobDns | None = None) -> dict[str, str]:
    """The variables ``cluster_from_env`` reads back as worker ``index`` of ``num_workers``.

    Args:
        num_workers: how many workers train together (the Indexed Job's completions).
        run_id: the run every worker shares, read by ``trainjob train``.
        index: this worker's index. None leaves JOB_COMPLETION_INDEX out: the Job controller
            sets it in each pod of an Indexed Job, and a rendered copy would shadow it.
        hosts: ``host:port`` of every worker in index order (the local launcher's way).
        dns: the Indexed Job's way instead: workers find each other by DNS name.
            Exactly one of ``hosts`` and ``dns`` is given.

    Returns:
        Name -> value, in a stable order (the rendered manifests rely on it).

    Raises:
        ValueError: the arguments do not describe one cluster (a programming error).

    Example:
        >>> indexed_job_env(num_workers=2, run_id="r1", dns=JobDns("r1", "r1", 2222))
        ... # doctest: +NORMALIZE_WHITESPACE
        {'TRAINJOB_WORKERS': '2', 'TRAINJOB_JOB_NAME': 'r1', 'TRAINJOB_SERVICE': 'r1',
         'TRAINJOB_PORT': '2222', 'TRAINJOB_RUN_ID': 'r1'}
    """
    if num_workers < 1 or (index is not None and not 0 <= index < num_workers) \
            or bool(hosts) == (dns is not None) or (hosts and len(hosts) != num_workers):
        raise ValueError(f"indexed_job_env: num_workers={num_workers}, index={index}, "
                         f"{len(hosts)} hosts and dns={dns} do not describe one cluster; "
                         "expected one host per worker or a JobDns, and an index below "
                         "num_workers.")
    env = {} if index is None else {INDEX_ENV: str(index)}
    env[WORKERS_ENV] = str(num_workers)
    if dns is None:
        env[WORKER_HOSTS_ENV] = ",".join(hosts)
    else:
        env.update({JOB_NAME_ENV: dns.job_name, SERVICE_ENV: dns.service,
                    PORT_ENV: str(dns.port)})
    env[RUN_ID_ENV] = run_id
    return env


# --- TF_CONFIG ---------------------------------------------------------------------------


def _from_tf_config(text: str) -> Cluster:
    config = _load_tf_config(text)
    roles = _tf_config_roles(config.get("cluster"))
    task_type, task_index = _tf_config_task(config.get("task"), roles)
    chiefs, workers = roles.get("chief", []), roles.get("worker", [])
    if len(chiefs) > 1:
        raise _tf_error(f"cluster.chief has {len(chiefs)} addresses {chiefs}; expected at most "
                        "one chief. List the other tasks under 'worker'.")
    training = chiefs + workers
    _check_distinct(f"{TF_CONFIG_ENV} cluster.chief + cluster.worker", training)
    index = task_index if task_type == "chief" else task_index + len(chiefs)
    is_chief = task_type == "chief" or (not chiefs and task_index == 0)
    return Cluster(num_workers=len(training), index=index, is_chief=is_chief,
                   worker_addresses=tuple(training) if len(training) > 1 else (),
                   source="tf_config", task_type=task_type, has_chief_task=bool(chiefs))


def _load_tf_config(text: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise _tf_error(f"is not valid JSON ({error.msg} at line {error.lineno} column "
                        f"{error.colno}); received {_excerpt(text)}. Expected an object like "
                        '{"cluster": {"worker": ["host:port", ...]}, '
                        '"task": {"type": "worker", "index": 0}}.') from None
    if not isinstance(config, dict):
        raise _tf_error(f"is JSON {type(config).__name__} {_excerpt(text)}; expected an object "
                        'with "cluster" and "task" keys.')
    for key in ("cluster", "task"):
        if key not in config:
            raise _tf_error(f'has no "{key}" key (it has {sorted(config)}); a training '
                            f'{TF_CONFIG_ENV} needs both "cluster" and "task". For a single '
                            f"worker, unset {TF_CONFIG_ENV} instead.")
    return config


def _tf_config_roles(cluster: Any) -> dict[str, list[str]]:
    """Role -> addresses, every role checked; empty roles dropped."""
    if not isinstance(cluster, dict) or not cluster:
        raise _tf_error(f"cluster={_shown(cluster)}; expected a non-empty object "
                        'of role -> list of "host:port", e.g. {"worker": ["w0:2222", "w1:2222"]}.')
    unknown = sorted(set(cluster) - set(TF_CONFIG_ROLES))
    if unknown:
        hint = " (the old name 'master' is now 'chief')" if "master" in unknown else ""
        raise _tf_error(f"cluster has role(s) {unknown}; expected only "
                        f"{', '.join(TF_CONFIG_ROLES)}{hint}.")
    if cluster.get("ps"):
        raise _ps_error()
    roles = {}
    for role, addresses in cluster.items():
        if not isinstance(addresses, list):
            raise _tf_error(f"cluster.{role}={_shown(addresses)}; expected a list "
                            'of "host:port" strings in task index order.')
        for position, address in enumerate(addresses):
            _check_address(f"{TF_CONFIG_ENV} cluster.{role}[{position}]", address)
        if addresses:
            roles[role] = addresses
    if not roles.get("chief") and not roles.get("worker"):
        raise _tf_error(f"cluster has no 'chief' or 'worker' task (roles: {sorted(roles)}); "
                        "expected at least one training task.")
    return roles


def _tf_config_task(task: Any, roles: Mapping[str, list[str]]) -> tuple[str, int]:
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise _tf_error(f"task={_shown(task)}; expected an object like "
                        '{"type": "worker", "index": 0}.')
    task_type, raw_index = task["type"], task["index"]
    if task_type == "ps":
        raise _ps_error()
    if task_type == "evaluator":
        raise _tf_error("task.type='evaluator': evaluator tasks are not part of training and "
                        "trainjob has no evaluator role (validation runs inside training). "
                        "Remove the evaluator replica or worker pool from the job.")
    if task_type not in TASK_TYPES:
        raise _tf_error(f"task.type={task_type!r}; expected one of {', '.join(TASK_TYPES)} "
                        "(an evaluator or ps task does not train).")
    if task_type not in roles:
        raise _tf_error(f"task.type={task_type!r} but cluster has no {task_type!r} addresses "
                        f"(roles: {sorted(roles)}); add them to cluster.{task_type}.")
    # TensorFlow itself accepts the index as a number or a numeric string.
    if isinstance(raw_index, bool) or not (
            isinstance(raw_index, int) or (isinstance(raw_index, str)
                                           and _DIGITS.fullmatch(raw_index))):
        raise _tf_error(f"task.index={raw_index!r}; expected a whole number from 0.")
    index, count = int(raw_index), len(roles[task_type])
    if not 0 <= index < count:
        raise _tf_error(f"task.index={index} is out of range for the {count} {task_type!r} "
                        f"task(s) in cluster.{task_type}; expected 0 to {count - 1}. Fix the "
                        "task index or the address list.")
    return task_type, index


def _tf_error(what: str) -> EnvironmentConfigError:
    return EnvironmentConfigError(f"{TF_CONFIG_ENV} {what}")


def _ps_error() -> EnvironmentConfigError:
    return _tf_error("names parameter servers ('ps'): parameter-server training is "
                     "unsupported; trainjob trains with MultiWorkerMirroredStrategy. Remove the "
                     "ps replicas and use chief and/or worker tasks only.")


def _excerpt(text: str) -> str:
    """The raw text, quoted and cut short."""
    if len(text) <= _EXCERPT_CHARS:
        return repr(text)
    return repr(text[:_EXCERPT_CHARS]) + "..."


def _shown(value: Any) -> str:
    """A parsed JSON value as JSON, cut short."""
    text = json.dumps(value)
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


# --- Indexed Job -------------------------------------------------------------------------


def _from_indexed_job(env: Mapping[str, str]) -> Cluster:
    raw_index = env[INDEX_ENV].strip()
    index = _parse_int(INDEX_ENV, raw_index, low=0)
    raw_workers = env.get(WORKERS_ENV, "").strip()
    if not raw_workers:
        raise EnvironmentConfigError(
            f"{INDEX_ENV}={raw_index} is set but {WORKERS_ENV} is not; expected the "
            f"number of workers in the Indexed Job (its completions). Set {WORKERS_ENV}.")
    num_workers = _parse_int(WORKERS_ENV, raw_workers, low=1)
    if index >= num_workers:
        raise EnvironmentConfigError(
            f"{INDEX_ENV}={index} is out of range for {WORKERS_ENV}={num_workers}; "
            f"expected 0 to {num_workers - 1}. Make {WORKERS_ENV} equal the Job's "
            "completions and parallelism.")
    addresses = _indexed_addresses(env, num_workers=num_workers)
    return Cluster(num_workers=num_workers, index=index, is_chief=index == 0,
                   worker_addresses=addresses if num_workers > 1 else (),
                   source="indexed_job", task_type="worker")


def _indexed_addresses(env: Mapping[str, str], *, num_workers: int) -> tuple[str, ...]:
    hosts = env.get(WORKER_HOSTS_ENV, "").strip()
    if hosts:
        entries = [entry.strip() for entry in hosts.split(",")]
        if len(entries) != num_workers:
            raise EnvironmentConfigError(
                f"{WORKER_HOSTS_ENV}={hosts!r} has {len(entries)} entries but "
                f"{WORKERS_ENV}={num_workers}; expected exactly one host:port per worker, "
                "comma-separated, in index order.")
        for position, entry in enumerate(entries):
            _check_address(f"{WORKER_HOSTS_ENV} entry {position}", entry)
        _check_distinct(WORKER_HOSTS_ENV, entries)
        return tuple(entries)
    if num_workers == 1:
        return ()
    names = (JOB_NAME_ENV, SERVICE_ENV, PORT_ENV)
    missing = [name for name in names if not env.get(name, "").strip()]
    if missing:
        raise EnvironmentConfigError(
            f"{', '.join(missing)} not set; with {WORKERS_ENV}={num_workers} and no "
            f"{WORKER_HOSTS_ENV}, worker i is reached at {JobDns.PATTERN}. Set all three (the "
            f"rendered manifests do), or list the workers in {WORKER_HOSTS_ENV}.")
    job_name, service, raw_port = (env[name].strip() for name in names)
    for name, value in ((JOB_NAME_ENV, job_name), (SERVICE_ENV, service)):
        if re.search(r"[\s:/,]", value):
            raise EnvironmentConfigError(
                f"{name}={value!r} contains a space, ':', '/' or ','; expected a DNS name "
                "part such as 'shapes-abc12' or 'shapes-abc12-workers'.")
    port = _parse_int(PORT_ENV, raw_port, low=PORT_RANGE[0], high=PORT_RANGE[1])
    return JobDns(job_name=job_name, service=service, port=port).addresses(num_workers)


# --- shared checks -----------------------------------------------------------------------


def _parse_int(name: str, value: str, *, low: int, high: int | None = None) -> int:
    number = int(value) if _DIGITS.fullmatch(value) else None
    if number is None or number < low or (high is not None and number > high):
        bounds = f"from {low} to {high}" if high is not None else f"from {low} up"
        raise EnvironmentConfigError(f"{name}={value!r} is not valid; expected a whole number "
                                     f"{bounds}. Fix the variable in the pod or shell.")
    return number


def _check_address(where: str, address: Any) -> None:
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    valid = (bool(host) and not re.search(r"[\s/,]", host) and bool(_DIGITS.fullmatch(port))
             and PORT_RANGE[0] <= int(port) <= PORT_RANGE[1])
    if not valid:
        raise EnvironmentConfigError(
            f"{where}={address!r} is not a host:port address; expected e.g. "
            "'trainer-worker-0.trainer:2222' with a port from 1 to 65535 and no scheme.")


def _check_distinct(where: str, addresses: list[str]) -> None:
    repeated = sorted({a for a in addresses if addresses.count(a) > 1})
    if repeated:
        raise EnvironmentConfigError(
            f"{where} lists {repeated} more than once; expected one distinct host:port per "
            "worker (workers on one host need different ports).")
