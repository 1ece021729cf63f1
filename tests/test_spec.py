"""The spec: every bad value is exit code 2 with one line naming the key; good specs load."""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import yaml

from job import cli, spec
from job.errors import SpecError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "shapes.yaml"
README = Path(__file__).resolve().parent.parent / "README.md"

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
    (_with("cluster.pod_labels", {"team": 5}), "cluster.pod_labels"),
    (_with("cluster.pod_labels", {"trainjob.dev/run-id": "x"}), "cluster.pod_labels"),
    (_with("cluster.pod_annotations", {"example.com/owner": True}), "cluster.pod_annotations"),
    (_with("cluster.pod_annotations", {"a b": "x"}), "cluster.pod_annotations"),
    (_with("cluster.priority_class", "Low_Priority"), "cluster.priority_class"),
    (_with("cluster.affinity", {"nodeAfinity": {}}), "cluster.affinity.nodeAfinity"),
    (_with("cluster.affinity", {"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 101}]}}),
     "cluster.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]"
     ".weight"),
    (_with("cluster.tmp_size", "lots"), "cluster.tmp_size"),
    (_with("cluster.shm_size", 0), "cluster.shm_size"),
    ({**GOOD, "cluster": {"memory": "4Gi", "shm_size": "4Gi"}}, "cluster.shm_size"),
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
    with pytest.raises(SpecError, match=r"train.global_batch_size=10 is invalid: expected a "
                                        r"multiple of workers=3 .*; use 9\.$"):
        spec.check_worker_count(loaded, 3)


def test_load_time_and_run_time_divisibility_is_one_rule_with_one_message(tmp_path):
    document = {**GOOD, "train": {"global_batch_size": 100}, "cluster": {"workers": 3}}
    with pytest.raises(SpecError) as at_load:
        spec.from_dict(document, base_dir=tmp_path, source="s.yaml")
    loaded = spec.from_dict(_with("train.global_batch_size", 100), base_dir=tmp_path)
    with pytest.raises(SpecError) as at_run:
        spec.check_worker_count(loaded, 3, unit="cluster.workers")
    assert str(at_load.value) == f"s.yaml: {at_run.value}"


# --- every default, range and choice is written once, in the dataclasses --------------------

def _keys(cls: type, prefix: str = "") -> Iterator[tuple[str, typing.Any, dataclasses.Field]]:
    """(dotted key, resolved type, field) of every key under ``cls``, sections included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "base_dir":  # where paths resolve from, never a key
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, hints[f.name], f


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if callable(f.default_factory) else dataclasses.MISSING


SPEC_KEYS = {key: f for key, _, f in _keys(spec.Spec)}
VOLUME_KEYS = {key: f for key, _, f in _keys(spec.VolumeSpec, "cluster.models_volume.")}
CHOICE_KEYS = {key: typing.get_args(hint) for key, hint, _ in _keys(spec.Spec)
               if typing.get_origin(hint) is typing.Literal}


def test_every_key_left_out_loads_as_its_dataclass_default(tmp_path):
    with_volume = _with("cluster.models_volume", {"claim": "m", "mount": "/m"})
    for keys, document in ((SPEC_KEYS, GOOD), (VOLUME_KEYS, with_volume)):
        loaded = spec.from_dict(document, base_dir=tmp_path)
        for key, f in keys.items():
            default = _default(f)
            if default is dataclasses.MISSING:
                continue
            expected = tmp_path / default if isinstance(default, Path) else default
            assert functools.reduce(getattr, key.split("."), loaded) == expected, key
    assert {"data.max_image_pixels", "model.augment.flip", "cluster.port"} <= set(SPEC_KEYS)
    assert "cluster.models_volume.read_only" in VOLUME_KEYS


def test_every_numeric_key_has_its_range_in_the_field_metadata():
    keys = [*_keys(spec.Spec), *_keys(spec.VolumeSpec, "cluster.models_volume.")]
    for key, hint, f in keys:
        types = {hint, *typing.get_args(hint)}
        if types & {int, float}:
            assert "low" in f.metadata, f"{key} has no range"
        if float in types:
            assert "high" in f.metadata, f"{key} has no upper bound"


def test_the_keys_with_choices_are_literal_types():
    assert set(CHOICE_KEYS) == {"data.color_mode", "data.on_bad_image", "data.cache",
                                "model.backbone", "model.augment.flip", "train.optimizer",
                                "output.export_model", "output.export_check"}
    assert CHOICE_KEYS["model.backbone"] == spec.BACKBONES


@pytest.mark.parametrize("key", sorted(CHOICE_KEYS))
def test_a_bad_choice_lists_the_literal_types_values(tmp_path, key):
    with pytest.raises(SpecError, match=re.escape("one of " + ", ".join(CHOICE_KEYS[key]))):
        spec.from_dict(_with(key, "bogus"), base_dir=tmp_path)


def _readme_defaults() -> dict[str, str]:
    """The default column of the README's spec tables, by dotted key."""
    defaults = {}
    tables = re.findall(r"\| key \| default \| meaning \|\n\|---\|---\|---\|\n((?:\|.*\n)+)",
                        README.read_text(encoding="utf-8"))
    for table, prefix in zip(tables, ("", "cluster.")):
        for row in table.splitlines():
            key_cell, default_cell = row.split(" | ")[:2]
            keys = re.findall(r"`([^`]+)`", key_cell)
            values = re.findall(r"`([^`]+)`", default_cell) or [default_cell.strip()]
            parent = keys[0].rpartition(".")[0]
            for i, key in enumerate(keys):
                full = prefix + (key if "." in key or not parent else f"{parent}.{key}")
                defaults[full] = values[i] if len(values) == len(keys) else values[0]
    return defaults


def _as_yaml(value):
    """A dataclass default as the spec file writes it: paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_as_yaml(v) for v in value]
    return dict(value) if isinstance(value, Mapping) else value


def test_readme_spec_tables_list_every_key_with_its_dataclass_default():
    readme = _readme_defaults()
    assert set(SPEC_KEYS) <= set(readme), "keys missing from the README"
    for key, f in SPEC_KEYS.items():
        default = _default(f)
        if default is dataclasses.MISSING:
            assert readme[key] == "required", key
        else:
            written = None if readme[key] == "none" else yaml.safe_load(readme[key])
            assert written == _as_yaml(default), key
