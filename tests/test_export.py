"""Exports that are tested to work: every format of output.formats, checked in its own runtime.

One real run writes all five formats (small_cnn at 32 px, with a flip layer, the layer
Keras's own SavedModel and ONNX exports would leave on at serving time); predict runs each
of them. The converter is faked at its edge (tf2onnx) to show what a mismatch does. The
matrix at the end builds every keras.applications backbone (no training: the check needs
only a model and a few images) and exports it in every format.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args, get_type_hints

import numpy as np
import pytest

from job import data, export_check, runtimes
from job import spec as spec_module
from job.atomic import replacing_folder
from job.run_dir import RunDir, sha256_tree
from tests.conftest import CLUSTER_VARIABLES, ROOT, Run, succeeded, tiny_spec, train

ALL_FORMATS = list(runtimes.FORMATS)
APPLICATIONS = [b for b in spec_module.BACKBONES if b != "small_cnn"]

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning:keras")


@pytest.fixture(scope="module", autouse=True)
def one_local_worker():
    with pytest.MonkeyPatch.context() as patch:
        for name in CLUSTER_VARIABLES:
            patch.delenv(name, raising=False)
        yield


def export_spec(shapes_data: Path, out_dir: Path, **output) -> dict:
    """One epoch of tiny_spec with a horizontal flip, exporting ``output``'s formats."""
    return tiny_spec(shapes_data, out_dir, model={"augment": {"flip": "horizontal"}},
                     train={"epochs": 1}, output={"formats": ALL_FORMATS, **output})


@pytest.fixture(scope="module")
def every_format(shapes_data, tmp_path_factory) -> Run:
    folder = tmp_path_factory.mktemp("formats")
    return succeeded(train(folder, export_spec(shapes_data, folder / "models"), run_id="all"))


def validation_pixels(run_dir: Path) -> tuple[list[str], np.ndarray]:
    spec = spec_module.load(run_dir / "spec.yaml")
    splits = data.make_splits(spec.data, seed=spec.train.seed)
    decoded = data.decode(splits.val, spec=spec.data, cache_dir=None)
    return list(splits.val.paths), np.asarray(decoded.pixels)


# --- the table -------------------------------------------------------------------------


def test_the_spec_s_formats_are_the_runtimes_formats_each_with_a_writer():
    from job import export_formats

    hint = get_type_hints(spec_module.OutputSpec)["formats"]
    assert set(get_args(get_args(hint)[0])) == set(runtimes.FORMATS)
    assert set(export_formats._WRITERS) == set(runtimes.FORMATS) - {"h5"}
    assert {runtimes.format_of(Path(f"x{suffix}")).name
            for suffix in runtimes.SUFFIXES} == set(runtimes.FORMATS) - {"saved_model"}


@pytest.mark.parametrize("formats", [["keras"], [], ["h5", "h5"], ["h5", "pt"], "h5"])
def test_output_formats_must_be_distinct_known_formats_with_h5(formats):
    with pytest.raises(spec_module.SpecError, match=r"output\.formats=.* with h5 \(predict"):
        spec_module.from_dict({"name": "x", "data": {"train_dir": "t"},
                               "output": {"formats": formats}}, base_dir=Path("/"))


def test_default_formats_are_h5_and_keras_checked_strictly():
    spec = spec_module.from_dict({"name": "x", "data": {"train_dir": "t"}}, base_dir=Path("/"))

    assert spec.output.formats == ("h5", "keras")
    assert spec.output.export_check == "fail"


@pytest.mark.parametrize(("predicted", "passed"), [
    ([[0.7, 0.3], [0.2, 0.8]], True),
    ([[0.7004, 0.2996], [0.2, 0.8]], False),   # beyond 1e-4
    ([[0.49, 0.51], [0.2, 0.8]], False),       # another top-1 class
    ([[np.nan, 0.3], [0.2, 0.8]], False),
    ([[0.7, 0.3]], False),                      # fewer images
])
def test_compare_passes_only_the_same_top1_within_the_limit(predicted, passed):
    reference = np.array([[0.7, 0.3], [0.2, 0.8]])

    figures = export_check.compare(reference, np.array(predicted, np.float32), tolerance=1e-4)

    assert figures["passed"] is passed


def toy_predict(batch: np.ndarray) -> np.ndarray:
    """Class probabilities that depend on each image's pixels: a softmax of channel means."""
    logits = batch.reshape(len(batch), -1, 3).mean(axis=1) / 40.0
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("images", [5, 70])
def test_the_report_s_worst_images_from_the_check_s_probabilities_are_the_predicted_ones(
        images):
    # The check's probabilities of the first PARITY_IMAGES validation images stand in
    # for a second forward pass when they cover the whole shard; elsewhere (a shard
    # beyond them) the report predicts it itself. Both ways give the same grid.
    from job import export
    from job.listing import ImageList

    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (images, 4, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, images)
    shard = ImageList(Path("/v"), ("a", "b", "c"), tuple(f"/v/{i}.png" for i in range(images)),
                      labels)
    decoded = data.Decoded(pixels, labels)
    checked = export_check.probabilities(toy_predict, export_check.parity_images(
        {"val": decoded, "train": decoded}))

    def worst(parity):
        never = parity is not None and len(parity) == images
        predict = (lambda batch: pytest.fail("predicted again")) if never else toy_predict
        return export._worst(export.Predictions(predict, parity), shard, decoded, workers=1,
                             count=4)

    reused, predicted = worst(checked), worst(None)
    assert reused.names == predicted.names and len(reused.names) == 4
    np.testing.assert_array_equal(reused.predicted, predicted.predicted)
    np.testing.assert_array_equal(reused.labels, predicted.labels)
    np.testing.assert_allclose(reused.true_probability, predicted.true_probability, rtol=1e-6)
    np.testing.assert_array_equal(worst(checked[:-1]).names, predicted.names)  # not the shard


# --- writing ---------------------------------------------------------------------------


def test_a_folder_replaces_the_old_one_whole_and_a_failed_write_keeps_the_old(tmp_path):
    target = tmp_path / "saved_model"
    target.mkdir()
    (target / "old.pb").write_text("old")

    with replacing_folder(target) as tmp:
        (tmp / "variables").mkdir()
        (tmp / "saved_model.pb").write_text("new")
    with pytest.raises(RuntimeError), replacing_folder(target) as tmp:
        (tmp / "half.pb").write_text("half")
        raise RuntimeError("converter failed")

    assert sorted(p.name for p in target.iterdir()) == ["saved_model.pb", "variables"]
    assert [p.name for p in tmp_path.iterdir()] == ["saved_model"]  # no temp folder left


def test_a_folder_s_sha256_is_what_sha256sum_prints(tmp_path):
    folder = tmp_path / "saved_model"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "variables.index").write_bytes(b"index")

    listing = subprocess.run("find . -type f | cut -c3- | LC_ALL=C sort | xargs sha256sum",
                             shell=True, cwd=folder, capture_output=True, check=True).stdout

    assert sha256_tree(folder) == hashlib.sha256(listing).hexdigest()


# --- a run with every format -------------------------------------------------------------


def test_every_format_is_written_checked_and_recorded_in_metrics(every_format):
    exports = every_format.metrics()["exports"]

    assert sorted(exports) == sorted(ALL_FORMATS)
    for name, figures in exports.items():
        fmt = runtimes.FORMATS[name]
        path = every_format.run_dir / figures["path"]
        assert figures["path"] == fmt.file and path.exists(), name
        assert figures["passed"] and figures["top1_agreement"] == 1.0, (name, figures)
        assert figures["max_abs_diff"] <= fmt.tolerance == figures["max_abs_diff_limit"], name
        assert figures["images"] == 60  # the validation split: a quarter of 4 x 60
        digest = sha256_tree(path) if path.is_dir() else hashlib.sha256(
            path.read_bytes()).hexdigest()
        assert figures["sha256"] == digest, name
        assert f"export {name}: {fmt.file} " in every_format.out
    assert exports["h5"]["sha256"] == every_format.metrics()["model_sha256"]
    assert not [p.name for p in every_format.run_dir.iterdir() if p.name.startswith(".")]


def test_the_saved_model_serves_without_augmentation_where_keras_s_own_export_flips(
        every_format, tmp_path):
    """Why job.export_formats writes the SavedModel itself: Keras 3.15's model.export traces
    model.__call__ without training=False, so RandomFlip stays on in the served graph."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(every_format.run_dir / "model.h5", compile=False)
    _, pixels = validation_pixels(every_format.run_dir)
    model.export(str(tmp_path / "keras_own"), format="tf_saved_model", verbose=False)
    serve = tf.saved_model.load(str(tmp_path / "keras_own")).signatures["serving_default"]
    theirs = next(iter(serve(tf.constant(pixels, tf.float32)).values())).numpy()
    ours = runtimes.load(every_format.run_dir / "saved_model").predict(pixels)
    trained = model.predict(pixels, verbose=0)

    assert np.abs(ours - trained).max() <= 1e-4
    assert np.abs(theirs - trained).max() > 1e-3  # when this fails, use model.export again


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_predict_runs_every_format_as_it_runs_the_run_directory(every_format, tmp_path, name):
    from job import cli

    paths, _ = validation_pixels(every_format.run_dir)
    listed = tmp_path / "val.txt"
    listed.write_text("\n".join(paths))
    model = every_format.run_dir / runtimes.FORMATS[name].file

    rows = {}
    for source, output in ((every_format.run_dir, "run.json"), (model, "format.json")):
        assert cli.main(["predict", str(source), str(listed), "--output",
                         str(tmp_path / output)]) == 0
        rows[output] = json.loads((tmp_path / output).read_text())["predictions"]

    assert [r["label"] for r in rows["format.json"]] == [r["label"] for r in rows["run.json"]]
    np.testing.assert_allclose([r["probability"] for r in rows["format.json"]],
                               [r["probability"] for r in rows["run.json"]],
                               atol=runtimes.FORMATS[name].tolerance)


@pytest.mark.parametrize("name", ["onnx", "litert"])
def test_predict_with_onnx_or_litert_never_imports_tensorflow(every_format, shapes_data, name):
    model = every_format.run_dir / runtimes.FORMATS[name].file
    script = ("import sys\nfrom job import cli\n"
              f"code = cli.main(['predict', {str(model)!r}, {str(shapes_data / 'test')!r}])\n"
              "print('loaded:', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
              "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})

    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout
    assert "circle_00000" in done.stdout


# --- when a format misses ------------------------------------------------------------------


@pytest.fixture
def tempering_onnx_converter(monkeypatch):
    """tf2onnx, faked at its edge: it converts a model whose probabilities are tempered
    (the same top-1 class, every probability moved), as a broken converter would."""
    import tensorflow as tf
    import tf2onnx

    real = tf2onnx.convert.from_function

    def tempered(function, input_signature, **options):
        softer = tf.function(lambda image: tf.nn.softmax(tf.math.log(function(image) + 1e-7)
                                                         * 0.3),
                             input_signature=input_signature)
        return real(softer, input_signature=input_signature, **options)

    monkeypatch.setattr(tf2onnx.convert, "from_function", tempered)


def test_a_format_that_predicts_differently_fails_the_run_with_exit_1_and_is_removed(
        shapes_data, tmp_path, tempering_onnx_converter):
    spec = export_spec(shapes_data, tmp_path / "models", formats=["h5", "onnx"])

    run = train(tmp_path, spec, run_id="differs")

    assert run.code == 1
    (line,) = [line for line in run.err.splitlines() if line.strip()]
    assert "model.onnx (onnx) predicts differently from the trained model in ONNX " \
           "Runtime" in line and "output.export_check: warn" in line
    assert not (run.run_dir / "model.onnx").exists()
    assert not (run.run_dir / "metrics.json").exists()


def test_under_warn_a_format_that_predicts_differently_stays_with_a_warning(
        shapes_data, tmp_path, tempering_onnx_converter):
    spec = export_spec(shapes_data, tmp_path / "models", formats=["h5", "onnx"],
                       export_check="warn")

    run = succeeded(train(tmp_path, spec, run_id="warned"))

    onnx = run.metrics()["exports"]["onnx"]
    assert onnx["passed"] is False and onnx["max_abs_diff"] > 1e-3
    assert onnx["top1_agreement"] == 1.0
    assert "warning: model.onnx (onnx) predicts differently" in run.err
    assert (run.run_dir / "model.onnx").is_file()
    assert "; MISSED" in run.out


def test_a_run_that_failed_its_check_finishes_when_rerun_under_warn(
        shapes_data, tmp_path, tempering_onnx_converter):
    spec = export_spec(shapes_data, tmp_path / "models", formats=["h5", "onnx"])
    assert train(tmp_path, spec, run_id="again").code == 1

    rerun = succeeded(train(tmp_path, spec, run_id="again",
                            args=("--set", "output.export_check=warn")))

    assert rerun.metrics()["resumed_from_step"] == rerun.metrics()["steps"]  # no retraining
    assert rerun.metrics()["exports"]["onnx"]["passed"] is False
    assert (rerun.run_dir / "model.onnx").is_file()


def test_a_format_whose_converter_is_not_installed_is_refused_before_training(
        shapes_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if the export extra were absent
    spec = export_spec(shapes_data, tmp_path / "models", formats=["h5", "onnx"])

    run = train(tmp_path, spec, run_id="no-extra")

    assert run.code == 2
    (line,) = [line for line in run.err.splitlines() if line.strip()]
    assert "output.formats: onnx needs tf2onnx" in line and "trainjob[export]" in line
    assert not run.run_dir.exists()


# --- every backbone in every format --------------------------------------------------------


@pytest.fixture(scope="module")
def built(shapes_data):
    """One model per backbone (built directly, untrained) and eight test images, 32 px."""
    import keras

    from job.model import build_model

    models = {}
    spec = spec_module.DataSpec(train_dir=shapes_data / "test", image_size=(32, 32),
                                decode_workers=1)
    items = data.list_images(spec.train_dir, key="data.test_dir")
    pixels = np.asarray(data.decode(items, spec=spec, cache_dir=None).pixels)[::5][:8]

    def get(backbone: str):
        if backbone not in models:
            keras.utils.set_random_seed(5)
            models.clear()  # one backbone in memory at a time
            models[backbone] = build_model(
                input_shape=(32, 32, 3), num_classes=4,
                model=spec_module.ModelSpec(backbone=backbone), seed=5)
        return models[backbone], pixels

    return get


@pytest.mark.exports
@pytest.mark.parametrize("name", ALL_FORMATS)
@pytest.mark.parametrize("backbone", APPLICATIONS)
def test_every_backbone_exports_in_every_format_and_passes_its_check(built, tmp_path,
                                                                     backbone, name):
    model, pixels = built(backbone)
    run = RunDir.open(tmp_path, "matrix", is_chief=True, worker=0)
    if name == "h5":
        run.save_model(model)
    lines = []

    exports = export_check.write_formats(
        run, model, output=spec_module.OutputSpec(formats=(name,)), pixels=pixels,
        log=lines.append)

    assert exports[name]["passed"], lines
    assert (tmp_path / "matrix" / runtimes.FORMATS[name].file).exists()


def test_the_litert_interpreter_s_delegate_notice_is_filtered_like_tensorflow_s_chatter():
    code = ("import os, sys\nfrom job import tf_logs\nrestore = tf_logs.hide()\n"
            "os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
            "os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU. ours\\n')\n"
            "restore()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})

    assert done.stderr == "INFO: Created TensorFlow Lite XNNPACK delegate for CPU. ours\n"


def test_a_check_on_no_image_never_passes():
    figures = export_check.compare(np.zeros((0, 4)), np.zeros((0, 4), np.float32),
                                   tolerance=1e-4)

    assert figures["passed"] is False and "no image" in figures["error"]
