"""The spec: every bad value is exit code 2 with one line naming the key; good specs load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from job import cli, spec
from job.errors import SpecError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "shapes.yaml"

GOOD = {"name": "shapes", "data": {"train_dir": "data/train"}}


def _with(path: str, value):
    """GOOD with the dotted ``path`` set to ``value``."""
    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    node = doc
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return doc


BAD_SPECS = [
    (_with("name", "Shapes_V2"), "name"),
    (_with("name", "x" * 41), "name"),
    (_with("colour", 1), "colour"),
    (_with("data.trian_dir", "x"), "data.trian_dir"),
    ({"name": "x"}, "data"),
    ({"name": "x", "data": {}}, "data.train_dir"),
    (_with("data.image_size", [64]), "data.image_size"),
    (_with("data.image_size", "64x64"), "data.image_size"),
    (_with("data.val_split", 1.5), "data.val_split"),
    (_with("data.color_mode", "rgba"), "data.color_mode"),
    (_with("data.on_bad_image", "ignore"), "data.on_bad_image"),
    (_with("model.backbone", "vgg19"), "model.backbone"),
    (_with("model.weights", "imagenet"), "model.weights"),
    (_with("model.augment.flip", "diagonal"), "model.augment.flip"),
    (_with("model.augment.sharpen", 1), "model.augment.sharpen"),
    (_with("train.epochs", 0), "train.epochs"),
    (_with("train.epochs", "10"), "train.epochs"),
    (_with("train.optimizer", "lion"), "train.optimizer"),
    (_with("train.learning_rate", 0), "train.learning_rate"),
    (_with("train.mixed_precision", "yes"), "train.mixed_precision"),
    (_with("train.mixed_precision", "Auto"), "train.mixed_precision"),
    (_with("train.steps_per_call", 0), "train.steps_per_call"),
    (_with("output.checkpoint_every_steps", 0), "output.checkpoint_every_steps"),
    ({**GOOD, "train": {"global_batch_size": 100}, "cluster": {"workers": 3}},
     "train.global_batch_size"),
    (_with("cluster.memory", "16 gigs"), "cluster.memory"),
    (_with("cluster.gpus_per_worker", -1), "cluster.gpus_per_worker"),
    (_with("cluster.models_volume", {"claim": "m", "mount": "models"}),
     "cluster.models_volume.mount"),
    (_with("cluster.models_volume", {"claim": "m"}), "cluster.models_volume.mount"),
    (_with("cluster.node_selector", {"gpu": True}), "cluster.node_selector"),
    (_with("cluster.tolerations", [{"key": "a", "effekt": "NoSchedule"}]),
     "cluster.tolerations[0]"),
    (_with("cluster.namespace", "ML"), "cluster.namespace"),
    (_with("data.val_split", 0.0), "data.val_split"),
]


@pytest.mark.parametrize(("document", "key"), BAD_SPECS, ids=[k for _, k in BAD_SPECS])
def test_bad_spec_exits_2_with_one_line_naming_the_key(tmp_path, capsys, document, key):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(document))
    code = cli.main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert key in err
    assert "Traceback" not in err


def test_unknown_key_lists_the_allowed_keys(tmp_path):
    with pytest.raises(SpecError, match=r"allowed keys under train: epochs, global_batch_size"):
        spec.from_dict(_with("train.epoch", 3), base_dir=tmp_path)


def test_divisibility_error_says_how_to_fix(tmp_path):
    document = {**GOOD, "train": {"global_batch_size": 100}, "cluster": {"workers": 3}}
    with pytest.raises(SpecError, match=r"multiple of cluster.workers=3.*use 99"):
        spec.from_dict(document, base_dir=tmp_path)


@pytest.mark.parametrize(("text", "needle"), [
    ("name: [unclosed", "invalid YAML at line"),
    ("", "empty"),
    ("- a\n- b\n", "mapping"),
])
def test_malformed_files_are_spec_errors(tmp_path, text, needle):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=needle):
        spec.load(path)


def test_missing_spec_file_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "spec file not found" in capsys.readouterr().err


def test_relative_paths_resolve_against_the_spec_folder(tmp_path):
    folder = tmp_path / "project" / "specs"
    folder.mkdir(parents=True)
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "data": {"train_dir": "../images/train",
                                                          "test_dir": "/abs/test"}}))
    loaded = spec.load(path)
    assert loaded.data.train_dir == tmp_path / "project" / "images" / "train"
    assert loaded.data.test_dir == Path("/abs/test")
    assert loaded.output.dir == folder / "models"


def test_example_spec_loads_with_every_section():
    loaded = spec.load(EXAMPLE)
    assert loaded.name == "shapes"
    assert loaded.cluster.workers == 2
    assert loaded.cluster.models_volume.claim == "trainjob-models"
    assert loaded.data.image_size == (64, 64)


@pytest.mark.parametrize(("value", "loaded"), [(None, "auto"), ("auto", "auto"), (True, True),
                                               (False, False)])
def test_mixed_precision_is_auto_true_or_false(tmp_path, value, loaded):
    document = GOOD if value is None else _with("train.mixed_precision", value)

    assert spec.from_dict(document, base_dir=tmp_path).train.mixed_precision == loaded


def test_spec_is_frozen_and_round_trips_through_to_dict(tmp_path):
    loaded = spec.from_dict(GOOD, base_dir=tmp_path)
    with pytest.raises(AttributeError):
        loaded.name = "other"  # type: ignore[misc]
    again = spec.from_dict(loaded.to_dict(), base_dir=Path("/elsewhere"))
    assert again == loaded


def test_runtime_worker_count_check_names_the_key(tmp_path):
    loaded = spec.from_dict(_with("train.global_batch_size", 10), base_dir=tmp_path)
    with pytest.raises(SpecError, match="train.global_batch_size=10 is not divisible by workers=3"):
        spec.check_worker_count(loaded, 3)
