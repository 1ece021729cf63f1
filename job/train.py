"""One worker's run: the story of a run, and its epoch loop.

Owns: the order of a run (list the data, claim the run directory, load TensorFlow,
decode this worker's shard while the strategy starts, agree on the precision, refuse
data a model cannot learn, build the model, restore, train the epochs, test, export),
the epoch loop's decisions (how many steps per call, when to checkpoint and validate,
stopping on SIGTERM or a diverging loss), and the lost-peer handling.
Never touches: kubernetes, argument parsing, image decoding (``job.data``), the
layout of the run directory (``job.run_dir``), the compiled steps and collectives
(``job.distributed``), what is printed and summarised (``job.reporter``).

Why a custom loop: ``model.fit`` under MultiWorkerMirroredStrategy with two or
more workers fails in Keras 3 (keras-team/keras#20585, tensorflow#72388).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from job import cluster as cluster_module
from job import spec as spec_module
from job.errors import EXIT_OK, Diverged, RetryableError
from job.preemption import Preempted, PreemptionFlag
from job.progress import Lines
from job.spec import Spec

if TYPE_CHECKING:
    import tensorflow as tf

    from job.cluster import Cluster
    from job.data import Decoded, Splits
    from job.distributed import EvalResult, Plan, StepStats
    from job.fine_tune import Phases
    from job.precision import Choice
    from job.reporter import Reporter
    from job.run_dir import RunDir
    from job.selection import Selection


@dataclass(frozen=True)
class Result:
    """What a finished run reports (the chief also writes it to metrics.json)."""

    metrics: dict[str, Any]
    run_dir: Path


def run_worker(spec: Spec, *, run_id: str, env: Mapping[str, str],
               restart: bool = False) -> int:
    """Entry point of ``trainjob train``: discover the cluster, train, return the exit code.

    Errors propagate to the CLI, which prints one line and, once TensorFlow is
    loaded, exits without interpreter teardown (``cli.run``): after a lost peer,
    TensorFlow's collective runtime can otherwise hang there.
    """
    train(spec, cluster=cluster_module.cluster_from_env(env), run_id=run_id, env=env,
          restart=restart)
    return EXIT_OK


def train(spec: Spec, *, cluster, run_id: str, env: Mapping[str, str] | None = None,
          out=None, restart: bool = False) -> Result:
    """Train one worker of ``cluster`` and, on the chief, export the run's outputs.

    The story of a run: list the data, claim the run directory (``job.rerun``: a
    complete run is reported and left alone, a different one refused), then
    ``_train``. ``restart`` discards the run directory's old run first (``--restart``).
    """
    from job import data, rerun, runtimes
    from job.run_dir import RunDir

    env, out = dict(os.environ if env is None else env), out or sys.stdout
    started = time.time()
    spec_module.check_worker_count(spec, cluster.num_workers)
    runtimes.check_installed(spec.output.formats)  # Before training, not after it.
    splits = data.make_splits(spec.data, seed=spec.train.seed)
    run = RunDir.open(spec.output.dir, run_id, is_chief=cluster.is_chief, worker=cluster.index,
                      env=env)
    claim = rerun.claim(run, spec, splits, restart=restart,
                        multi_worker=cluster.is_multi_worker)
    preemption = PreemptionFlag.install()
    try:
        if claim.complete is not None:
            print(rerun.describe_complete(run, claim.complete), file=out, flush=True)
            return Result(metrics=claim.complete, run_dir=run.shared)
        log = Lines(out=out, tag=f"worker {cluster.index}/{cluster.num_workers}")
        return _train(_Context(spec=spec, cluster=cluster, run=run, splits=splits, env=env,
                               log=log, preemption=preemption, started=started))
    except BaseException:
        claim.abandon(run)
        raise
    finally:
        preemption.uninstall()
        claim.release()


@dataclass(frozen=True)
class _Context:
    """What every step of a run's story reads: the spec, where it runs, its data, its folder."""

    spec: Spec
    cluster: Cluster
    run: RunDir
    splits: Splits
    env: dict[str, str]
    log: Lines
    preemption: PreemptionFlag
    started: float
    """time.time() at the start, for metrics.json's duration_seconds."""


@dataclass(frozen=True)
class _Started:
    """What the start-up gives the rest of the run."""

    strategy: tf.distribute.Strategy
    plan: Plan
    precision: Choice
    decoded: dict[str, Decoded]
    """This worker's decoded pixels, by split name."""


@dataclass
class _Loop:
    """What the epoch loop drives: compiled steps, checkpoints, and the reporter."""

    train_steps: Phases
    """(iterator, num_steps, preempted) -> the steps' statistics over every replica; compiled
    again for each phase of a fine-tune (``enter(epoch)``)."""
    evaluate: Callable[..., EvalResult]
    """(split name, confusion=) -> its figures over the whole split, across every worker."""
    sync_statistics: Callable[[], None]
    checkpoint: tf.train.Checkpoint
    step: tf.Variable
    """The checkpointed step counter (``_save`` keeps it in step with the checkpoint's)."""
    manager: tf.train.CheckpointManager
    reporter: Reporter
    selection: Selection
    """The best epoch so far and early stopping, checkpointed with the rest."""
    iterator: Any = field(default=None)
    """The distributed training batches, from the restored step on."""
    validated: dict[int, EvalResult] = field(default_factory=dict)  # Last and best epoch's.


@dataclass(frozen=True)
class _Trained:
    step: int
    final: dict[str, Any]
    """The last epoch's train/val loss and accuracy, as metrics.json reports them."""
    images_per_second: float | None
    epochs_trained: int


def _train(ctx: _Context) -> Result:
    """From decoding to export (and the chief's report): the rest of the run's story."""
    from job import collector

    _set_tf_config(ctx.cluster)  # Before TensorFlow loads, which may read it then.
    with collector.paused_for_import():
        from job import distributed, export  # TensorFlow and Keras
    started = _start(ctx)
    _check_trainable(ctx, started)
    ctx.preemption.raise_if_set()
    model, loop = _build(ctx, started)
    start_step = distributed.restore(loop.checkpoint, ctx.run.shared_checkpoints,
                                     log=ctx.log, tag=ctx.log.tag)
    loop.iterator = _train_iterator(ctx, started, start_step=start_step)
    try:
        trained = _train_epochs(ctx, started.plan, loop=loop, start_step=start_step)
        loop.train_steps.finish()  # Every layer trainable again, as built, for export.
    except distributed.PEER_ERRORS as error:
        if not ctx.cluster.is_multi_worker:
            raise
        raise RetryableError(f"lost contact with a peer worker ({type(error).__name__}); "
                             "restart the group to resume from the last checkpoint") from None
    metrics = {**_exported_figures(loop, trained), **_test(started, loop),
               **_run_facts(ctx, started, trained=trained, start_step=start_step)}
    if started.precision.is_mixed:
        model = export.float32_copy(model, build=lambda: _build_model(ctx, weights=None))
    predictions = export.export(ctx.run, model, metrics=metrics, spec=ctx.spec,
                                decoded=started.decoded, log=ctx.log)
    if ctx.cluster.is_chief:  # A report that cannot be drawn is a warning, never a failure.
        export.report(predictions, metrics=metrics, reporter=loop.reporter, items=ctx.splits.val,
                      decoded=started.decoded["val"], cluster=ctx.cluster)
    return Result(metrics=metrics, run_dir=ctx.run.shared)


def _start(ctx: _Context) -> _Started:
    """Decode this worker's shard while the strategy starts and the cluster connects.

    It runs in the background while the workers find each other; TensorFlow is loaded
    before it starts (decoding P4's small images during the import, both mostly Python
    under one GIL, ended the first epoch 0.5 s later). On Ctrl-C or an error the decode
    stops after the image in hand (``rows.aborting``), not after the whole shard.
    """
    from job import distributed, rows

    spec, cluster = ctx.spec, ctx.cluster
    background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-shards")
    try:
        decoding = background.submit(_decode_shards, ctx)
        distributed.seed(spec.train.seed)
        strategy = distributed.make_strategy(
            cluster, timeout_seconds=spec.train.collective_timeout_seconds)
        # MultiWorkerMirroredStrategy's runtime takes SIGTERM over at start-up (its own
        # preemption notifier); take it back so SIGTERM reaches the flag the loop shares.
        ctx.preemption.reinstall()
        plan = distributed.Plan.make(spec, strategy=strategy, cluster=cluster,
                          num_train=len(ctx.splits.train))
        precision = distributed.set_precision(strategy, spec, cluster=cluster)
        ctx.log.tagged(f"run {ctx.run.shared.name}: {ctx.splits.describe()}")
        ctx.log.tagged(f"{plan.num_replicas} replica(s), batch {spec.train.global_batch_size} "
                       f"({plan.replica_batch} per replica)")
        ctx.log.tagged(precision.describe())
        _, decoded = decoding.result()
    except BaseException:
        with rows.aborting():
            background.shutdown(wait=True, cancel_futures=True)
        raise
    background.shutdown()
    return _Started(strategy=strategy, plan=plan, precision=precision, decoded=decoded)


def _set_tf_config(cluster: Cluster) -> None:
    """TF_CONFIG for this worker (TensorFlow reads it at import), and quiet C++ logs."""
    tf_config = cluster_module.tf_config_for(cluster)
    if tf_config:
        os.environ[cluster_module.TF_CONFIG_ENV] = tf_config
    else:
        os.environ.pop(cluster_module.TF_CONFIG_ENV, None)
    # 3: its C++ start-up chatter is noise to users; failures still raise in Python.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _decode_shards(ctx: _Context):
    """This worker's shard of every split, decoded (through the cache) before training."""
    from job import data

    cache_dir = ctx.spec.data.cache_dir or Path(ctx.env.get("TMPDIR", "/tmp")) / "trainjob-cache"
    return data.decode_shards(ctx.splits, spec=ctx.spec.data, cache_dir=cache_dir,
                              index=ctx.cluster.index, num_workers=ctx.cluster.num_workers)


def _check_trainable(ctx: _Context, started: _Started) -> None:
    """Refuse data a model cannot learn, from every worker's readable images per class:
    one all-reduce of the counts, so every worker refuses (or warns) alike."""
    from job import data, distributed

    num_classes = len(ctx.splits.class_names)
    counts = np.concatenate([started.decoded["train"].counts(num_classes),
                             started.decoded["val"].counts(num_classes)])
    totals = np.rint(distributed.sum_over_workers(
        started.strategy, counts, local_replicas=started.plan.local_replicas)).astype(int)
    warnings = data.check_trainable(ctx.splits.class_names, train_counts=totals[:num_classes],
                                    val_counts=totals[num_classes:])
    if ctx.cluster.is_chief:
        for line in warnings:
            print(line, file=sys.stderr, flush=True)


def _build(ctx: _Context, started: _Started) -> tuple[Any, _Loop]:
    """Create every variable under the strategy's scope, and the functions that use them."""
    import keras
    import tensorflow as tf

    from job import distributed, fine_tune
    from job.reporter import Reporter
    from job.run_dir import CHECKPOINT_NAME
    from job.selection import Selection

    spec, strategy, plan = ctx.spec, started.strategy, started.plan
    # The step the checkpoint was taken at, saved with it. Not optimizer.iterations:
    # under float16 loss scaling a step whose gradients overflowed is skipped without
    # counting, so the optimizer's count falls behind the batches already consumed.
    # Plain (not mirrored): every worker assigns it the same number before saving.
    step = tf.Variable(0, dtype="int64", trainable=False, name="step")
    with strategy.scope():
        model = _build_model(ctx, weights=spec.model.weights)
        optimizer = distributed.make_optimizer(spec)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)
        train_steps = fine_tune.Phases(spec, strategy=strategy, model=model,
                                       optimizer=optimizer, loss_fn=loss_fn)  # Builds it.
        # Dropout and augmentation draw from SeedGenerator states, which a checkpoint of
        # the model alone misses: without them a resumed run draws other random masks.
        weights = {id(v) for v in model.weights}
        random_states = [v for v in model.variables if id(v) not in weights]
    selection = Selection(spec, model)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step,
                                     random_states=random_states, **selection.trackables())
    return model, _Loop(
        train_steps=train_steps,
        evaluate=_evaluator(ctx, started, distributed.make_evaluator(strategy, model, loss_fn)),
        sync_statistics=distributed.make_statistics_sync(strategy, model),
        checkpoint=checkpoint, step=step,
        manager=tf.train.CheckpointManager(checkpoint, str(ctx.run.checkpoints),
                                           max_to_keep=spec.output.keep_checkpoints,
                                           checkpoint_name=CHECKPOINT_NAME),
        reporter=Reporter(run=ctx.run, total_steps=plan.total_steps,
                          steps_per_epoch=plan.steps_per_epoch,
                          every=spec.train.log_every_steps, out=ctx.log.out),
        selection=selection,
    )


def _build_model(ctx: _Context, *, weights):
    from job.model import build_model

    spec = ctx.spec
    return build_model(input_shape=spec.data.image_shape,
                       num_classes=len(ctx.splits.class_names),
                       model=replace(spec.model, weights=weights), seed=spec.train.seed)


def _train_iterator(ctx: _Context, started: _Started, *, start_step: int):
    """The distributed training batches from ``start_step`` to the run's last step."""
    from job import pipeline

    plan = started.plan
    return iter(started.strategy.distribute_datasets_from_function(
        lambda _: pipeline.train_batches(
            started.decoded["train"], batch_size=plan.replica_batch,
            start_batch=start_step * plan.local_replicas,
            num_batches=(plan.total_steps - start_step) * plan.local_replicas,
            seed=ctx.spec.train.seed, worker=ctx.cluster.index)))


def _evaluator(ctx: _Context, started: _Started, evaluate_batches):
    """``evaluate(name, confusion=False) -> EvalResult``: a whole split, across all workers."""
    from job import data, pipeline

    plan, datasets = started.plan, {}

    def evaluate(name: str, *, confusion: bool = False) -> EvalResult:
        if name not in datasets:
            steps = data.eval_batch_count(len(getattr(ctx.splits, name)),
                                          num_workers=ctx.cluster.num_workers,
                                          batch_size=plan.replica_batch * plan.local_replicas)
            datasets[name] = steps, started.strategy.distribute_datasets_from_function(
                lambda _: pipeline.eval_batches(started.decoded[name],
                                            batch_size=plan.replica_batch,
                                            num_batches=steps * plan.local_replicas))
        steps, dataset = datasets[name]
        return evaluate_batches(dataset, steps, confusion=confusion)

    return evaluate


def _train_epochs(ctx: _Context, plan: Plan, *, loop: _Loop, start_step: int) -> _Trained:
    """Train from ``start_step`` to the last epoch (or an early stop), validating each."""
    last_train = loop.reporter.resume(start_step)
    step, seconds, images, final = start_step, 0.0, 0, None
    for epoch in range(start_step // plan.steps_per_epoch, ctx.spec.train.epochs):
        if loop.selection.should_stop:
            break  # Restarted after an early stop: it stays stopped.
        loop.train_steps.enter(epoch, log=loop.reporter.line)  # Its phase of a fine-tune.
        first_step, began = step, time.perf_counter()
        step, stats = _train_epoch(ctx, plan, loop=loop, epoch=epoch, step=step)
        epoch_seconds = time.perf_counter() - began
        seconds += epoch_seconds
        images += (step - first_step) * ctx.spec.train.global_batch_size
        row = _end_epoch(ctx, loop, epoch=epoch, step=step, row={
            "train_loss": stats.loss, "train_accuracy": stats.accuracy, "seconds": epoch_seconds,
            "images_per_second": (step - first_step) * ctx.spec.train.global_batch_size
            / max(epoch_seconds, 1e-9)})
        final = {k: v for k, v in row.items() if k.startswith(("train_", "val_"))}
        if loop.selection.should_stop:
            loop.reporter.line(loop.selection.describe_stop(epoch + 1))
            break
    return _Trained(step=step, final=final or dict(last_train),
                    images_per_second=images / seconds if seconds else None,
                    epochs_trained=step // plan.steps_per_epoch)


def _train_epoch(ctx: _Context, plan: Plan, *, loop: _Loop, epoch: int,
                 step: int) -> tuple[int, StepStats]:
    """The rest of ``epoch`` from ``step``: calls of several steps, checkpoints between."""
    from job import distributed

    spec, every = ctx.spec, ctx.spec.output.checkpoint_every_steps
    first_step, began, stats = step, time.perf_counter(), distributed.StepStats()
    while step < (epoch + 1) * plan.steps_per_epoch:
        # Several steps per call, but never past an epoch end or a checkpoint.
        chunk = min(spec.train.steps_per_call, (epoch + 1) * plan.steps_per_epoch - step,
                    every - step % every)
        done = loop.train_steps(loop.iterator, chunk, ctx.preemption.set)
        _check_finite(done.loss, step=step + chunk, epoch=epoch, ctx=ctx, loop=loop)
        step, stats = step + chunk, stats.merged(done)
        loop.reporter.on_chunk(step=step, epoch=epoch, stats=stats, images_per_second=(
            (step - first_step) * spec.train.global_batch_size
            / max(time.perf_counter() - began, 1e-9)))
        if done.preempted:
            with ctx.preemption.saving():
                distributed.save(loop.manager, loop.step, step)
            loop.reporter.line(f"{ctx.log.tag}: preempted (SIGTERM): checkpoint saved at step "
                               f"{step}; exiting to be restarted")
            raise Preempted(f"preempted (SIGTERM): checkpoint saved at step {step}; "
                            "restart the group to resume")
        if step % every == 0 and step < (epoch + 1) * plan.steps_per_epoch:
            distributed.save(loop.manager, loop.step, step)  # The epoch's end saves after
    return step, stats                                       # validation (_end_epoch).


def _end_epoch(ctx: _Context, loop: _Loop, *, epoch: int, step: int,
               row: dict[str, Any]) -> dict[str, Any]:
    """Sync statistics, validate, select, record the history, checkpoint: the epoch's row.

    The history is written before the checkpoint, and the selection (best epoch, early
    stopping) goes into it: a restart from this checkpoint finds all three agreeing, and
    one from an earlier checkpoint drops the rows after it.
    """
    from job import distributed

    loop.sync_statistics()
    val = loop.evaluate("val")
    _check_finite(val.loss, step=step, epoch=epoch, ctx=ctx, loop=loop, what="val_loss")
    loop.selection.on_epoch_end(epoch + 1, loss=val.loss, accuracy=val.accuracy)
    row = {"epoch": epoch + 1, "step": step, **row, **val._replace(confusion=None).figures("val")}
    best = loop.selection.best
    loop.validated = {e: r for e, r in loop.validated.items() if e == best} | {epoch + 1: val}
    loop.reporter.on_epoch_end(row, epochs=ctx.spec.train.epochs)
    distributed.save(loop.manager, loop.step, step)  # Every epoch end is a checkpoint too.
    return row


def _exported_figures(loop: _Loop, trained: _Trained) -> dict[str, Any]:
    """The figures of the weights to export (the best epoch's, or the last's), with the
    confusion matrix (validated again unless that epoch's validation in this process, of the
    same weights, counted it); and which epoch they are."""
    best = loop.selection.use_best()
    epoch = best or trained.epochs_trained
    row = next((r for r in loop.reporter.history if int(r["epoch"]) == epoch), None)
    train = ({k: float(row[k]) for k in ("train_loss", "train_accuracy") if row.get(k) != ""}
             if best and row else {k: v for k, v in trained.final.items()
                                   if k.startswith("train_")})
    val = loop.validated.get(epoch)
    if val is None or val.confusion is None:
        val = loop.evaluate("val", confusion=True)
    return {**train, **val.figures("val"),
            **loop.selection.facts(exported_epoch=epoch, epochs_trained=trained.epochs_trained)}


def _check_finite(value: float, *, step: int, epoch: int, ctx: _Context, loop: _Loop,
                  what: str = "the training loss") -> None:
    """Stop a run whose loss is NaN or infinite before it checkpoints or exports it: every
    worker sees the same all-reduced loss, so all stop at the same step. The last checkpoint
    was taken before the loss went bad; no model.h5 is written."""
    if np.isfinite(value):
        return
    latest = loop.manager.latest_checkpoint
    kept = (f"the last good checkpoint is {Path(latest).name}" if latest
            else "no checkpoint was taken before it")
    raise Diverged(f"training diverged: {what} became {value} by step {step} (epoch "
                   f"{epoch + 1}); {kept}, and no model was exported; lower "
                   f"train.learning_rate (now {ctx.spec.train.learning_rate:g}) and use "
                   "--restart or a new --run-id")


def _test(started: _Started, loop: _Loop) -> dict[str, Any]:
    """The test split's loss, accuracy and confusion matrix, when the run has one."""
    if "test" not in started.decoded:
        return {}
    test = loop.evaluate("test", confusion=True)
    loop.reporter.line(f"test: loss {test.loss:.4f} accuracy {test.accuracy:.4f}")
    return test.figures("test")


def _run_facts(ctx: _Context, started: _Started, *, trained: _Trained,
               start_step: int) -> dict[str, Any]:
    """metrics.json's figures about the run itself, beyond its losses and accuracies."""
    import keras
    import tensorflow as tf

    from job import distributed

    spec, plan = ctx.spec, started.plan
    bad = distributed.gather_bad_files(started.strategy, ctx.splits, started.decoded,
                                       local_replicas=started.plan.local_replicas)
    return {
        "epochs": spec.train.epochs, "steps": trained.step,
        "steps_per_epoch": plan.steps_per_epoch, "resumed_from_step": start_step,
        "images_per_second": trained.images_per_second,
        "workers": ctx.cluster.num_workers, "replicas": plan.num_replicas,
        "global_batch_size": spec.train.global_batch_size,
        "precision": started.precision.policy,
        "duration_seconds": time.time() - ctx.started,
        "skipped_images": len(bad), "skipped_files": [{"path": p, "reason": r} for p, r in bad],
        "classes": list(ctx.splits.class_names),
        "tensorflow_version": tf.__version__, "keras_version": keras.__version__,
        "python_version": platform.python_version(), "run_id": ctx.run.shared.name,
    }
