"""Hostile and surprising spec files: each gets one line and exit 2, never a hang or a bad model.

Numbers must be finite, YAML 1.2 floats such as ``1e-3`` are numbers, duplicate keys and
aliases are refused, deep nesting, FIFOs, devices and huge files are refused before
parsing, rejected values are quoted as short excerpts, and node selectors and tolerations
follow Kubernetes' own rules.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from job import cli, spec
from job.errors import SpecError

HEADER = "name: shapes\ndata:\n  train_dir: data/train\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def one_line_exit_2(capsys, argv: list[str]) -> str:
    """Run the CLI; assert exit 2 and one stderr line without a traceback; return that line."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def float_keys() -> list[str]:
    """Every float-typed key of the spec, found from the dataclasses so none is forgotten."""
    keys = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            if f.type == "float":
                keys.append(prefix + f.name)
            elif dataclasses.is_dataclass(f.default_factory if callable(f.default_factory)
                                          else None):
                walk(f.default_factory, f"{prefix}{f.name}.")

    for section, cls in (("data", spec.DataSpec), ("model", spec.ModelSpec),
                         ("train", spec.TrainSpec), ("output", spec.OutputSpec),
                         ("cluster", spec.ClusterSpec)):
        walk(cls, f"{section}.")
    return keys


def nested(key: str, value: str) -> str:
    """YAML text of HEADER plus the dotted ``key`` set to the raw YAML ``value``."""
    *parents, last = key.split(".")
    if parents[0] == "data":
        text, indent = HEADER, "  "
        parents = parents[1:]
    else:
        text, indent = HEADER, ""
    for part in parents:
        text += f"{indent}{part}:\n"
        indent += "  "
    return text + f"{indent}{last}: {value}\n"


# --- numbers ---------------------------------------------------------------------------------

def test_every_float_key_is_found():
    assert set(float_keys()) == {"data.val_split", "model.dropout", "model.augment.rotation",
                                 "model.augment.zoom", "model.augment.contrast",
                                 "train.learning_rate"}


@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", "+.Inf", "1e999"])
@pytest.mark.parametrize("key", float_keys())
def test_nan_and_infinity_are_refused_for_every_float_key(tmp_path, capsys, key, value):
    err = one_line_exit_2(capsys, ["validate", str(write(tmp_path, nested(key, value)))])
    assert key in err
    assert "a finite number" in err


@pytest.mark.parametrize(("text", "number"), [
    ("1e-3", 0.001), ("1E-3", 0.001), ("+1e-3", 0.001), (".5e-2", 0.005), ("5e-1", 0.5),
    ("1.5E+0", 1.5), ("1e1", 10.0), ("1.e-2", 0.01), ("0.001", 0.001), ("1", 1.0),
])
def test_yaml_1_2_float_forms_are_numbers(tmp_path, text, number):
    loaded = spec.load(write(tmp_path, HEADER + f"train:\n  learning_rate: {text}\n"))
    assert loaded.train.learning_rate == pytest.approx(number)


def test_exponent_floats_do_not_turn_integers_into_floats(tmp_path):
    loaded = spec.load(write(tmp_path, HEADER + "train:\n  epochs: 3\n  seed: -0\n"))
    assert loaded.train.epochs == 3 and isinstance(loaded.train.epochs, int)


def test_quoted_exponent_is_a_string_and_the_message_says_to_drop_the_quotes(tmp_path):
    # A quoted scalar is a string in every YAML version; the fix the message names now works.
    with pytest.raises(SpecError, match=r"train.learning_rate='1e-3'.*without quotes"):
        spec.load(write(tmp_path, HEADER + "train:\n  learning_rate: \"1e-3\"\n"))
    assert spec.load(write(tmp_path, HEADER + "train:\n  learning_rate: 1e-3\n")) \
        .train.learning_rate == 0.001


def test_integer_too_long_to_convert_is_one_line(tmp_path, capsys):
    text = HEADER + "train:\n  epochs: 1" + "0" * 5000 + "\n"
    err = one_line_exit_2(capsys, ["validate", str(write(tmp_path, text))])
    assert "line 5" in err


def test_value_python_cannot_construct_is_one_line(tmp_path, capsys):
    # YAML 1.1 reads 2020-13-45 as a date; month 13 made PyYAML raise a bare ValueError.
    err = one_line_exit_2(capsys, ["validate", str(write(tmp_path, "name: 2020-13-45\n"))])
    assert "line 1" in err and "2020-13-45" in err


# --- duplicate keys, aliases, nesting --------------------------------------------------------

def test_duplicate_key_is_refused_with_both_line_numbers(tmp_path, capsys):
    text = HEADER + "train:\n  epochs: 1\n  seed: 7\n  epochs: 2\n"
    err = one_line_exit_2(capsys, ["validate", str(write(tmp_path, text))])
    assert "duplicate key 'epochs'" in err
    assert "line 7" in err and "line 5" in err


def test_duplicate_section_is_refused(tmp_path):
    with pytest.raises(SpecError, match=r"duplicate key 'train' at line 6 .*line 4"):
        spec.load(write(tmp_path, HEADER + "train: {epochs: 1}\nmodel: {}\ntrain: {seed: 1}\n"))


ALIAS_BOMB = HEADER + """cluster:
  tolerations:
  - {key: a, operator: Equal, value: &a [x, x, x, x, x, x, x, x, x]}
  - {key: b, operator: Equal, value: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]}
  - {key: c, operator: Equal, value: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]}
  - {key: d, operator: Equal, value: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]}
  - {key: e, operator: Equal, value: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]}
  - {key: f, operator: Equal, value: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]}
"""


@pytest.mark.timeout(60)
def test_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    assert len(ALIAS_BOMB) < 700
    code = cli.main(["render", str(write(tmp_path, ALIAS_BOMB)), "--image", "ghcr.io/x/t:1"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1, captured.err[:300]
    assert "alias" in captured.err and "line 7" in captured.err
    assert captured.out == ""


def test_merge_key_alias_is_refused_too(tmp_path):
    text = HEADER + "base: &base {epochs: 2}\ntrain:\n  <<: *base\n"
    with pytest.raises(SpecError, match="alias"):
        spec.load(write(tmp_path, text))


@pytest.mark.parametrize(("opening", "closing"), [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_is_one_line(tmp_path, capsys, opening, closing):
    depth = 100_000
    text = HEADER + "model: " + opening * depth + "1" + closing * depth + "\n"
    err = one_line_exit_2(capsys, ["validate", str(write(tmp_path, text))])
    assert "nest" in err


def test_nesting_a_real_spec_needs_is_accepted(tmp_path):
    text = HEADER + "cluster:\n  tolerations:\n  - {key: a, operator: Exists}\n"
    assert spec.load(write(tmp_path, text)).cluster.tolerations == ({"key": "a",
                                                                    "operator": "Exists"},)


# --- the file itself -------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_fifo_as_spec_path_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    err = one_line_exit_2(capsys, ["validate", str(fifo)])
    assert "not a regular file" in err


@pytest.mark.timeout(20)
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_device_as_spec_path_is_refused_without_reading_it(capsys, device):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    err = one_line_exit_2(capsys, ["validate", device])
    assert "not a regular file" in err


def test_directory_as_spec_path_is_one_line(tmp_path, capsys):
    err = one_line_exit_2(capsys, ["validate", str(tmp_path)])
    assert "not a regular file" in err


def test_path_through_a_file_is_one_line(tmp_path, capsys):
    path = write(tmp_path, HEADER)
    one_line_exit_2(capsys, ["validate", str(path / "inner.yaml")])


def test_spec_over_1_mib_is_refused_before_parsing(tmp_path):
    path = write(tmp_path, HEADER + "# " + "x" * (1024 * 1024) + "\n")
    with pytest.raises(SpecError, match=r"larger than 1 MiB"):
        spec.load(path)


def test_spec_just_under_1_mib_loads(tmp_path):
    padding = 1024 * 1024 - len(HEADER) - 3
    assert spec.load(write(tmp_path, HEADER + "# " + "x" * padding + "\n")).name == "shapes"


def test_non_utf8_spec_is_one_line(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_bytes(HEADER.encode() + b"# \xff\xfe\n")
    err = one_line_exit_2(capsys, ["validate", str(path)])
    assert "UTF-8" in err


# --- excerpts --------------------------------------------------------------------------------

HUGE = "y" * 100_000


HUGE_VALUES = {
    "name": f"name: {HUGE}\ndata: {{train_dir: d}}\n",
    "choice": HEADER + f"train:\n  optimizer: {HUGE}\n",
    # YAML caps a plain key at 1024 characters.
    "unknown key": HEADER + f"train:\n  {HUGE[:1000]}: 1\n",
    "section": HEADER + f"model: {HUGE}\n",
    "label key": HEADER + f"cluster:\n  node_selector: {{{HUGE[:1000]}: x}}\n",
    "toleration": HEADER + f"cluster:\n  tolerations:\n  - {{key: a, operator: {HUGE}}}\n",
    "long list": HEADER + f"cluster:\n  image: [{', '.join(['abc'] * 5000)}]\n",
}


@pytest.mark.parametrize("text", HUGE_VALUES.values(), ids=HUGE_VALUES.keys())
def test_rejected_values_are_quoted_as_a_short_excerpt(tmp_path, capsys, text):
    err = one_line_exit_2(capsys, ["validate", str(write(tmp_path, text))])
    assert len(err) < 400, err[:400]
    assert "..." in err


# --- node selectors and tolerations ----------------------------------------------------------

GOOD_SELECTORS = [
    {"gpu": "true"},
    {"kubernetes.io/arch": "amd64", "node.example.com/pool": ""},
    {"a" * 63: "b" * 63, "x" * 253 + "/y": "Z_9.z-1"},
]


@pytest.mark.parametrize("selector", GOOD_SELECTORS)
def test_kubernetes_label_selectors_load(tmp_path, selector):
    document = {"name": "s", "data": {"train_dir": "d"}, "cluster": {"node_selector": selector}}
    assert spec.from_dict(document, base_dir=tmp_path).cluster.node_selector == selector


BAD_SELECTORS = {
    "space in key": {"a b": "x"},
    "key starts with '-'": {"-gpu": "x"},
    "uppercase prefix": {"Example.com/gpu": "x"},
    "empty prefix": {"/gpu": "x"},
    "two slashes": {"a/b/c": "x"},
    "empty name": {"example.com/": "x"},
    "name of 64": {"a" * 64: "x"},
    "prefix of 254": {"a" * 254 + "/b": "x"},
    "value with a space": {"gpu": "a b"},
    "value of 64": {"gpu": "v" * 64},
    "value ends with '.'": {"gpu": "v."},
    "value with a trailing newline": {"gpu": "abc\n"},
    "key with a trailing newline": {"gpu\n": "x"},
    "number value": {"gpu": 1},
    "not a mapping": ["gpu"],
}


@pytest.mark.parametrize("selector", BAD_SELECTORS.values(), ids=BAD_SELECTORS.keys())
def test_bad_node_selector_names_the_key(tmp_path, selector):
    document = {"name": "s", "data": {"train_dir": "d"}, "cluster": {"node_selector": selector}}
    with pytest.raises(SpecError, match=r"cluster\.node_selector"):
        spec.from_dict(document, base_dir=tmp_path)


GOOD_TOLERATIONS = [
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute",
     "tolerationSeconds": 60},
    {"key": "dedicated", "value": "ml"},
    {"operator": "Exists"},
    {"key": "spot", "operator": "Exists", "value": "", "effect": ""},
]


def test_kubernetes_tolerations_load(tmp_path):
    document = {"name": "s", "data": {"train_dir": "d"},
                "cluster": {"tolerations": GOOD_TOLERATIONS}}
    loaded = spec.from_dict(document, base_dir=tmp_path)
    assert loaded.cluster.tolerations == tuple(GOOD_TOLERATIONS)


BAD_TOLERATIONS = {
    "unknown field": ({"key": "a", "effekt": "NoSchedule"}, "cluster.tolerations[0]"),
    "key with a space": ({"key": "a b", "operator": "Exists"}, "cluster.tolerations[0].key"),
    "key not a string": ({"key": 5, "operator": "Exists"}, "cluster.tolerations[0].key"),
    "operator In": ({"key": "a", "operator": "In"}, "cluster.tolerations[0].operator"),
    "lowercase operator": ({"key": "a", "operator": "exists"},
                           "cluster.tolerations[0].operator"),
    "value with Exists": ({"key": "a", "operator": "Exists", "value": "x"},
                          "cluster.tolerations[0].value"),
    "bad value": ({"key": "a", "operator": "Equal", "value": "a b"},
                  "cluster.tolerations[0].value"),
    "boolean value": ({"key": "a", "value": True}, "cluster.tolerations[0].value"),
    "empty key needs Exists": ({"operator": "Equal", "value": "x"},
                               "cluster.tolerations[0].operator"),
    "unknown effect": ({"key": "a", "operator": "Exists", "effect": "NoEvict"},
                       "cluster.tolerations[0].effect"),
    "seconds without NoExecute": ({"key": "a", "operator": "Exists", "effect": "NoSchedule",
                                   "tolerationSeconds": 60},
                                  "cluster.tolerations[0].tolerationSeconds"),
    "seconds as a string": ({"key": "a", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": "60"},
                            "cluster.tolerations[0].tolerationSeconds"),
    "seconds as a boolean": ({"key": "a", "operator": "Exists", "effect": "NoExecute",
                              "tolerationSeconds": True},
                             "cluster.tolerations[0].tolerationSeconds"),
    "not a mapping": ("nvidia.com/gpu", "cluster.tolerations"),
}


@pytest.mark.parametrize(("toleration", "key"), BAD_TOLERATIONS.values(),
                         ids=BAD_TOLERATIONS.keys())
def test_bad_toleration_names_the_field(tmp_path, capsys, toleration, key):
    document = {"name": "s", "data": {"train_dir": "d"},
                "cluster": {"tolerations": [toleration]}}
    path = write(tmp_path, yaml.safe_dump(document))
    err = one_line_exit_2(capsys, ["validate", str(path)])
    assert key in err
