"""Which epoch's weights a run exports, and when it stops early.

Owns: the best epoch so far (the highest validation accuracy, ties to the lower
validation loss) and a copy of its weights when ``output.export_model: best``; early
stopping (``train.early_stopping``: the monitored figure, patience and least change);
and keeping both in the checkpoint, so a restart neither forgets a better earlier epoch
nor the epochs it has already waited.
Never touches: training steps, validation itself, files (the checkpoint carries the
state), printing.

Every worker holds the same state: the validation figures it is fed are all-reduced,
and the weights it copies are identical on every worker after the statistics sync.
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from job.spec import Spec


class Selection:
    """The best epoch and early stopping, as checkpointed variables.

    Plain variables on the host (like the step counter), outside any strategy scope:
    every worker assigns them the same values, and the weight copy never takes room on
    an accelerator.
    """

    def __init__(self, spec: Spec, model) -> None:
        self.export_best = spec.output.export_model == "best"
        self.stopping = spec.train.early_stopping
        with tf.device("/CPU:0"):
            self.best_epoch = tf.Variable(0, dtype="int64", trainable=False, name="best_epoch")
            self.best_accuracy = tf.Variable(-1.0, dtype="float64", trainable=False)
            self.best_loss = tf.Variable(math.inf, dtype="float64", trainable=False)
            self.waited = tf.Variable(0, dtype="int64", trainable=False, name="waited")
            self.monitored = tf.Variable(math.nan, dtype="float64", trainable=False)
            self.weights = [tf.Variable(tf.zeros(w.shape, dtype=w.dtype), trainable=False)
                            for w in model.weights] if self.export_best else []
        self._model = model

    def trackables(self) -> dict[str, Any]:
        """What the checkpoint holds of the selection (restored with it)."""
        return {"best_epoch": self.best_epoch, "best_accuracy": self.best_accuracy,
                "best_loss": self.best_loss, "best_weights": self.weights,
                "stop_waited": self.waited, "stop_monitored": self.monitored}

    def on_epoch_end(self, epoch: int, *, loss: float, accuracy: float) -> None:
        """Record 1-based ``epoch``'s validation figures (and its weights, when best)."""
        better = (accuracy > self.best_accuracy.numpy()
                  or (accuracy == self.best_accuracy.numpy() and loss < self.best_loss.numpy()))
        if better:
            self.best_epoch.assign(epoch)
            self.best_accuracy.assign(accuracy)
            self.best_loss.assign(loss)
            for copy, weight in zip(self.weights, self._model.weights):
                copy.assign(weight.numpy())
        if self.stopping is not None:
            self._wait(loss if self.stopping.monitor == "val_loss" else accuracy)

    def _wait(self, value: float) -> None:
        previous = self.monitored.numpy()
        delta = self.stopping.min_delta
        improved = math.isnan(previous) or (
            value < previous - delta if self.stopping.monitor == "val_loss"
            else value > previous + delta)
        if improved:
            self.monitored.assign(value)
            self.waited.assign(0)
        else:
            self.waited.assign_add(1)

    @property
    def best(self) -> int:
        """The 1-based best epoch so far; 0 before the first validation."""
        return int(self.best_epoch.numpy())

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` epochs in a row brought no improvement."""
        return (self.stopping is not None
                and int(self.waited.numpy()) >= self.stopping.patience)

    def describe_stop(self, epoch: int) -> str:
        """The line a run prints when it stops early after 1-based ``epoch``."""
        return (f"early stopping after epoch {epoch}: {self.stopping.monitor} has not improved "
                f"by more than {self.stopping.min_delta:g} for {self.stopping.patience} "
                f"epoch(s) (best {self.monitored.numpy():.4f})")

    def use_best(self) -> int | None:
        """Put the best epoch's weights into the model, if it exports the best; the epoch."""
        epoch = self.best
        if not self.export_best or epoch == 0:
            return None
        for weight, copy in zip(self._model.weights, self.weights):
            weight.assign(copy.numpy())
        return epoch

    def facts(self, *, exported_epoch: int, epochs_trained: int) -> dict[str, Any]:
        """metrics.json's account of the selection."""
        return {"export_model": "best" if self.export_best else "last",
                "exported_epoch": exported_epoch,
                "best_epoch": self.best or None,
                "stopped_early": self.should_stop,
                "epochs_trained": epochs_trained}
