"""One worker's run: the distributed training loop and the story of a run.

Owns: strategy creation (after TF_CONFIG is set), setting the dtype policy that
``job.precision`` chooses (and the workers' agreement on it), the custom
distributed loop (``strategy.run`` inside ``tf.function``, loss scaled by the
global batch, Keras 3 optimizer, losses and metrics), validation every epoch,
checkpoints and resume, preemption (SIGTERM) handling, lost-peer handling, the
float32 export of a mixed-precision model, and the order of a run: data,
strategy, precision, model, loop, export.
Never touches: kubernetes, argument parsing, image decoding (``job.data``), the
layout of the run directory (``job.run_dir``).

Why a custom loop: ``model.fit`` under MultiWorkerMirroredStrategy with two or
more workers fails in Keras 3 (keras-team/keras#20585, tensorflow#72388).
Why the default strategy for one worker: the same ``run``/``reduce``/``scope``
code path, without MultiWorkerMirroredStrategy's ~2.7x single-worker overhead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from job import cluster as cluster_module
from job import precision as precision_module
from job import spec as spec_module
from job.errors import EXIT_OK, RetryableError, RunFailed, StorageError
from job.spec import Spec

CHECKPOINT_NAME = "ckpt"


class Preempted(RetryableError):
    """SIGTERM reached a worker; the group saved a checkpoint and stops to be restarted."""


class Diverged(RunFailed):
    """The loss became NaN or infinite: a restart would diverge again (exit 1)."""


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

    The story of a run: guard SIGTERM, list the data, claim the run directory
    (``job.rerun``: a complete run is reported and left alone, a different one
    refused), create the strategy, decode this worker's shard, build the model and
    optimizer under the strategy's scope, restore the last checkpoint, loop over
    epochs (validating each), then evaluate the test set and export.
    ``restart`` discards the run directory's old run first (``--restart``).
    """
    from job import data, rerun
    from job.run_dir import RunDir

    env = dict(os.environ if env is None else env)
    out = out or sys.stdout
    started = time.time()
    spec_module.check_worker_count(spec, cluster.num_workers)
    splits = data.make_splits(spec.data, seed=spec.train.seed)
    run = RunDir.open(spec.output.dir, run_id, is_chief=cluster.is_chief, worker=cluster.index,
                      env=env)
    claim = rerun.claim(run, spec, splits, restart=restart,
                        multi_worker=cluster.is_multi_worker)
    preemption = _PreemptionFlag.install()
    try:
        if claim.complete is not None:
            print(rerun.describe_complete(run, claim.complete), file=out, flush=True)
            return Result(metrics=claim.complete, run_dir=run.shared)
        return _train(spec, cluster=cluster, run=run, splits=splits, env=env, out=out,
                      started=started, preemption=preemption)
    except BaseException:
        claim.abandon(run)
        raise
    finally:
        preemption.uninstall()
        claim.release()


def _train(spec, *, cluster, run, splits, env, out, started, preemption) -> Result:
    from job import data
    from job.progress import Progress

    run_id = run.shared.name
    log = Progress(total_steps=1, steps_per_epoch=1, every=1, out=out).line
    # Decoding needs only Pillow: it runs while TensorFlow imports and the cluster
    # connects, which would otherwise leave the cores idle for seconds.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-shards") as background:
        decoding = background.submit(_decode_shards, spec, splits, cluster=cluster, env=env)
        tf, keras = _import_tensorflow(cluster, spec)
        strategy = _make_strategy(tf, cluster,
                                  timeout_seconds=spec.train.collective_timeout_seconds)
        # MultiWorkerMirroredStrategy's runtime takes SIGTERM over at start-up (its own
        # preemption notifier); take it back so SIGTERM reaches the flag the loop shares.
        preemption.reinstall()
        plan = _Plan.make(spec, strategy=strategy, cluster=cluster, num_train=len(splits.train))
        precision = _set_precision(tf, keras, strategy, spec, cluster=cluster)
        tag = f"worker {cluster.index}/{cluster.num_workers}"
        log(f"{tag}: run {run_id}: {_describe_splits(splits)}; {plan.num_replicas} replica(s), "
            f"batch {spec.train.global_batch_size} ({plan.replica_batch} per replica); "
            f"{precision.describe()}")
        shards, decoded = decoding.result()
    preemption.raise_if_set()
    model, loop = _build(tf, keras, strategy, spec, plan=plan,
                         num_classes=len(splits.class_names), run=run, out=out)
    start_step = _restore(tf, loop, run.shared_checkpoints, log=log, tag=tag)
    evaluate = _evaluator(strategy, loop, decoded, splits=splits, plan=plan, cluster=cluster)
    train_iterator = iter(strategy.distribute_datasets_from_function(
        lambda _: data.train_batches(
            decoded["train"], batch_size=plan.replica_batch,
            start_batch=start_step * plan.local_replicas,
            num_batches=(plan.total_steps - start_step) * plan.local_replicas,
            seed=spec.train.seed, worker=cluster.index)))

    try:
        trained = _train_epochs(tf, spec, plan=plan, loop=loop, iterator=train_iterator,
                                evaluate=evaluate, start_step=start_step, run=run,
                                preemption=preemption, tag=tag)
    except tf.errors.OpError as error:
        if cluster.is_multi_worker and isinstance(error, _peer_errors(tf)):
            raise RetryableError(f"lost contact with a peer worker ({type(error).__name__}); "
                                 "restart the group to resume from the last checkpoint") from None
        raise

    test_metrics = {}
    if "test" in decoded:
        test_loss, test_accuracy = evaluate("test")
        test_metrics = {"test_loss": test_loss, "test_accuracy": test_accuracy}
        loop.progress.line(f"test: loss {test_loss:.4f} accuracy {test_accuracy:.4f}")
    bad = _gather_bad_files(tf, strategy, splits, shards, decoded, plan.local_replicas)
    metrics = {
        **trained.final, **test_metrics,
        "epochs": spec.train.epochs, "steps": trained.step,
        "steps_per_epoch": plan.steps_per_epoch, "resumed_from_step": start_step,
        "images_per_second": trained.images_per_second,
        "workers": cluster.num_workers, "replicas": plan.num_replicas,
        "global_batch_size": spec.train.global_batch_size, "precision": precision.policy,
        "duration_seconds": time.time() - started,
        "skipped_images": len(bad), "skipped_files": [{"path": p, "reason": r} for p, r in bad],
        "classes": list(splits.class_names),
        "tensorflow_version": tf.__version__, "keras_version": keras.__version__,
        "python_version": platform.python_version(), "run_id": run_id,
    }
    if precision.is_mixed:
        model = _float32_copy(tf, keras, model, spec, plan=plan,
                              num_classes=len(splits.class_names))
    _export(run, model, metrics=metrics, spec=spec, class_names=splits.class_names, log=log,
            tag=tag)
    return Result(metrics=metrics, run_dir=run.shared)


@dataclass(frozen=True)
class _Plan:
    """How the global batch and the steps divide over this run's replicas."""

    num_replicas: int
    local_replicas: int
    """Replicas in this worker (GPUs); each gets its own per-replica batches."""
    replica_batch: int
    steps_per_epoch: int
    total_steps: int
    input_shape: tuple[int, int, int]

    @classmethod
    def make(cls, spec: Spec, *, strategy, cluster, num_train: int) -> _Plan:
        from job import data

        num_replicas = strategy.num_replicas_in_sync
        spec_module.check_worker_count(spec, num_replicas, unit="replicas")
        steps_per_epoch = data.steps_per_epoch(num_train, spec.train.global_batch_size)
        return cls(num_replicas=num_replicas,
                   local_replicas=max(1, num_replicas // cluster.num_workers),
                   replica_batch=spec.train.global_batch_size // num_replicas,
                   steps_per_epoch=steps_per_epoch,
                   total_steps=steps_per_epoch * spec.train.epochs,
                   input_shape=spec.data.image_shape)


@dataclass(frozen=True)
class _Loop:
    """What the epoch loop drives: compiled steps, checkpoints, summaries and progress."""

    train_steps: Any
    eval_steps: Any
    sync_statistics: Any
    checkpoint: Any
    step: Any
    """The checkpointed step counter (``_save`` keeps it in step with the checkpoint's)."""
    manager: Any
    writer: Any
    progress: Any


@dataclass(frozen=True)
class _Trained:
    step: int
    final: dict[str, Any]
    """The last epoch's train/val loss and accuracy, as metrics.json reports them."""
    images_per_second: float | None


def _describe_splits(splits) -> str:
    test = f", {len(splits.test)} test" if splits.test is not None else ""
    return (f"{len(splits.train)} train, {len(splits.val)} validation{test} images in "
            f"{len(splits.class_names)} classes")


def _decode_shards(spec: Spec, splits, *, cluster, env: Mapping[str, str]):
    """This worker's shard of every split, decoded (through the cache) before training."""
    from job import data

    cache_dir = spec.data.cache_dir or Path(env.get("TMPDIR", "/tmp")) / "trainjob-cache"
    shards = {name: data.shard(items, index=cluster.index, num_workers=cluster.num_workers)
              for name, items in (("train", splits.train), ("val", splits.val),
                                  ("test", splits.test)) if items is not None}
    decoded = {name: data.decode(items, spec=spec.data, cache_dir=cache_dir,
                                 workers=spec.data.decode_workers)
               for name, items in shards.items()}
    return shards, decoded


def _build(tf, keras, strategy, spec: Spec, *, plan: _Plan, num_classes: int, run,
           out) -> tuple[Any, _Loop]:
    """Create every variable under the strategy's scope, and the functions that use them."""
    from job.progress import Progress

    # The step the checkpoint was taken at, saved with it. Not optimizer.iterations:
    # under float16 loss scaling a step whose gradients overflowed is skipped without
    # counting, so the optimizer's count falls behind the batches already consumed.
    # Plain (not mirrored): every worker assigns it the same number before saving.
    step = tf.Variable(0, dtype="int64", trainable=False, name="step")
    with strategy.scope():
        model = _build_model(spec, plan=plan, num_classes=num_classes,
                             weights=spec.model.weights)
        optimizer = _make_optimizer(keras, spec)
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)
        # Dropout and augmentation draw from SeedGenerator states, which a checkpoint of
        # the model alone misses: without them a resumed run draws other random masks.
        weights = {id(v) for v in model.weights}
        random_states = [v for v in model.variables if id(v) not in weights]
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                         random_states=random_states, step=step)
    is_chief = run.is_chief
    return model, _Loop(
        train_steps=_make_train_steps(tf, keras, strategy, model, optimizer, loss_fn,
                                      global_batch=spec.train.global_batch_size),
        eval_steps=_make_eval_steps(tf, keras, strategy, model, loss_fn),
        sync_statistics=_make_statistics_sync(tf, strategy, model),
        checkpoint=checkpoint,
        step=step,
        manager=tf.train.CheckpointManager(checkpoint, str(run.checkpoints),
                                           max_to_keep=spec.output.keep_checkpoints,
                                           checkpoint_name=CHECKPOINT_NAME),
        writer=_summary_writer(tf, run),
        progress=Progress(total_steps=plan.total_steps, steps_per_epoch=plan.steps_per_epoch,
                          every=spec.train.log_every_steps, out=out, enabled=is_chief),
    )


def _summary_writer(tf, run):
    """The chief's TensorBoard writer; a folder it cannot write to is a StorageError."""
    if not run.is_chief:
        return tf.summary.create_noop_writer()
    try:
        return tf.summary.create_file_writer(str(run.logs))
    except (tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError) as error:
        raise StorageError(f"{run.logs}: cannot write TensorBoard summaries: "
                           f"{str(error).split(';')[-1].split('[Op:')[0].strip()}; make the "
                           "run folder writable or free space") from None


def _build_model(spec: Spec, *, plan: _Plan, num_classes: int, weights):
    from job.model import build_model

    return build_model(input_shape=plan.input_shape, num_classes=num_classes,
                       backbone=spec.model.backbone, weights=weights,
                       dropout=spec.model.dropout, augment=spec.model.augment,
                       seed=spec.train.seed)


def _float32_copy(tf, keras, model, spec: Spec, *, plan: _Plan, num_classes: int):
    """The trained ``model`` rebuilt with float32 layers, for export.

    Mixed precision keeps every variable in float32, so the weights carry over
    exactly; only the layers' compute dtype changes. A float32 model.h5 predicts
    the same on any machine, where a bfloat16 one would crawl on CPUs without
    native bfloat16. The copy lives in host memory: saving reads it from there
    anyway, and a second set of weights must not crowd a full GPU at the end.
    """
    keras.mixed_precision.set_global_policy("float32")
    with tf.device("/CPU:0"):
        copy = _build_model(spec, plan=plan, num_classes=num_classes, weights=None)
        copy.set_weights(model.get_weights())
    return copy


def _evaluator(strategy, loop: _Loop, decoded, *, splits, plan: _Plan, cluster):
    """``evaluate(name) -> (loss, accuracy)`` over the whole split, across all workers."""
    from job import data

    datasets = {}

    def evaluate(name: str) -> tuple[float, float]:
        if name not in datasets:
            steps = data.eval_batch_count(len(getattr(splits, name)),
                                          num_workers=cluster.num_workers,
                                          batch_size=plan.replica_batch * plan.local_replicas)
            datasets[name] = steps, strategy.distribute_datasets_from_function(
                lambda _: data.eval_batches(decoded[name], batch_size=plan.replica_batch,
                                            num_batches=steps * plan.local_replicas))
        steps, dataset = datasets[name]
        return _evaluate(loop.eval_steps, dataset, steps)

    return evaluate


def _train_epochs(tf, spec: Spec, *, plan: _Plan, loop: _Loop, iterator, evaluate,
                  start_step: int, run, preemption, tag: str) -> _Trained:
    """Train from ``start_step`` to the last epoch, validating and checkpointing each."""
    history = ([row for row in run.read_history() if int(row.get("step") or 0) <= start_step]
               if run.is_chief else [])
    step, seconds, images, final = start_step, 0.0, 0, None
    for epoch in range(start_step // plan.steps_per_epoch, spec.train.epochs):
        first_step, started = step, time.perf_counter()
        sums = [0.0, 0.0, 0.0]
        while step < (epoch + 1) * plan.steps_per_epoch:
            # Several steps per call, but never past an epoch end or a checkpoint.
            every = spec.output.checkpoint_every_steps
            chunk = min(spec.train.steps_per_call, (epoch + 1) * plan.steps_per_epoch - step,
                        every - step % every)
            result = loop.train_steps(iterator, tf.constant(chunk, "int32"),
                                      preemption.tensor(tf)).numpy().tolist()
            _check_finite(result[0], step=step + chunk, epoch=epoch, spec=spec, loop=loop)
            step += chunk
            sums = [a + b for a, b in zip(sums, result[:3])]
            rate = ((step - first_step) * spec.train.global_batch_size
                    / max(time.perf_counter() - started, 1e-9))
            if loop.progress.step(step=step, epoch=epoch, loss=sums[0] / sums[2],
                                  accuracy=sums[1] / sums[2], images_per_second=rate):
                _summaries(tf, loop.writer, step, {"train/loss": sums[0] / sums[2],
                                                   "train/accuracy": sums[1] / sums[2],
                                                   "train/images_per_second": rate})
            if result[3] > 0:
                with preemption.saving():
                    _save(loop, step)
                loop.progress.line(f"{tag}: preempted (SIGTERM): checkpoint saved at step "
                                   f"{step}; exiting to be restarted")
                raise Preempted(f"preempted (SIGTERM): checkpoint saved at step {step}; "
                                "restart the group to resume")
            if step % every == 0:
                _save(loop, step)
        epoch_seconds = time.perf_counter() - started
        seconds += epoch_seconds
        images += (step - first_step) * spec.train.global_batch_size
        loop.sync_statistics()
        val_loss, val_accuracy = evaluate("val")
        _check_finite(val_loss, step=step, epoch=epoch, spec=spec, loop=loop, what="val_loss")
        if step % spec.output.checkpoint_every_steps:
            _save(loop, step)  # Every epoch end is a checkpoint too.
        row = {"epoch": epoch + 1, "step": step, "train_loss": sums[0] / sums[2],
               "train_accuracy": sums[1] / sums[2], "val_loss": val_loss,
               "val_accuracy": val_accuracy,
               "images_per_second": (step - first_step) * spec.train.global_batch_size
               / max(epoch_seconds, 1e-9), "seconds": epoch_seconds}
        _summaries(tf, loop.writer, step, {"val/loss": val_loss, "val/accuracy": val_accuracy})
        loop.progress.line(f"epoch {epoch + 1}/{spec.train.epochs}: loss {row['train_loss']:.4f} "
                           f"accuracy {row['train_accuracy']:.4f} val_loss {val_loss:.4f} "
                           f"val_accuracy {val_accuracy:.4f} "
                           f"({row['images_per_second']:.0f} images/s)")
        if run.is_chief:
            history.append(row)
            run.write_history(history)
        final = {k: row[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")}
    if final is None:
        # Restarted after the last step (the export had not finished): nothing to train,
        # but the outputs are re-derived, the train figures from the history's last row.
        val_loss, val_accuracy = evaluate("val")
        last = history[-1] if history else {}
        final = {"train_loss": _number(last.get("train_loss")),
                 "train_accuracy": _number(last.get("train_accuracy")),
                 "val_loss": val_loss, "val_accuracy": val_accuracy}
    return _Trained(step=step, final=final, images_per_second=images / seconds if seconds
                    else None)


def _save(loop: _Loop, step: int) -> None:
    """Checkpoint ``step``; a file system that refuses it is a StorageError (exit 2).

    TensorFlow says ResourceExhausted for a full disk and PermissionDenied for a
    read-only one; either way, restarting would fail again, so it is not retried.
    What the failed save left (``ckpt-N_temp/``) is removed by the run's clean-up.
    """
    import tensorflow as tf

    loop.step.assign(step)
    try:
        loop.manager.save(checkpoint_number=step)
    except (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError) as error:
        reason = str(error).split(";")[-1].split("[Op:")[0].strip() or type(error).__name__
        raise StorageError(f"{loop.manager.directory}: cannot save the checkpoint of step "
                           f"{step}: {reason}; free space or make it writable, then rerun "
                           "with the same run id to resume from the last checkpoint") from None


def _check_finite(value: float, *, step: int, epoch: int, spec: Spec, loop: _Loop,
                  what: str = "the training loss") -> None:
    """Stop a run whose loss is NaN or infinite before it checkpoints or exports it.

    Every worker sees the same all-reduced loss, so all of them stop at the same step.
    The last checkpoint was taken before the loss went bad; no model.h5 is written.
    """
    if math.isfinite(value):
        return
    latest = loop.manager.latest_checkpoint
    kept = f"the last good checkpoint is {Path(latest).name}" if latest else \
        "no checkpoint was taken before it"
    raise Diverged(f"training diverged: {what} became {value} by step {step} (epoch "
                   f"{epoch + 1}); {kept}, and no model was exported; lower "
                   f"train.learning_rate (now {spec.train.learning_rate:g}) and use --restart "
                   "or a new --run-id")


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _summaries(tf, writer, step: int, scalars: dict[str, float]) -> None:
    with writer.as_default(step=step):
        for name, value in scalars.items():
            tf.summary.scalar(name, value)
    writer.flush()


def _export(run, model, *, metrics: dict[str, Any], spec: Spec, class_names, log,
            tag: str) -> None:
    """Save the model and, on the chief, the run's metadata; non-chief scratch is removed."""
    metrics["weights_sha256"] = _weights_sha256(model)
    # Every worker saves (collectives may need all of them); only the chief's is shared.
    model_path, metrics["model_sha256"] = run.save_model(model)
    run.write_text("weights.sha256", metrics["weights_sha256"] + "\n")
    if run.is_chief:
        run.write_json("labels.json", list(class_names))
        run.write_spec(spec.to_dict())
        run.write_json("metrics.json", metrics)
        log(f"model: {model_path}")
        log(f"metrics: {run.root / 'metrics.json'} (val_accuracy "
            f"{metrics['val_accuracy']:.4f})")
    else:
        log(f"{tag}: done at step {metrics['steps']}; weights sha256 "
            f"{metrics['weights_sha256'][:16]}")
    run.cleanup()


def _peer_errors(tf):
    return (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.CancelledError, tf.errors.AbortedError, tf.errors.InternalError,
            tf.errors.UnknownError, tf.errors.FailedPreconditionError)


def _import_tensorflow(cluster, spec: Spec):
    """Set TF_CONFIG and quiet logs, then import TensorFlow and Keras (order matters)."""
    tf_config = cluster_module.tf_config_for(cluster)
    if tf_config:
        os.environ["TF_CONFIG"] = tf_config
    else:
        os.environ.pop("TF_CONFIG", None)
    # 3: TensorFlow's C++ start-up chatter (no CUDA driver, CPU features) is noise to users;
    # real failures still surface as Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(spec.train.seed)
    return tf, keras


def _set_precision(tf, keras, strategy, spec: Spec, *, cluster) -> precision_module.Choice:
    """Choose the dtype policy (``job.precision``), agree on it across workers, set it."""
    choice = precision_module.choose(
        spec.train.mixed_precision, gpu_capabilities=precision_module.gpu_capabilities(tf),
        cpu_flags=precision_module.cpu_flags(), replicas=strategy.num_replicas_in_sync)
    if cluster.is_multi_worker and spec.train.mixed_precision == "auto":
        # Loss scaling changes the step and the checkpoint: every worker must train
        # alike, so one worker whose hardware says float32 makes them all float32.
        votes = _all_reducer(tf, strategy, tf.distribute.ReduceOp.SUM,
                             lambda: tf.constant([0.0 if choice.is_mixed else 1.0]))()
        if votes[0] > 0 and choice.is_mixed:
            choice = precision_module.PEER_FLOAT32
    keras.mixed_precision.set_global_policy(choice.policy)
    return choice


def _make_strategy(tf, cluster, *, timeout_seconds: int):
    if cluster.is_multi_worker:
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=float(timeout_seconds))
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _make_optimizer(keras, spec: Spec):
    rate = spec.train.learning_rate
    optimizer = {
        "adam": lambda: keras.optimizers.Adam(rate),
        "adamw": lambda: keras.optimizers.AdamW(rate),
        "sgd": lambda: keras.optimizers.SGD(rate, momentum=0.9),
        "rmsprop": lambda: keras.optimizers.RMSprop(rate),
    }[spec.train.optimizer]()
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _make_train_steps(tf, keras, strategy, model, optimizer, loss_fn, *, global_batch: int):
    scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(images, labels, preempted):
        with tf.GradientTape() as tape:
            probabilities = model(tf.cast(images, "float32"), training=True)
            per_example = loss_fn(labels, probabilities)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(loss) if scales_loss else loss
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        correct = keras.metrics.sparse_categorical_accuracy(labels, probabilities)
        return tf.stack([tf.reduce_sum(per_example), tf.reduce_sum(correct),
                         tf.cast(tf.size(labels), "float32"), preempted])

    @tf.function
    def train_steps(iterator, num_steps, preempted):
        # A loop inside one tf.function call: no Python round trip between steps.
        totals = tf.zeros([4])
        for _ in tf.range(num_steps):
            images, labels = next(iterator)
            sums = strategy.run(_traced_as_is(tf, replica_step), args=(images, labels, preempted))
            # One small all-reduce carries the step's statistics and every worker's SIGTERM
            # flag, so all workers agree on when to stop.
            totals += strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)
        return totals

    return train_steps


def _traced_as_is(tf, replica_step):
    """``replica_step`` for strategy.run, exempt from AutoGraph's source rewriting.

    The replica steps have no tensor-dependent Python control flow, and Keras 3 is
    written without relying on AutoGraph (its backends include JAX), so converting
    them only costs time: 0.2 s of the 0.75 s the training step takes to trace.
    The loops over steps stay converted (``for _ in tf.range``).
    """
    return tf.autograph.experimental.do_not_convert(replica_step)


def _make_eval_steps(tf, keras, strategy, model, loss_fn):
    def replica_step(images, labels, weights):
        probabilities = model(tf.cast(images, "float32"), training=False)
        per_example = loss_fn(labels, probabilities)
        correct = keras.metrics.sparse_categorical_accuracy(labels, probabilities)
        return tf.stack([tf.reduce_sum(per_example * weights),
                         tf.reduce_sum(tf.cast(correct, "float32") * weights),
                         tf.reduce_sum(weights)])

    @tf.function
    def eval_steps(iterator, num_steps):
        # The whole split in one call, as train_steps does: no Python round trip per batch.
        totals = tf.zeros([3])
        for _ in tf.range(num_steps):
            images, labels, weights = next(iterator)
            sums = strategy.run(_traced_as_is(tf, replica_step), args=(images, labels, weights))
            totals += strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)
        return totals

    return lambda iterator, num_steps: eval_steps(iterator, tf.constant(num_steps, "int32"))


def _make_statistics_sync(tf, strategy, model):
    """A function that averages non-trainable statistics (batch-norm moving means) over replicas.

    Gradients are all-reduced, so trainable weights stay identical; but each
    worker updates its batch-norm moving statistics from its own batches. One
    all-reduce per epoch makes every worker validate and export the same model.
    """
    variables = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]
    if not variables or strategy.num_replicas_in_sync == 1:
        return lambda: None

    shapes = [tuple(v.shape) for v in variables]
    sizes = [int(np.prod(shape)) for shape in shapes]
    # One flat all-reduce instead of one per variable.
    averaged = _all_reducer(tf, strategy, tf.distribute.ReduceOp.MEAN, lambda: tf.concat(
        [tf.reshape(tf.cast(v.value, "float32"), [-1]) for v in variables], 0))

    def sync():
        values = np.split(averaged(), np.cumsum(sizes)[:-1])
        for variable, value, shape in zip(variables, values, shapes):
            variable.assign(value.reshape(shape).astype(str(variable.dtype)))

    return sync


def _evaluate(eval_steps, dataset, steps: int) -> tuple[float, float]:
    totals = eval_steps(iter(dataset), steps).numpy().tolist()
    count = max(totals[2], 1.0)
    return totals[0] / count, totals[1] / count


def _restore(tf, loop: _Loop, directory: Path, *, log, tag: str) -> int:
    """Restore the chief's newest readable checkpoint, if any; return its step.

    A damaged checkpoint (a truncated ``.index`` or ``.data`` file, say after a full
    disk) is skipped with a warning, and the next older one is tried: losing a few
    hundred steps beats losing the run. If checkpoints exist and none can be read,
    the run fails (exit 1) naming the folder.
    """
    candidates = _checkpoint_prefixes(directory)
    failures = []
    for prefix in candidates:
        try:
            step = _restore_one(tf, loop.checkpoint, prefix)
        except (AssertionError, ValueError, IndexError, KeyError, tf.errors.OpError) as error:
            # A short .data file surfaces as IndexError ("Read less bytes than requested").
            failures.append(f"{Path(prefix).name}: {str(error).splitlines()[0][:120]}")
            print(f"warning: {tag}: cannot read checkpoint {prefix} ({failures[-1]}); trying "
                  "an older one", file=sys.stderr, flush=True)
            continue
        log(f"{tag}: resumed from checkpoint {Path(prefix).name} at step {step}")
        return step
    if candidates:
        raise RunFailed(f"{directory}: none of the {len(candidates)} checkpoint(s) can be read "
                        f"({failures[0]}); use --restart to train the run again from the "
                        "start, or a new --run-id") from None
    return 0


def _restore_one(tf, checkpoint, prefix: str) -> int:
    # Checkpoints written before the step counter was saved with them hold the
    # optimizer's count instead (exact unless float16 loss scaling skipped steps).
    legacy = not any(name.startswith("step/") for name, _ in tf.train.list_variables(prefix))
    source = (tf.train.Checkpoint(model=checkpoint.model, optimizer=checkpoint.optimizer,
                                  random_states=checkpoint.random_states)
              if legacy else checkpoint)
    source.restore(prefix).assert_existing_objects_matched()
    step = int((checkpoint.optimizer.iterations if legacy else checkpoint.step).numpy())
    checkpoint.step.assign(step)
    return step


def _checkpoint_prefixes(directory: Path) -> list[str]:
    """Checkpoint prefixes in ``directory``, newest first.

    From the folder's own files (``ckpt-N.index``) rather than from the ``checkpoint``
    state file alone, which a full disk can leave pointing at a damaged save.
    """
    found = {}
    for index in Path(directory).glob(f"{CHECKPOINT_NAME}-*.index"):
        number = index.name[len(CHECKPOINT_NAME) + 1:-len(".index")]
        if number.isdigit():
            found[int(number)] = str(index.with_suffix(""))
    return [found[n] for n in sorted(found, reverse=True)]


def _all_reducer(tf, strategy, op, value):
    """A function that all-reduces the float32 vector ``value()`` over every replica.

    Every worker must call it at the same point: it is a collective. Each call
    returns the reduced vector as a numpy array; tracing happens once.
    """
    def replica_value():
        return tf.distribute.get_replica_context().all_reduce(op, value())

    @tf.function
    def reduced():
        return strategy.experimental_local_results(strategy.run(replica_value))[0]

    return lambda: np.asarray(reduced())


def _gather_bad_files(tf, strategy, splits, shards, decoded, local_replicas):
    """Every worker's unreadable files, gathered so the chief's metadata lists them all.

    Each worker marks its bad files in a mask over the global file list (the same
    on every worker), and one all-reduce sums the masks.
    """
    lists = [(name, getattr(splits, name)) for name in ("train", "val", "test")
             if getattr(splits, name) is not None]
    offsets, total = {}, 0
    for name, items in lists:
        offsets[name] = total
        total += len(items)
    index_of = {}
    for name, items in lists:
        for i, path in enumerate(items.paths):
            index_of.setdefault(path, offsets[name] + i)
    mask = np.zeros((max(total, 1),), dtype=np.float32)
    reasons = {}
    for name in shards:
        for path, reason in decoded[name].bad:
            mask[index_of[path]] = 1.0
            reasons[path] = reason
    share = tf.constant(mask / local_replicas)
    summed = _all_reducer(tf, strategy, tf.distribute.ReduceOp.SUM, lambda: share)()
    paths = [p for _, items in lists for p in items.paths]
    return [(paths[i], reasons.get(paths[i], "unreadable (reported by another worker)"))
            for i in np.flatnonzero(summed > 0.5)]


def _weights_sha256(model) -> str:
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(json.dumps(list(weight.shape)).encode())
        digest.update(bytes(memoryview(_to_numpy(weight)).cast("B")))
    return digest.hexdigest()


def _to_numpy(weight):
    return np.ascontiguousarray(np.asarray(weight.numpy()))


class _PreemptionFlag:
    """SIGTERM sets a flag that the next training step shares with every worker.

    The flag rides in each step's all-reduce, so all workers see it at the same
    step, save the same checkpoint and exit with the retryable code: the
    PreemptionCheckpointHandler protocol, without its private-dir writes on
    shared storage. A second SIGTERM exits at once.
    """

    def __init__(self) -> None:
        self.set = False
        self.previous = None
        self._saving = False

    @classmethod
    def install(cls) -> _PreemptionFlag:
        flag = cls()
        try:
            flag.previous = signal.signal(signal.SIGTERM, flag._handle)
        except ValueError:
            flag.previous = None  # Not the main thread (tests): no handler, no flag.
        return flag

    def reinstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.set and not self._saving:
            # A second SIGTERM while stuck (say, on a lost peer): leave now.
            os._exit(RetryableError.exit_code)
        if self.set:
            return  # Saving the preemption checkpoint: finish it, then exit.
        self.set = True
        print("trainjob: SIGTERM received: saving a checkpoint after this step",
              file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def saving(self):
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def tensor(self, tf):
        return tf.constant(1.0 if self.set else 0.0)

    def raise_if_set(self) -> None:
        if self.set:
            raise Preempted("preempted (SIGTERM) before training started; nothing to save; "
                            "restart to run")

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
