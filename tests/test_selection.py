"""The exported epoch (best or last) and early stopping, and what a restart remembers."""

from __future__ import annotations

import numpy as np
import pytest

from job import spec as spec_module
from tests.conftest import KERAS_SAVE_WARNING, succeeded, tiny_spec, train

pytestmark = [pytest.mark.usefixtures("one_local_worker"), KERAS_SAVE_WARNING]




def make_spec(*, export_model="best", early_stopping=None):
    return spec_module.from_dict({
        "name": "x", "data": {"train_dir": "t"},
        "train": {"early_stopping": early_stopping},
        "output": {"export_model": export_model}}, base_dir=spec_module.Path("/"))


def tiny_model(value: float):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.layers[0].kernel.assign(np.full((2, 1), value, "float32"))
    return model


def test_the_best_epoch_is_the_highest_accuracy_and_its_weights_come_back():
    from job.selection import Selection

    model = tiny_model(1.0)
    selection = Selection(make_spec(), model)
    for epoch, (loss, accuracy, value) in enumerate(
            [(0.9, 0.50, 1.0), (0.5, 0.80, 2.0), (0.4, 0.80, 3.0), (0.6, 0.70, 4.0)], start=1):
        model.layers[0].kernel.assign(np.full((2, 1), value, "float32"))
        selection.on_epoch_end(epoch, loss=loss, accuracy=accuracy)

    assert selection.use_best() == 3  # 0.80 twice: the lower loss wins
    assert model.layers[0].kernel.numpy().tolist() == [[3.0], [3.0]]


def test_export_model_last_keeps_the_final_weights():
    from job.selection import Selection

    model = tiny_model(1.0)
    selection = Selection(make_spec(export_model="last"), model)
    selection.on_epoch_end(1, loss=0.1, accuracy=0.9)
    model.layers[0].kernel.assign(np.full((2, 1), 5.0, "float32"))
    selection.on_epoch_end(2, loss=0.9, accuracy=0.1)

    assert selection.use_best() is None
    assert model.layers[0].kernel.numpy().tolist() == [[5.0], [5.0]]
    assert selection.facts(exported_epoch=2, epochs_trained=2)["best_epoch"] == 1


@pytest.mark.parametrize(("monitor", "figures", "stops_after"), [
    ("val_loss", [1.0, 0.9, 0.95, 0.96, 0.97], 5),
    ("val_loss", [1.0, 0.9, 0.8, 0.7, 0.6], None),
    ("val_accuracy", [0.5, 0.6, 0.6, 0.55, 0.58, 0.7], 5),
])
def test_early_stopping_waits_patience_epochs_without_improvement(monitor, figures,
                                                                 stops_after):
    from job.selection import Selection

    selection = Selection(make_spec(early_stopping={"monitor": monitor, "patience": 3}),
                          tiny_model(1.0))
    stopped = None
    for epoch, figure in enumerate(figures, start=1):
        loss, accuracy = (figure, 0.5) if monitor == "val_loss" else (1.0, figure)
        selection.on_epoch_end(epoch, loss=loss, accuracy=accuracy)
        if selection.should_stop and stopped is None:
            stopped = epoch

    assert stopped == stops_after


def test_a_restart_remembers_the_best_epoch_and_the_epochs_waited(tmp_path):
    import tensorflow as tf

    from job.selection import Selection

    spec = make_spec(early_stopping={"monitor": "val_loss", "patience": 2})
    model = tiny_model(2.0)
    before = Selection(spec, model)
    before.on_epoch_end(1, loss=0.5, accuracy=0.9)
    model.layers[0].kernel.assign(np.full((2, 1), 7.0, "float32"))
    before.on_epoch_end(2, loss=0.6, accuracy=0.4)
    path = tf.train.Checkpoint(**before.trackables()).save(str(tmp_path / "ckpt"))

    restarted_model = tiny_model(7.0)
    after = Selection(spec, restarted_model)
    tf.train.Checkpoint(**after.trackables()).restore(path).assert_consumed()
    after.on_epoch_end(3, loss=0.7, accuracy=0.3)

    assert after.should_stop  # epochs 2 and 3 without improvement: patience 2
    assert after.use_best() == 1
    assert restarted_model.layers[0].kernel.numpy().tolist() == [[2.0], [2.0]]


def test_a_run_stops_early_and_says_so_in_its_log_history_and_metrics(shapes_data, tmp_path):
    # min_delta 1.0: no epoch can improve val_loss by that much, so epoch 2 is the first
    # without improvement and patience 1 stops the run there.
    spec = tiny_spec(shapes_data, tmp_path / "models", train={
        "epochs": 5, "early_stopping": {"monitor": "val_loss", "patience": 1,
                                        "min_delta": 1.0}})

    run = succeeded(train(tmp_path, spec, run_id="early"))

    metrics = run.metrics()
    assert "early stopping after epoch 2: val_loss has not improved" in run.out
    assert [row["epoch"] for row in run.history()] == ["1", "2"]
    assert metrics["stopped_early"] is True and metrics["epochs_trained"] == 2
    best = max(run.history(), key=lambda r: (float(r["val_accuracy"]), -float(r["val_loss"])))
    assert metrics["exported_epoch"] == metrics["best_epoch"] == int(best["epoch"])
    assert metrics["val_accuracy"] == pytest.approx(float(best["val_accuracy"]), abs=1e-6)

    again = succeeded(train(tmp_path, {**spec, "train": {**spec["train"], "epochs": 6}},
                            run_id="early"))
    assert "resumed from checkpoint" in again.out
    assert [row["epoch"] for row in again.history()] == ["1", "2"]  # it stays stopped


def test_the_best_epoch_is_exported_with_its_own_validation_not_a_second_one(
        shapes_data, tmp_path, monkeypatch):
    # Epoch 1 is made the best whatever the figures (the selection is fed a falling
    # accuracy), so the exported weights are not the last epoch's.
    from job import selection
    from job import train as train_module

    feed = selection.Selection.on_epoch_end
    monkeypatch.setattr(selection.Selection, "on_epoch_end", lambda self, epoch, **figures: feed(
        self, epoch, loss=figures["loss"], accuracy=1.0 / epoch))
    validations = []
    make_evaluator = train_module._evaluator

    def counting(*args, **kwargs):
        evaluate = make_evaluator(*args, **kwargs)
        return lambda name, **options: validations.append(name) or evaluate(name, **options)

    monkeypatch.setattr(train_module, "_evaluator", counting)
    spec = tiny_spec(shapes_data, tmp_path / "models", train={"epochs": 3})

    run = succeeded(train(tmp_path, spec, run_id="best-first"))

    metrics, first = run.metrics(), run.history()[0]
    assert metrics["exported_epoch"] == metrics["best_epoch"] == 1
    assert validations.count("val") == 3  # One a epoch; the export reuses epoch 1's.
    assert metrics["val_accuracy"] == pytest.approx(float(first["val_accuracy"]), abs=1e-6)
    matrix = np.asarray(metrics["val_confusion_matrix"])
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["val_accuracy"], abs=1e-6)
