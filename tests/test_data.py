"""The dataset: listing, split, sharding, the bad-image policy, the decode cache and batches.

Images are real files drawn with Pillow in ``tmp_path``. Each class is one solid
colour, so the colour of any decoded row says which class it came from: that is
how these tests prove labels stay aligned with pixels when rows are dropped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from job import cli, data
from job.errors import DataError
from job.spec import DataSpec
from tests.conftest import ROOT, write_spec

COLOURS = {"blue": (0, 0, 255), "green": (0, 160, 0), "red": (255, 0, 0)}
"""Class name -> the solid colour of its images (class names sort as listed)."""
SIZE = (16, 16)
"""Height, width of the test images; decoding at their own size keeps colours exact."""


def solid_tree(root: Path, *, per_class: int = 4, classes: dict | None = None) -> Path:
    """A class-per-subfolder tree of solid-colour PNGs named ``<class>_<i>.png``."""
    for name, colour in (classes or COLOURS).items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (SIZE[1], SIZE[0]), colour).save(folder / f"{name}_{i}.png")
    return root


def add_bad_files(root: Path) -> list[Path]:
    """One corrupt, one truncated and one zero-byte file, each in a different class.

    Their names sort between good files, so every later row shifts when they drop out.
    """
    corrupt = root / "blue" / "blue_1x.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not JPEG data " * 20)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole = root / "green" / "whole.png"
    Image.fromarray(noise).save(whole)
    truncated = root / "green" / "green_1x.png"
    encoded = whole.read_bytes()
    truncated.write_bytes(encoded[:len(encoded) // 2])
    whole.unlink()
    zero = root / "red" / "red_1x.png"
    zero.write_bytes(b"")
    return [corrupt, truncated, zero]


def data_spec(train_dir: Path, **overrides) -> DataSpec:
    options = {"train_dir": train_dir, "image_size": SIZE, "decode_workers": 1, **overrides}
    return DataSpec(**options)


def colour_of(pixels: np.ndarray) -> tuple[int, ...]:
    """The one colour of a solid image (fails loudly if the row is not solid)."""
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colours) == 1, f"row is not one solid colour: {colours[:4]}"
    return tuple(int(v) for v in colours[0])


def assert_aligned(decoded: data.Decoded, class_names: tuple[str, ...]) -> None:
    assert len(decoded.pixels) == len(decoded.labels)
    for row, label in zip(decoded.pixels, decoded.labels):
        assert colour_of(row) == COLOURS[class_names[label]]


# --- listing ---------------------------------------------------------------------------


def test_class_names_are_sorted_subfolders_and_hidden_or_non_image_files_are_ignored(tmp_path):
    for name in ("zebra", "ant", "moth"):  # Created out of order on purpose.
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / f"{name}.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "ant" / "UPPER.JPG", format="JPEG")
    (tmp_path / "ant" / "nested").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "ant" / "nested" / "deep.png")
    ignored = [tmp_path / ".hidden_class" / "x.png", tmp_path / "ant" / ".hidden.png",
               tmp_path / "ant" / ".thumbnails" / "t.png", tmp_path / "moth" / "notes.txt",
               tmp_path / "moth" / "labels.csv", tmp_path / "moth" / "Thumbs.db",
               tmp_path / "README.png"]
    for path in ignored:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"ignored")

    items = data.list_images(tmp_path, key="data.train_dir")

    assert items.class_names == ("ant", "moth", "zebra")
    listed = {(Path(p).relative_to(tmp_path).as_posix(), items.class_names[label])
              for p, label in zip(items.paths, items.labels)}
    assert listed == {("ant/UPPER.JPG", "ant"), ("ant/ant.png", "ant"),
                      ("ant/nested/deep.png", "ant"), ("moth/moth.png", "moth"),
                      ("zebra/zebra.png", "zebra")}
    assert items.class_counts() == {"ant": 3, "moth": 1, "zebra": 1}


def _missing(root: Path) -> Path:
    return root / "nowhere"


def _a_file(root: Path) -> Path:
    (root / "file.png").write_bytes(b"x")
    return root / "file.png"


def _no_class_folders(root: Path) -> Path:
    Image.new("RGB", (4, 4)).save(root / "loose.png")
    (root / ".git").mkdir()  # A hidden folder is not a class either.
    return root


def _empty_class(root: Path) -> Path:
    solid_tree(root, per_class=1, classes={"full": (1, 2, 3)})
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    return root


@pytest.mark.parametrize(("make", "words"), [
    (_missing, ["does not exist"]),
    (_a_file, ["is not a folder"]),
    (_no_class_folders, ["no class subfolders"]),
    (_empty_class, ["'empty'", "has no images"]),
], ids=["missing", "file", "no-class-folders", "empty-class"])
def test_unusable_train_folder_is_a_data_error_naming_the_key(tmp_path, make, words):
    root = make(tmp_path)

    with pytest.raises(DataError) as error:
        data.list_images(root, key="data.train_dir")

    message = str(error.value)
    assert message.startswith("data.train_dir=")
    assert str(root) in message
    for word in words:
        assert word in message


def test_validation_class_unknown_to_training_is_a_data_error_naming_val_dir(tmp_path):
    train = solid_tree(tmp_path / "train", per_class=2)
    val = solid_tree(tmp_path / "val", per_class=1, classes={"purple": (128, 0, 128)})

    with pytest.raises(DataError, match=r"data\.val_dir=.*'purple'.*blue, green, red"):
        data.make_splits(data_spec(train, val_dir=val), seed=1)


# --- split -----------------------------------------------------------------------------


LABELS = np.repeat(np.arange(4), [10, 20, 40, 3])
"""Four classes of very different sizes, the smallest with 3 images."""


def test_split_is_the_same_for_a_seed_and_different_for_another():
    first = data.stratified_split(LABELS, fraction=0.2, seed=7)
    again = data.stratified_split(LABELS, fraction=0.2, seed=7)
    other = data.stratified_split(LABELS, fraction=0.2, seed=8)

    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])


def test_split_holds_out_the_fraction_of_every_class_and_keeps_every_class_on_both_sides():
    keep, held = data.stratified_split(LABELS, fraction=0.2, seed=7)

    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(len(LABELS)))
    assert np.bincount(LABELS[held], minlength=4).tolist() == [2, 4, 8, 1]
    assert np.bincount(LABELS[keep], minlength=4).tolist() == [8, 16, 32, 2]


@pytest.mark.parametrize("fraction", [0.01, 0.9])
def test_extreme_fractions_still_leave_every_class_on_both_sides(fraction):
    keep, held = data.stratified_split(LABELS, fraction=fraction, seed=3)

    assert set(LABELS[keep].tolist()) == set(LABELS[held].tolist()) == {0, 1, 2, 3}


def test_make_splits_without_val_dir_splits_the_listed_training_files(tmp_path):
    root = solid_tree(tmp_path / "train", per_class=10)

    splits = data.make_splits(data_spec(root, val_split=0.3), seed=5)

    assert splits.class_names == ("blue", "green", "red")
    assert splits.val.class_counts() == {"blue": 3, "green": 3, "red": 3}
    assert set(splits.train.paths).isdisjoint(splits.val.paths)
    listed = data.list_images(root, key="data.train_dir")
    assert sorted(splits.train.paths + splits.val.paths) == sorted(listed.paths)
    assert splits.test is None


def test_make_splits_with_val_dir_keeps_all_training_files_and_uses_training_labels(tmp_path):
    train = solid_tree(tmp_path / "train", per_class=3)
    val = solid_tree(tmp_path / "val", per_class=2, classes={"red": COLOURS["red"]})
    test = solid_tree(tmp_path / "test", per_class=1)

    splits = data.make_splits(data_spec(train, val_dir=val, test_dir=test), seed=5)

    assert len(splits.train) == 9
    assert splits.val.class_names == ("blue", "green", "red")
    assert splits.val.labels.tolist() == [2, 2]  # "red" is label 2 of the training classes.
    assert all(Path(p).parent == val / "red" for p in splits.val.paths)
    assert splits.test is not None and len(splits.test) == 3


# --- shard -----------------------------------------------------------------------------


@pytest.mark.parametrize("num_items", [0, 1, 7, 10])
@pytest.mark.parametrize("num_workers", [1, 2, 3, 4])
def test_shards_are_disjoint_cover_every_file_and_differ_in_size_by_at_most_one(
        num_items, num_workers):
    items = data.ImageList(Path("/data"), ("a", "b"), tuple(f"/data/{i}.png" for i in
                                                            range(num_items)),
                           np.arange(num_items, dtype=np.int32) % 2)

    shards = [data.shard(items, index=i, num_workers=num_workers) for i in range(num_workers)]

    paths = [p for s in shards for p in s.paths]
    assert sorted(paths) == sorted(items.paths)
    assert len(set(paths)) == len(paths)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    for s in shards:  # Labels travel with their files.
        assert [int(p.split("/")[-1][:-4]) % 2 for p in s.paths] == s.labels.tolist()


# --- decode and the bad-image policy ---------------------------------------------------


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_skip_lists_bad_files_and_keeps_labels_aligned_with_pixels(tmp_path, cache, capsys):
    root = solid_tree(tmp_path / "train")
    bad = add_bad_files(root)
    items = data.list_images(root, key="data.train_dir")
    spec = data_spec(root, cache=cache, on_bad_image="skip")

    decoded = data.decode(items, spec=spec, cache_dir=tmp_path / "cache")

    assert [path for path, _ in decoded.bad] == [str(p) for p in bad]
    reasons = dict(decoded.bad)
    assert reasons[str(bad[2])] == "zero-byte file"
    assert reasons[str(bad[1])] == "truncated file"
    assert len(decoded.labels) == len(items) - 3 == 12
    assert np.bincount(decoded.labels).tolist() == [4, 4, 4]
    assert_aligned(decoded, items.class_names)
    warnings = capsys.readouterr().err
    for path in bad:
        assert f"warning: skipping unreadable image {path}:" in warnings


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_fail_stops_with_a_data_error_naming_the_first_bad_file(tmp_path, cache):
    root = solid_tree(tmp_path / "train")
    bad = add_bad_files(root)
    items = data.list_images(root, key="data.train_dir")
    spec = data_spec(root, cache=cache, on_bad_image="fail")

    with pytest.raises(DataError) as error:
        data.decode(items, spec=spec, cache_dir=tmp_path / "cache")

    message = str(error.value)
    assert message.startswith(f"{bad[0]}: unreadable image:")
    assert "(and 2 more)" in message
    assert "data.on_bad_image: skip" in message


# --- the disk cache --------------------------------------------------------------------


def cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_disk_cache_writes_one_npy_and_one_json_and_no_temp_files(tmp_path):
    root = solid_tree(tmp_path / "train")
    items = data.list_images(root, key="data.train_dir")
    cache_dir = tmp_path / "cache"

    decoded = data.decode(items, spec=data_spec(root, cache="disk"), cache_dir=cache_dir)

    names = cache_files(cache_dir)
    assert len(names) == 2, names
    stem = names[0].rsplit(".", 1)[0]
    assert names == [f"{stem}.json", f"{stem}.npy"]
    assert np.load(cache_dir / f"{stem}.npy").shape == (12, *SIZE, 3)
    assert json.loads((cache_dir / f"{stem}.json").read_text())["labels"] == \
        decoded.labels.tolist()


def test_second_decode_reuses_the_cache_until_a_file_changes(tmp_path):
    """The cache is keyed by path, size and mtime, so a reused cache never re-reads a file.

    After the first decode a file is overwritten with garbage of the same size and its
    mtime is put back: a decode that reads the file would report it as bad, a decode
    from the cache returns the old pixels. Touching the mtime then invalidates the cache.
    """
    root = solid_tree(tmp_path / "train")
    items = data.list_images(root, key="data.train_dir")
    spec = data_spec(root, cache="disk")
    cache_dir = tmp_path / "cache"
    first = data.decode(items, spec=spec, cache_dir=cache_dir)
    first_pixels = np.array(first.pixels)

    victim = root / "green" / "green_0.png"
    stat = victim.stat()
    victim.write_bytes(b"\0" * stat.st_size)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    reused = data.decode(items, spec=spec, cache_dir=cache_dir)

    assert reused.bad == ()
    assert np.array_equal(reused.pixels, first_pixels)
    assert np.array_equal(reused.labels, first.labels)
    assert len(cache_files(cache_dir)) == 2

    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    fresh = data.decode(items, spec=spec, cache_dir=cache_dir)

    assert [path for path, _ in fresh.bad] == [str(victim)]
    assert len(fresh.labels) == len(items) - 1
    assert_aligned(fresh, items.class_names)
    assert len(cache_files(cache_dir)) == 4  # A new key; the old entry is left alone.


def test_disk_cache_excludes_bad_rows_and_remembers_the_bad_files(tmp_path, capsys):
    root = solid_tree(tmp_path / "train")
    bad = add_bad_files(root)
    items = data.list_images(root, key="data.train_dir")
    spec = data_spec(root, cache="disk")
    cache_dir = tmp_path / "cache"
    first = data.decode(items, spec=spec, cache_dir=cache_dir)
    capsys.readouterr()

    second = data.decode(items, spec=spec, cache_dir=cache_dir)

    assert second.bad == first.bad
    assert [path for path, _ in second.bad] == [str(p) for p in bad]
    assert len(second.pixels) == len(second.labels) == len(items) - 3
    assert_aligned(second, items.class_names)
    # Still reported on reuse: each run's metadata must list its skipped files.
    assert capsys.readouterr().err.count("warning: skipping unreadable image") == 3
    with pytest.raises(DataError, match="blue_1x.jpg"):
        data.decode(items, spec=data_spec(root, cache="disk", on_bad_image="fail"),
                    cache_dir=cache_dir)


def test_cache_entries_differ_by_decode_settings(tmp_path):
    root = solid_tree(tmp_path / "train", per_class=1)
    items = data.list_images(root, key="data.train_dir")
    cache_dir = tmp_path / "cache"

    rgb = data.decode(items, spec=data_spec(root, cache="disk"), cache_dir=cache_dir)
    gray = data.decode(items, spec=data_spec(root, cache="disk", color_mode="grayscale"),
                       cache_dir=cache_dir)
    small = data.decode(items, spec=data_spec(root, cache="disk", image_size=(8, 8)),
                        cache_dir=cache_dir)

    assert rgb.pixels.shape == (3, *SIZE, 3)
    assert gray.pixels.shape == (3, *SIZE, 1)
    assert small.pixels.shape == (3, 8, 8, 3)
    assert len(cache_files(cache_dir)) == 6


# --- batches ---------------------------------------------------------------------------


@pytest.mark.parametrize(("num_items", "num_workers", "batch_size"),
                         [(10, 3, 2), (1, 4, 8), (64, 2, 32), (65, 2, 32)])
def test_eval_batch_count_fits_the_largest_shard_on_every_worker(num_items, num_workers,
                                                                 batch_size):
    steps = data.eval_batch_count(num_items, num_workers=num_workers, batch_size=batch_size)

    largest = -(-num_items // num_workers)
    assert steps * batch_size >= largest
    assert (steps - 1) * batch_size < max(largest, 1)


# --- trainjob validate -----------------------------------------------------------------


def validate_spec(folder: Path, *, policy: str) -> Path:
    solid_tree(folder / "images", per_class=5)
    add_bad_files(folder / "images")
    return write_spec(folder, {"name": "solid", "data": {
        "train_dir": "images", "image_size": list(SIZE), "val_split": 0.2,
        "on_bad_image": policy, "decode_workers": 1}})


def test_validate_prints_class_counts_and_unreadable_files_and_exits_0_under_skip(tmp_path,
                                                                                  capsys):
    spec = validate_spec(tmp_path, policy="skip")

    code = cli.main(["validate", str(spec)])

    out = capsys.readouterr().out
    assert code == 0
    assert "classes (3): blue, green, red" in out
    # 6 listed files per class (5 good + 1 bad), a fifth held out for validation.
    assert "train: 15 images (blue 5, green 5, red 5)" in out
    assert "validation: 3 images (blue 1, green 1, red 1)" in out
    assert "unreadable images: 3" in out
    for name in ("blue_1x.jpg", "green_1x.png", "red_1x.png"):
        assert name in out


def test_validate_exits_2_under_fail_and_still_lists_the_unreadable_files(tmp_path, capsys):
    spec = validate_spec(tmp_path, policy="fail")

    code = cli.main(["validate", str(spec)])

    assert code == 2
    out = capsys.readouterr().out
    assert "unreadable images: 3" in out
    assert "blue_1x.jpg" in out


def test_validate_of_a_missing_train_dir_exits_2_naming_the_key(tmp_path, capsys):
    spec = write_spec(tmp_path, {"name": "solid", "data": {"train_dir": "nowhere"}})

    code = cli.main(["validate", str(spec)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("trainjob: error: ")
    assert "data.train_dir=" in err and "does not exist" in err
    assert "Traceback" not in err


def test_validate_never_imports_tensorflow(tmp_path):
    spec = validate_spec(tmp_path, policy="skip")
    script = ("import sys\nfrom job.cli import main\ncode = main(['validate', sys.argv[1]])\n"
              "print('tensorflow' in sys.modules, 'keras' in sys.modules, code)\n")

    result = subprocess.run([sys.executable, "-c", script, str(spec)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=True)

    assert result.stdout.strip().splitlines()[-1] == "False False 0"


def test_a_memory_cache_the_system_cannot_hold_is_one_clear_error():
    # 1 PiB is more than any process's address space: the system refuses the mapping.
    with pytest.raises(DataError, match=r"in memory \(1,073,741,824 MiB: .*\); set data.cache: "
                                        r"disk to keep them in a file"):
        data.aligned_empty((2**30, 2**20))


def test_the_memory_cache_is_zeroed_writable_and_aligned_for_tensors():
    pixels = data.aligned_empty((3, 5, 7, 3))

    assert pixels.shape == (3, 5, 7, 3) and pixels.dtype == np.uint8
    assert pixels.flags.writeable and pixels.flags.c_contiguous
    assert pixels.ctypes.data % data.TENSOR_ALIGNMENT == 0
    assert not pixels.any()
    assert data.aligned_empty((0, 5, 7, 3)).shape == (0, 5, 7, 3)
