"""Listing data once however it is linked, file names in messages, and trainable datasets.

Images are real files drawn with Pillow in ``tmp_path``; links are real symlinks and
hard links. The helpers come from ``tests.test_data`` so both files mean the same
thing by a "solid tree".
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from job import cli, data, errors, images
from job.errors import DataError
from tests.conftest import write_spec
from tests.test_data import COLOURS, SIZE, assert_aligned, data_spec, solid_tree


def real(path: str) -> str:
    return os.path.realpath(path)


def real_files(items: data.ImageList) -> list[str]:
    return [real(p) for p in items.paths]


# --- links -----------------------------------------------------------------------------


def test_a_directory_symlink_loop_lists_every_file_once_and_validation_stays_unseen(tmp_path):
    root = solid_tree(tmp_path / "train", per_class=12)
    (root / "blue" / "loop").symlink_to(".", target_is_directory=True)  # ln -s . blue/loop

    items = data.list_images(root, key="data.train_dir")
    splits = data.make_splits(data_spec(root), seed=1)

    assert items.class_counts() == {"blue": 12, "green": 12, "red": 12}
    assert len(set(real_files(items))) == len(items) == 36
    assert len(splits.train) + len(splits.val) == 36
    assert len(set(real_files(splits.train))) == len(splits.train)
    assert set(real_files(splits.train)).isdisjoint(real_files(splits.val))


def test_a_file_reached_through_several_links_in_one_class_is_listed_once(tmp_path):
    root = solid_tree(tmp_path / "train", per_class=2)
    sub = root / "blue" / "sub"
    sub.mkdir()
    Image.new("RGB", SIZE, COLOURS["blue"]).save(sub / "x.png")
    (root / "blue" / "again").symlink_to("sub", target_is_directory=True)
    (root / "blue" / "x_link.png").symlink_to(sub / "x.png")
    os.link(sub / "x.png", root / "blue" / "x_hard.png")

    items = data.list_images(root, key="data.train_dir")

    assert items.class_counts() == {"blue": 3, "green": 2, "red": 2}
    assert len(set(real_files(items))) == len(items)


def _file_link(root: Path) -> None:
    (root / "red" / "also_blue.png").symlink_to(root / "blue" / "blue_0.png")


def _folder_link(root: Path) -> None:
    (root / "red" / "blues").symlink_to(root / "blue", target_is_directory=True)


def _parent_link(root: Path) -> None:
    (root / "blue" / "up").symlink_to("..", target_is_directory=True)  # green/ is now in blue/


def _hard_link(root: Path) -> None:
    os.link(root / "blue" / "blue_0.png", root / "red" / "red_9.png")


@pytest.mark.parametrize(("link", "classes"), [
    (_file_link, ("blue", "red")), (_folder_link, ("blue", "red")),
    (_parent_link, ("blue", "green")), (_hard_link, ("blue", "red")),
], ids=["file-symlink", "folder-symlink", "parent-symlink", "hard-link"])
def test_the_same_file_in_two_classes_is_a_data_error_naming_both(tmp_path, link, classes):
    root = solid_tree(tmp_path / "train", per_class=2)
    link(root)

    with pytest.raises(DataError) as error:
        data.list_images(root, key="data.train_dir")

    message = str(error.value)
    assert message.startswith("data.train_dir=")
    assert "same file" in message
    for name in classes:
        assert f"'{name}'" in message
    assert "\n" not in message


@pytest.mark.parametrize("key", ["val_dir", "test_dir"])
def test_evaluation_files_that_are_training_files_are_left_out_with_one_warning(tmp_path, key,
                                                                                capsys):
    train = solid_tree(tmp_path / "train", per_class=4)
    held = solid_tree(tmp_path / key, per_class=2)
    os.link(train / "red" / "red_0.png", held / "red" / "seen_hard.png")
    (held / "blue" / "seen_link.png").symlink_to(train / "blue" / "blue_1.png")
    (held / "green" / "more").symlink_to(train / "green", target_is_directory=True)

    splits = data.make_splits(data_spec(train, **{key: held}), seed=1)

    evaluated = splits.val if key == "val_dir" else splits.test
    assert evaluated.class_counts() == {"blue": 2, "green": 2, "red": 2}
    # Every file of data.train_dir: the training split, and validation split off it if any.
    listed = real_files(splits.train) + (real_files(splits.val) if key == "test_dir" else [])
    assert len(listed) == 12
    assert set(listed).isdisjoint(real_files(evaluated))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"warning: data.{key}=")
    assert "6 files" in lines[0] and "data.train_dir" in lines[0]


def test_a_validation_folder_holding_only_training_files_is_a_data_error(tmp_path):
    train = solid_tree(tmp_path / "train", per_class=4)

    with pytest.raises(DataError, match=r"data\.val_dir=.*data\.train_dir"):
        data.make_splits(data_spec(train, val_dir=train), seed=1)


# --- file names in messages --------------------------------------------------------------


NOT_UTF8 = os.fsdecode(b"caf\xe9.png")
"""A Latin-1 file name, as a Linux file system hands it to Python (surrogate-escaped)."""


@pytest.mark.parametrize("cache", ["disk", "auto"])
def test_file_names_that_are_not_utf8_decode_through_the_disk_cache(tmp_path, cache, capsys):
    root = solid_tree(tmp_path / "train", per_class=2)
    Image.new("RGB", SIZE, COLOURS["blue"]).save(root / "blue" / NOT_UTF8)
    broken = root / "red" / os.fsdecode(b"bad\xff.png")
    broken.write_bytes(b"")
    items = data.list_images(root, key="data.train_dir")
    spec = data_spec(root, cache=cache, cache_memory_mb=0)  # auto: too big for memory

    first = data.decode(items, spec=spec, cache_dir=tmp_path / "cache")
    again = data.decode(items, spec=spec, cache_dir=tmp_path / "cache")

    assert len(list((tmp_path / "cache").iterdir())) == 2  # one cache entry, reused
    assert len(first.labels) == len(again.labels) == 7
    assert_aligned(again, items.class_names)
    assert first.bad == again.bad == ((str(broken), "zero-byte file"),)
    err = capsys.readouterr().err
    assert err.count("warning: skipping unreadable image") == 2
    assert "bad\\xff.png: zero-byte file" in err
    err.encode("utf-8")  # printable on any UTF-8 terminal or log


def test_a_newline_in_a_file_name_never_splits_a_message(tmp_path, capsys):
    root = solid_tree(tmp_path / "train", per_class=2)
    broken = root / "green" / "two\nlines.png"
    broken.write_bytes(b"")
    items = data.list_images(root, key="data.train_dir")

    data.decode(items, spec=data_spec(root), cache_dir=None)
    with pytest.raises(DataError) as failed:
        data.decode(items, spec=data_spec(root, on_bad_image="fail"), cache_dir=None)
    with pytest.raises(images.UnreadableImage) as unreadable:
        images.decode(broken, size=SIZE, color_mode="rgb")

    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: skipping unreadable image {root}/green/two\\nlines.png: "
                   "zero-byte file"]
    assert str(failed.value).startswith(f"{root}/green/two\\nlines.png: unreadable image")
    assert str(unreadable.value) == f"{root}/green/two\\nlines.png: unreadable image: " \
                                    "zero-byte file"
    assert unreadable.value.path == str(broken)  # the real name stays usable by programs


def test_validate_lists_unprintable_file_names_one_per_line(tmp_path, capsys):
    root = solid_tree(tmp_path / "images", per_class=3)
    (root / "blue" / "two\nlines.png").write_bytes(b"")
    (root / "red" / os.fsdecode(b"bad\xff.png")).write_bytes(b"")
    spec = write_spec(tmp_path, {"name": "names", "data": {
        "train_dir": "images", "image_size": list(SIZE), "decode_workers": 1}})

    code = cli.main(["validate", str(spec)])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert "unreadable images: 2" in out
    assert f"  {root}/blue/two\\nlines.png: zero-byte file" in out
    assert f"  {root}/red/bad\\xff.png: zero-byte file" in out


@pytest.mark.parametrize(("name", "shown"), [
    ("cat.png", "cat.png"),
    ("a b/ü.jpg", "a b/ü.jpg"),
    ("two\nlines.png", "two\\nlines.png"),
    ("tab\there\\.png", "tab\\there\\\\.png"),
    ("\x1b[31mred.png", "\\x1b[31mred.png"),
    ("line\u2028sep.png", "line\\u2028sep.png"),
    (os.fsdecode(b"caf\xe9.png"), "caf\\xe9.png"),
])
def test_printable_path_escapes_what_would_split_or_break_a_line(name, shown):
    assert errors.printable_path(name) == shown
    assert errors.printable_path(Path(name)) == shown


# --- datasets that cannot train ----------------------------------------------------------


def test_a_single_class_is_refused_naming_the_class_found(tmp_path, capsys):
    root = solid_tree(tmp_path / "images", per_class=3, classes={"cat": (1, 2, 3)})
    spec = write_spec(tmp_path, {"name": "one", "data": {"train_dir": "images"}})

    with pytest.raises(DataError) as error:
        data.list_images(root, key="data.train_dir")
    code = cli.main(["validate", str(spec)])

    assert "'cat'" in str(error.value) and "two classes" in str(error.value)
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "'cat'" in err


def test_check_trainable_refuses_every_class_without_readable_training_images():
    with pytest.raises(DataError) as error:
        data.check_trainable(("ant", "bee", "cat"), train_counts=[3, 0, 0],
                             val_counts=[1, 1, 1])

    message = str(error.value)
    assert "'bee'" in message and "'cat'" in message and "'ant'" not in message
    assert "\n" not in message


def test_check_trainable_warns_of_each_class_without_validation_images():
    assert data.check_trainable(("ant", "bee"), train_counts=[3, 3], val_counts=[1, 1]) == []

    warnings = data.check_trainable(("ant", "bee", "cat"), train_counts=[3, 3, 3],
                                    val_counts=[1, 0, 0])

    assert len(warnings) == 1
    assert warnings[0].startswith("warning: ")
    assert "'bee'" in warnings[0] and "'cat'" in warnings[0] and "'ant'" not in warnings[0]


def test_check_trainable_refuses_a_validation_split_with_no_readable_image():
    with pytest.raises(DataError, match="no readable validation images"):
        data.check_trainable(("ant", "bee"), train_counts=[3, 3], val_counts=[0, 0])


def _unreadable_class_spec(folder: Path) -> Path:
    solid_tree(folder / "train", per_class=3)
    for path in (folder / "train" / "red").iterdir():
        path.write_bytes(b"")  # every red training image is unreadable
    solid_tree(folder / "val", per_class=1)
    return write_spec(folder, {"name": "unreadable", "data": {
        "train_dir": "train", "val_dir": "val", "image_size": list(SIZE),
        "decode_workers": 1}})


def test_validate_exits_2_naming_a_class_whose_training_images_are_all_unreadable(tmp_path,
                                                                                 capsys):
    spec = _unreadable_class_spec(tmp_path)

    code = cli.main(["validate", str(spec)])

    out = capsys.readouterr().out.splitlines()
    assert code == 2
    refusals = [line for line in out if line.startswith("error: ")]
    assert len(refusals) == 1
    assert "'red'" in refusals[0] and "'blue'" not in refusals[0]


def test_validate_warns_of_a_class_without_validation_images(tmp_path, capsys):
    solid_tree(tmp_path / "train", per_class=3)
    solid_tree(tmp_path / "val", per_class=1, classes={"blue": COLOURS["blue"],
                                                       "green": COLOURS["green"]})
    spec = write_spec(tmp_path, {"name": "noval", "data": {
        "train_dir": "train", "val_dir": "val", "image_size": list(SIZE),
        "decode_workers": 1}})

    code = cli.main(["validate", str(spec)])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    warnings = [line for line in out if line.startswith("warning: ")]
    assert len(warnings) == 1 and "'red'" in warnings[0]
