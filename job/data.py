"""The dataset: listing, split, sharding, decode cache and the ``tf.data`` input path.

Owns: turning the spec's image folders into (a) class names and file lists,
(b) a deterministic stratified split, (c) a per-worker shard chosen *before*
decoding, (d) decoded uint8 arrays cached in memory or in an ``.npy`` file keyed
by the file list, sizes and mtimes, and (e) the batches fed to the strategy.
Never touches: the model, strategy creation, the run directory. Decoding itself
is ``job.images``; TensorFlow is imported only inside the functions that build
``tf.data`` pipelines, so ``trainjob validate`` stays light.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from job import images
from job.atomic import replacing
from job.errors import EXIT_BAD_INPUT, EXIT_OK, DataError
from job.spec import DataSpec

CACHE_VERSION = 2
"""Bump when the decoded pixels change for the same files (resize filter, modes...)."""
SCAN_CHUNK = 4096
"""Images decoded per chunk by ``scan``: bounds memory on huge folders."""


@dataclass(frozen=True)
class ImageList:
    """Files of one folder tree with their integer labels (index into ``class_names``)."""

    root: Path
    class_names: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray = field(compare=False)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageList:
        indices = np.asarray(indices, dtype=np.int64)
        return ImageList(self.root, self.class_names,
                         tuple(self.paths[i] for i in indices), self.labels[indices])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}


@dataclass(frozen=True)
class Splits:
    """The train / validation / test file lists of a run, before sharding."""

    class_names: tuple[str, ...]
    train: ImageList
    val: ImageList
    test: ImageList | None


@dataclass(frozen=True)
class Decoded:
    """Decoded uint8 pixels of one shard, with labels; ``bad`` lists (path, reason)."""

    pixels: np.ndarray
    labels: np.ndarray
    bad: tuple[tuple[str, str], ...] = ()


def list_images(root: Path, *, key: str,
                class_names: tuple[str, ...] | None = None) -> ImageList:
    """List a class-per-subfolder tree; class names are the sorted subfolder names.

    Hidden files and folders and non-image files are ignored. When
    ``class_names`` is given (validation and test folders), every subfolder must
    be one of them.

    Raises:
        DataError: naming ``key`` and the folder, when it is missing, has no
            class subfolders, or has a class the training folder lacks.
    """
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise DataError(f"{key}={str(root)!r} {what}; point it at a folder with one subfolder "
                        "of images per class.")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{key}={str(root)!r} has no class subfolders; put the images of each "
                        "class in their own subfolder, e.g. train/cat/*.jpg, train/dog/*.jpg.")
    names = tuple(found) if class_names is None else class_names
    unknown = [n for n in found if n not in names]
    if unknown:
        raise DataError(f"{key}={str(root)!r} has class folder {unknown[0]!r} that "
                        f"data.train_dir lacks; its classes are: {', '.join(names)}.")
    paths: list[str] = []
    labels: list[int] = []
    for name in found:
        label = names.index(name)
        for directory, subdirs, files in os.walk(root / name, followlinks=True):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for file in sorted(files):
                if images.is_image_file(file):
                    paths.append(os.path.join(directory, file))
                    labels.append(label)
    if class_names is None:
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
        empty = [n for n, c in zip(names, counts) if c == 0]
        if empty:
            raise DataError(f"{key}={str(root)!r}: class folder {empty[0]!r} has no images "
                            "(.jpg .png .bmp .gif .tif .webp); add images or remove the folder.")
    return ImageList(root, names, tuple(paths), np.asarray(labels, dtype=np.int32))


def stratified_split(labels: np.ndarray, *, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, held_out), holding out ``fraction`` of every class.

    Deterministic for a seed. Each class with two or more images keeps at least
    one and holds out at least one, so rare classes appear on both sides.

    Example:
        >>> keep, held = stratified_split(np.array([0, 0, 0, 0, 1, 1]), fraction=0.5, seed=1)
        >>> sorted(np.concatenate([keep, held]).tolist())
        [0, 1, 2, 3, 4, 5]
    """
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        wanted = int(round(len(members) * fraction))
        count = min(max(wanted, 1), len(members) - 1) if len(members) >= 2 else 0
        held.append(members[:count])
        keep.append(members[count:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def make_splits(spec: DataSpec, *, seed: int) -> Splits:
    """List the spec's folders and split off validation when no val_dir is given."""
    train = list_images(spec.train_dir, key="data.train_dir")
    if spec.val_dir is not None:
        val = list_images(spec.val_dir, key="data.val_dir", class_names=train.class_names)
    else:
        keep, held = stratified_split(train.labels, fraction=spec.val_split, seed=seed)
        train, val = train.subset(keep), train.subset(held)
    test = None
    if spec.test_dir is not None:
        test = list_images(spec.test_dir, key="data.test_dir", class_names=train.class_names)
    if len(val) == 0:
        raise DataError(f"data.val_split={spec.val_split} leaves no validation images; give "
                        "data.val_dir or add images (each class needs at least 2).")
    return Splits(train.class_names, train, val, test)


def shard(items: ImageList, *, index: int, num_workers: int) -> ImageList:
    """The files worker ``index`` of ``num_workers`` decodes: every N-th (shards differ by <= 1)."""
    return items.subset(np.arange(index, len(items), num_workers))


def decode(items: ImageList, *, spec: DataSpec, cache_dir: Path | None,
           workers: int = 0) -> Decoded:
    """Decode a shard to uint8 pixels, through the cache, applying the bad-image policy.

    In memory when the pixels fit in ``spec.cache_memory_mb`` (and the cache
    mode allows), else memory-mapped from an ``.npy`` file in ``cache_dir`` whose
    name hashes the file list, sizes, mtimes and decode settings: a restart or a
    second run on the same files reuses it without decoding.

    Raises:
        DataError: under ``on_bad_image: fail``, naming the first bad file.
    """
    nbytes = len(items) * int(np.prod(spec.image_shape))
    use_disk = spec.cache == "disk" or (
        spec.cache == "auto" and nbytes > spec.cache_memory_mb * 2**20)
    if use_disk and cache_dir is not None:
        decoded = _decode_through_file(items, spec=spec, cache_dir=Path(cache_dir),
                                       workers=workers)
    else:
        pixels, kept, bad = images.decode_many(list(items.paths), size=spec.image_size,
                                               color_mode=spec.color_mode, workers=workers)
        decoded = Decoded(pixels, items.labels[np.asarray(kept, dtype=np.int64)], tuple(bad))
    if decoded.bad and spec.on_bad_image == "fail":
        path, reason = decoded.bad[0]
        more = f" (and {len(decoded.bad) - 1} more)" if len(decoded.bad) > 1 else ""
        raise DataError(f"{path}: unreadable image: {reason}{more}; fix or remove it, or set "
                        "data.on_bad_image: skip.")
    for path, reason in decoded.bad:
        print(f"warning: skipping unreadable image {path}: {reason}", file=sys.stderr,
              flush=True)
    return decoded


def _cache_key(items: ImageList, spec: DataSpec) -> str:
    digest = hashlib.sha256()
    digest.update(f"v{CACHE_VERSION} {spec.image_size} {spec.color_mode}\n".encode())
    for path, label in zip(items.paths, items.labels.tolist()):
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:32]


def _decode_through_file(items: ImageList, *, spec: DataSpec, cache_dir: Path,
                         workers: int) -> Decoded:
    key = _cache_key(items, spec)
    pixels_path = cache_dir / f"{key}.npy"
    meta_path = cache_dir / f"{key}.json"
    if pixels_path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            pixels = np.load(pixels_path, mmap_mode="r")
            labels = np.asarray(meta["labels"], dtype=np.int32)
            if len(pixels) >= len(labels):
                # Rows past the readable images are unused: decode_many packs them first.
                return Decoded(pixels[:len(labels)], labels,
                               tuple(tuple(b) for b in meta["bad"]))
        except (OSError, ValueError, KeyError):
            pass  # A damaged cache is rebuilt below, never trusted.
    # Decode straight into the memory-mapped file: the pixels never need to fit in memory.
    with replacing(pixels_path, suffix=".npy") as tmp:
        target = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                           shape=(len(items), *spec.image_shape))
        _, kept, bad = images.decode_many(list(items.paths), size=spec.image_size,
                                          color_mode=spec.color_mode, workers=workers,
                                          out=target)
        target.flush()
        del target
    labels = items.labels[np.asarray(kept, dtype=np.int64)]
    # The labels file is written last: a crash never leaves a cache to be trusted.
    with replacing(meta_path) as tmp:
        tmp.write_text(json.dumps({"labels": labels.tolist(), "bad": [list(b) for b in bad]}))
    return Decoded(np.load(pixels_path, mmap_mode="r")[:len(labels)], labels, tuple(bad))


@dataclass(frozen=True)
class ScanReport:
    """What ``trainjob validate`` prints: class counts per split and unreadable files."""

    class_names: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    bad: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        lines = [f"classes ({len(self.class_names)}): {', '.join(self.class_names)}"]
        for split, counts in self.counts.items():
            total = sum(counts.values())
            detail = ", ".join(f"{name} {count}" for name, count in counts.items())
            lines.append(f"{split}: {total} images ({detail})")
        lines.append(f"unreadable images: {len(self.bad)}")
        lines.extend(f"  {path}: {reason}" for path, reason in self.bad)
        return "\n".join(lines)

    def exit_code(self, policy: str) -> int:
        return EXIT_BAD_INPUT if self.bad and policy == "fail" else EXIT_OK


def scan(spec: DataSpec, *, seed: int) -> ScanReport:
    """List and decode every image once (in chunks) without training."""
    splits = make_splits(spec, seed=seed)
    counts = {"train": splits.train.class_counts(), "validation": splits.val.class_counts()}
    if splits.test is not None:
        counts["test"] = splits.test.class_counts()
    bad: list[tuple[str, str]] = []
    for items in (splits.train, splits.val, splits.test):
        if items is None:
            continue
        for start in range(0, len(items), SCAN_CHUNK):
            chunk = list(items.paths[start:start + SCAN_CHUNK])
            _, _, chunk_bad = images.decode_many(chunk, size=spec.image_size,
                                                 color_mode=spec.color_mode,
                                                 workers=spec.decode_workers)
            bad.extend(chunk_bad)
    return ScanReport(splits.class_names, counts, tuple(bad))


# --- the tf.data input path ------------------------------------------------------------


def steps_per_epoch(num_train: int, global_batch_size: int) -> int:
    """Steps of one epoch: the same on every worker, computed from the listed (global) count."""
    return max(1, num_train // global_batch_size)


def train_batches(decoded: Decoded, *, batch_size: int, start_batch: int, num_batches: int,
                  seed: int, worker: int):
    """Batches ``start_batch .. start_batch + num_batches`` of this worker's endless stream.

    The stream is pass after pass over the shard, each pass a fresh permutation
    drawn from (seed, worker, pass). It is a pure function of the batch number,
    so a restart at any step sees exactly the batches it would have seen.
    """
    import tensorflow as tf

    size = len(decoded.labels)
    if size == 0:
        raise DataError("this worker's training shard has no readable images; add images or "
                        "use fewer workers.")
    pixels, labels = decoded.pixels, decoded.labels

    orders: dict[int, np.ndarray] = {}

    def order(pass_number: int) -> np.ndarray:
        if pass_number not in orders:
            orders.clear()  # Only the current pass (and the next) is ever needed.
            orders[pass_number] = np.random.default_rng([seed, worker, pass_number]).permutation(
                size)
        return orders[pass_number]

    def generate(start, count):
        for batch in range(int(start), int(start) + int(count)):
            positions = np.arange(batch * batch_size, (batch + 1) * batch_size)
            passes, offsets = np.divmod(positions, size)
            indices = np.empty(batch_size, dtype=np.int64)
            for pass_number in np.unique(passes):
                mask = passes == pass_number
                indices[mask] = order(int(pass_number))[offsets[mask]]
            yield pixels[indices], labels[indices]

    shape = (batch_size, *pixels.shape[1:])
    dataset = tf.data.Dataset.from_generator(
        generate, args=(start_batch, num_batches),
        output_signature=(tf.TensorSpec(shape, tf.uint8), tf.TensorSpec((batch_size,), tf.int32)))
    return dataset.prefetch(tf.data.AUTOTUNE)


def eval_batches(decoded: Decoded, *, batch_size: int, num_batches: int):
    """Fixed-order batches padded to ``num_batches`` with weight-0 examples.

    Every worker must run the same number of evaluation steps (each is a
    collective), whatever the size of its shard; padding carries weight 0 so it
    never counts.
    """
    import tensorflow as tf

    total = num_batches * batch_size
    count = len(decoded.labels)
    pixels = np.zeros((total, *decoded.pixels.shape[1:]), dtype=np.uint8)
    labels = np.zeros((total,), dtype=np.int32)
    weights = np.zeros((total,), dtype=np.float32)
    pixels[:count] = decoded.pixels
    labels[:count] = decoded.labels
    weights[:count] = 1.0
    dataset = tf.data.Dataset.from_tensor_slices((pixels, labels, weights))
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_batch_count(num_items: int, *, num_workers: int, batch_size: int) -> int:
    """Evaluation steps every worker runs: enough for the largest shard."""
    return max(1, math.ceil(math.ceil(num_items / num_workers) / batch_size))
