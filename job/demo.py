"""``trainjob demo``: draw the sample data, write a spec for it, train it locally.

Owns: the demo's folder layout (``<out>/data``, ``<out>/shapes.yaml``,
``<out>/models``) and its spec.
Never touches: anything the real ``trainjob train`` path does not; the demo is
that path on bundled data.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from job import sample_data
from job import spec as spec_module
from job.cluster import INDEX_ENV, TF_CONFIG_ENV, WORKERS_ENV

DEMO_SPEC = {
    "name": "shapes",
    "data": {"train_dir": "data/train", "test_dir": "data/test", "val_split": 0.2,
             "image_size": [32, 32]},
    "model": {"backbone": "small_cnn", "dropout": 0.2,
              "augment": {"flip": "horizontal", "rotation": 0.0, "zoom": 0.0}},
    "train": {"epochs": 12, "global_batch_size": 64, "learning_rate": 0.002,
              "log_every_steps": 20},
    "output": {"dir": "models", "checkpoint_every_steps": 100},
}
"""Tuned to pass 0.90 validation accuracy in well under five minutes on two CPU cores."""
IMAGES_PER_CLASS = 800
"""Training images per class: 3,200 in all, 2,560 after the validation split."""
IMAGE_SIZE = 32
"""Pixels per side: shapes stay recognisable and a CPU epoch takes seconds."""


def write_demo(out_dir: Path) -> Path:
    """Generate the sample data under ``out_dir`` and write its spec; return the spec path."""
    out_dir = Path(out_dir)
    sample_data.generate(out_dir / "data", images_per_class=IMAGES_PER_CLASS, test_per_class=50,
                         image_size=IMAGE_SIZE)
    spec_path = out_dir / "shapes.yaml"
    spec_path.write_text("# Written by `trainjob demo`; edit and run `trainjob train` on it.\n"
                         + yaml.safe_dump(DEMO_SPEC, sort_keys=False))
    return spec_path


def run_demo(*, out_dir: Path) -> int:
    """Write the demo and train it as one local worker; print where the outputs are."""
    from job.train import run_worker

    spec_path = write_demo(out_dir)
    print(f"sample data: {out_dir / 'data'}  spec: {spec_path}", flush=True)
    spec = spec_module.load(spec_path)
    # The demo is one worker on this machine, whatever the shell's cluster variables say.
    env = {k: v for k, v in os.environ.items()
           if k not in (TF_CONFIG_ENV, INDEX_ENV, WORKERS_ENV)}
    return run_worker(spec, run_id=spec.name, env=env)
