"""The bundled sample dataset: coloured shapes drawn with Pillow.

Owns: drawing a small, deterministic, class-per-subfolder image tree (JPEG and
PNG mixed, as users' folders are) that ``trainjob demo``, the tests and the
benchmarks train on. Every image has a random shape colour, background, size,
position, rotation and noise, so the classes are not separable by mean colour:
a model has to learn shape.
Never touches: training, decoding (Pillow is used here only to draw and encode).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "star", "triangle")
"""Four shapes: the smallest set that is a real multi-class task."""
DEFAULT_IMAGE_SIZE = 64
"""Pixels per side: big enough to tell a star from a circle, small enough for CPU demos."""


def generate(out_dir: str | Path, *, images_per_class: int = 400, test_per_class: int = 50,
             image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE, seed: int = 0,
             quality: int = 90) -> Path:
    """Draw the dataset into ``out_dir/train/<class>/`` and ``out_dir/test/<class>/``.

    Output is identical for the same arguments. The folder appears complete or
    not at all: it is drawn in a temp folder beside it and renamed into place.

    Args:
        out_dir: folder to create; an existing complete dataset with the same
            parameters is reused as is.
        images_per_class: training images per class.
        test_per_class: test images per class (0: no test folder).
        image_size: side in pixels, or (width, height).
        seed: drawing seed.
        quality: JPEG quality.

    Returns:
        ``out_dir`` as a Path.

    Example:
        >>> root = generate("demo/data", images_per_class=10)   # doctest: +SKIP
        >>> sorted(p.name for p in (root / "train").iterdir())   # doctest: +SKIP
        ['circle', 'square', 'star', 'triangle']
    """
    out = Path(out_dir)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    stamp = f"{images_per_class} {test_per_class} {size[0]}x{size[1]} {seed} {quality}\n"
    counts = (("train", images_per_class, seed), ("test", test_per_class, seed + 1))

    def fill(staging: Path) -> None:
        for split, count, split_seed in counts:
            rng = random.Random(split_seed)
            noise_rng = np.random.default_rng(split_seed)
            for label, name in enumerate(CLASSES):
                for relative in _file_names(split, count, label=label, name=name):
                    _save(draw(name, rng=rng, noise_rng=noise_rng, size=size),
                          staging / relative, quality=quality)

    def complete(root: Path) -> bool:
        return all((root / relative).is_file()
                   for split, count, _ in counts
                   for label, name in enumerate(CLASSES)
                   for relative in _file_names(split, count, label=label, name=name))

    return build_folder(out, stamp=stamp, fill=fill, is_complete=complete)


def _save(image, path: Path, *, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        image.save(path, optimize=False)
    else:
        image.save(path, quality=quality)


def _file_names(split: str, count: int, *, label: int, name: str) -> list[str]:
    """The files of one class in one split, relative to the dataset folder."""
    # Mix formats: users' folders rarely hold one kind of file.
    return [f"{split}/{name}/{name}_{i:05d}." + ("png" if (i + label) % 3 == 0 else "jpg")
            for i in range(count)]


def build_folder(root: Path, *, stamp: str, fill: Callable[[Path], None],
                 is_complete: Callable[[Path], bool] | None = None) -> Path:
    """Make ``root`` appear complete or not at all; reuse it when its stamp matches.

    ``fill`` writes into a staging folder beside ``root``, which is then renamed
    into place with a ``.complete`` file holding ``stamp`` (the parameters that
    made it), so an interrupted run never leaves a half-drawn dataset to reuse.
    ``is_complete``, when given, also checks the files themselves (a few
    milliseconds for thousands of files): a folder someone deleted files from is
    drawn again rather than reused.
    """
    marker = root / ".complete"
    if (marker.exists() and marker.read_text() == stamp
            and (is_complete is None or is_complete(root))):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        fill(staging)
        (staging / ".complete").write_text(stamp)
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root


def draw(shape: str, *, rng: random.Random, noise_rng: np.random.Generator,
         size: tuple[int, int]) -> Image.Image:
    """Draw one image of ``shape`` with random colours, placement, rotation and noise."""
    width, height = size
    background = _colour(rng)
    foreground = _colour(rng)
    # Keep contrast: a shape the same colour as its background is not a label anyone can learn.
    while sum(abs(a - b) for a, b in zip(background, foreground)) < 150:
        foreground = _colour(rng)
    image = Image.new("RGB", size, background)
    canvas = ImageDraw.Draw(image)
    # A faint texture so the background is not flat: one thin random line, half the time.
    if rng.random() < 0.5:
        canvas.line([(rng.uniform(0, width), rng.uniform(0, height)) for _ in range(2)],
                    fill=_colour(rng), width=1)
    side = min(width, height)
    radius = rng.uniform(0.22, 0.40) * side
    cx = rng.uniform(radius, width - radius)
    cy = rng.uniform(radius, height - radius)
    angle = rng.uniform(0, 2 * math.pi)
    if shape == "circle":
        canvas.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=foreground)
    else:
        canvas.polygon(_polygon(shape, cx, cy, radius, angle), fill=foreground)
    pixels = np.asarray(image, dtype=np.int16)
    pixels = pixels + noise_rng.normal(0, 8, pixels.shape).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _polygon(shape: str, cx: float, cy: float, radius: float,
             angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners, radii = 4, [radius * 0.9]
    elif shape == "triangle":
        corners, radii = 3, [radius]
    elif shape == "star":
        corners, radii = 10, [radius, radius * 0.45]
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(CLASSES)}")
    points = []
    for k in range(corners):
        r = radii[k % len(radii)]
        theta = angle + 2 * math.pi * k / corners
        points.append((cx + r * math.cos(theta), cy + r * math.sin(theta)))
    return points


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
