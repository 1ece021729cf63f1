"""Fine-tuning in two phases, as the Keras transfer-learning guide does it.

Phase one trains the new head with the backbone frozen (``trainable=False``, which also
keeps its batch norm in inference mode); phase two unfreezes the backbone's top
``model.fine_tune.unfreeze`` layers, its batch-norm layers still frozen, at the lower
``fine_tune.learning_rate``.

Owns: which variables train in each phase, the phase of an epoch (from the epoch number
alone, so every worker, every restart and every resumed run agrees), the optimizer's
learning rate in each phase (set again at each phase entry, since a checkpoint restores
the rate it was saved with), building the optimizer over every variable any phase trains
(so checkpoints of both phases have one structure and restore into either), and a new
compiled training step whenever the trainable set changes (a traced step keeps the
variables it was traced with). After training, the layers' flags go back to as built, so
exports do not depend on the phase a run ended in.
Never touches: the order of a run (``job.train``), how a step is compiled
(``job.distributed``), checkpoints and files, the spec's checks (``job.spec_fine_tune``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from job import distributed
from job.errors import SpecError
from job.spec import Spec
from job.spec_fine_tune import ALL, FineTuneSpec

HEAD = "head"
"""Phase one: the new head trains, the backbone is frozen."""
BACKBONE = "fine-tune"
"""Phase two: the top of the backbone trains too, at the fine-tuning learning rate."""
EVERY_LAYER = "every layer"
"""The phase of a run without model.fine_tune: every layer trains, as built."""


def phase_of(fine_tune: FineTuneSpec | None, epoch: int) -> str:
    """The phase of 0-based ``epoch``.

    Example:
        >>> [phase_of(FineTuneSpec(head_epochs=2), epoch) for epoch in range(3)]
        ['head', 'head', 'fine-tune']
    """
    if fine_tune is None:
        return EVERY_LAYER
    return HEAD if epoch < fine_tune.head_epochs else BACKBONE


class Phases:
    """The run's training steps, phase by phase; call it as ``job.distributed``'s steps.

    ``enter(epoch)`` before each epoch sets the epoch's trainable layers and learning
    rate and, when the phase changed, compiles new steps; ``finish()`` puts every layer's
    flag back as built. Created under the strategy's scope: it builds the optimizer.
    """

    def __init__(self, spec: Spec, *, strategy, model: keras.Model, optimizer,
                 loss_fn) -> None:
        self.fine_tune = spec.model.fine_tune
        self._spec, self._model, self._optimizer = spec, model, optimizer
        self._make_steps = lambda: distributed.make_train_steps(
            strategy, model, optimizer, loss_fn, global_batch=spec.train.global_batch_size)
        self._phase: str | None = None
        self._steps: Callable[..., Any] | None = None
        self.backbone = _backbone(model) if self.fine_tune else None
        self._as_built = ([(layer, layer.trainable) for layer in _layers(self.backbone)]
                          if self.backbone is not None else [])
        self.unfrozen = (_unfrozen(self.backbone, self.fine_tune, spec.model.backbone)
                         if self.backbone is not None else [])
        optimizer.build(self.variables())

    def variables(self) -> list:
        """Every variable some phase trains, in the model's order: what the optimizer is built
        over, so that its slots, and so the checkpoint, are the same in every phase."""
        if self.backbone is None:
            return list(self._model.trainable_variables)
        frozen = {id(v) for v in self.backbone.weights}
        tuned = {id(v) for layer in self.unfrozen for v in layer.trainable_variables}
        return [v for v in self._model.trainable_variables
                if id(v) not in frozen or id(v) in tuned]

    def enter(self, epoch: int, *, log: Callable[[str], Any]) -> None:
        """Train 0-based ``epoch`` in its phase; a change of phase compiles new steps."""
        phase = phase_of(self.fine_tune, epoch)
        if phase == self._phase and self._steps is not None:
            return
        self._phase = phase
        if self.fine_tune is not None:
            self._set_trainable(phase)
            self._optimizer.learning_rate = self.learning_rate(phase)
            log(self.describe(phase))
        self._steps = self._make_steps()

    def __call__(self, iterator, num_steps: int, preempted: bool):
        """Run ``num_steps`` steps of the current phase (``enter`` came first)."""
        return self._steps(iterator, num_steps, preempted)

    def finish(self) -> None:
        """Every layer of the backbone trainable again, as built: what is exported."""
        for layer, trainable in self._as_built:
            layer.trainable = trainable

    def learning_rate(self, phase: str) -> float:
        """The optimizer's learning rate in ``phase``."""
        rate = self._spec.train.learning_rate
        return self.fine_tune.phase_two_learning_rate(rate) if phase == BACKBONE else rate

    def describe(self, phase: str) -> str:
        """The line that says what a phase trains, printed as it begins."""
        name, head = self._spec.model.backbone, self.fine_tune.head_epochs
        rate = f"learning rate {self.learning_rate(phase):g}"
        if phase == HEAD:
            until = (f"epochs 1-{head}" if head > 1 else "epoch 1")
            later = ("" if head < self._spec.train.epochs else
                     f"; raise train.epochs past {head} to fine-tune {name}")
            return f"fine-tuning: {until} train the new head, {name} frozen, {rate}{later}"
        kept = sum(isinstance(layer, keras.layers.BatchNormalization)
                   for layer in _top_layers(self.backbone, self.fine_tune.unfreeze))
        return (f"fine-tuning: unfroze {len(self.unfrozen)} layers of {name} from epoch "
                f"{head + 1}" + (f" ({kept} batch-norm layers stay frozen)" if kept else "")
                + f", {rate}")

    def _set_trainable(self, phase: str) -> None:
        self.finish()
        if phase == HEAD:
            self.backbone.trainable = False
            return
        unfrozen = {id(layer) for layer in self.unfrozen}
        for layer in _layers(self.backbone)[1:]:
            layer.trainable = id(layer) in unfrozen


def _backbone(model: keras.Model) -> keras.Model:
    """The keras.applications model inside the classifier (augmentation aside)."""
    found = [layer for layer in model.layers
             if isinstance(layer, keras.Model) and not isinstance(layer, keras.Sequential)]
    if len(found) != 1:
        raise RuntimeError(f"{model.name} holds {len(found)} backbone models, expected one")
    return found[0]


def _layers(backbone: keras.Model) -> list:
    """The backbone itself, then its layers, its input layer aside."""
    return [backbone, *(layer for layer in backbone.layers
                        if not isinstance(layer, keras.layers.InputLayer))]


def _top_layers(backbone: keras.Model, unfreeze: int | str) -> list:
    layers = _layers(backbone)[1:]
    return layers if unfreeze == ALL else layers[len(layers) - unfreeze:]


def _unfrozen(backbone: keras.Model, fine_tune: FineTuneSpec, name: str) -> list:
    """The layers phase two trains: the top ``unfreeze`` ones, batch norm aside."""
    count = len(_layers(backbone)) - 1
    if fine_tune.unfreeze != ALL and fine_tune.unfreeze > count:
        raise SpecError(f"model.fine_tune.unfreeze={fine_tune.unfreeze} is invalid: expected "
                        f"all, or at most {count}, the layers of {name}; use all to unfreeze "
                        "the whole backbone.")
    return [layer for layer in _top_layers(backbone, fine_tune.unfreeze)
            if not isinstance(layer, keras.layers.BatchNormalization)]
