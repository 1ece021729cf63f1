"""The demo: its spec and sample data, what a rerun keeps, how it sizes itself, a real run.

Timings are never asserted: the calibration's figures are only checked to be
measurements (positive, in the precision training uses), and the epochs it
chooses are checked against speeds given to the pure planner.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from job import data, demo, images, listing, sample_data
from job import spec as spec_module
from tests.conftest import ROOT, tiny_spec, write_spec

SLOW_MACHINE = demo.Speed(images_per_second=20.0, start_seconds=5.0, precision="float32")
"""Far too slow for even the fewest epochs in the target time."""
FAST_MACHINE = demo.Speed(images_per_second=50_000.0, start_seconds=0.1,
                          precision="mixed_bfloat16")
"""Fast enough for the most epochs well inside the target time."""
MIDDLE_MACHINE = demo.Speed(images_per_second=700.0, start_seconds=0.5,
                            precision="float32")
"""About this project's 2-core machine in float32: some epochs between the bounds."""


def planned(epochs: int):
    """A calibration that always chooses ``epochs`` (the machine's speed is not under test)."""
    def calibrate(_out_dir: Path) -> demo.Plan:
        return demo.Plan(epochs=epochs, seconds=12.0, speed=SLOW_MACHINE)

    return calibrate


def never(_out_dir: Path) -> demo.Plan:
    raise AssertionError("the demo calibrated although a spec was already there")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """What `trainjob demo` writes before it trains: the sample data and its spec."""
    out = tmp_path_factory.mktemp("demo")
    demo.write_demo(out, calibrate=planned(demo.MIN_EPOCHS))
    return out


def test_write_demo_writes_a_spec_that_loads_and_points_at_its_data(demo_dir):
    spec = spec_module.load(demo_dir / demo.SPEC_FILE)

    assert spec.name == "shapes"
    assert spec.data.train_dir == demo_dir / "data" / "train"
    assert spec.data.test_dir == demo_dir / "data" / "test"
    assert spec.output.dir == demo_dir / "models"
    assert spec.data.image_size == (demo.IMAGE_SIZE, demo.IMAGE_SIZE)
    assert spec.train.epochs == demo.MIN_EPOCHS
    splits = data.make_splits(spec.data, seed=spec.train.seed)
    assert splits.class_names == sample_data.CLASSES
    train = listing.list_images(spec.data.train_dir, key="data.train_dir")
    assert set(train.class_counts().values()) == {demo.IMAGES_PER_CLASS}
    assert splits.test is not None and len(splits.test) == 4 * demo.TEST_PER_CLASS


def test_the_demo_spec_records_a_digest_of_what_the_demo_wrote(demo_dir):
    text = (demo_dir / demo.SPEC_FILE).read_text()

    assert text == demo.render_spec(demo.recipe(epochs=demo.MIN_EPOCHS))
    assert text.startswith("# Written by `trainjob demo` (sha256 ")
    assert demo.spec_state(demo_dir / demo.SPEC_FILE) == "demo"


def test_a_rerun_trains_a_spec_the_user_edited_and_says_so(tmp_path, capsys):
    demo.write_demo(tmp_path, calibrate=planned(5))
    spec_path = tmp_path / demo.SPEC_FILE
    edited = spec_path.read_text().replace("epochs: 5", "epochs: 9")
    spec_path.write_text(edited)
    capsys.readouterr()

    prepared = demo.write_demo(tmp_path, calibrate=never)

    assert spec_path.read_text() == edited
    assert prepared.spec_path == spec_path and prepared.plan is None
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and "not the spec the demo wrote" in said[0], said
    assert spec_module.load(spec_path).train.epochs == 9


def test_a_rerun_keeps_the_demos_own_spec_without_calibrating_again(tmp_path, capsys):
    demo.write_demo(tmp_path, calibrate=planned(6))
    written = (tmp_path / demo.SPEC_FILE).read_bytes()
    capsys.readouterr()

    prepared = demo.write_demo(tmp_path, calibrate=never)

    assert (tmp_path / demo.SPEC_FILE).read_bytes() == written
    assert prepared.plan is None
    assert "the demo's spec from an earlier run" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "state"), [
    (None, "missing"),
    ("as written", "demo"),
    ("body edited", "edited"),
    ("digest edited", "edited"),
    # What the demo wrote before it recorded a digest: the user may have edited it since.
    ("# Written by `trainjob demo`; edit and run `trainjob train` on it.\nname: shapes\n",
     "edited"),
    ("", "edited"),
])
def test_spec_state_tells_the_demos_own_spec_from_any_other(tmp_path, text, state):
    path = tmp_path / demo.SPEC_FILE
    ours = demo.render_spec(demo.recipe(epochs=5))
    header, _, body = ours.partition("\n")
    variants = {"as written": ours,
                "body edited": ours.replace("learning_rate: 0.001", "learning_rate: 0.01"),
                "digest edited": header.replace("sha256 ", "sha256 0")[:len(header)]
                + "\n" + body}
    if text is not None:
        path.write_text(variants.get(text, text))

    assert demo.spec_state(path) == state


def test_spec_state_leaves_an_unreadable_file_to_the_spec_loader(tmp_path):
    path = tmp_path / demo.SPEC_FILE
    path.write_bytes(b"\xff\xfe not yaml")

    assert demo.spec_state(path) == "edited"


def test_epochs_fit_the_target_time_between_the_bounds():
    slow, middle, fast = (demo.choose_epochs(speed)
                          for speed in (SLOW_MACHINE, MIDDLE_MACHINE, FAST_MACHINE))

    assert slow.epochs == demo.MIN_EPOCHS and slow.seconds > demo.TARGET_SECONDS
    assert fast.epochs == demo.MAX_EPOCHS and fast.seconds <= demo.TARGET_SECONDS
    assert demo.MIN_EPOCHS < middle.epochs < demo.MAX_EPOCHS
    assert (middle.seconds <= demo.TARGET_SECONDS
            < demo.estimate_seconds(MIDDLE_MACHINE, epochs=middle.epochs + 1))
    estimates = [demo.estimate_seconds(MIDDLE_MACHINE, epochs=e) for e in range(1, 10)]
    assert estimates == sorted(estimates)


def test_the_plan_says_what_it_trains_and_how_long_it_takes_here():
    plan = demo.choose_epochs(MIDDLE_MACHINE)

    line = plan.describe()

    assert line.startswith(f"training 4 classes × {demo.IMAGES_PER_CLASS} images for "
                           f"{plan.epochs} epochs, about {plan.seconds:.0f} s here")
    assert "700 images/s in float32" in line
    slowest = demo.choose_epochs(demo.Speed(1.0, start_seconds=99.0, precision="mixed_bfloat16"))
    assert all(len(text) <= 80 for text in slowest.describe().splitlines())


def test_sample_data_with_a_missing_file_is_drawn_again_and_complete_data_reused(tmp_path):
    options = {"images_per_class": 3, "test_per_class": 1, "image_size": 16}
    root = sample_data.generate(tmp_path / "d", **options)
    files = sorted(p for p in root.rglob("*.*") if p.name != ".complete")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}

    sample_data.generate(tmp_path / "d", **options)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before

    files[0].unlink()
    sample_data.generate(tmp_path / "d", **options)
    assert {p: p.read_bytes() for p in files} == {p: b for p, (b, _) in before.items()}


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
    items = listing.list_images(demo_dir / "data" / "train", key="data.train_dir")
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


@pytest.mark.parametrize("mixed_precision", ["auto", False])
def test_calibration_times_trainings_own_steps_in_the_runs_precision(tmp_path,
                                                                     mixed_precision):
    import keras

    from job import machine, precision

    recipe = demo.recipe(epochs=demo.MIN_EPOCHS)
    recipe["train"]["mixed_precision"] = mixed_precision
    spec = spec_module.from_dict(recipe, base_dir=tmp_path, source="test")

    speed = demo.measure_speed(spec, num_classes=4, seconds=0.2)

    expected = precision.choose(mixed_precision, gpu_capabilities=[],
                                cpu_flags=machine.cpu_flags(), replicas=1).policy
    assert speed.precision == expected
    assert speed.images_per_second > 0 and speed.start_seconds >= 0
    # Training finds TensorFlow as `trainjob train` would: float32 until it sets its own.
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
def test_the_demo_trains_an_edited_spec_for_real_and_says_how_long_it_took(tmp_path, capsys):
    """One epoch of the real path on the demo's data, from a spec the user shortened."""
    recipe = demo.recipe(epochs=1)
    recipe["train"]["global_batch_size"] = 64
    spec_path = tmp_path / demo.SPEC_FILE
    spec_path.write_text(yaml.safe_dump(recipe, sort_keys=False))

    assert demo.run_demo(out_dir=tmp_path) == 0

    out = capsys.readouterr().out
    assert "not the spec the demo wrote" in out
    assert (tmp_path / "models" / "shapes" / "model.h5").is_file()
    assert "test: loss" in out
    assert out.strip().splitlines()[-1].startswith("demo: done in ")
    assert spec_path.read_text() == yaml.safe_dump(recipe, sort_keys=False)


@pytest.mark.slow
def test_training_after_the_calibration_gets_the_same_weights_as_without_it(tmp_path,
                                                                             shapes_data):
    """The calibration leaves nothing behind: what the demo trains is what `train` trains."""
    spec_path = write_spec(tmp_path, tiny_spec(shapes_data, tmp_path / "runs"))
    calibrate_then_train = (
        "import os, sys\n"
        "from job import demo, spec\n"
        "from job.train import run_worker\n"
        "loaded = spec.load(sys.argv[1])\n"
        "demo.measure_speed(loaded, num_classes=4, seconds=0.1)\n"
        "run_worker(loaded, run_id='after-calibration', env=dict(os.environ))\n")

    for argv in ([sys.executable, "-c", calibrate_then_train, str(spec_path)],
                 [sys.executable, "-m", "job", "train", str(spec_path), "--run-id", "alone"]):
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

    def weights(run_id: str) -> str:
        metrics = json.loads((tmp_path / "runs" / run_id / "metrics.json").read_text())
        return metrics["weights_sha256"]

    assert weights("after-calibration") == weights("alone")
