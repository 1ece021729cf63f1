"""trainjob predict and evaluate: on a trained run, the model at work decodes as training did.

One run is trained once for the module (float32, so validation measured exactly what the
exported float32 model.h5 computes). The tests then predict and evaluate with it through
the command line, as a user would.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import tracemalloc
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from job import cli, data, images, metrics, predict, report
from job import spec as spec_module
from tests.conftest import ROOT, succeeded, tiny_spec, train


@pytest.fixture(scope="module")
def run_dir(shapes_data, tmp_path_factory) -> Path:
    """A finished float32 run on the sample shapes."""
    folder = tmp_path_factory.mktemp("predict-run")
    spec = tiny_spec(shapes_data, folder / "models",
                     train={"epochs": 3, "mixed_precision": False})
    return succeeded(train(folder, spec, run_id="shapes")).run_dir


def trainjob(*args: object) -> tuple[int, str, str]:
    """Run the command line in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main([str(arg) for arg in args])
    return code, out.getvalue(), err.getvalue()


def one_error_line(code: int, err: str, *, says: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainjob: error: "), err
    assert says in lines[0], lines[0]


def validation_files(run_dir: Path) -> data.ImageList:
    """The run's validation split: deterministic for its spec.yaml and seed."""
    spec = spec_module.load(run_dir / "spec.yaml")
    return data.make_splits(spec.data, seed=spec.train.seed).val


def keras_model(run_dir: Path):
    import keras

    return keras.saving.load_model(run_dir / "model.h5", compile=False)


def predictions_json(path: Path) -> list[dict]:
    return json.loads(path.read_text())["predictions"]


# --- predict -------------------------------------------------------------------------


def test_predict_on_validation_files_matches_validation_accuracy_image_for_image(run_dir,
                                                                                 tmp_path):
    val = validation_files(run_dir)
    listing = tmp_path / "val.txt"
    listing.write_text("\n".join(val.paths) + "\n")
    code, _, err = trainjob("predict", run_dir, listing, "--top-k", 4,
                            "--output", tmp_path / "val.json")
    assert code == 0, err
    rows = predictions_json(tmp_path / "val.json")
    assert [row["path"] for row in rows] == list(val.paths)

    # The same files decoded by the training decoder, predicted in this process.
    pixels, kept, bad = images.decode_many(list(val.paths), size=(32, 32), color_mode="rgb")
    assert not bad and kept == list(range(len(val)))
    probabilities = keras_model(run_dir).predict(pixels, verbose=0)
    names = json.loads((run_dir / "labels.json").read_text())
    assert [row["label"] for row in rows] == [names[i] for i in probabilities.argmax(axis=1)]
    for row, expected in zip(rows, probabilities):
        assert [t["label"] for t in row["top_k"]] == [names[i] for i in np.argsort(-expected)]
        assert row["probability"] == pytest.approx(expected.max(), abs=1e-5)

    correct = sum(row["label"] == names[label] for row, label in zip(rows, val.labels))
    val_accuracy = json.loads((run_dir / "metrics.json").read_text())["val_accuracy"]
    assert correct / len(rows) == pytest.approx(val_accuracy, abs=1e-9)


def test_predict_prints_a_table_of_folders_walked_in_order(run_dir, shapes_data):
    code, out, err = trainjob("predict", run_dir, shapes_data / "test" / "star",
                              shapes_data / "test" / "circle")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["path", "label", "prob", "runners-up"]
    assert len(lines) == 1 + 20
    paths = [line.split()[0] for line in lines[1:]]
    assert paths == (sorted(str(p) for p in (shapes_data / "test" / "star").iterdir())
                     + sorted(str(p) for p in (shapes_data / "test" / "circle").iterdir()))
    label, probability = lines[1].split()[1:3]
    assert label in ("circle", "square", "star", "triangle") and 0 < float(probability) <= 1
    assert "predicted 20 of 20 images" in err


def test_predict_table_on_a_terminal_fits_its_width(run_dir, shapes_data, tmp_path,
                                                    monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "80")
    out = Terminal()
    deep = tmp_path / ("very-long-folder-name-" * 4)
    deep.mkdir()
    shutil.copy(shapes_data / "test" / "star" / "star_00001.png", deep / "star.png")
    loaded = predict.load(run_dir)
    code = predict.predict(run_dir, [deep, shapes_data / "test" / "star"], top_k=4, out=out,
                           err=io.StringIO())
    assert code == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 12 and max(map(len, lines)) <= 80
    assert lines[1].startswith("…") and "/star.png" in lines[1]  # the path's end stays
    assert lines[2].split()[1] in loaded.class_names


def test_a_reader_that_stops_early_ends_predict_quietly(run_dir, shapes_data, tmp_path):
    """``trainjob predict ... | head``: no traceback when the pipe closes, and the SIGPIPE code."""
    folder = tmp_path / "many"
    folder.mkdir()
    image = shapes_data / "test" / "star" / "star_00001.png"
    for number in range(1500):  # rows well past a pipe's 64 KiB buffer
        (folder / f"a-rather-long-file-name-so-rows-fill-the-pipe-{number:05d}.png").symlink_to(
            image)
    process = subprocess.Popen([sys.executable, "-m", "job", "predict", str(run_dir),
                                str(folder)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout.readline().split() == [b"path", b"label", b"prob", b"runners-up"]
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "Error" not in err


def test_unreadable_files_get_rows_with_reasons_and_exit_2(run_dir, shapes_data, tmp_path):
    good = shutil.copy(shapes_data / "test" / "star" / "star_00001.png", tmp_path / "a.png")
    truncated = tmp_path / "b.png"
    truncated.write_bytes(Path(good).read_bytes()[:60])
    (tmp_path / "c.jpg").write_text("not an image")
    listing = tmp_path / "list.txt"
    listing.write_text("# my photos\na.png\n\nb.png\nmissing.png\nc.jpg\n")
    code, _, err = trainjob("predict", run_dir, listing, "--output", tmp_path / "p.csv")
    assert code == 2
    assert "3 of 4 images could not be read" in err
    with (tmp_path / "p.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(row["path"]).name for row in rows] == ["a.png", "b.png", "missing.png", "c.jpg"]
    assert rows[0]["label"] and rows[0]["error"] == "" and float(rows[0]["probability"]) > 0
    assert [row["error"] for row in rows[1:3]] == ["truncated file", "file not found"]
    assert rows[3]["error"].startswith("not an image") and rows[3]["label"] == ""
    assert list(rows[0]) == ["path", "label", "probability", "label_2", "probability_2",
                             "label_3", "probability_3", "error"]


def test_bare_model_file_assumes_size_and_classes_from_the_model_and_says_so(
        run_dir, shapes_data, tmp_path):
    bare = tmp_path / "weights" / "classifier.h5"
    bare.parent.mkdir()
    shutil.copy(run_dir / "model.h5", bare)
    star = shapes_data / "test" / "star"
    code, _, err = trainjob("predict", bare, star, "--output", tmp_path / "bare.json")
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {bare} has no spec.yaml or labels.json beside it; assuming 32x32 "
                     "rgb images (the model's input) and the default decoder settings, classes "
                     "class_0..class_3."]
    code, _, _ = trainjob("predict", run_dir, star, "--output", tmp_path / "run.json")
    names = json.loads((run_dir / "labels.json").read_text())
    from_run = [row["label"] for row in predictions_json(tmp_path / "run.json")]
    from_bare = [row["label"] for row in predictions_json(tmp_path / "bare.json")]
    assert from_bare == [f"class_{names.index(label)}" for label in from_run]

    shutil.copy(run_dir / "labels.json", bare.parent / "labels.json")
    loaded = predict.load(bare)
    assert loaded.class_names == tuple(names)
    assert loaded.assumed == (f"note: {bare} has no spec.yaml beside it; assuming 32x32 rgb "
                              "images (the model's input) and the default decoder settings.")


def test_a_model_that_disagrees_with_its_runs_spec_is_refused(run_dir, shapes_data, tmp_path):
    """Decoding follows the run's spec; a model from another run would be fed wrong pixels."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    spec = yaml.safe_load((copy / "spec.yaml").read_text())
    spec["data"]["color_mode"] = "grayscale"
    (copy / "spec.yaml").write_text(yaml.safe_dump(spec))
    code, _, err = trainjob("predict", copy, shapes_data / "test" / "star")
    one_error_line(code, err, says="the model takes 32x32 rgb images but")


def test_bad_inputs_end_in_one_line_and_exit_2(run_dir, shapes_data, tmp_path):
    star = shapes_data / "test" / "star"
    (tmp_path / "empty").mkdir()
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "text.h5").write_text("hello")
    (tmp_path / "out.csv").mkdir()
    weights = tmp_path / "classifier.weights.h5"
    keras_model(run_dir).save_weights(weights)
    cases = [
        (("predict", tmp_path / "nowhere", star), "no such run directory or model file"),
        (("predict", tmp_path / "unfinished", star), "no model.h5 in this folder"),
        (("predict", tmp_path / "text.h5", star), "not a Keras model"),
        (("predict", weights, star), "not a Keras model"),
        (("predict", run_dir / "spec.yaml", star), "not a model file"),
        (("predict", run_dir, tmp_path / "empty"), "no image files in"),
        (("predict", run_dir, tmp_path / "nope.png"), "no such file or folder"),
        (("predict", run_dir, star, "--output", tmp_path / "p.txt"), "ending .csv or .json"),
        (("predict", run_dir, star, "--output", tmp_path / "out.csv"), "is a folder"),
        (("evaluate", run_dir, tmp_path / "nope"), "is not a folder"),
        (("evaluate", run_dir, tmp_path / "empty"), "has no class subfolders"),
    ]
    for args, says in cases:
        code, _, err = trainjob(*args)
        one_error_line(code, err, says=says)


def test_list_file_that_is_not_text_is_refused(run_dir, tmp_path):
    (tmp_path / "photos.txt").write_bytes(b"\xff\xfe\x00binary")
    code, _, err = trainjob("predict", run_dir, tmp_path / "photos.txt")
    one_error_line(code, err, says="byte 0 is not UTF-8 text")


def test_stream_decodes_in_chunks_so_memory_does_not_grow_with_the_file_count(run_dir,
                                                                             tmp_path):
    source = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(source).save(tmp_path / "one.png")
    loaded = predict.load(run_dir)

    def peak_bytes(count: int) -> int:
        paths = [str(tmp_path / "one.png")] * count  # decoded as many times as listed
        list(predict.stream(loaded, paths[:64], size=64))  # warm: traced and built
        tracemalloc.start()
        try:
            for chunk in predict.stream(loaded, paths, size=64):
                assert len(chunk.paths) <= 64 and chunk.probabilities.shape[0] == len(chunk.kept)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_bytes(256), peak_bytes(2048)
    pixels_of_all = 2048 * 32 * 32 * 3
    assert large < pixels_of_all / 2, (small, large)
    assert large < 2 * small + 2**20, (small, large)


def test_stream_predicts_in_order_across_chunks(run_dir, shapes_data):
    paths = [str(p) for p in sorted((shapes_data / "test").rglob("*.*"))]
    loaded = predict.load(run_dir)
    whole = np.concatenate([c.probabilities for c in predict.stream(loaded, paths, size=4096)])
    chunks = list(predict.stream(loaded, paths, size=7))
    assert [len(c.paths) for c in chunks] == [7] * 5 + [5]
    assert np.allclose(np.concatenate([c.probabilities for c in chunks]), whole, atol=1e-5)


# --- evaluate ------------------------------------------------------------------------


def test_evaluate_writes_json_and_png_and_agrees_with_the_runs_test_accuracy(run_dir,
                                                                           shapes_data):
    code, out, err = trainjob("evaluate", run_dir, shapes_data / "test")
    assert code == 0, err
    folder = run_dir / "evaluations" / "test"
    document = json.loads((folder / "evaluation.json").read_text())
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert document["accuracy"] == pytest.approx(run_metrics["test_accuracy"], abs=1e-9)
    assert document["images"] == 40 and document["skipped_images"] == 0
    matrix = np.array(document["confusion_matrix"])
    assert matrix.sum(axis=1).tolist() == [10, 10, 10, 10]
    assert document["classes"] == [vars(s) for s in metrics.class_scores(
        matrix, document["class_names"])]
    assert document["top_k"] == 3 and document["top_k_accuracy"] >= document["accuracy"]
    with Image.open(folder / "confusion_matrix.png") as picture:
        assert picture.format == "PNG" and min(picture.size) >= 400
    lines = out.splitlines()
    assert lines[0].startswith(f"accuracy {document['accuracy']:.4f} (")
    assert max(map(len, lines[:-2])) <= 80  # the table; the last two lines name the files
    assert "confusion matrix (rows: true class, columns: predicted class)" in out


def test_evaluate_refuses_a_class_folder_the_model_does_not_know(run_dir, shapes_data,
                                                                 tmp_path):
    shutil.copytree(shapes_data / "test" / "star", tmp_path / "star")
    shutil.copytree(shapes_data / "test" / "star", tmp_path / "hexagon")
    code, _, err = trainjob("evaluate", run_dir, tmp_path)
    one_error_line(code, err, says="has class folder 'hexagon' that data.train_dir lacks")


def test_evaluate_skips_unreadable_images_as_the_run_did_or_fails_under_fail(
        run_dir, shapes_data, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(shapes_data / "test", folder)
    (folder / "star" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    code, _, err = trainjob("evaluate", run_dir, folder, "--out", tmp_path / "skip")
    assert code == 0, err
    assert "warning: skipping unreadable image" in err and "broken.png" in err
    document = json.loads((tmp_path / "skip" / "evaluation.json").read_text())
    assert document["images"] == 40 and document["skipped_images"] == 1
    assert document["skipped_files"][0][0].endswith("broken.png")

    strict = tmp_path / "strict-run"
    shutil.copytree(run_dir, strict, ignore=shutil.ignore_patterns("checkpoints", "logs",
                                                                   "evaluations"))
    spec = yaml.safe_load((strict / "spec.yaml").read_text())
    spec["data"]["on_bad_image"] = "fail"
    (strict / "spec.yaml").write_text(yaml.safe_dump(spec))
    code, _, err = trainjob("evaluate", strict, folder)
    one_error_line(code, err, says="broken.png: unreadable image")
    assert not (strict / "evaluations").exists()


def test_evaluate_into_a_folder_it_cannot_create_says_so_in_one_line(run_dir, shapes_data,
                                                                     tmp_path):
    (tmp_path / "file").write_text("in the way")
    code, _, err = trainjob("evaluate", run_dir, shapes_data / "test", "--out",
                            tmp_path / "file" / "eval")
    one_error_line(code, err, says="cannot write the evaluation")


def test_evaluation_json_appears_only_with_its_picture(run_dir, shapes_data, tmp_path):
    (tmp_path / "eval" / "confusion_matrix.png").mkdir(parents=True)  # the picture cannot land
    code, _, err = trainjob("evaluate", run_dir, shapes_data / "test", "--out", tmp_path / "eval")
    one_error_line(code, err, says="cannot write the evaluation")
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["confusion_matrix.png"]


def test_confusion_matrix_picture_is_written_whole_for_many_classes(tmp_path):
    rng = np.random.default_rng(1)
    for count in (2, 60):
        matrix = rng.integers(0, 5, (count, count)) + np.diag(np.full(count, 50))
        path = report.plot_confusion_matrix(matrix, [f"class_{i}" for i in range(count)],
                                            tmp_path / f"cm{count}.png", title="validation")
        with Image.open(path) as picture:
            picture.load()
            assert picture.format == "PNG" and 400 <= min(picture.size) <= max(picture.size) <= 1700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm2.png", "cm60.png"]
