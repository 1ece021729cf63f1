"""Everything that runs under a ``tf.distribute`` strategy.

Owns: the strategy (default, Mirrored or MultiWorkerMirrored), the dtype policy's
agreement across workers, the optimizer, the compiled training and evaluation
steps (``strategy.run`` inside ``tf.function``, the loss scaled by the global
batch, both traced with ``job.fused_norm``'s batch norm), the step
statistics (``StepStats``), an evaluation's figures and its exact confusion matrix
across workers (``EvalResult``), the all-reduce helpers (sums and votes
over every replica), the batch-norm statistics sync, restoring a checkpoint (with
fallback past damaged ones), and which errors mean a lost peer.
Never touches: the order of a run (``job.train``), the run directory's layout and
writes (``job.run_dir``), decoding, printing beyond a warning line.

TensorFlow is imported at the top: ``job.train`` imports this module only once
TF_CONFIG is set (TensorFlow reads it at import), so decoding overlaps the import.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from job import data, fused_norm, machine, optimizers
from job import precision as precision_module
from job.errors import RunFailed, StorageError
from job.run_dir import CHECKPOINT_NAME
from job.spec import Spec, check_worker_count

PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
               tf.errors.CancelledError, tf.errors.AbortedError, tf.errors.InternalError,
               tf.errors.UnknownError, tf.errors.FailedPreconditionError)
"""What a collective raises when a peer worker is gone (the group restarts: exit 75)."""


@dataclass(frozen=True)
class Plan:
    """How the global batch and the steps divide over this run's replicas."""

    num_replicas: int
    local_replicas: int
    """Replicas in this worker (GPUs); each gets its own per-replica batches."""
    replica_batch: int
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def make(cls, spec: Spec, *, strategy, cluster, num_train: int) -> Plan:
        num_replicas = strategy.num_replicas_in_sync
        check_worker_count(spec, num_replicas, unit="replicas")
        steps_per_epoch = data.steps_per_epoch(num_train, spec.train.global_batch_size)
        return cls(num_replicas=num_replicas,
                   local_replicas=max(1, num_replicas // cluster.num_workers),
                   replica_batch=spec.train.global_batch_size // num_replicas,
                   steps_per_epoch=steps_per_epoch,
                   total_steps=steps_per_epoch * spec.train.epochs)


class StepStats(NamedTuple):
    """What a run of training steps reports, over every replica."""

    loss: float = 0.0
    """Mean per-example loss over ``count`` examples."""
    accuracy: float = 0.0
    """Fraction of the ``count`` examples predicted right."""
    count: float = 0.0
    """Examples the figures are over."""
    preempted: bool = False
    """Whether any worker got SIGTERM: all of them then stop at this step."""

    @classmethod
    def from_sums(cls, sums) -> StepStats:
        """From the steps' all-reduced vector: loss sum, correct, count, SIGTERM flag."""
        loss_sum, correct, count, flag = (float(v) for v in sums)
        count_or_one = count or 1.0
        return cls(loss_sum / count_or_one, correct / count_or_one, count, flag > 0)

    def merged(self, other: StepStats) -> StepStats:
        """Both runs of steps as one: figures weighted by their counts."""
        count = self.count + other.count
        if not count:
            return self
        return StepStats((self.loss * self.count + other.loss * other.count) / count,
                         (self.accuracy * self.count + other.accuracy * other.count) / count,
                         count, self.preempted or other.preempted)

    @property
    def is_finite(self) -> bool:
        return math.isfinite(self.loss)


def seed(value: int) -> None:
    """Seed Python, NumPy, TensorFlow and Keras: initialisation and dropout repeat."""
    keras.utils.set_random_seed(value)


def make_strategy(cluster, *, timeout_seconds: int):
    """MultiWorkerMirrored for several workers, Mirrored for several GPUs, else the default.

    The default strategy for one worker: the same ``run``/``reduce``/``scope`` code
    path, without MultiWorkerMirroredStrategy's ~2.7x single-worker overhead.
    """
    if cluster.is_multi_worker:
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=float(timeout_seconds))
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def set_precision(strategy, spec: Spec, *, cluster) -> precision_module.Choice:
    """Choose the dtype policy (``job.precision``), agree on it across workers, set it."""
    choice = precision_module.choose(
        spec.train.mixed_precision, gpu_capabilities=machine.gpu_capabilities(tf),
        cpu_flags=machine.cpu_flags(), replicas=strategy.num_replicas_in_sync)
    if cluster.is_multi_worker and spec.train.mixed_precision == "auto":
        # Loss scaling changes the step and the checkpoint: every worker must train
        # alike, so one worker whose hardware says float32 makes them all float32.
        votes = all_reducer(strategy, tf.distribute.ReduceOp.SUM,
                            lambda: tf.constant([0.0 if choice.is_mixed else 1.0]))()
        if votes[0] > 0 and choice.is_mixed:
            choice = precision_module.PEER_FLOAT32
    keras.mixed_precision.set_global_policy(choice.policy)
    return choice


def make_optimizer(spec: Spec):
    """The spec's optimizer (``job.optimizers``); wrapped for loss scaling under
    ``mixed_float16``."""
    return optimizers.make(spec.train.optimizer, spec.train.learning_rate)


def make_train_steps(strategy, model, optimizer, loss_fn, *, global_batch: int):
    """``train_steps(iterator, num_steps, preempted) -> StepStats`` over ``num_steps`` steps."""
    scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(images, labels, preempted):
        with tf.GradientTape() as tape, fused_norm.tracing():
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

    @tf.function(autograph=False)
    def train_steps(iterator, num_steps, preempted):
        # A loop inside one tf.function call: no Python round trip between steps.
        def step(totals):
            images, labels = iterator.get_next()
            sums = strategy.run(replica_step, args=(images, labels, preempted))
            # One small all-reduce carries the step's statistics and every worker's SIGTERM
            # flag, so all workers agree on when to stop.
            return totals + strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

        return repeat(step, num_steps, tf.zeros([4]))

    def run(iterator, num_steps: int, preempted: bool) -> StepStats:
        return StepStats.from_sums(train_steps(iterator, tf.constant(num_steps, "int32"),
                                               tf.constant(1.0 if preempted else 0.0))
                                   .numpy())

    run.traced = train_steps  # The tf.function itself: its graphs show the ops it runs.
    return run


def repeat(step: Callable[[tf.Tensor], tf.Tensor], num_steps, totals: tf.Tensor) -> tf.Tensor:
    """``totals = step(totals)``, ``num_steps`` times, as one loop in the graph being traced.

    Written as the ``tf.while_loop`` that AutoGraph would make of ``for _ in
    tf.range(num_steps)``, so that the compiled steps are traced with AutoGraph off:
    nothing in them branches on a tensor in Python, and Keras 3 is written without
    relying on AutoGraph (its backends include JAX), so converting their source only
    cost time: 0.2 s of the 0.75 s the training step took to trace, and 0.17 s of the
    evaluation's 0.45 s (parsing the loop's source).
    """
    counter = tf.constant(0, tf.int32)
    _, totals = tf.while_loop(lambda i, _: i < num_steps, lambda i, t: (i + 1, step(t)),
                              (counter, totals), maximum_iterations=num_steps)
    return totals


class EvalResult(NamedTuple):
    """What an evaluation reports, over the whole split across every worker."""

    loss: float
    """Mean per-example loss."""
    accuracy: float
    """Fraction of the split's images predicted right."""
    confusion: np.ndarray | None = None
    """Counts of (true class, predicted class), int64 (classes, classes), rows the true
    class; None unless the evaluation counted it (asked for, or few classes)."""

    def figures(self, split: str) -> dict[str, Any]:
        """metrics.json's figures of ``split`` ('val', 'test'): plain JSON types.

        Example:
            >>> EvalResult(0.5, 0.75, np.array([[3, 1], [0, 0]])).figures("val")
            {'val_loss': 0.5, 'val_accuracy': 0.75, 'val_confusion_matrix': [[3, 1], [0, 0]]}
        """
        figures: dict[str, Any] = {f"{split}_loss": self.loss, f"{split}_accuracy": self.accuracy}
        if self.confusion is not None:
            figures[f"{split}_confusion_matrix"] = self.confusion.tolist()
        return figures


ALWAYS_COUNTED_CLASSES = 32
"""Up to this many classes every evaluation step counts the confusion matrix: at most
1,024 more numbers in its all-reduce, and a second trace of the evaluation saved (0.3 s
of a 15 s run of the small CNN)."""


def make_evaluator(strategy, model, loss_fn) -> Callable[..., EvalResult]:
    """``evaluate(dataset, num_steps, *, confusion=False) -> EvalResult`` over weighted batches.

    With ``confusion``, each step's all-reduce also carries the batch's counts of (true
    class, predicted class), classes² numbers, so the matrix is exact over the whole
    split on any number of workers: padding has weight 0 and counts nowhere, and float32
    sums are exact up to 2**24 images per cell. Without it the all-reduce stays three
    numbers; the loop asks for the matrix at the last validation and the test only,
    which keeps the other epochs' validation as fast with a thousand classes as with two
    (with few classes, ``ALWAYS_COUNTED_CLASSES``, every evaluation counts it).
    """
    num_classes = int(model.output_shape[-1])

    def replica_step(images, labels, weights, with_confusion: bool):
        with fused_norm.tracing():
            probabilities = model(tf.cast(images, "float32"), training=False)
        per_example = loss_fn(labels, probabilities)
        correct = keras.metrics.sparse_categorical_accuracy(labels, probabilities)
        sums = tf.stack([tf.reduce_sum(per_example * weights),
                         tf.reduce_sum(tf.cast(correct, "float32") * weights),
                         tf.reduce_sum(weights)])
        if not with_confusion:
            return sums
        # The same argmax as the accuracy: a cell per (true, predicted) pair.
        cells = (tf.cast(labels, "int32") * num_classes
                 + tf.argmax(probabilities, axis=-1, output_type=tf.int32))
        counts = tf.math.unsorted_segment_sum(weights, cells, num_classes * num_classes)
        return tf.concat([sums, counts], axis=0)

    @tf.function(autograph=False)
    def eval_steps(iterator, num_steps, with_confusion: bool):
        # The whole split in one call, as train_steps; each with_confusion is its own trace.
        def step(totals):
            images, labels, weights = iterator.get_next()
            sums = strategy.run(lambda *batch: replica_step(*batch, with_confusion),
                                args=(images, labels, weights))
            return totals + strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

        return repeat(step, num_steps,
                      tf.zeros([3 + (num_classes * num_classes if with_confusion else 0)]))

    def evaluate(dataset, num_steps: int, *, confusion: bool = False) -> EvalResult:
        counted = confusion or num_classes <= ALWAYS_COUNTED_CLASSES  # One trace serves all.
        totals = eval_steps(iter(dataset), tf.constant(num_steps, "int32"), counted).numpy()
        count = max(float(totals[2]), 1.0)
        matrix = (np.rint(totals[3:]).astype(np.int64).reshape(num_classes, num_classes)
                  if counted else None)
        return EvalResult(float(totals[0]) / count, float(totals[1]) / count, matrix)

    return evaluate


def make_statistics_sync(strategy, model) -> Callable[[], None]:
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
    averaged = all_reducer(strategy, tf.distribute.ReduceOp.MEAN, lambda: tf.concat(
        [tf.reshape(tf.cast(v.value, "float32"), [-1]) for v in variables], 0))

    def sync():
        values = np.split(averaged(), np.cumsum(sizes)[:-1])
        for variable, value, shape in zip(variables, values, shapes):
            variable.assign(value.reshape(shape).astype(str(variable.dtype)))

    return sync


def all_reducer(strategy, op, value) -> Callable[[], np.ndarray]:
    """A function that all-reduces the float32 vector ``value()`` over every replica.

    Every worker must call it at the same point: it is a collective. Each call
    returns the reduced vector as a numpy array; tracing happens once.
    """
    def replica_value():
        return tf.distribute.get_replica_context().all_reduce(op, value())

    @tf.function(autograph=False)
    def reduced():
        return strategy.experimental_local_results(strategy.run(replica_value))[0]

    return lambda: np.asarray(reduced())


def sum_over_workers(strategy, vector: np.ndarray, *, local_replicas: int) -> np.ndarray:
    """``vector`` summed over every worker (a collective: every worker calls it).

    Each of a worker's replicas contributes ``vector / local_replicas``, so a
    worker with several GPUs counts once. A lone worker's sum is its own vector,
    returned without tracing the all-reduce (0.09 s a call on the small CNN's run).
    """
    if strategy.num_replicas_in_sync == local_replicas:
        return np.asarray(vector, dtype=np.float32)
    share = tf.constant(np.asarray(vector, dtype=np.float32) / local_replicas)
    return all_reducer(strategy, tf.distribute.ReduceOp.SUM, lambda: share)()


def restore(checkpoint, directory: Path, *, log: Callable[[str], None], tag: str) -> int:
    """Restore the chief's newest readable checkpoint, if any; return its step.

    A damaged checkpoint (a truncated ``.index`` or ``.data`` file, say after a full
    disk) is skipped with a warning, and the next older one is tried: losing a few
    hundred steps beats losing the run. If checkpoints exist and none can be read,
    the run fails (exit 1) naming the folder.
    """
    candidates = checkpoint_prefixes(directory)
    failures = []
    for prefix in candidates:
        try:
            step = _restore_one(checkpoint, prefix)
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
                        "start, or a new --run-id")
    return 0


def _restore_one(checkpoint, prefix: str) -> int:
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


def checkpoint_prefixes(directory: Path) -> list[str]:
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


def save(manager, step_variable, step: int) -> None:
    """Checkpoint ``step``; a file system that refuses it is a StorageError (exit 2).

    TensorFlow says ResourceExhausted for a full disk and PermissionDenied for a
    read-only one; either way, restarting would fail again, so it is not retried.
    What the failed save left (``ckpt-N_temp/``) is removed by the run's clean-up.
    """
    step_variable.assign(step)
    try:
        manager.save(checkpoint_number=step)
    except (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError) as error:
        reason = str(error).split(";")[-1].split("[Op:")[0].strip() or type(error).__name__
        raise StorageError(f"{manager.directory}: cannot save the checkpoint of step "
                           f"{step}: {reason}; free space or make it writable, then rerun "
                           "with the same run id to resume from the last checkpoint") from None


def gather_bad_files(strategy, splits, decoded, *, local_replicas: int) -> list[tuple[str, str]]:
    """Every worker's unreadable files, gathered so the chief's metadata lists them all.

    Each worker marks its bad files in a mask over the global file list (the same
    on every worker), and one all-reduce sums the masks.
    """
    lists = [getattr(splits, name) for name in ("train", "val", "test")
             if getattr(splits, name) is not None]
    paths = [p for items in lists for p in items.paths]
    index_of: dict[str, int] = {}
    for i, path in enumerate(paths):
        index_of.setdefault(path, i)
    mask = np.zeros((max(len(paths), 1),), dtype=np.float32)
    reasons = {}
    for shard in decoded.values():
        for path, reason in shard.bad:
            mask[index_of[path]] = 1.0
            reasons[path] = reason
    summed = sum_over_workers(strategy, mask, local_replicas=local_replicas)
    return [(paths[i], reasons.get(paths[i], "unreadable (reported by another worker)"))
            for i in np.flatnonzero(summed > 0.5)]
