"""The spec's ``model.fine_tune`` section: its keys, and the checks that tie it to the rest.

Owns: ``FineTuneSpec`` (each key's type, default and range, the default's reason in its
docstring, as in ``job.spec``), the layer count of each backbone that bounds
``unfreeze``, reading the section, and its cross-field checks (a pretrained backbone to
freeze, a head phase within ``train.epochs``, no more layers than the backbone has).
``job.spec`` holds the section in ``ModelSpec`` and decides when each check runs;
``job.fine_tune`` carries the phases out.
Never touches: TensorFlow, Keras, files.

Example:
    >>> FineTuneSpec().unfreeze, FineTuneSpec().head_epochs
    ('all', 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from job.errors import SpecError
from job.spec_yaml import Reader

ALL = "all"
"""``unfreeze: all``: every layer of the backbone trains after the head phase."""
BACKBONE_LAYERS = {"vgg16": 19, "resnet50": 175, "mobilenet_v2": 154, "efficientnet_b0": 237}
"""Layers of each keras.applications backbone as trainjob builds it (no top, average pooling,
its input layer aside), whatever the input size: the most ``unfreeze`` can name. A test
builds each backbone and holds these numbers true."""


@dataclass(frozen=True)
class FineTuneSpec:
    """Transfer learning in two phases, as the Keras guide: the new head, then the backbone."""

    head_epochs: int = field(default=1, metadata={"low": 1, "high": 100_000})
    """Epochs that train only the new head, the backbone frozen (its batch norm in inference
    mode): one, as the guide; until the head has learned, its large gradients would wreck
    the pretrained features if the backbone trained with it. Equal to train.epochs: the head
    alone, and raising train.epochs later continues the run into fine-tuning."""
    unfreeze: int | Literal["all"] = ALL
    """After head_epochs, the backbone's top K layers (as Keras lists them, model.summary()'s
    order) train too, or all of them, as the guide does. Its batch-norm layers stay frozen in
    inference mode either way, as the guide advises: their statistics are ImageNet's, and
    updating them from small batches of new images would undo what the weights learned."""
    learning_rate: float | None = field(default=None, metadata={
        "low": 0.0, "high": 10.0, "exclusive_low": True})
    """The learning rate after head_epochs; None: train.learning_rate / 100, the guide's
    ratio (1e-3 for the head, 1e-5 to fine-tune), which suits whichever optimizer is set."""

    def phase_two_learning_rate(self, train_learning_rate: float) -> float:
        """The learning rate the backbone fine-tunes at.

        Example:
            >>> FineTuneSpec().phase_two_learning_rate(1e-3)
            1e-05
        """
        if self.learning_rate is not None:
            return self.learning_rate
        return train_learning_rate / 100


def read(r: Reader, d: dict, key: str) -> FineTuneSpec | None:
    """``model.fine_tune`` from the model section ``d``: None when absent or null."""
    value = d.get("fine_tune")
    if value is None:
        return None
    section = r.allowed(value, key, FineTuneSpec)
    unfreeze = section.get("unfreeze", ALL)
    if unfreeze != ALL and (isinstance(unfreeze, bool) or not isinstance(unfreeze, int)
                            or unfreeze < 1):
        r.fail(f"{key}.unfreeze", unfreeze, "all, or a number of layers from 1 up",
               "e.g. unfreeze: all, or unfreeze: 5 for VGG16's top block")
    rate = (None if section.get("learning_rate") is None
            else r.read(FineTuneSpec, "learning_rate", section, key))
    return r.build(FineTuneSpec, section, key,
                   given={"unfreeze": unfreeze, "learning_rate": rate})


def check(r: Reader, fine_tune: FineTuneSpec | None, *, backbone: str,
          weights: Path | str | None, epochs: int) -> None:
    """Refuse a fine-tune that cannot mean what it says, naming the key and the fix."""
    if fine_tune is None:
        return
    if backbone not in BACKBONE_LAYERS:
        raise SpecError(f"{r.source}: model.fine_tune needs a pretrained backbone to freeze, "
                        f"and model.backbone={backbone} has none; set model.backbone to one of "
                        f"{', '.join(BACKBONE_LAYERS)} with model.weights, or remove "
                        "model.fine_tune.")
    if weights is None:
        raise SpecError(f"{r.source}: model.fine_tune needs model.weights (imagenet or a "
                        "weights file): it freezes the backbone to keep what its weights "
                        "learned, and a randomly initialised one has learned nothing; set "
                        "model.weights: imagenet, or remove model.fine_tune.")
    if fine_tune.head_epochs > epochs:
        r.fail("model.fine_tune.head_epochs", fine_tune.head_epochs, f"at most train.epochs="
               f"{epochs} (the head trains alone for head_epochs, then the backbone "
               "fine-tunes)", "lower it, or raise train.epochs")
    layers = BACKBONE_LAYERS[backbone]
    if fine_tune.unfreeze != ALL and fine_tune.unfreeze > layers:
        r.fail("model.fine_tune.unfreeze", fine_tune.unfreeze, f"all, or at most {layers}, "
               f"the layers of {backbone}", "use all to unfreeze the whole backbone")
