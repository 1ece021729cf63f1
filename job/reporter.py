"""What a run reports while it trains: progress, TensorBoard summaries and the history.

Owns: the epoch loop's side effects, as Keras hands them to callbacks: ``on_chunk``
after each call of training steps (the progress bar or line, and the training
summaries when a line is due) and ``on_epoch_end`` (the epoch's line, its train and
validation summaries, and the chief's ``history.csv``). Also the chief's TensorBoard
writers and their layout, which is the Keras TensorBoard callback's, so TensorBoard
draws train and validation of one figure on one chart: ``logs/train`` and
``logs/validation`` (and ``logs/test`` for the test set's confusion matrix), with
the same tags in each (``epoch_loss``, ``epoch_accuracy``, ``confusion_matrix``).
Never touches: training decisions (when to stop, save or validate), the model, drawing
pictures (``job.report``).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from job.errors import StorageError
from job.progress import Progress


class Reporter:
    """The epoch loop's observer: prints progress, writes summaries and the history.

    Only the chief prints progress and writes; every worker may call it.
    """

    def __init__(self, *, run, total_steps: int, steps_per_epoch: int, every: int,
                 out) -> None:
        self.run = run
        self.progress = Progress(total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                                 every=every, out=out, enabled=run.is_chief)
        self.writers = {name: _summary_writer(run, name) for name in (TRAIN, VALIDATION)}
        self.history: list[dict[str, Any]] = []

    def resume(self, start_step: int) -> dict[str, float | None]:
        """Keep the history rows up to ``start_step`` (a restart redoes later ones).

        Returns the last kept row's ``train_loss`` and ``train_accuracy`` (None where
        there is none), for a run restarted after its last step.
        """
        if self.run.is_chief:
            self.history = [row for row in self.run.read_history()
                            if int(row.get("step") or 0) <= start_step]
        last = self.history[-1] if self.history else {}
        return {key: _float_or_none(last.get(key)) for key in ("train_loss", "train_accuracy")}

    def on_chunk(self, *, step: int, epoch: int, stats, images_per_second: float) -> None:
        """After a call of training steps: ``stats`` are the epoch's running figures.

        Summarised when a progress line is due, at the global step, as Keras's ``batch_``
        figures are (running means over the epoch so far).
        """
        if self.progress.step(step=step, epoch=epoch, loss=stats.loss,
                              accuracy=stats.accuracy, images_per_second=images_per_second):
            self._summaries(TRAIN, step, {"batch_loss": stats.loss,
                                          "batch_accuracy": stats.accuracy,
                                          "batch_images_per_second": images_per_second})

    def on_epoch_end(self, row: dict[str, Any], *, epochs: int) -> None:
        """After validation: ``row`` is the epoch's history row.

        The epoch's figures go under the same tags to the train and validation writers,
        at the epoch number (1-based, as history.csv and the report count epochs).
        """
        for writer, split in ((TRAIN, "train"), (VALIDATION, "val")):
            self._summaries(writer, row["epoch"], {"epoch_loss": row[f"{split}_loss"],
                                                   "epoch_accuracy": row[f"{split}_accuracy"]})
        # Under 80 columns: 'epoch 10/12: loss 0.1234 acc 0.9612 val_loss 0.1456 val_acc
        # 0.9531 1234 img/s' is 78.
        self.line(f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f} "
                  f"acc {row['train_accuracy']:.4f} val_loss {row['val_loss']:.4f} "
                  f"val_acc {row['val_accuracy']:.4f} {row['images_per_second']:.0f} img/s")
        if self.run.is_chief:
            self.history.append(row)
            self.run.write_history(self.history)

    def line(self, text: str) -> None:
        """A line of the run's progress (the chief's), ending an open progress bar."""
        self.progress.line(text)

    def confusion_matrices(self, pictures: dict[str, bytes], *, epoch: int) -> None:
        """Confusion-matrix PNGs as TensorBoard images, tag ``confusion_matrix``.

        ``pictures`` maps a writer (``validation``, ``test``) to its PNG file's bytes;
        they are drawn by ``job.report``, and shown at the run's last ``epoch``.
        """
        for name, png in pictures.items():
            if name not in self.writers:
                self.writers[name] = _summary_writer(self.run, name)
            with self.writers[name].as_default(step=epoch):
                tf.summary.image("confusion_matrix",
                                 tf.image.decode_png(png, channels=3)[tf.newaxis])
            self.writers[name].flush()

    def _summaries(self, writer: str, step: int, scalars: dict[str, float]) -> None:
        with self.writers[writer].as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)
        self.writers[writer].flush()


TRAIN, VALIDATION, TEST = "train", "validation", "test"
"""The TensorBoard runs, folders of ``logs/``: the names the Keras TensorBoard callback
gives them, so a user's habits (and dashboards) carry over."""


def _summary_writer(run, name: str):
    """The chief's TensorBoard writer for ``logs/<name>``; a folder it cannot write to is
    a StorageError."""
    if not run.is_chief:
        return tf.summary.create_noop_writer()
    try:
        return tf.summary.create_file_writer(str(run.logs / name))
    except (tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError) as error:
        raise StorageError(f"{run.logs}: cannot write TensorBoard summaries: "
                           f"{str(error).split(';')[-1].split('[Op:')[0].strip()}; make the "
                           "run folder writable or free space") from None


def _float_or_none(text: Any) -> float | None:
    """A history.csv cell as a number (empty when an earlier trainjob wrote none)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
