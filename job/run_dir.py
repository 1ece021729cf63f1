"""The run directory ``<output.dir>/<run-id>/``: the only writer of run outputs.

Owns: where each output lives, atomic writes (temp name, then rename, so no
reader ever sees half a file), chief-only writes to shared storage, and each
non-chief worker's private scratch folder (for saves that every worker must
take part in), which is deleted at the end.
Never touches: training logic, data, the model's construction.

Layout::

    model.h5  labels.json  metrics.json  history.csv  spec.yaml  checkpoints/  logs/
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from job.atomic import replacing

HISTORY_FIELDS = ("epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "images_per_second", "seconds")
SCRATCH_ENV = "TRAINJOB_SCRATCH_DIR"
"""If set, non-chief scratch folders are created (and kept) under it; used to inspect workers."""


@dataclass(frozen=True)
class RunDir:
    """Paths of one run, as seen by one worker.

    The chief's ``root`` is the shared run directory. A non-chief worker's
    ``root`` is a private scratch folder: it writes what collectives force it to
    write there, and ``cleanup`` removes it.
    """

    shared: Path
    root: Path
    is_chief: bool
    keep_scratch: bool = False

    @classmethod
    def open(cls, output_dir: Path, run_id: str, *, is_chief: bool, worker: int,
             env: dict[str, str] | None = None) -> RunDir:
        env = dict(os.environ if env is None else env)
        shared = Path(output_dir) / run_id
        if is_chief:
            shared.mkdir(parents=True, exist_ok=True)
            return cls(shared=shared, root=shared, is_chief=True)
        base = env.get(SCRATCH_ENV)
        if base:
            root = Path(base) / f"worker-{worker}"
            root.mkdir(parents=True, exist_ok=True)
            return cls(shared=shared, root=root, is_chief=False, keep_scratch=True)
        root = Path(tempfile.mkdtemp(prefix=f"trainjob-{run_id}-worker{worker}-"))
        return cls(shared=shared, root=root, is_chief=False)

    @property
    def checkpoints(self) -> Path:
        """Where this worker writes checkpoints (scratch for non-chief workers)."""
        return self.root / "checkpoints"

    @property
    def shared_checkpoints(self) -> Path:
        """Where every worker restores from: the chief's checkpoints on shared storage."""
        return self.shared / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def model_path(self) -> Path:
        return self.root / "model.h5"

    def write_text(self, name: str, text: str) -> Path:
        """Atomically write ``name`` under this worker's root."""
        return _atomic_write(self.root / name, text.encode("utf-8"))

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def write_spec(self, spec_dict: dict[str, Any]) -> Path:
        return self.write_text("spec.yaml", yaml.safe_dump(spec_dict, sort_keys=False))

    def write_history(self, rows: list[dict[str, Any]]) -> Path:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in HISTORY_FIELDS})
        return self.write_text("history.csv", buffer.getvalue())

    def read_history(self) -> list[dict[str, Any]]:
        """Rows an earlier attempt of this run wrote (shared dir), for a resumed run."""
        path = self.shared / "history.csv"
        if not path.exists():
            return []
        with path.open(newline="") as handle:
            return [dict(row) for row in csv.DictReader(handle)]

    def save_model(self, model) -> tuple[Path, str]:
        """Save ``model`` as HDF5 under a temp name, rename it into place; return (path, sha256)."""
        with replacing(self.model_path, suffix=".h5") as tmp:
            _quietly_save(model, str(tmp))
            digest = sha256_file(tmp)
        return self.model_path, digest

    def cleanup(self) -> None:
        """Delete a non-chief worker's private scratch folder (never the shared run dir)."""
        if not self.is_chief and not self.keep_scratch:
            shutil.rmtree(self.root, ignore_errors=True)


def _quietly_save(model, path: str) -> None:
    # HDF5 is the format our users asked for; Keras's "legacy format" notice is noise to them.
    import absl.logging

    previous = absl.logging.get_verbosity()
    absl.logging.set_verbosity(absl.logging.ERROR)
    try:
        model.save(path)
    finally:
        absl.logging.set_verbosity(previous)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> Path:
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return path


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value
