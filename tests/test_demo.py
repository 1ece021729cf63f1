"""The demo's spec and the sample data: deterministic, mixed formats, a real learning task.

The demo's training itself takes minutes and is not run here; these tests check
what it trains on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from job import data, demo, images, sample_data
from job import spec as spec_module


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """What `trainjob demo` writes before it trains: the sample data and its spec."""
    out = tmp_path_factory.mktemp("demo")
    demo.write_demo(out)
    return out


def test_write_demo_writes_a_spec_that_loads_and_points_at_its_data(demo_dir):
    spec = spec_module.load(demo_dir / "shapes.yaml")

    assert spec.name == "shapes"
    assert spec.data.train_dir == demo_dir / "data" / "train"
    assert spec.data.test_dir == demo_dir / "data" / "test"
    assert spec.output.dir == demo_dir / "models"
    assert spec.data.image_size == (demo.IMAGE_SIZE, demo.IMAGE_SIZE)
    splits = data.make_splits(spec.data, seed=spec.train.seed)
    assert splits.class_names == sample_data.CLASSES
    train = data.list_images(spec.data.train_dir, key="data.train_dir")
    assert set(train.class_counts().values()) == {demo.IMAGES_PER_CLASS}
    assert splits.test is not None and len(splits.test) == 4 * 50


def test_sample_data_has_every_class_as_jpeg_and_png_files(demo_dir):
    for split in ("train", "test"):
        folders = sorted(p for p in (demo_dir / "data" / split).iterdir() if p.is_dir())
        assert [p.name for p in folders] == list(sample_data.CLASSES)
        for folder in folders:
            heads = {f.suffix: f.read_bytes()[:4] for f in sorted(folder.iterdir())}
            assert heads.keys() == {".jpg", ".png"}, folder
            assert heads[".jpg"][:2] == b"\xff\xd8"  # Real JPEG and PNG, not renamed files.
            assert heads[".png"] == b"\x89PNG"


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_sample_data_is_the_same_bytes_for_the_same_seed(tmp_path):
    options = {"images_per_class": 6, "test_per_class": 2, "image_size": 24, "seed": 3}

    first = tree_bytes(sample_data.generate(tmp_path / "a", **options))
    second = tree_bytes(sample_data.generate(tmp_path / "b", **options))
    other = tree_bytes(sample_data.generate(tmp_path / "c", **{**options, "seed": 4}))

    pngs = [name for name in first if name.endswith(".png")]
    assert len(pngs) >= 4 * 2 and any(name.endswith(".jpg") for name in first)
    assert first == second
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in pngs)


def test_generate_reuses_a_complete_dataset_with_the_same_parameters(tmp_path):
    root = sample_data.generate(tmp_path / "d", images_per_class=2, test_per_class=0,
                                image_size=16)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.*")}

    sample_data.generate(tmp_path / "d", images_per_class=2, test_per_class=0, image_size=16)

    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.*")} == stamps
    assert not (root / "test").exists()


def test_classes_are_not_separable_by_mean_colour(demo_dir):
    """A model has to learn shape: the colour of an image says nothing about its class.

    The per-class mean colours lie within a few levels of each other, and a
    nearest-class-mean classifier on each image's mean RGB, fitted on half the
    training images, is near chance (0.25 for four classes) on the other half.
    """
    items = data.list_images(demo_dir / "data" / "train", key="data.train_dir")
    pixels, kept, bad = images.decode_many(list(items.paths), size=(demo.IMAGE_SIZE,) * 2,
                                           color_mode="rgb", workers=1)
    assert not bad and len(kept) == len(items)
    colours = pixels.reshape(len(pixels), -1, 3).mean(axis=1)
    labels = items.labels
    fit = np.arange(len(labels)) % 2 == 0
    centres = np.stack([colours[fit & (labels == k)].mean(axis=0) for k in range(4)])

    spread = np.abs(centres[:, None, :] - centres[None, :, :]).max()
    assert spread < 12, f"class mean colours differ by {spread:.1f} levels:\n{centres}"
    distances = ((colours[~fit, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    accuracy = float(np.mean(distances.argmin(axis=1) == labels[~fit]))
    assert accuracy < 0.45, f"nearest mean colour classifies {accuracy:.2f} correctly"
