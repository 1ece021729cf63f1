"""The benchmark's data: a JPEG photo set and the sample shapes, generated once and cached.

Owns: the folders under the work directory, named by the parameters that made
them, so a rerun with the same sizes reuses them and different sizes never mix.
Each folder appears complete or not at all (drawn beside it, then renamed).
Never touches: decoding (Pillow is used here only to draw and encode, as in
``job.sample_data``), training, timing.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from bench.sizes import Sizes
from job import sample_data

PHOTO_QUALITY = 90
"""JPEG quality of the photo set: what cameras and most exporters write."""
PHOTO_SEED = 7
"""Drawing seed of the photo set; any fixed value makes it reproducible."""
SHAPES_SEED = 0
"""Drawing seed of the sample shapes: the sample data's own default."""


def photo_folder(work_dir: Path, sizes: Sizes) -> Path:
    """A class-per-subfolder set of ``sizes.photos`` JPEGs of ``sizes.photo_size``.

    The images are the sample shapes drawn at photo size, spread evenly over
    the classes; a stamp file records the parameters.
    """
    width, height = sizes.photo_size
    root = Path(work_dir) / f"photos-{sizes.photos}-{width}x{height}-q{PHOTO_QUALITY}"
    stamp = f"{sizes.photos} {width}x{height} {PHOTO_QUALITY} {PHOTO_SEED}\n"
    return sample_data.build_folder(
        root, stamp=stamp,
        fill=lambda staging: _draw_photos(staging, count=sizes.photos, size=sizes.photo_size))


def _draw_photos(folder: Path, *, count: int, size: tuple[int, int]) -> None:
    rng = random.Random(PHOTO_SEED)
    noise_rng = np.random.default_rng(PHOTO_SEED)
    classes = sample_data.CLASSES
    for name in classes:
        (folder / name).mkdir(parents=True)
    for i in range(count):
        name = classes[i % len(classes)]
        image = sample_data.draw(name, rng=rng, noise_rng=noise_rng, size=size)
        image.save(folder / name / f"{name}_{i:05d}.jpg", quality=PHOTO_QUALITY)


def shapes_folder(work_dir: Path, sizes: Sizes) -> Path:
    """The sample shapes' training folder (``.../train``) for the training figures."""
    side = sizes.train_image_size
    root = Path(work_dir) / f"shapes-{sizes.shapes_per_class}-{side}px"
    sample_data.generate(root, images_per_class=sizes.shapes_per_class, test_per_class=0,
                         image_size=side, seed=SHAPES_SEED)
    return root / "train"
