"""The trainjob spec that every training figure shares.

Owns: the one spec dict (data, model, train, output) that P3, P4, P5, M1 and
M2 train, so trainjob and the plain Keras reference see the same images, image
size, batch, epochs, optimizer and model; what the suite's ``--precision``
means for it; writing it as YAML for the CLI.
Never touches: running anything. The model section is left at the spec's
defaults, which the reference reads from ``job.spec`` too: one source of truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench.measure import fresh_dir
from bench.sizes import Sizes

SEED = 1234
"""Split, shuffle and init seed of both sides: trainjob's default."""
VAL_SPLIT = 0.2
"""Validation fraction of both sides: trainjob's default."""
QUIET_STEPS = 1_000_000
"""Progress lines and checkpoints only at epoch ends: a benchmark does not need them."""
PRECISIONS = ("auto", "float32")
"""The suite's ``--precision``: ``auto`` leaves ``train.mixed_precision`` at trainjob's
default (bfloat16 where the CPU has it), ``float32`` turns it off in every training
figure, so a bfloat16 machine measures what a CPU without bfloat16 runs."""


def mixed_precision_setting(precision: str) -> bool | None:
    """``train.mixed_precision`` for the suite's ``precision`` (None: the spec's default).

    Example:
        >>> mixed_precision_setting("auto") is None, mixed_precision_setting("float32")
        (True, False)
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {', '.join(PRECISIONS)}.")
    return False if precision == "float32" else None


def training_spec(train_dir: Path, sizes: Sizes, *, epochs: int, output_dir: Path,
                  name: str, mixed_precision: bool | None = None,
                  image_size: int | None = None) -> dict[str, Any]:
    """A trainjob spec dict for ``epochs`` on the shapes in ``train_dir`` (pure).

    ``mixed_precision`` None leaves the key out, so trainjob's own default applies;
    a figure that wants the float32 loop on purpose passes False. ``image_size``
    None trains at ``sizes.train_image_size``.
    """
    side = image_size or sizes.train_image_size
    return {
        "name": name,
        "data": {"train_dir": str(train_dir), "val_split": VAL_SPLIT,
                 "image_size": [side, side]},
        "train": {"epochs": epochs, "global_batch_size": sizes.batch_size, "seed": SEED,
                  "log_every_steps": QUIET_STEPS,
                  **({} if mixed_precision is None else {"mixed_precision": mixed_precision})},
        "output": {"dir": str(output_dir), "checkpoint_every_steps": QUIET_STEPS},
    }


def prepare_runs(train_dir: Path, sizes: Sizes, *, work_dir: Path, kind: str,
                 epochs: int, mixed_precision: bool | None = None) -> tuple[Path, Path]:
    """An empty ``runs/<kind>`` folder and ``specs/<kind>.yaml`` training into it."""
    runs_dir = fresh_dir(work_dir / "runs" / kind)
    spec_path = write_spec(work_dir / "specs" / f"{kind}.yaml",
                           training_spec(train_dir, sizes, epochs=epochs, output_dir=runs_dir,
                                         name=f"bench-{kind}",
                                         mixed_precision=mixed_precision))
    return runs_dir, spec_path


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
