"""Real training runs on tiny data, through ``trainjob train`` (``job.cli.main``) in-process.

Every run here is one worker on the sample shapes at 32 px for one or two epochs:
a few seconds each. Multi-worker runs live in test_multiworker.py.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from job import data
from job import spec as spec_module
from tests.conftest import KERAS_SAVE_WARNING, Run, succeeded, tiny_spec, train

# Keras's own HDF5 writer trips numpy 2's copy-keyword deprecation once per weight: noise.
pytestmark = [pytest.mark.usefixtures("one_local_worker"), KERAS_SAVE_WARNING]

CLASSES = ["circle", "square", "star", "triangle"]
METRICS_KEYS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss", "test_accuracy",
                "epochs", "steps", "images_per_second", "workers", "duration_seconds",
                "skipped_images", "tensorflow_version", "keras_version", "python_version",
                "model_sha256")
"""metrics.json keys the issue's Outputs section promises."""




@pytest.fixture(autouse=True)
def float32_policy_after():
    yield
    import keras

    # A mixed-precision run leaves its global policy behind in this process.
    keras.mixed_precision.set_global_policy("float32")


def smoke_spec(shapes_data: Path, out_dir: Path, **overrides) -> dict:
    """tiny_spec with dropout and a flip: both draw random numbers a resume must replay."""
    return tiny_spec(shapes_data, out_dir, model={"dropout": 0.2,
                                                 "augment": {"flip": "horizontal"}},
                     **overrides)


def load_model(path: Path):
    import keras

    return keras.models.load_model(path, compile=False)


def decoded_test_set(shapes_data: Path, *, color_mode: str = "rgb") -> np.ndarray:
    spec = spec_module.DataSpec(train_dir=shapes_data / "test", image_size=(32, 32),
                                color_mode=color_mode, decode_workers=1)
    items = data.list_images(spec.train_dir, key="data.test_dir")
    return np.asarray(data.decode(items, spec=spec, cache_dir=None).pixels)


@pytest.fixture(scope="module")
def smoke(shapes_data, tmp_path_factory) -> Run:
    """One uninterrupted two-epoch run; several tests read its outputs."""
    folder = tmp_path_factory.mktemp("smoke")
    return succeeded(train(folder, smoke_spec(shapes_data, folder / "models"), run_id="smoke"))


# --- the smoke run ---------------------------------------------------------------------


def test_smoke_run_writes_every_output_file(smoke):
    root = smoke.run_dir
    for name in ("model.h5", "labels.json", "metrics.json", "history.csv", "spec.yaml"):
        assert (root / name).is_file(), name
    assert json.loads((root / "labels.json").read_text()) == CLASSES
    steps = smoke.metrics()["steps"]
    assert (root / "checkpoints" / "checkpoint").is_file()
    assert (root / "checkpoints" / f"ckpt-{steps}.index").is_file()
    assert list((root / "logs" / "train").glob("events.out.tfevents.*"))
    assert list((root / "logs" / "validation").glob("events.out.tfevents.*"))
    # Atomic writes leave no temp files behind.
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert f"model: {root / 'model.h5'}" in smoke.out


def test_metrics_json_has_every_documented_key(smoke):
    import keras
    import tensorflow as tf

    metrics = smoke.metrics()

    missing = [key for key in METRICS_KEYS if key not in metrics]
    assert not missing, f"metrics.json lacks {missing}"
    steps_per_epoch = metrics["steps_per_epoch"]
    assert steps_per_epoch == 180 // 16  # 4 x 60 images, a quarter held out, batch 16.
    assert metrics["epochs"] == 2
    assert metrics["steps"] == 2 * steps_per_epoch
    assert metrics["workers"] == 1
    assert metrics["skipped_images"] == 0 and metrics["skipped_files"] == []
    for key in ("val_accuracy", "train_accuracy", "test_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    for key in ("val_loss", "train_loss", "images_per_second", "duration_seconds"):
        assert metrics[key] > 0, key
    assert metrics["tensorflow_version"] == tf.__version__
    assert metrics["keras_version"] == keras.__version__
    assert metrics["python_version"] == platform.python_version()
    digest = hashlib.sha256((smoke.run_dir / "model.h5").read_bytes()).hexdigest()
    assert metrics["model_sha256"] == digest


def test_history_has_one_row_per_epoch(smoke):
    rows = smoke.history()
    metrics = smoke.metrics()

    assert [(row["epoch"], row["step"]) for row in rows] == [
        ("1", str(metrics["steps_per_epoch"])), ("2", str(metrics["steps"]))]
    # metrics.json reports the exported epoch's figures (the best one's, by default).
    exported = rows[metrics["exported_epoch"] - 1]
    assert float(exported["val_accuracy"]) == pytest.approx(metrics["val_accuracy"], abs=1e-5)
    assert float(exported["train_loss"]) == pytest.approx(metrics["train_loss"], rel=1e-5)


def test_spec_yaml_is_the_resolved_spec(smoke):
    written = spec_module.load(smoke.run_dir / "spec.yaml")
    original = spec_module.load(smoke.run_dir.parent.parent / "spec.yaml")

    assert written == original
    assert written.data.train_dir.is_absolute()


def test_exported_model_is_the_trained_model(smoke, shapes_data):
    """model.h5 reloads and predicts exactly what the trained model predicts.

    The in-memory model is gone when the CLI returns, but its weights at export are
    in the run's last checkpoint: the final epoch ends with a save at the last step,
    nothing trains after it, and the checkpoint keeps the best epoch's weights too,
    which the run exports by default (``job.selection``). So a fresh model of the same
    architecture, with that checkpoint restored and the exported epoch's weights put
    in, stands in for the in-memory model: every weight of the reloaded model.h5 must
    equal it, and both must predict the same on the test images. A fresh model without
    the checkpoint must not, or the check is empty.
    """
    import keras
    import tensorflow as tf

    from job.model import build_model
    from job.selection import Selection

    spec = spec_module.load(smoke.run_dir / "spec.yaml")
    images = decoded_test_set(shapes_data)
    exported = load_model(smoke.run_dir / "model.h5")

    def fresh():
        return build_model(input_shape=(32, 32, 3), num_classes=4, model=spec.model,
                           seed=spec.train.seed)

    keras.utils.set_random_seed(99)
    untrained = fresh()
    restored = fresh()
    latest = tf.train.latest_checkpoint(str(smoke.run_dir / "checkpoints"))
    assert latest is not None and latest.endswith(f"ckpt-{smoke.metrics()['steps']}")
    selection = Selection(spec, restored)
    tf.train.Checkpoint(model=restored, **selection.trackables()).restore(
        latest).expect_partial()
    assert (selection.use_best() or smoke.metrics()["epochs_trained"]) == \
        smoke.metrics()["exported_epoch"]

    assert [w.path for w in exported.weights] == [w.path for w in restored.weights]
    for ours, theirs in zip(exported.weights, restored.weights):
        assert np.array_equal(ours.numpy(), theirs.numpy()), ours.path
    predicted = exported(images, training=False).numpy()
    np.testing.assert_allclose(predicted, restored(images, training=False).numpy(),
                               rtol=0, atol=1e-6)
    assert not np.allclose(predicted, untrained(images, training=False).numpy(), atol=1e-3)
    np.testing.assert_allclose(predicted.sum(axis=1), 1.0, atol=1e-5)
    # And it is as good as the run says it is.
    labels = np.repeat(np.arange(4), 10)
    accuracy = float(np.mean(predicted.argmax(axis=1) == labels))
    if smoke.metrics()["precision"] == "float32":
        assert accuracy == pytest.approx(smoke.metrics()["test_accuracy"], abs=1e-6)
    else:
        assert_only_near_ties_differ(exported, images, predicted, labels=labels, build=fresh,
                                     run_accuracy=smoke.metrics()["test_accuracy"],
                                     policy=smoke.metrics()["precision"])


def assert_only_near_ties_differ(exported, images, predicted, *, labels, build, run_accuracy,
                                 policy):
    """A run that computed in 16 bits scored its test images with a 16-bit forward pass,
    and model.h5 is float32: an image may change class only where its two most probable
    classes are closer than the two passes' largest difference, twice over."""
    import keras

    keras.mixed_precision.set_global_policy(policy)
    try:
        sixteen = build()
        sixteen.set_weights(exported.get_weights())
        difference = float(np.max(np.abs(sixteen(images, training=False).numpy() - predicted)))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    top_two = np.sort(predicted, axis=1)[:, -2:]
    near_ties = int(np.sum(top_two[:, 1] - top_two[:, 0] < 2 * difference))
    accuracy = float(np.mean(predicted.argmax(axis=1) == labels))
    assert 0 < difference < 0.05 and near_ties < len(labels)
    assert abs(accuracy - run_accuracy) * len(labels) <= near_ties + 1e-6


# --- resume ----------------------------------------------------------------------------


def test_rerun_with_the_same_run_id_resumes_and_ends_where_an_uninterrupted_run_ends(
        smoke, shapes_data, tmp_path):
    """One epoch, then the same run id with two: the second run continues from the step
    the first one checkpointed, and ends with the weights of the uninterrupted smoke run
    (same data order, optimizer state and random draws for dropout and flips)."""
    models = tmp_path / "models"
    first = succeeded(train(tmp_path / "first", smoke_spec(shapes_data, models,
                                                           train={"epochs": 1}),
                            run_id="resumed"))
    steps_per_epoch = first.metrics()["steps"]
    first_rows = first.history()

    second = succeeded(train(tmp_path / "second", smoke_spec(shapes_data, models),
                             run_id="resumed"))

    found = re.findall(r"resumed from checkpoint (\S+) at step (\d+)", second.out)
    assert found == [(f"ckpt-{steps_per_epoch}", str(steps_per_epoch))], second.out
    assert "resumed from checkpoint" not in first.out
    metrics = second.metrics()
    assert metrics["steps"] == 2 * steps_per_epoch
    assert metrics["resumed_from_step"] == steps_per_epoch
    rows = second.history()
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert rows[0] == first_rows[0]
    # Exact resume: the resumed epoch trains like the uninterrupted run's second epoch.
    assert float(rows[1]["train_loss"]) == pytest.approx(
        float(smoke.history()[1]["train_loss"]), rel=1e-4)
    resumed_weights = load_model(second.run_dir / "model.h5").weights
    for ours, theirs in zip(resumed_weights, load_model(smoke.run_dir / "model.h5").weights):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=ours.path)


# --- bad images and bad input ----------------------------------------------------------


@pytest.fixture(scope="module")
def data_with_a_corrupt_image(shapes_data, tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the sample data with one corrupt JPEG among the circles."""
    root = tmp_path_factory.mktemp("corrupt") / "data"
    shutil.copytree(shapes_data / "train", root / "train")
    broken = root / "train" / "circle" / "circle_00000_broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG " * 40)
    return root, broken


def corrupt_spec(root: Path, out_dir: Path, policy: str) -> dict:
    return tiny_spec(root, out_dir, data={"test_dir": None, "on_bad_image": policy},
                     train={"epochs": 1})


def test_a_corrupt_image_under_skip_is_skipped_and_listed_in_metrics(
        data_with_a_corrupt_image, tmp_path):
    root, broken = data_with_a_corrupt_image

    run = succeeded(train(tmp_path, corrupt_spec(root, tmp_path / "models", "skip"),
                          run_id="skip"))

    metrics = run.metrics()
    assert metrics["skipped_images"] == 1
    assert [entry["path"] for entry in metrics["skipped_files"]] == [str(broken)]
    assert metrics["skipped_files"][0]["reason"]
    assert f"warning: skipping unreadable image {broken}" in run.err
    assert (run.run_dir / "model.h5").is_file()


def test_a_corrupt_image_under_fail_exits_2_naming_it_and_writes_no_outputs(
        data_with_a_corrupt_image, tmp_path):
    root, broken = data_with_a_corrupt_image

    run = train(tmp_path, corrupt_spec(root, tmp_path / "models", "fail"), run_id="fail")

    assert run.code == 2, run.err
    assert run.err.count("\n") == 1 and run.err.startswith("trainjob: error: ")
    assert str(broken) in run.err
    assert "Traceback" not in run.err
    assert not run.run_dir.exists()  # Not even an empty folder: the run never started.


@pytest.mark.parametrize(("section", "values", "key"), [
    ("train", {"epochs": 0}, "train.epochs"),
    ("train", {"optimizer": "lbfgs"}, "train.optimizer"),
    ("data", {"train_dir": "does/not/exist"}, "data.train_dir"),
    ("model", {"weights": "imagenet"}, "model.weights"),
])
def test_bad_spec_exits_2_with_one_line_naming_the_key(shapes_data, tmp_path, section, values,
                                                       key):
    run = train(tmp_path, tiny_spec(shapes_data, tmp_path / "models", **{section: values}),
                run_id="bad")

    assert run.code == 2
    assert run.err.count("\n") == 1 and run.err.startswith("trainjob: error: ")
    assert key in run.err
    assert not (run.run_dir / "model.h5").exists()


# --- model variants --------------------------------------------------------------------


def one_epoch(shapes_data: Path, out_dir: Path, **overrides) -> dict:
    """tiny_spec for one epoch without a test set; ``overrides`` merge into its sections."""
    sections = {"data": {"test_dir": None}, "train": {"epochs": 1}}
    for section, values in overrides.items():
        sections[section] = {**sections.get(section, {}), **values}
    return tiny_spec(shapes_data, out_dir, **sections)


def test_grayscale_trains_a_one_channel_model(shapes_data, tmp_path):
    spec = one_epoch(shapes_data, tmp_path / "models",
                     data={"color_mode": "grayscale"})

    run = succeeded(train(tmp_path, spec, run_id="gray"))

    model = load_model(run.run_dir / "model.h5")
    assert model.input_shape == (None, 32, 32, 1)
    predicted = model(decoded_test_set(shapes_data, color_mode="grayscale"), training=False)
    assert predicted.shape == (40, 4)


def test_mobilenet_v2_backbone_trains_one_epoch(shapes_data, tmp_path):
    spec = one_epoch(shapes_data, tmp_path / "models",
                     model={"backbone": "mobilenet_v2", "weights": None,
                            "augment": {"flip": "none"}},
                     train={"global_batch_size": 45})  # 4 steps: the graph is the cost.

    run = succeeded(train(tmp_path, spec, run_id="mobilenet"))

    metrics = run.metrics()
    assert metrics["steps"] == 180 // 45
    assert np.isfinite(metrics["train_loss"]) and 0.0 <= metrics["val_accuracy"] <= 1.0
    assert (run.run_dir / "model.h5").is_file()


# keras.applications' preprocess_input adds op layers (TrueDivide, GetItem) that model.h5
# cannot reload; the model builds the same arithmetic from plain layers instead.
@pytest.mark.parametrize("backbone", ["vgg16", "resnet50", "mobilenet_v2", "efficientnet_b0"])
def test_applications_backbone_model_h5_reloads_and_predicts_the_same(backbone, tmp_path,
                                                                      shapes_data):
    import keras

    from job.model import build_model
    from job.run_dir import RunDir

    keras.utils.set_random_seed(3)
    model = build_model(input_shape=(32, 32, 3), num_classes=4, model=spec_module.ModelSpec(
        backbone=backbone, augment=spec_module.AugmentSpec(flip="none")))
    path, _ = RunDir.open(tmp_path, "export", is_chief=True, worker=0).save_model(model)

    reloaded = load_model(path)

    images = decoded_test_set(shapes_data)[:8]
    np.testing.assert_allclose(reloaded(images, training=False).numpy(),
                               model(images, training=False).numpy(), rtol=0, atol=1e-6)


def test_weights_file_that_does_not_exist_exits_2_naming_model_weights(shapes_data, tmp_path):
    missing = tmp_path / "no-such.weights.h5"
    spec = one_epoch(shapes_data, tmp_path / "models", model={"weights": str(missing)})

    run = train(tmp_path, spec, run_id="noweights")

    assert run.code == 2
    assert run.err.count("\n") == 1
    assert "model.weights=" in run.err and str(missing) in run.err
    assert not (run.run_dir / "model.h5").exists()


def test_local_weights_file_is_loaded_before_training(shapes_data, tmp_path):
    """Start from saved weights with a learning rate too small to move them.

    The exported trainable weights then equal the file's; a run that ignored the
    file would start from its own random init, which cannot match.
    """
    import keras

    from job.model import build_model

    keras.utils.set_random_seed(7)
    source = build_model(input_shape=(32, 32, 3), num_classes=4, model=spec_module.ModelSpec(
        augment=spec_module.AugmentSpec(flip="none")))
    weights_file = tmp_path / "start.weights.h5"
    source.save_weights(weights_file)
    spec = one_epoch(shapes_data, tmp_path / "models", model={"weights": str(weights_file)},
                     train={"learning_rate": 1e-12})

    run = succeeded(train(tmp_path, spec, run_id="warm"))

    exported = load_model(run.run_dir / "model.h5")
    trainable = {w.path: w.numpy() for w in source.trainable_weights}
    assert [w.path for w in exported.trainable_weights] == list(trainable)
    for weight in exported.trainable_weights:
        np.testing.assert_allclose(weight.numpy(), trainable[weight.path], rtol=0, atol=1e-6,
                                   err_msg=weight.path)


def test_mixed_precision_trains_in_bfloat16_on_cpu_and_exports_float32(shapes_data, tmp_path):
    import keras
    import tensorflow as tf

    from job.model import build_model

    spec = one_epoch(shapes_data, tmp_path / "models", train={"mixed_precision": True})

    run = succeeded(train(tmp_path, spec, run_id="mixed"))

    metrics = run.metrics()
    assert metrics["precision"] == "mixed_bfloat16"
    assert "precision mixed_bfloat16 (train.mixed_precision: true)" in run.out
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["val_loss"])
    model = load_model(run.run_dir / "model.h5")
    # The export computes in float32 everywhere, so it predicts alike on any machine...
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    predicted = np.asarray(model(decoded_test_set(shapes_data), training=False))
    assert predicted.dtype == np.float32
    np.testing.assert_allclose(predicted.sum(axis=1), 1.0, atol=1e-5)
    # ...with exactly the weights that trained in bfloat16 (the final checkpoint's).
    keras.mixed_precision.set_global_policy("float32")
    trained = build_model(input_shape=(32, 32, 3), num_classes=4, model=spec_module.ModelSpec(
        augment=spec_module.AugmentSpec(flip="none")))
    checkpoint = tf.train.Checkpoint(model=trained)
    checkpoint.restore(tf.train.latest_checkpoint(str(run.run_dir / "checkpoints"))
                       ).expect_partial()
    exported = {w.path: w.numpy() for w in model.weights}
    assert exported.keys() == {w.path for w in trained.weights}
    for weight in trained.weights:
        np.testing.assert_array_equal(exported[weight.path], weight.numpy(), err_msg=weight.path)


def test_auto_precision_on_a_float16_tensor_core_gpu_trains_with_loss_scaling(
        shapes_data, tmp_path, monkeypatch):
    # No GPU here: pretend the hardware answered "compute capability 7.5", so the
    # float16 path (LossScaleOptimizer, scaled loss, unscaled gradients) runs on CPU.
    from job import machine

    monkeypatch.setattr(machine, "gpu_capabilities", lambda tf: [(7, 5)])
    spec = one_epoch(shapes_data, tmp_path / "models")

    run = succeeded(train(tmp_path, spec, run_id="fp16"))

    metrics = run.metrics()
    assert metrics["precision"] == "mixed_float16"
    assert ("precision mixed_float16 (auto: GPU compute capability 7.5 has float16 tensor "
            "cores (one replica, with loss scaling))") in run.out
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["val_loss"])
    model = load_model(run.run_dir / "model.h5")
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_a_float16_run_resumes_with_its_loss_scale(shapes_data, tmp_path, monkeypatch):
    # The loss-scale optimizer wraps the real one: its checkpoint and step count must
    # round-trip as the plain optimizer's do.
    from job import machine

    monkeypatch.setattr(machine, "gpu_capabilities", lambda tf: [(7, 5)])
    models = tmp_path / "models"
    first = succeeded(train(tmp_path / "first", one_epoch(shapes_data, models),
                            run_id="fp16-resume"))
    steps_per_epoch = first.metrics()["steps"]

    second = succeeded(train(tmp_path / "second",
                             one_epoch(shapes_data, models, train={"epochs": 2}),
                             run_id="fp16-resume"))

    assert f"resumed from checkpoint ckpt-{steps_per_epoch} at step {steps_per_epoch}" in (
        second.out)
    metrics = second.metrics()
    assert (metrics["precision"], metrics["steps"]) == ("mixed_float16", 2 * steps_per_epoch)
    assert np.isfinite(metrics["train_loss"])


def test_a_checkpoint_without_a_step_counter_resumes_at_the_optimizers_count(
        shapes_data, tmp_path, monkeypatch):
    # Checkpoints written before they carried "step" (the optimizer counted steps then).
    import tensorflow as tf

    real_init = tf.train.Checkpoint.__init__

    def without_step(self, **objects):
        objects.pop("step", None)
        real_init(self, **objects)

    models = tmp_path / "models"
    with monkeypatch.context() as patch:
        patch.setattr(tf.train.Checkpoint, "__init__", without_step)
        first = succeeded(train(tmp_path / "first", one_epoch(shapes_data, models),
                                run_id="legacy"))
    steps_per_epoch = first.metrics()["steps"]
    latest = tf.train.latest_checkpoint(str(first.run_dir / "checkpoints"))
    assert not any(name.startswith("step/") for name, _ in tf.train.list_variables(latest))

    second = succeeded(train(tmp_path / "second",
                             one_epoch(shapes_data, models, train={"epochs": 2}),
                             run_id="legacy"))

    assert f"resumed from checkpoint ckpt-{steps_per_epoch} at step {steps_per_epoch}" in (
        second.out)
    assert second.metrics()["steps"] == 2 * steps_per_epoch
    assert [row["epoch"] for row in second.history()] == ["1", "2"]


def test_mixed_precision_false_trains_in_float32(shapes_data, tmp_path):
    spec = one_epoch(shapes_data, tmp_path / "models", train={"mixed_precision": False})

    run = succeeded(train(tmp_path, spec, run_id="f32"))

    assert run.metrics()["precision"] == "float32"
    assert "precision float32 (train.mixed_precision: false)" in run.out




@pytest.mark.parametrize(("peer_votes", "policy"), [(0.0, "mixed_bfloat16"), (1.0, "float32")])
def test_workers_train_in_float32_when_any_peer_lacks_16_bit_math(monkeypatch, peer_votes, policy):
    # Two real workers always agree here (same CPU); a peer on other hardware is the
    # all-reduced vote: any worker that chose float32 adds one.
    import keras
    import tensorflow as tf

    from job import distributed, machine

    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(machine, "gpu_capabilities", lambda tf: [])
    monkeypatch.setattr(distributed, "all_reducer",
                        lambda strategy, op, value: lambda: np.array([peer_votes]))
    spec = spec_module.from_dict({"name": "vote", "data": {"train_dir": "x"}}, base_dir=Path("."))
    cluster = type("Cluster", (), {"is_multi_worker": True})()

    choice = distributed.set_precision(tf.distribute.get_strategy(), spec, cluster=cluster)

    assert choice.policy == policy
    assert keras.mixed_precision.global_policy().name == policy
