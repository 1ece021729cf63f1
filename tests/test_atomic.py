"""Atomic replacement: readers see the old file or the new one, and failures leave no debris."""

from __future__ import annotations

import pytest

from job.atomic import replacing


def test_a_finished_write_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    with replacing(target, suffix=".json") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".json")
        tmp.write_text("new")
        assert not target.exists()  # Nothing visible until the write is complete.
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "model.h5"
    target.write_text("old")
    with pytest.raises(RuntimeError), replacing(target, suffix=".h5") as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.h5"]
