"""``model.fine_tune``: the new head first with the backbone frozen, then its top layers.

Real runs through ``trainjob train`` of MobileNetV2 (it has batch norm, whose statistics must
not move) at 32 px, from a notop file written as Keras's are (tests/test_weights.py), on
4 classes x 8 images: three steps an epoch. A run of the head alone, continued into
fine-tuning by raising train.epochs, is compared with the layers it started from and with
an uninterrupted run of both phases.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from job import fingerprint
from job import spec as spec_module
from job.spec_fine_tune import BACKBONE_LAYERS
from tests.conftest import (
    KERAS_SAVE_WARNING,
    one_error_line,
    succeeded,
    tiny_spec,
    train,
    write_spec,
)
from tests.test_weights import APPLICATIONS, write_notop

pytestmark = [pytest.mark.usefixtures("one_local_worker"), KERAS_SAVE_WARNING]

UNFREEZE = 12
"""MobileNetV2's top 12 layers: its last block (block_16), Conv_1 and the pooling. Four are
batch norm, which stays frozen; four more have weights, which fine-tune."""
HEAD_RATE, TUNE_RATE = 0.003, 0.0004
"""Learning rates of the head phase (train.learning_rate) and of fine-tuning."""


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """4 classes x 8 images at 32 px: with val_split 0.25, 24 training images."""
    from job import sample_data

    return sample_data.generate(tmp_path_factory.mktemp("ft-data") / "data", images_per_class=8,
                                test_per_class=0, image_size=32)


@pytest.fixture(scope="module")
def notop(tmp_path_factory) -> Path:
    """MobileNetV2's notop file, Keras's name and shapes, from a random backbone."""
    return write_notop("mobilenet_v2", tmp_path_factory.mktemp("ft-notop"))


def fine_tune_spec(data: Path, out: Path, weights: Path, *, epochs: int, **fine_tune) -> dict:
    spec = tiny_spec(data, out, data={"test_dir": None},
                     model={"backbone": "mobilenet_v2", "weights": str(weights), "dropout": 0.0,
                            "augment": {"flip": "none"},
                            "fine_tune": {"head_epochs": 1, "unfreeze": UNFREEZE,
                                          "learning_rate": TUNE_RATE, **fine_tune}},
                     train={"epochs": epochs, "global_batch_size": 8,
                            "learning_rate": HEAD_RATE, "mixed_precision": False},
                     output={"checkpoint_every_steps": 100, "export_model": "last",
                             "formats": ["h5"]})
    return spec


def layer_weights(model_file: Path) -> dict[str, list[np.ndarray]]:
    """Every layer's weights (the backbone's by its own layer names), from a model file."""
    import keras

    model = keras.models.load_model(model_file, compile=False)
    backbone = model.get_layer(next(layer.name for layer in model.layers
                                    if layer.name.startswith("mobilenetv2")))
    found = {layer.name: [w.numpy() for w in layer.weights] for layer in model.layers
             if layer is not backbone}
    found.update({layer.name: [w.numpy() for w in layer.weights] for layer in backbone.layers})
    return found


def starting_weights(notop: Path) -> dict[str, list[np.ndarray]]:
    import keras

    backbone = getattr(keras.applications, APPLICATIONS["mobilenet_v2"])(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    backbone.load_weights(notop)
    return {layer.name: [w.numpy() for w in layer.weights] for layer in backbone.layers}


def initial_head(notop: Path) -> dict[str, list[np.ndarray]]:
    """The classifier's head as a run builds it before training (train.seed 1234)."""
    import keras

    from job.model import build_model

    keras.utils.set_random_seed(1234)
    model = build_model(input_shape=(32, 32, 3), num_classes=4, seed=1234,
                        model=spec_module.ModelSpec(backbone="mobilenet_v2", weights=notop,
                                                    dropout=0.0))
    return {"logits": [w.numpy() for w in model.get_layer("logits").weights]}


def changed(before: dict, after: dict, names) -> dict[str, bool]:
    return {name: any(not np.array_equal(a, b) for a, b in zip(before[name], after[name]))
            for name in names}


def backbone_layers(start: dict) -> tuple[list[str], list[str], list[str]]:
    """The backbone's layers with weights: (top UNFREEZE but batch norm, the ones below,
    batch norm), by the names Keras lists them in."""
    import keras

    backbone = getattr(keras.applications, APPLICATIONS["mobilenet_v2"])(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    layers = [layer for layer in backbone.layers[1:] if layer.weights]
    top = {layer.name for layer in backbone.layers[1:][-UNFREEZE:]}
    norm = [layer.name for layer in layers
            if isinstance(layer, keras.layers.BatchNormalization)]
    tuned = [layer.name for layer in layers if layer.name in top and layer.name not in norm]
    below = [layer.name for layer in layers if layer.name not in top and layer.name not in norm]
    assert len(tuned) == 4 and len(norm) == 52 and len(below) > 40
    assert set(start) >= {*tuned, *below, *norm}
    return tuned, below, norm


def checkpointed_learning_rate(run_dir: Path) -> float:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints"))
    return float(reader.get_tensor("optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE"))


@pytest.fixture(scope="module")
def runs(small_data, notop, tmp_path_factory):
    """The head alone (epochs = head_epochs), that run continued with train.epochs raised to
    2, and an uninterrupted run of both phases: model files and logs."""
    folder = tmp_path_factory.mktemp("ft-runs")
    out = folder / "models"
    head = succeeded(train(folder, fine_tune_spec(small_data, out, notop, epochs=1),
                           run_id="resumed"))
    head_model = folder / "head.h5"
    head_model.write_bytes((head.run_dir / "model.h5").read_bytes())
    head_rate = checkpointed_learning_rate(head.run_dir)
    resumed = succeeded(train(folder, fine_tune_spec(small_data, out, notop, epochs=2),
                              run_id="resumed"))
    whole = succeeded(train(folder, fine_tune_spec(small_data, out, notop, epochs=2),
                            run_id="whole"))
    return {"head": head, "head_model": head_model, "head_rate": head_rate,
            "resumed": resumed, "whole": whole}


def test_the_head_phase_trains_the_head_alone_and_leaves_the_backbone_as_loaded(runs, notop):
    start, head = starting_weights(notop), layer_weights(runs["head_model"])
    tuned, below, norm = backbone_layers(start)

    assert not any(changed(start, head, [*tuned, *below, *norm]).values())  # BN stats included
    assert changed(initial_head(notop), head, ["logits"]) == {"logits": True}
    assert runs["head_rate"] == pytest.approx(HEAD_RATE)
    assert ("fine-tuning: epoch 1 train the new head, mobilenet_v2 frozen, learning rate 0.003; "
            "raise train.epochs past 1 to fine-tune mobilenet_v2") in runs["head"].out


def test_raising_epochs_fine_tunes_the_top_layers_alone_at_the_fine_tuning_rate(runs, notop):
    start = starting_weights(notop)
    head, tuned_model = layer_weights(runs["head_model"]), layer_weights(
        runs["resumed"].run_dir / "model.h5")
    tuned, below, norm = backbone_layers(start)

    assert all(changed(head, tuned_model, [*tuned, "logits"]).values())
    assert not any(changed(head, tuned_model, below).values())
    assert not any(changed(head, tuned_model, norm).values())  # moving statistics and all
    assert checkpointed_learning_rate(runs["resumed"].run_dir) == pytest.approx(TUNE_RATE)
    out = runs["resumed"].out
    assert "resumed from checkpoint ckpt-3 at step 3" in out
    assert ("fine-tuning: unfroze 8 layers of mobilenet_v2 from epoch 2 (4 batch-norm layers "
            "stay frozen), learning rate 0.0004") in out
    assert runs["resumed"].metrics()["steps"] == 6


def test_a_run_continued_into_fine_tuning_ends_as_an_uninterrupted_one(runs):
    import keras

    resumed, whole = (keras.models.load_model(runs[name].run_dir / "model.h5", compile=False)
                      for name in ("resumed", "whole"))

    assert len(resumed.weights) == len(whole.weights)
    for a, b in zip(resumed.weights, whole.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert runs["whole"].metrics()["weights_sha256"] == runs["resumed"].metrics()[
        "weights_sha256"]


def test_the_export_of_a_fine_tuned_run_loads_predicts_and_is_trainable_as_built(runs):
    import keras

    run_dir = runs["whole"].run_dir
    model = keras.models.load_model(run_dir / "model.h5", compile=False)
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    probabilities = model.predict(pixels, verbose=0)

    assert probabilities.shape == (3, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # Every layer as built: a fine-tune leaves no frozen flag in the exported model.
    config = json.dumps(model.get_config())
    assert '"trainable": false' not in config.replace("preprocess", "")
    assert runs["whole"].metrics()["exports"]["h5"]["passed"]


@pytest.mark.parametrize(("model", "train_keys", "named"), [
    ({"backbone": "small_cnn", "weights": None}, {}, "model.fine_tune needs a pretrained"),
    ({"weights": None}, {}, "model.fine_tune needs model.weights"),
    ({}, {"epochs": 1, "head_epochs": 2}, "model.fine_tune.head_epochs=2 is invalid"),
    ({}, {"unfreeze": 155}, "model.fine_tune.unfreeze=155 is invalid: expected all, or at "
     "most 154, the layers of mobilenet_v2"),
    ({}, {"unfreeze": "top"}, "model.fine_tune.unfreeze='top' is invalid"),
    ({}, {"learning_rate": 0}, "model.fine_tune.learning_rate=0 is invalid"),
])
def test_a_fine_tune_that_cannot_mean_what_it_says_exits_2_naming_the_key(
        small_data, tmp_path, model, train_keys, named):
    epochs = train_keys.pop("epochs", 2)
    spec = fine_tune_spec(small_data, tmp_path / "models", tmp_path / "w.h5", epochs=epochs,
                          **train_keys)
    spec["model"].update(model)

    line = one_error_line(train(tmp_path, spec, run_id="refused"), code=2)

    assert named in line
    assert not (tmp_path / "models").exists()


def test_the_backbone_layer_counts_are_keras_own():
    import keras

    from job.model import _APPLICATIONS

    for backbone, count in BACKBONE_LAYERS.items():
        built = getattr(keras.applications, _APPLICATIONS[backbone][0])(
            include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
        assert len(built.layers) - 1 == count, backbone  # its input layer aside


def test_fine_tune_keys_decide_the_run_and_a_run_without_them_keeps_its_fingerprint(tmp_path):
    def flat(**model) -> dict:
        path = write_spec(tmp_path, {"name": "x", "data": {"train_dir": "d"},
                                     "model": {"backbone": "vgg16", "weights": "imagenet",
                                               **model}})
        return fingerprint.make(spec_module.load(path).to_dict(), listings={})

    plain = flat()
    older = json.loads(json.dumps(plain))
    assert not any(key.startswith("model.fine_tune") for key in older["spec"])
    assert fingerprint.differences(older, flat()) == []
    found = fingerprint.differences(flat(fine_tune={"unfreeze": 5}),
                                    flat(fine_tune={"unfreeze": 4}))
    assert [str(d) for d in found] == ["model.fine_tune.unfreeze was 5, now 4"]
    assert {d.key for d in fingerprint.differences(plain, flat(fine_tune={}))} == {
        "model.fine_tune.head_epochs", "model.fine_tune.unfreeze",
        "model.fine_tune.learning_rate"}


def test_an_empty_fine_tune_section_takes_the_guide_defaults(tmp_path):
    path = write_spec(tmp_path, {"name": "x", "data": {"train_dir": "d"},
                                 "model": {"backbone": "vgg16", "weights": "imagenet",
                                           "fine_tune": {}}})
    fine_tune = spec_module.load(path).model.fine_tune

    assert (fine_tune.head_epochs, fine_tune.unfreeze, fine_tune.learning_rate) == (1, "all", None)
    assert fine_tune.phase_two_learning_rate(1e-3) == pytest.approx(1e-5)


def test_two_workers_fine_tune_in_both_phases_to_the_same_weights(small_data, notop, tmp_path):
    import os

    from tests.test_multiworker import Launcher

    out = tmp_path / "models"
    spec_path = write_spec(tmp_path, fine_tune_spec(small_data, out, notop, epochs=2))
    env = {**os.environ, "TRAINJOB_SCRATCH_DIR": str(tmp_path / "scratch"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    launcher = Launcher(spec_path, workers=2, max_restarts=0, run_id="pair", env=env)
    assert launcher.wait() == 0, launcher.log()

    run_dir = out / "pair"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["workers"], metrics["steps"]) == (2, 6)
    worker_hash = (tmp_path / "scratch" / "worker-1" / "weights.sha256").read_text().strip()
    assert worker_hash == metrics["weights_sha256"]
    start, trained = starting_weights(notop), layer_weights(run_dir / "model.h5")
    tuned, below, norm = backbone_layers(start)
    assert all(changed(start, trained, tuned).values())
    assert not any(changed(start, trained, [*below, *norm]).values())
    assert checkpointed_learning_rate(run_dir) == pytest.approx(TUNE_RATE)
    assert "fine-tuning: unfroze 8 layers of mobilenet_v2 from epoch 2" in launcher.log()
