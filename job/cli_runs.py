"""The command line of the runs on a cluster: status, logs, cancel, list and pull.

Owns: their flags and arguments, kubectl's where kubectl has one (``-n/--namespace`` and
``--context``, which render and submit take too, ``-o json|yaml|wide``, ``-A``, ``--tail``,
``--since``, ``--timestamps``), and handing them to ``job.submit.runs`` and
``job.submit.pull``. It is a part of ``job.cli``, which builds the parser and maps errors to
exit codes.
Never touches: business logic, TensorFlow; ``job.submit`` is imported only when a command
runs, so building the parser stays fast.

Example:
    >>> add_commands(parser.add_subparsers(dest="command"))   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

PULL_DEST = "models"
"""Where ``pull`` puts runs: ``output.dir``'s default, so pulled runs sit beside local ones."""
RUN_HELP = "the run id, as `trainjob list` shows it"
OUTPUTS = ("json", "yaml", "wide")
"""``-o`` of status and list, as kubectl spells them; without it, the short text."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    """status, cancel, logs, list and pull, each with its flags and handler."""
    for name, help_text in (("status", "show a run's state"),
                            ("cancel", "delete a run's Job, Service and ConfigMap")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("run_id", metavar="RUN", help=RUN_HELP)
        cluster_flags(p)
        if name == "status":
            _output_flag(p, wide="adds the image and a table of the workers' pods")
        p.set_defaults(handler=_run_command)

    p = sub.add_parser("logs", help="print a worker's logs")
    p.add_argument("run_id", metavar="RUN", help=RUN_HELP)
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing lines as they come, until the container ends")
    p.add_argument("--worker", type=int, default=0, help="worker index (default: 0, the chief)")
    p.add_argument("--tail", type=_lines, default=None, metavar="N",
                   help="only the last N lines (default: all)")
    p.add_argument("--since", type=_duration, default=None, metavar="DURATION",
                   help="only the lines of the last DURATION, e.g. 30s, 10m, 1h30m")
    p.add_argument("--timestamps", action="store_true",
                   help="start each line with the time it was written (RFC 3339)")
    cluster_flags(p)
    p.set_defaults(handler=_run_command)

    p = sub.add_parser("list", help="list trainjob runs in the namespace")
    cluster_flags(p)
    p.add_argument("--all-namespaces", "-A", action="store_true",
                   help="the runs of every namespace (needs a ClusterRole to list jobs)")
    _output_flag(p, wide="adds the spec's name, the image and the Kueue queue")
    p.set_defaults(handler=_run_command)
    _pull_command(sub)


def _pull_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pull", help="copy a run directory from the models volume to here")
    p.add_argument("run_id", metavar="RUN", help=RUN_HELP)
    p.add_argument("dest", metavar="DEST", type=Path, nargs="?", default=Path(PULL_DEST),
                   help=f"the run lands in DEST/RUN (default: {PULL_DEST})")
    p.add_argument("--with-checkpoints", action="store_true",
                   help="also fetch checkpoints/ (left on the volume by default)")
    p.add_argument("--partial", action="store_true",
                   help="pull a run that is still running or failed: what it has written")
    p.add_argument("--claim", default=None,
                   help="the models claim, when the cluster no longer knows the run "
                        "(default: the claim of k8s/pvc-models.yaml)")
    p.add_argument("--image", default=None,
                   help="the pull pod's image (default: the run's own; needed once the run's "
                        "Job and ConfigMap are gone)")
    cluster_flags(p)
    p.set_defaults(handler=_pull)


def cluster_flags(p: argparse.ArgumentParser, *, spec: bool = False) -> None:
    """-n and --context, for every command that talks to a cluster (or renders for one)."""
    from job.submit.namespace import DEFAULT_NAMESPACE

    first = "the spec's cluster.namespace, else " if spec else ""
    p.add_argument("--namespace", "-n", default=None,
                   help=f"default: {first}the kubeconfig context's namespace, else "
                        f"{DEFAULT_NAMESPACE} (the one k8s/ creates)")
    p.add_argument("--context", default=None,
                   help="kubeconfig context (default: the current one)")


def _output_flag(p: argparse.ArgumentParser, *, wide: str) -> None:
    p.add_argument("--output", "-o", choices=OUTPUTS, default=None,
                   help=f"json or yaml: all of it as data; wide: {wide}")


def _lines(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _duration(text: str) -> int:
    """Seconds in a duration as kubectl writes one: 30s, 10m, 2h, 1h30m."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    hours, minutes, seconds = (int(g or 0) for g in match.groups()) if match else (0, 0, 0)
    total = hours * 3600 + minutes * 60 + seconds
    if total < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: not a duration like 10m or 1h30m")
    return total


def _pull(args: argparse.Namespace) -> int:
    from job.submit import pull

    options = pull.PullOptions(namespace=args.namespace, context=args.context,
                               claim=args.claim, image=args.image,
                               with_checkpoints=args.with_checkpoints, partial=args.partial)
    return pull.pull(args.run_id, args.dest, options=options)


def _run_command(args: argparse.Namespace) -> int:
    from job.submit import runs

    target = runs.Target(namespace=args.namespace, context=args.context)
    if args.command == "status":
        return runs.status(args.run_id, target=target, output=args.output)
    if args.command == "cancel":
        return runs.cancel(args.run_id, target=target)
    if args.command == "logs":
        options = runs.LogOptions(tail_lines=args.tail, since_seconds=args.since,
                                  timestamps=args.timestamps)
        return runs.logs(args.run_id, follow=args.follow, worker=args.worker, target=target,
                         options=options)
    return runs.list_runs(target=target, all_namespaces=args.all_namespaces,
                          output=args.output)
