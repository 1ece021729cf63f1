"""The rows of ``trainjob predict``: one per file, as a terminal table, CSV or JSON.

Owns: what a row holds (path, label, probability, the top k, or why the file could
not be read), the three formats and their columns, and writing a file under a temp
name so that a failed or interrupted run leaves no half-written predictions. Rows
are written chunk by chunk as they come, so a file of 100,000 rows is never held.
Never touches: the model, decoding, what a chunk is made of (``job.predict``).

Example:
    >>> writer = open_writer(Path("predictions.csv"), out=None)   # doctest: +SKIP
    >>> with writer.open(("cat", "dog"), top_k=2, paths=paths,
    ...                  model=Path("model.h5")):                      # doctest: +SKIP
    ...     writer.write(rows)
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from job.atomic import replacing
from job.errors import DataError, StorageError, printable_path

FORMATS = (".csv", ".json")
"""Endings of ``--output``: the format is chosen by the file name."""
DECIMALS = 6
"""Digits of a probability in CSV and JSON: float32 holds about 7."""
LABEL_WIDTH = 20
"""Most characters of a class name in the table."""
RUNNERS_UP_WIDTH = 24
"""Columns the table keeps for the runners-up on a terminal, before the path gets the rest."""


@dataclass(frozen=True)
class Row:
    """What the model said of one file, or why it could not be read."""

    path: str
    top: tuple[tuple[str, float], ...]
    """(class name, probability), most probable first; empty for an unreadable file."""
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    @property
    def probability(self) -> float | None:
        return self.top[0][1] if self.top else None


def rows_of(chunk: Any, class_names: Sequence[str], *, top_k: int) -> list[Row]:
    """The rows of a ``job.predict.Chunk``, in its files' order.

    Ties keep the class order (a stable sort), so the label is ``argmax``'s.
    """
    order = np.argsort(-chunk.probabilities, axis=1, kind="stable")[:, :top_k]
    rows: list[Row | None] = [None] * len(chunk.paths)
    for position, index in enumerate(chunk.kept):
        top = tuple((class_names[c], float(chunk.probabilities[position, c]))
                    for c in order[position])
        rows[index] = Row(os.fspath(chunk.paths[index]), top)
    unread = iter(chunk.bad)  # the unreadable files, in the same order as their gaps
    return [row if row is not None else Row(*_unreadable(next(unread))) for row in rows]


def _unreadable(pair: tuple[str, str]) -> tuple[str, tuple[()], str]:
    path, reason = pair
    return path, (), reason


def open_writer(output: Path | None, *, out: TextIO) -> TableWriter | FileWriter:
    """The writer for ``--output``: a table on ``out`` for None, else CSV or JSON by ending.

    Raises:
        DataError: ``output`` has another ending or is a folder.
    """
    if output is None:
        return TableWriter(out)
    output = Path(output)
    if output.suffix.lower() not in FORMATS:
        raise DataError(f"--output {printable_path(output)}: expected a file name ending "
                        f"{' or '.join(FORMATS)} (the ending chooses the format).")
    if output.is_dir():
        raise DataError(f"--output {printable_path(output)} is a folder; give a file name.")
    return FileWriter(output)


class FileWriter:
    """CSV or JSON rows into a temp file, renamed to ``path`` when every row is in."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.json = path.suffix.lower() == ".json"
        self._handle: TextIO | None = None
        self._csv: Any = None
        self._top_k = 1
        self._counts = {"images": 0, "unreadable": 0}

    @contextlib.contextmanager
    def open(self, class_names: Sequence[str], *, top_k: int, paths: Sequence[str],
             model: Path) -> Iterator[None]:
        self._top_k = top_k
        try:
            with replacing(self.path, suffix=self.path.suffix) as tmp, \
                    open(tmp, "w", encoding="utf-8", newline="") as handle:
                self._handle = handle
                self._start(class_names, model=model)
                yield
                if self.json:
                    handle.write(f"\n], {json.dumps(self._counts)[1:-1]}}}\n")
        except OSError as error:
            raise StorageError(f"{printable_path(error.filename or self.path)}: cannot write "
                               f"the predictions: {error.strerror or error}; choose another "
                               "--output.") from None

    def _start(self, class_names: Sequence[str], *, model: Path) -> None:
        assert self._handle is not None
        if self.json:
            head = json.dumps({"model": str(model), "classes": list(class_names),
                               "top_k": self._top_k})
            self._handle.write(head[:-1] + ', "predictions": [\n')
            return
        self._csv = csv.writer(self._handle, lineterminator="\n")
        columns = ["path", "label", "probability"]
        for rank in range(2, self._top_k + 1):
            columns += [f"label_{rank}", f"probability_{rank}"]
        self._csv.writerow([*columns, "error"])

    def write(self, rows: Sequence[Row]) -> None:
        assert self._handle is not None
        for row in rows:
            if self.json:
                separator = ",\n" if self._counts["images"] else ""
                self._handle.write(separator + json.dumps(_json_row(row)))
            else:
                cells = [value for name, p in row.top for value in (name, _round(p))]
                cells += [""] * (2 * self._top_k - len(cells))
                self._csv.writerow([row.path, *cells, row.error or ""])
            self._counts["images"] += 1
            self._counts["unreadable"] += row.error is not None


def _json_row(row: Row) -> dict[str, Any]:
    return {"path": row.path, "label": row.label,
            "probability": None if row.probability is None else _round(row.probability),
            "top_k": [{"label": name, "probability": _round(p)} for name, p in row.top],
            "error": row.error}


def _round(probability: float) -> float:
    return round(float(probability), DECIMALS)


class TableWriter:
    """Rows as an aligned table on ``out``; on a terminal, cut to its width.

    When ``out`` is not a terminal (a pipe, a file) nothing is cut: every path and
    every runner-up is printed in full.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.width: int | None = None
        self._columns = (4, 5)

    @contextlib.contextmanager
    def open(self, class_names: Sequence[str], *, top_k: int, paths: Sequence[str],
             model: Path) -> Iterator[None]:
        terminal = self.out.isatty()
        self.width = shutil.get_terminal_size().columns if terminal else None
        label_width = min(LABEL_WIDTH, max(len("label"), *(len(n) for n in class_names)))
        path_width = max(len("path"), *(len(printable_path(p)) for p in paths))
        if self.width is not None:
            room = self.width - label_width - RUNNERS_UP_WIDTH - 12
            path_width = min(path_width, max(len("path") + 8, room))
        self._columns = (path_width, label_width)
        runners_up = "runners-up" if top_k > 1 else ""
        self._print(self._line("path", "label", "prob", runners_up))
        yield
        self.out.flush()

    def write(self, rows: Sequence[Row]) -> None:
        for row in rows:
            if row.error is not None:
                self._print(self._line(printable_path(row.path), "-", "",
                                       f"unreadable: {row.error}"))
                continue
            rest = ", ".join(f"{name} {p:.4f}" for name, p in row.top[1:])
            self._print(self._line(printable_path(row.path), row.label or "",
                                   f"{row.probability:.4f}", rest))
        self.out.flush()

    def _line(self, path: str, label: str, probability: str, rest: str) -> str:
        path_width, label_width = self._columns
        return (f"{_cut_left(path, path_width):<{path_width}}  "
                f"{_cut(label, label_width):<{label_width}}  {probability:>6}  {rest}").rstrip()

    def _print(self, line: str) -> None:
        print(line if self.width is None else _cut(line, self.width), file=self.out)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def _cut_left(text: str, width: int) -> str:
    """The end of a path, which names the file, when the whole does not fit."""
    return text if len(text) <= width else "…" + text[-(width - 1):]
