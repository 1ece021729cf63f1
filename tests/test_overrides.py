"""``--set KEY=VALUE``: spec keys from the command line, checked like the file's own."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from job import cli
from job import spec as spec_module
from job.errors import SpecError
from tests.conftest import KERAS_SAVE_WARNING, ROOT, succeeded, tiny_spec, train, write_spec

EXAMPLE = ROOT / "examples" / "shapes.yaml"


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_values_are_read_as_yaml_and_nested_keys_are_created():
    spec = spec_module.load(EXAMPLE, overrides=[
        "train.epochs=2", "data.image_size=[48, 40]", "train.learning_rate=1e-3",
        "train.mixed_precision=false", "model.augment.flip=none",
        "cluster.node_selector={gpu: \"true\"}", "cluster.node_selector.zone=a"])

    assert spec.train.epochs == 2
    assert spec.data.image_size == (48, 40)
    assert spec.train.learning_rate == 0.001
    assert spec.train.mixed_precision is False
    assert spec.model.augment.flip == "none"
    assert spec.cluster.node_selector == {"gpu": "true", "zone": "a"}


def test_later_overrides_win_and_the_file_is_the_base():
    spec = spec_module.load(EXAMPLE, overrides=["train.epochs=2", "train.epochs=3"])
    plain = spec_module.load(EXAMPLE)

    assert spec.train.epochs == 3
    assert spec.train.learning_rate == plain.train.learning_rate


@pytest.mark.parametrize(("override", "message"), [
    ("train.epoch=2", "unknown key 'train.epoch'; did you mean 'train.epochs'?"),
    ("epochs=2", "did you mean 'train.epochs'?"),
    ("train.epochs", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("train.epochs=0", "train.epochs=0 is invalid: expected an integer from 1"),
    ("train.learning_rate=.nan", "train.learning_rate"),
    ("data.image_size=[48, 48", "--set data.image_size: invalid YAML"),
    ("name.x=1", "name is 'shapes' in the spec, not a mapping of keys"),
])
def test_a_bad_override_is_one_line_naming_it(override, message):
    with pytest.raises(SpecError, match=None) as raised:
        spec_module.load(EXAMPLE, overrides=[override])

    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_typo_in_the_spec_file_gets_a_did_you_mean(tmp_path):
    path = write_spec(tmp_path, {"name": "x", "data": {"train_dir": "d"}, "epoch": 3})

    code, _, err = run_cli("validate", str(path))

    assert code == 2
    assert "unknown key 'epoch'; did you mean 'train.epochs'?" in err


@pytest.mark.parametrize("command", ["train", "local", "validate", "render", "submit"])
def test_every_spec_command_takes_set_and_checks_it(command):
    code, _, err = run_cli(command, str(EXAMPLE), "--set", "train.epochz=2")

    assert code == 2
    assert err.strip() == ("trainjob: error: --set 'train.epochz=2': unknown key "
                           "'train.epochz'; did you mean 'train.epochs'?")


def test_render_puts_the_overrides_into_the_configmap():
    code, out, _ = run_cli("render", str(EXAMPLE), "--image", "registry/x:1", "--run-id", "r1",
                           "--set", "train.epochs=7", "--set", "data.image_size=[40,40]")

    assert code == 0
    config_map = next(d for d in yaml.safe_load_all(out) if d["kind"] == "ConfigMap")
    pod_spec = yaml.safe_load(config_map["data"]["spec.yaml"])
    assert pod_spec["train"]["epochs"] == 7
    assert pod_spec["data"]["image_size"] == [40, 40]




@KERAS_SAVE_WARNING
def test_the_run_directory_records_the_spec_with_its_overrides(shapes_data, tmp_path,
                                                                one_local_worker):
    spec = tiny_spec(shapes_data, tmp_path / "models", train={"epochs": 3})

    run = succeeded(train(tmp_path, spec, run_id="set", args=("--set", "train.epochs=1")))

    written = spec_module.load(Path(run.run_dir) / "spec.yaml")
    assert written.train.epochs == 1
    assert run.metrics()["epochs"] == 1


@KERAS_SAVE_WARNING
def test_local_hands_the_overrides_to_every_worker(shapes_data, tmp_path, one_local_worker):
    path = write_spec(tmp_path, tiny_spec(shapes_data, tmp_path / "models",
                                          train={"epochs": 3}))

    code, out, err = run_cli("local", "--workers", "1", str(path), "--run-id", "local-set",
                             "--set", "train.epochs=1")

    assert code == 0, out + err
    written = spec_module.load(tmp_path / "models" / "local-set" / "spec.yaml")
    assert written.train.epochs == 1
