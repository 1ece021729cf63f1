"""The plain Keras reference of P4 and M1: what a user writes without trainjob.

Run in a fresh process as a script::

    python bench/plain_keras.py TRAIN_DIR --out-dir DIR --image-size 64 --batch-size 64 \
        --epochs 3 --seed 1234 --val-split 0.2

It loads the folder with ``keras.utils.image_dataset_from_directory`` (which
already decodes in parallel and prefetches), builds the same model trainjob
trains (``job.model.build_model`` with the spec's default model section and
learning rate, so the architecture cannot drift), then ``compile``, ``fit`` and
``save("model.h5")``, and writes the last epoch's validation accuracy to
``result.json``. Nothing else is tuned: it is the baseline a user starts from.
Owns: that script. Never touches: trainjob's training loop or data pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from job.model import build_model
    from job.spec import ModelSpec, TrainSpec

    keras.utils.set_random_seed(args.seed)
    size = (args.image_size, args.image_size)
    train, val = keras.utils.image_dataset_from_directory(
        args.train_dir, validation_split=args.val_split, subset="both", seed=args.seed,
        image_size=size, batch_size=args.batch_size)
    model = build_model(input_shape=(*size, 3), num_classes=len(train.class_names),
                        model=ModelSpec(), seed=args.seed)
    model.compile(optimizer=keras.optimizers.Adam(TrainSpec().learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(train, validation_data=val, epochs=args.epochs, verbose=2)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.h5")
    result = {"val_accuracy": float(history.history["val_accuracy"][-1])}
    (out / "result.json").write_text(json.dumps(result) + "\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Plain Keras: load a folder, fit, save.")
    parser.add_argument("train_dir", type=Path)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--image-size", type=int, required=True, help="pixels per side")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--val-split", type=float, required=True)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
