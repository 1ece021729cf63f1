"""The documentation matches the code: README links resolve, the example spec is complete
and its comments and defaults are the spec's own."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest
import yaml

from job import spec as spec_module
from tests.conftest import ROOT

README = ROOT / "README.md"
EXAMPLE = ROOT / "examples" / "shapes.yaml"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CHOICES_COMMENT = re.compile(r"^\s*(\w+):.*#\s*([\w-]+(?:\s*\|\s*[\w-]+)+)\s*$")

SET_ON_PURPOSE = {
    "name", "data.train_dir", "data.test_dir", "output.dir", "cluster.workers", "cluster.image",
    "cluster.namespace", "cluster.gpus_per_worker", "cluster.cpu", "cluster.memory",
    "cluster.models_volume", "cluster.data_volume",
}
"""Keys the example sets to show a real run, not the default (the file says which)."""


def relative_links(text: str) -> list[str]:
    return [target for target in LINK.findall(text)
            if not re.match(r"[a-z]+:", target) and not target.startswith("#")]


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"(?m)^#+\s+(.+?)\s*$", text):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_relative_link_in_the_readme_resolves():
    text = README.read_text()
    links = relative_links(text)

    assert links, "the README links nothing: the pattern is broken"
    missing = [link for link in links if not (README.parent / link.split("#")[0]).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_every_anchor_link_in_the_readme_names_a_heading():
    text = README.read_text()
    anchors = heading_anchors(text)

    broken = [target for target in LINK.findall(text)
              if target.startswith("#") and target[1:] not in anchors]
    assert not broken, f"README links to headings that do not exist: {broken}"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, item in value.items():
        dotted = f"{prefix}{key}"
        flat[dotted] = item
        if isinstance(item, dict):
            flat.update(flatten(item, f"{dotted}."))
    return flat


def test_the_example_spec_has_every_key():
    written = flatten(yaml.safe_load(EXAMPLE.read_text()))

    missing = [key for key in spec_module.known_keys() if key not in written
               and not any(key.startswith(f"{optional}.") for optional in
                           ("cluster.models_volume", "cluster.data_volume",
                            "train.early_stopping", "model.fine_tune"))]
    assert not missing, f"examples/shapes.yaml says it has every key, but lacks {missing}"


def test_the_example_spec_spells_out_the_defaults():
    example = spec_module.load(EXAMPLE).to_dict()
    defaults = spec_module.from_dict(
        {"name": "x", "data": {"train_dir": "t"}}, base_dir=Path("/")).to_dict()
    flat_example, flat_defaults = flatten(example), flatten(defaults)

    differ = [key for key, value in flat_defaults.items()
              if not isinstance(value, dict) and key not in SET_ON_PURPOSE
              and flat_example.get(key) != value]
    assert not differ, f"examples/shapes.yaml differs from the defaults at {differ}"


def literal_choices() -> dict[str, tuple[str, ...]]:
    """Key name -> the choices its Literal type allows, across the spec's sections."""
    found = {}
    for cls in (spec_module.DataSpec, spec_module.ModelSpec, spec_module.TrainSpec,
                spec_module.AugmentSpec, spec_module.OutputSpec,
                spec_module.EarlyStoppingSpec, spec_module.ClusterSpec):
        for name, hint in get_type_hints(cls).items():
            values = [a for a in get_args(hint) if isinstance(a, str)]
            literal = [v for arg in get_args(hint) for v in get_args(arg) if isinstance(v, str)]
            choices = tuple(values or literal)
            if choices and all(isinstance(c, str) for c in choices):
                found[name] = choices
    return found


def test_the_choices_the_example_lists_in_comments_are_the_spec_s_own():
    choices = literal_choices()
    listed = {}
    for line in EXAMPLE.read_text().splitlines():
        match = CHOICES_COMMENT.match(line)
        if match:
            listed[match.group(1)] = tuple(c.strip() for c in match.group(2).split("|"))

    assert listed, "no 'a | b' comments found: the pattern is broken"
    for key, values in listed.items():
        assert set(values) == set(choices[key]), f"{key}: comment lists {values}"


@pytest.mark.parametrize("phrase", ["process per CPU", "<output.dir>/.cache"])
def test_the_example_spec_keeps_no_stale_comment(phrase):
    assert phrase not in EXAMPLE.read_text()
