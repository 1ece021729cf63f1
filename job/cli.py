"""The ``trainjob`` command line: argument parsing, exit codes, one-line errors.

Owns: the commands and their flags (those of the runs on a cluster: ``job.cli_runs``),
mapping the exception family to exit codes and a single clear line on stderr. TensorFlow
is imported lazily, only by the
commands that train or load a model, so ``render``/``submit``/``status`` start fast.
Never touches: business logic; every command is a call into a module.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from job import __version__, cli_runs
from job.cluster import RUN_ID_ENV
from job.errors import EXIT_INTERRUPTED, EXIT_OK, TrainjobError, exit_codes_summary

if TYPE_CHECKING:
    from job.spec import Spec

TENSORFLOW_COMMANDS = frozenset({"train", "demo", "predict", "evaluate", "weights"})
"""Commands that import TensorFlow; the others start fast and print nothing of it."""


def run() -> None:
    """The console script and ``python -m job``: run ``main`` and exit with its code.

    Once TensorFlow is loaded, exit without the interpreter's teardown: every
    output is written, renamed into place and flushed by then, and TensorFlow's
    teardown only costs time (about a second) or, after a lost peer, can hang.
    A Ctrl-C that lands after ``main`` has handled one (a second press, or one
    during the exit) changes nothing any more: it is ignored, never a traceback.
    Commands that load TensorFlow run with its C++ start-up chatter filtered out of
    stderr (``job.tf_logs``; ``TRAINJOB_TF_LOGS=1`` shows it), and with its oneDNN
    kernels on (``job.kernels``) unless the environment says otherwise.
    """
    from job import kernels, tf_logs

    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if command in TENSORFLOW_COMMANDS:
        kernels.apply()  # Before TensorFlow loads: it reads its kernel switch only then.
    restore = tf_logs.hide() if command in TENSORFLOW_COMMANDS else (lambda: None)
    try:
        code = main()
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.flush()
    restore()
    if "tensorflow" in sys.modules or code == EXIT_INTERRUPTED:
        # Interrupted: decoder threads may still be busy; nothing is left to wait for.
        os._exit(code)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code.

    Example:
        >>> main(["validate", "examples/shapes.yaml"])   # doctest: +SKIP
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_OK
    try:
        return int(args.handler(args) or EXIT_OK)
    except TrainjobError as error:
        print(f"trainjob: error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    except KeyboardInterrupt:
        print("trainjob: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE


EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""The reader of stdout went away (``trainjob predict ... | head``): stop quietly, with the
code a tool killed by SIGPIPE gives (``yes | head``): nothing failed, nothing to retry."""


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that flushing what is left at exit raises nothing."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # stdout is not a file (tests capture it): nothing will be flushed to a pipe


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: an argument it does not know is refused with its own usage.

    argparse hands a subcommand's unknown arguments back to the top-level parser, whose
    usage (``trainjob [-h] [--version] COMMAND ...``) says nothing about the command's flags.
    """

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        namespace, unknown = super().parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return namespace, unknown


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainjob",
        description="Train Keras image classifiers as distributed batch jobs on Kubernetes.",
        epilog=f"Exit codes: {exit_codes_summary()}.")
    parser.add_argument("--version", action="version", version=f"trainjob {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)

    p = sub.add_parser("train", help="train one worker (of one, or of a cluster)")
    _spec_arguments(p)
    p.add_argument("--run-id", default=None,
                   help="run directory name under output.dir; a restart with the same id "
                        f"resumes (default: ${RUN_ID_ENV}, else the spec's name)")
    p.add_argument("--restart", action="store_true",
                   help="discard the run directory's old run and train from the start")
    p.set_defaults(handler=_train)

    p = sub.add_parser("validate", help="check the spec and scan the dataset without training")
    _spec_arguments(p)
    p.set_defaults(handler=_validate)

    p = sub.add_parser("demo", help="generate the sample data and train on it")
    p.add_argument("--out", type=Path, default=Path("demo"),
                   help="folder for the sample data and the run (default: ./demo)")
    p.set_defaults(handler=_demo)

    p = sub.add_parser("local", help="run N workers on this machine, restarting the group "
                                     "on retryable failures")
    _spec_arguments(p)
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: the spec's cluster.workers)")
    p.add_argument("--max-restarts", type=int, default=3,
                   help="group restarts on retryable failures before giving up (default: 3)")
    p.add_argument("--run-id", default=None,
                   help="run directory name under output.dir (default: the spec's name)")
    p.add_argument("--restart", action="store_true",
                   help="discard the run directory's old run once, then start the workers")
    p.set_defaults(handler=_local)

    _model_commands(sub)
    _submitter_commands(sub)
    _weights_commands(sub)
    return parser


TOP_K = 3
"""Classes shown per image, and evaluate's top-k accuracy: the runners-up that matter for a
confused pair, and a top-k accuracy that is not trivially 1 on a handful of classes."""


def _model_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict images with a trained model, decoded as in "
                                       "training")
    p.add_argument("model", metavar="RUN_DIR|MODEL", type=Path,
                   help="a run directory, or a model file of any exported format (.h5, "
                        ".keras, .tflite, .onnx, a SavedModel folder)")
    p.add_argument("paths", metavar="PATH", nargs="+",
                   help="images, folders (walked) or list files (.txt, one path a line)")
    p.add_argument("--top-k", type=_positive, default=TOP_K, metavar="K",
                   help="classes shown per image (default: %(default)s)")
    p.add_argument("--output", type=Path, default=None, metavar="FILE.csv|FILE.json",
                   help="write the rows there (default: a table on stdout)")
    p.set_defaults(handler=_predict)

    p = sub.add_parser("evaluate", help="score a trained model on a class-per-subfolder folder")
    p.add_argument("model", metavar="RUN_DIR", type=Path,
                   help="a run directory, or a model file (.h5) without one")
    p.add_argument("data_dir", metavar="DATA_DIR", type=Path,
                   help="one subfolder of images per class, named as in training")
    p.add_argument("--top-k", type=_positive, default=TOP_K, metavar="K",
                   help="k of the top-k accuracy (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where evaluation.json and the PNG go (default: "
                        "RUN_DIR/evaluations/<DATA_DIR's name>)")
    p.set_defaults(handler=_evaluate)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _submitter_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="print the Kubernetes manifests for a spec")
    _spec_arguments(p)
    p.add_argument("--image", default=None, help="overrides cluster.image")
    p.add_argument("--run-id", default=None, help="default: <name>-<random suffix>")
    cli_runs.cluster_flags(p, spec=True)
    p.set_defaults(handler=_render)

    p = sub.add_parser("submit", help="create the run on the cluster and watch it")
    _spec_arguments(p)
    p.add_argument("--image", default=None, help="overrides cluster.image")
    cli_runs.cluster_flags(p, spec=True)
    p.add_argument("--run-id", default=None, help="default: <name>-<random suffix>")
    p.add_argument("--no-wait", action="store_true", help="create and detach at once")
    p.add_argument("--follow", action=argparse.BooleanOptionalAction, default=True,
                   help="stream the chief's logs while watching (default: on)")
    p.add_argument("--pull", nargs="?", type=Path, const=Path(cli_runs.PULL_DEST),
                   default=None, metavar="DEST",
                   help="once the run succeeds, pull its directory to DEST/<run id> "
                        f"(default DEST: {cli_runs.PULL_DEST})")
    p.set_defaults(handler=_submit)
    cli_runs.add_commands(sub)


def _spec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", type=Path, help="the YAML spec file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, the value read as YAML (repeatable): "
                        "--set train.epochs=2 --set data.image_size=[48,48]")


def _run_id(args: argparse.Namespace, *, default: str | None) -> str | None:
    """--run-id, else the variable ``job.cluster.RUN_ID_ENV`` (``train`` only), else ``default``.

    Checked by the one run-id rule (``job.names.check_run_id``) before anything is written,
    deleted or sent: an id like ``../x`` would otherwise leave output.dir.
    """
    from job.names import check_run_id

    if args.run_id is not None:
        fallback = "to use the spec's name" if default else "for a generated id"
        check_run_id(args.run_id, source="--run-id", hint=f"or leave it out {fallback}")
        return args.run_id
    variable = os.environ.get(RUN_ID_ENV, "") if args.command == "train" else ""
    if variable:
        check_run_id(variable, source=RUN_ID_ENV, hint=f"or unset {RUN_ID_ENV}")
        return variable
    return default


def _train(args: argparse.Namespace) -> int:
    from job import spec as spec_module

    spec = spec_module.load(args.spec, overrides=args.set)
    run_id = _run_id(args, default=spec.name)
    from job.train import run_worker  # imports TensorFlow, once the input is known good

    return run_worker(spec, run_id=run_id, env=os.environ, restart=args.restart)


def _validate(args: argparse.Namespace) -> int:
    from job import spec as spec_module

    spec = spec_module.load(args.spec, overrides=args.set)
    from job import data

    report = data.scan(spec.data, seed=spec.train.seed)
    print(report.describe())
    return report.exit_code(spec.data.on_bad_image)


def _predict(args: argparse.Namespace) -> int:
    from job import predict  # TensorFlow only for Keras and SavedModel models

    return predict.predict(args.model, args.paths, top_k=args.top_k, output=args.output)


def _evaluate(args: argparse.Namespace) -> int:
    from job import predict

    predict.evaluate(args.model, args.data_dir, top_k=args.top_k, out_dir=args.out)
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from job.demo import run_demo  # imports TensorFlow

    return run_demo(out_dir=args.out)


def _local(args: argparse.Namespace) -> int:
    from job import spec as spec_module

    spec = spec_module.load(args.spec, overrides=args.set)
    run_id = _run_id(args, default=spec.name)
    from job import launcher

    workers = args.workers if args.workers is not None else spec.cluster.workers
    if workers >= 1:  # Before any process starts, not in each worker after its import.
        spec_module.check_worker_count(spec, workers, unit="--workers")
    if args.restart:
        from job import rerun

        rerun.discard(spec, run_id)  # Once, before any worker starts: never on a group restart.
    return launcher.run_local(args.spec, workers=workers, max_restarts=args.max_restarts,
                              run_id=run_id,
                              options=launcher.LaunchOptions(overrides=tuple(args.set)))


def _render(args: argparse.Namespace) -> int:
    from job import spec as spec_module
    from job.submit import manifests
    from job.submit.namespace import resolve_namespace

    spec = spec_module.load(args.spec, overrides=args.set)
    _check_image(args, spec)
    run_id = _run_id(args, default=None) or manifests.new_run_id(spec.name)
    namespace = resolve_namespace(flag=args.namespace, spec=spec.cluster.namespace,
                                  context=lambda: _context_namespace(args.context))
    docs = manifests.render_manifests(spec, run_id=run_id, image=args.image,
                                      namespace=namespace)
    for warning in manifests.render_warnings(spec):
        print(f"trainjob: warning: {warning}", file=sys.stderr)
    sys.stdout.write(manifests.to_yaml(docs))
    return EXIT_OK


def _context_namespace(context: str | None) -> str | None:
    from job.submit import kube  # kubernetes is imported only when the rule gets this far

    return kube.context_namespace(context=context)


MAKE_TARGET_ENV = "TRAINJOB_MAKE_TARGET"
"""Set by the Makefile's render and submit to their command (``make submit``), so that a
missing image is asked for as make takes it, IMAGE=, not as --image."""


def _check_image(args: argparse.Namespace, spec: Spec) -> None:
    if args.image or spec.cluster.image:
        return
    from job.submit import manifests

    target = os.environ.get(MAKE_TARGET_ENV)
    if target:
        raise manifests.missing_image(
            how=f"pass IMAGE= (e.g. {target} IMAGE=ghcr.io/you/trainjob:0.1.0)")
    raise manifests.missing_image()


def _submit(args: argparse.Namespace) -> int:
    from job import spec as spec_module
    from job.submit import runs

    spec = spec_module.load(args.spec, overrides=args.set)
    _check_image(args, spec)
    options = runs.SubmitOptions(image=args.image, run_id=_run_id(args, default=None),
                                 wait=not args.no_wait, follow=args.follow, pull_to=args.pull)
    return runs.submit(spec, options=options,
                       target=runs.Target(namespace=args.namespace, context=args.context))


def _weights_commands(sub: argparse._SubParsersAction) -> None:
    from job.weights import DEFAULT_SIZE, MIRROR_ENV, MOBILENET_V2_SIZES

    p = sub.add_parser("weights", help="ImageNet weights for the keras.applications backbones")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("fetch", help="download backbones' notop files, each with its sha256 "
                                         "beside it (on a machine with internet)",
                           epilog=f"Downloads from Keras's own URLs; ${MIRROR_ENV} replaces "
                                  "their https://storage.googleapis.com base with a mirror.")
    p.add_argument("backbones", metavar="BACKBONE", nargs="+",
                   help="vgg16, resnet50, mobilenet_v2 or efficientnet_b0")
    p.add_argument("--to", type=Path, default=None, metavar="DIR",
                   help="where the files go (default: Keras's cache, $KERAS_HOME/models, "
                        "where runs look first); a folder for model.weights_dir")
    p.add_argument("--image-size", type=int, default=DEFAULT_SIZE, choices=MOBILENET_V2_SIZES,
                   help="mobilenet_v2 only: Keras's file for this input size; other sizes use "
                        "224's (default: %(default)s)")
    p.set_defaults(handler=_weights_fetch)


def _weights_fetch(args: argparse.Namespace) -> int:
    from job import weights

    weights.fetch(args.backbones, to=args.to, image_size=args.image_size, env=os.environ)
    return EXIT_OK
