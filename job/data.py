"""The dataset: splits, sharding, decode cache and trainability, without TensorFlow.

Owns: turning the spec's image folders (listed by ``job.listing``) into (a) the
train / validation / test file lists, with a deterministic stratified split,
(b) a per-worker shard chosen *before* decoding, (c) decoded uint8 arrays cached
in memory or in an ``.npy`` file keyed by the file list, sizes, mtimes and decode
settings, and (d) the checks that refuse a dataset a model cannot learn from.
Never touches: the model, strategy creation, the run directory, TensorFlow (the
``tf.data`` batches are ``job.pipeline``'s, so ``trainjob validate`` stays light).
Decoding itself is ``job.images``.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from job import images, listing
from job.atomic import replacing
from job.errors import EXIT_BAD_INPUT, EXIT_OK, DataError
from job.listing import ImageList as ImageList
from job.listing import list_images as list_images
from job.spec import DataSpec

CACHE_VERSION = 2
"""Bump when the decoded pixels change for the same files (resize filter, modes...)."""
SCAN_CHUNK = 4096
"""Images decoded per chunk by ``scan``: bounds memory on huge folders."""


@dataclass(frozen=True)
class Splits:
    """The train / validation / test file lists of a run, before sharding."""

    class_names: tuple[str, ...]
    train: ImageList
    val: ImageList
    test: ImageList | None

    def describe(self) -> str:
        """'240 train, 60 validation, 40 test images in 4 classes'."""
        test = f", {len(self.test)} test" if self.test is not None else ""
        return (f"{len(self.train)} train, {len(self.val)} validation{test} images in "
                f"{len(self.class_names)} classes")


@dataclass(frozen=True)
class Decoded:
    """Decoded uint8 pixels of one shard, with labels; ``bad`` lists (path, reason)."""

    pixels: np.ndarray
    labels: np.ndarray
    bad: tuple[tuple[str, str], ...] = ()

    def counts(self, num_classes: int) -> np.ndarray:
        """Readable images per class label, for ``check_trainable`` (sum it over workers)."""
        return np.bincount(self.labels, minlength=num_classes)


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
    """List the spec's folders and split off validation when no val_dir is given.

    Files of val_dir or test_dir that are also files of train_dir (the same real
    file, through a link) are left out of evaluation, with one warning line each.
    """
    train, train_ids = listing.list_with_ids(spec.train_dir, key="data.train_dir",
                                             class_names=None)
    trained = {file_id for file_id in train_ids if file_id is not None}
    val = test = None
    if spec.val_dir is not None:
        val = listing.without_training_files(spec.val_dir, key="data.val_dir",
                                             class_names=train.class_names, trained=trained)
    else:
        keep, held = stratified_split(train.labels, fraction=spec.val_split, seed=seed)
        train, val = train.subset(keep), train.subset(held)
    if spec.test_dir is not None:
        test = listing.without_training_files(spec.test_dir, key="data.test_dir",
                                              class_names=train.class_names, trained=trained)
    if len(val) == 0:
        raise DataError(f"data.val_split={spec.val_split} leaves no validation images; give "
                        "data.val_dir or add images (each class needs at least 2).")
    return Splits(train.class_names, train, val, test)


def check_trainable(class_names: Sequence[str], *, train_counts: Sequence[int],
                    val_counts: Sequence[int]) -> list[str]:
    """Refuse a dataset a model cannot learn; warn of classes validation cannot measure.

    Args:
        class_names: the classes, in label order.
        train_counts, val_counts: readable (decoded) images per class label, summed
            over every worker, e.g. ``Decoded.counts`` all-reduced.

    Returns:
        Warning lines, one for all classes without a readable validation image.

    Raises:
        DataError: naming every class with no readable training image (the model would
            never see it), or when no validation image is readable at all.

    Example:
        >>> for line in check_trainable(("cat", "dog"), train_counts=[9, 7], val_counts=[2, 0]):
        ...     print(line)
        warning: class 'dog' has no readable validation images: its accuracy is not measured.
    """
    untrained = [name for name, count in zip(class_names, train_counts) if count == 0]
    if untrained:
        raise DataError(f"data.train_dir: {_classes(untrained)} no readable training images, "
                        "so the model would never learn to predict "
                        f"{'it' if len(untrained) == 1 else 'them'}; add readable images or "
                        f"remove {'its folder' if len(untrained) == 1 else 'their folders'}.")
    unmeasured = [name for name, count in zip(class_names, val_counts) if count == 0]
    if len(unmeasured) == len(class_names):
        raise DataError("no readable validation images, so validation would measure nothing; "
                        "add readable images to the validation data.")
    if not unmeasured:
        return []
    return [f"warning: {_classes(unmeasured)} no readable validation images: "
            f"{'its' if len(unmeasured) == 1 else 'their'} accuracy is not measured."]


def _classes(names: list[str]) -> str:
    """The subject of a sentence about ``names``: class 'a' has, classes 'a', 'b' have."""
    quoted = ", ".join(repr(name) for name in names)
    return f"class {quoted} has" if len(names) == 1 else f"classes {quoted} have"


def shard(items: ImageList, *, index: int, num_workers: int) -> ImageList:
    """The files worker ``index`` of ``num_workers`` decodes: every N-th (shards differ by <= 1)."""
    return items.subset(np.arange(index, len(items), num_workers))


def decode_shards(splits: Splits, *, spec: DataSpec, cache_dir: Path, index: int,
                  num_workers: int) -> tuple[dict[str, ImageList], dict[str, Decoded]]:
    """Worker ``index``'s shard of every split, and its decoded pixels (through the cache)."""
    shards = {name: shard(items, index=index, num_workers=num_workers)
              for name, items in (("train", splits.train), ("val", splits.val),
                                  ("test", splits.test)) if items is not None}
    decoded = {name: decode(items, spec=spec, cache_dir=cache_dir,
                            workers=spec.decode_workers)
               for name, items in shards.items()}
    return shards, decoded


def listing_digest(items: ImageList | None) -> dict[str, object] | None:
    """What a run's fingerprint records of one split: its file count and a digest.

    The digest covers each file's path relative to the split's folder, its size,
    its modification time and its label: data copied with its dates (``cp -a``,
    ``rsync -a``) to another folder is the same data; an added, removed,
    relabelled or rewritten file is not.
    """
    if items is None:
        return None
    digest = hashlib.sha256(" ".join(items.class_names).encode() + b"\n")
    for path, label in zip(items.paths, items.labels.tolist()):
        relative = os.fsencode(os.path.relpath(path, items.root))
        try:
            stat = os.stat(path)
            facts = f"\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n"
        except OSError:
            facts = f"\0missing\0{label}\n"
        digest.update(relative + facts.encode())
    return {"files": len(items), "sha256": digest.hexdigest()}


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
                                               color_mode=spec.color_mode, workers=workers,
                                               out=aligned_empty((len(items),
                                                                  *spec.image_shape)),
                                               max_pixels=spec.max_image_pixels)
        decoded = Decoded(pixels, items.labels[np.asarray(kept, dtype=np.int64)], tuple(bad))
    if decoded.bad and spec.on_bad_image == "fail":
        path, reason = decoded.bad[0]
        more = f" (and {len(decoded.bad) - 1} more)" if len(decoded.bad) > 1 else ""
        raise DataError(f"{images.printable_path(path)}: unreadable image: {reason}{more}; fix "
                        "or remove it, or set data.on_bad_image: skip.")
    for path, reason in decoded.bad:
        print(f"warning: skipping unreadable image {images.printable_path(path)}: {reason}",
              file=sys.stderr, flush=True)
    return decoded


TENSOR_ALIGNMENT = 64
"""Bytes: TensorFlow reads a tensor's buffer with aligned vector loads, and a tensor made
from unaligned memory aborts the process. Decoded arrays start at a multiple of it, so the
training input can read them in place (``job.pipeline.as_tensor``)."""


def aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """A new zeroed uint8 array on pages of its own, so its first byte sits at a multiple of
    ``TENSOR_ALIGNMENT`` (NumPy itself promises 16 bytes).

    Anonymous memory from the system, as NumPy's would be, but without NumPy's request
    for huge pages: where the kernel honours that request by compacting memory first,
    as it does by default, a process's first large array stalled on it. 2,000 decoded
    photos (98 MB) took 0.12 s to fault in, against 0.06 s on ordinary pages shared by
    the decoder threads: up to 0.06 s of P1's 1.3 s first epoch.

    Raises:
        DataError: the system will not give that much memory; it says to use the disk cache.
    """
    size = int(np.prod(shape))
    if size == 0:
        return np.empty(shape, dtype=np.uint8)
    try:
        memory = mmap.mmap(-1, size)
    except OSError as error:
        raise DataError(f"cannot hold the decoded images in memory ({size / 2**20:,.0f} MiB: "
                        f"{error.strerror}); set data.cache: disk to keep them in a file, or "
                        "give the worker more memory.") from None
    return np.frombuffer(memory, dtype=np.uint8).reshape(shape)


def _cache_key(items: ImageList, spec: DataSpec) -> str:
    digest = hashlib.sha256()
    digest.update(f"v{CACHE_VERSION} {spec.image_size} {spec.color_mode} "
                  f"{spec.max_image_pixels}\n".encode())
    for path, label in zip(items.paths, items.labels.tolist()):
        name = os.fsencode(path)  # the bytes on disk: a name need not be UTF-8
        try:
            stat = os.stat(path)
            digest.update(name + f"\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
        except OSError:
            digest.update(name + b"\0missing\n")
    return digest.hexdigest()[:32]


def _decode_through_file(items: ImageList, *, spec: DataSpec, cache_dir: Path,
                         workers: int) -> Decoded:
    key = _cache_key(items, spec)
    pixels_path = cache_dir / f"{key}.npy"
    meta_path = cache_dir / f"{key}.json"
    if pixels_path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            pixels = _mapped(pixels_path)
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
                                          out=target, max_pixels=spec.max_image_pixels)
        target.flush()
        del target
    labels = items.labels[np.asarray(kept, dtype=np.int64)]
    # The labels file is written last: a crash never leaves a cache to be trusted.
    with replacing(meta_path) as tmp:
        tmp.write_text(json.dumps({"labels": labels.tolist(), "bad": [list(b) for b in bad]}))
    return Decoded(_mapped(pixels_path)[:len(labels)], labels, tuple(bad))


def _mapped(pixels_path: Path) -> np.ndarray:
    """The cache file mapped copy-on-write: writable in this process, so the training input
    can read it in place as a tensor (``job.pipeline.as_tensor``), while a write could never
    reach the file."""
    return np.load(pixels_path, mmap_mode="c")


@dataclass(frozen=True)
class ScanReport:
    """What ``trainjob validate`` prints: class counts per split, unreadable files, and
    whether the readable images can train a model (``refusal``: why not)."""

    class_names: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    bad: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...] = ()
    refusal: str | None = None

    def describe(self) -> str:
        lines = [f"classes ({len(self.class_names)}): {', '.join(self.class_names)}"]
        for split, counts in self.counts.items():
            total = sum(counts.values())
            detail = ", ".join(f"{name} {count}" for name, count in counts.items())
            lines.append(f"{split}: {total} images ({detail})")
        lines.append(f"unreadable images: {len(self.bad)}")
        lines.extend(f"  {images.printable_path(path)}: {reason}" for path, reason in self.bad)
        lines.extend(self.warnings)
        if self.refusal is not None:
            lines.append(f"error: {self.refusal}")
        return "\n".join(lines)

    def exit_code(self, policy: str) -> int:
        refused = self.refusal is not None or (self.bad and policy == "fail")
        return EXIT_BAD_INPUT if refused else EXIT_OK


def scan(spec: DataSpec, *, seed: int) -> ScanReport:
    """List and decode every image once (in chunks) without training, and check, as
    training does, that the readable images can train a model."""
    splits = make_splits(spec, seed=seed)
    counts = {"train": splits.train.class_counts(), "validation": splits.val.class_counts()}
    if splits.test is not None:
        counts["test"] = splits.test.class_counts()
    bad: list[tuple[str, str]] = []
    readable = {name: _scan_split(items, spec=spec, bad=bad)
                for name, items in (("train", splits.train), ("validation", splits.val),
                                    ("test", splits.test)) if items is not None}
    try:
        warnings = check_trainable(splits.class_names, train_counts=readable["train"],
                                   val_counts=readable["validation"])
    except DataError as error:
        return ScanReport(splits.class_names, counts, tuple(bad), refusal=str(error))
    return ScanReport(splits.class_names, counts, tuple(bad), warnings=tuple(warnings))


def _scan_split(items: ImageList, *, spec: DataSpec, bad: list[tuple[str, str]]) -> np.ndarray:
    """Decode one split chunk by chunk, adding its unreadable files to ``bad``; returns the
    readable images per class."""
    readable = np.zeros(len(items.class_names), dtype=np.int64)
    for start in range(0, len(items), SCAN_CHUNK):
        chunk = items.subset(np.arange(start, min(start + SCAN_CHUNK, len(items))))
        _, kept, chunk_bad = images.decode_many(list(chunk.paths), size=spec.image_size,
                                                color_mode=spec.color_mode,
                                                workers=spec.decode_workers,
                                                max_pixels=spec.max_image_pixels)
        readable += np.bincount(chunk.labels[kept], minlength=len(items.class_names))
        bad.extend(chunk_bad)
    return readable


# --- sizes of the input path (the batches themselves: job.pipeline) ---------------------


def steps_per_epoch(num_train: int, global_batch_size: int) -> int:
    """Steps of one epoch: the same on every worker, computed from the listed (global) count."""
    return max(1, num_train // global_batch_size)


def eval_batch_count(num_items: int, *, num_workers: int, batch_size: int) -> int:
    """Evaluation steps every worker runs: enough for the largest shard."""
    return max(1, math.ceil(math.ceil(num_items / num_workers) / batch_size))
