"""The dataset's files: class-per-subfolder trees to file lists, each real file once.

Owns: which subfolders are classes, which files are listed (visible image files,
through links), that every real folder is walked once and every real file (device
and inode) listed once however many symlinks or hard links lead to it, that one
file is never in two classes, and that evaluation folders leave out files the
model trains on.
Never touches: reading images (``job.images``), splitting, sharding, the cache
(``job.data``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from job.errors import DataError, printable_path
from job.images import is_image_file

FileId = tuple[int, int]
"""(st_dev, st_ino): one real file or folder, however many links lead to it."""


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


def list_images(root: Path, *, key: str,
                class_names: tuple[str, ...] | None = None) -> ImageList:
    """List a class-per-subfolder tree; class names are the sorted subfolder names.

    Hidden files and folders and non-image files are ignored. Links are followed,
    but every real folder is visited once per class and every real file (by device
    and inode) listed once, however many symlinks or hard links lead to it. When
    ``class_names`` is given (validation and test folders), every subfolder must
    be one of them.

    Raises:
        DataError: naming ``key`` and the folder, when it is missing, has fewer
            than two class subfolders, has a class the training folder lacks or one
            without images, or holds one file in two classes.
    """
    return list_with_ids(Path(root), key=key, class_names=class_names)[0]


def list_with_ids(root: Path, *, key: str, class_names: tuple[str, ...] | None,
                  ) -> tuple[ImageList, list[FileId | None]]:
    """``list_images``, and the identity of each listed file (None: it cannot be stat'ed)."""
    found = _class_folders(root, key=key, training=class_names is None)
    names = tuple(found) if class_names is None else class_names
    unknown = [n for n in found if n not in names]
    if unknown:
        raise DataError(f"{key}={str(root)!r} has class folder {unknown[0]!r} that "
                        f"data.train_dir lacks; its classes are: {', '.join(names)}.")
    paths: list[str] = []
    labels: list[int] = []
    ids: list[FileId | None] = []
    first_seen: dict[FileId, tuple[str, str]] = {}  # file -> (class, path) it was listed as
    for name in found:
        for path, file_id in _image_files(root / name):
            if file_id in first_seen:
                _refuse_two_classes(root, key=key, first=first_seen[file_id], second=(name, path))
                continue  # the same file again in this class: listed once
            if file_id is not None:
                first_seen[file_id] = (name, path)
            paths.append(path)
            labels.append(names.index(name))
            ids.append(file_id)
    if class_names is None:
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
        empty = [n for n, c in zip(names, counts) if c == 0]
        if empty:
            raise DataError(f"{key}={str(root)!r}: class folder {empty[0]!r} has no images "
                            "(.jpg .png .bmp .gif .tif .webp); add images or remove the folder.")
    return ImageList(root, names, tuple(paths), np.asarray(labels, dtype=np.int32)), ids


def _class_folders(root: Path, *, key: str, training: bool) -> list[str]:
    """The sorted visible subfolders of ``root``; training needs two, to tell classes apart."""
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise DataError(f"{key}={str(root)!r} {what}; point it at a folder with one subfolder "
                        "of images per class.")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{key}={str(root)!r} has no class subfolders; put the images of each "
                        "class in their own subfolder, e.g. train/cat/*.jpg, train/dog/*.jpg.")
    if training and len(found) < 2:
        raise DataError(f"{key}={str(root)!r} has one class folder, {found[0]!r}; a classifier "
                        "needs at least two classes: add a subfolder of images for each other "
                        "class.")
    return found


def _image_files(folder: Path) -> Iterator[tuple[str, FileId | None]]:
    """Image files under ``folder`` in sorted order, following links, each real folder once.

    A folder reached again (``ln -s . loop``, or a link to a parent) is skipped with all
    below it, so a loop ends and no file is listed twice through it.
    """
    visited: set[FileId] = set()
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        folder_id = _file_id(directory)
        if folder_id is None or folder_id in visited:
            subdirs[:] = []
            continue
        visited.add(folder_id)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for file in sorted(files):
            if is_image_file(file):
                path = os.path.join(directory, file)
                yield path, _file_id(path)


def _file_id(path: str) -> FileId | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None  # e.g. a broken link: listed, then reported unreadable by the decoder
    return (stat.st_dev, stat.st_ino)


def _refuse_two_classes(root: Path, *, key: str, first: tuple[str, str],
                        second: tuple[str, str]) -> None:
    """One real file in two classes has no single label: refuse it (same class: no-op)."""
    if first[0] == second[0]:
        return
    raise DataError(f"{key}={str(root)!r}: the same file is in class {first[0]!r} as "
                    f"{printable_path(first[1])} and in class {second[0]!r} as "
                    f"{printable_path(second[1])}; an image needs one label, so remove "
                    "the link that puts it in both.")


def without_training_files(root: Path, *, key: str, class_names: tuple[str, ...],
                           trained: set[FileId]) -> ImageList:
    """An evaluation folder's images, less any that are also training files (``trained``).

    One warning line says how many were left out; an evaluation folder holding nothing
    else is refused, naming ``key``.
    """
    items, ids = list_with_ids(Path(root), key=key, class_names=class_names)
    seen = [index for index, file_id in enumerate(ids) if file_id in trained]
    if not seen:
        return items
    if len(seen) == len(items):
        raise DataError(f"{key}={str(root)!r} holds only files that are also in "
                        "data.train_dir; point it at images the model does not train on.")
    count = f"{len(seen)} files are" if len(seen) > 1 else "1 file is"
    print(f"warning: {key}={str(root)!r}: {count} also in data.train_dir (e.g. "
          f"{printable_path(items.paths[seen[0]])}) and left out of it, so that it measures "
          "only images the model does not train on.", file=sys.stderr, flush=True)
    return items.subset(np.setdiff1d(np.arange(len(items)), seen))
