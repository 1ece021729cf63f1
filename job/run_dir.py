"""The run directory ``<output.dir>/<run-id>/``: the only writer of run outputs.

Owns: where each output lives, atomic writes (temp name, then rename, so no
reader ever sees half a file), chief-only writes to shared storage, each
non-chief worker's private scratch folder (for saves that every worker must
take part in), which is deleted at the end, the run's lock (one process per run
directory), its recorded fingerprint, discarding a run on purpose (``--restart``),
and turning the file system's refusals (full, read-only, a file in the way) into
one-line ``StorageError``s.
Never touches: training logic, data, the model's construction, what a fingerprint
covers (``job.fingerprint``).

Layout::

    model.h5  labels.json  metrics.json  history.csv  spec.yaml  fingerprint.json
    model.keras  saved_model/  model.tflite  model.onnx   the output.formats beyond h5
    checkpoints/  logs/
    report/               pictures of a finished run, which ``job.report`` draws (and
                          publishes whole) after metrics.json: not a run output
    ../.<run-id>.lock     held while a process trains the run
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from job.atomic import replacing, replacing_folder
from job.errors import RunInUse, StorageError

HISTORY_FIELDS = ("epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "images_per_second", "seconds")
SCRATCH_ENV = "TRAINJOB_SCRATCH_DIR"
"""If set, non-chief scratch folders are created (and kept) under it; used to inspect workers."""
CHECKPOINT_NAME = "ckpt"
"""Checkpoint files are ``checkpoints/ckpt-<step>.index`` and ``.data-*``."""
FINGERPRINT_FILE = "fingerprint.json"
TEMP_CHECKPOINT_SUFFIX = "_temp"
"""TensorFlow writes a checkpoint into ``<prefix>_temp/`` first; a failed save leaves it."""

_HINTS = {
    errno.ENOSPC: "free space on that volume (or make it larger); a rerun with the same run id "
                  "resumes from the last checkpoint",
    errno.EDQUOT: "raise the quota or free space; a rerun with the same run id resumes",
    errno.EROFS: "mount it read-write, or set output.dir to a writable folder",
    errno.EACCES: "make it writable for this user, or set output.dir to a writable folder",
    errno.EPERM: "make it writable for this user, or set output.dir to a writable folder",
    errno.ENOTDIR: "a file is in the way: move it, or set output.dir to a folder",
    errno.EEXIST: "a file is in the way: move it, or set output.dir to a folder",
    errno.ENAMETOOLONG: "use a shorter --run-id or output.dir",
}


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
        """The run's paths for this worker; a non-chief worker's scratch folder is created.

        The chief's shared folder is created by ``create`` once the run is known to go
        ahead, so a run refused at the start leaves no empty folder behind.
        """
        env = dict(os.environ if env is None else env)
        shared = Path(output_dir) / run_id
        if is_chief:
            return cls(shared=shared, root=shared, is_chief=True)
        base = env.get(SCRATCH_ENV)
        with storage_errors("create a worker's scratch folder", base or tempfile.gettempdir()):
            if base:
                root = Path(base) / f"worker-{worker}"
                root.mkdir(parents=True, exist_ok=True)
                return cls(shared=shared, root=root, is_chief=False, keep_scratch=True)
            root = Path(tempfile.mkdtemp(prefix=f"trainjob-{run_id}-worker{worker}-"))
        return cls(shared=shared, root=root, is_chief=False)

    def create(self) -> None:
        """Create the run folder (the chief's, on shared storage), or say why it cannot be."""
        with storage_errors("create the run folder", self.root):
            if self.root.exists() and not self.root.is_dir():
                raise FileExistsError(errno.EEXIST, "a file, not a folder", str(self.root))
            self.root.mkdir(parents=True, exist_ok=True)

    def remove_if_unstarted(self) -> None:
        """Remove the chief's run folder if it holds no checkpoint and no output yet.

        For a run that failed before its first checkpoint (bad data, a full disk):
        what is left (the fingerprint, an empty TensorBoard log) is worth nothing, and
        an empty-looking run folder would only puzzle the next reader.
        """
        started = ((self.checkpoints / "checkpoint").exists()
                   or any((self.root / name).exists() for name in ("history.csv",
                                                                    "metrics.json",
                                                                    "model.h5")))
        if self.is_chief and not started:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def lock_path(self) -> Path:
        """Beside the run folder, not in it: ``--restart`` removes the folder while locked."""
        return self.shared.parent / f".{self.shared.name}.lock"

    @property
    def fingerprint_path(self) -> Path:
        return self.shared / FINGERPRINT_FILE

    def read_fingerprint(self) -> dict[str, Any] | None:
        """The fingerprint the run recorded, None for a new run (or one from before them)."""
        try:
            return json.loads(self.fingerprint_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise StorageError(f"{self.fingerprint_path}: cannot read the run's fingerprint "
                               f"({error}); use --restart to discard the run, or a new "
                               "--run-id") from None

    def write_fingerprint(self, fingerprint: dict[str, Any]) -> Path:
        return self.write_json(FINGERPRINT_FILE, fingerprint)

    def read_metrics(self) -> dict[str, Any] | None:
        """metrics.json of a complete run (the chief writes it last), else None."""
        try:
            return json.loads((self.shared / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_complete(self) -> bool:
        return self.read_metrics() is not None and (self.shared / "model.h5").is_file()

    def discard(self) -> bool:
        """Delete the whole run folder on purpose (``--restart``); return whether one existed.

        The folder is first renamed out of the way, so a crash halfway through the
        deletion never leaves half a run under the run's name.
        """
        if not self.shared.exists():
            return False
        trash = self.shared.parent / f".{self.shared.name}.discarded-{os.getpid()}"
        with storage_errors("discard the old run", self.shared):
            os.replace(self.shared, trash)
            shutil.rmtree(trash)
        return True

    def remove_temp_checkpoints(self) -> None:
        """Delete what a failed checkpoint save left (``ckpt-N_temp/``)."""
        with contextlib.suppress(OSError):
            for entry in self.checkpoints.iterdir():
                if entry.name.endswith(TEMP_CHECKPOINT_SUFFIX) and entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)

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
        """Strict JSON: a non-finite number (NaN, infinity) is written as null."""
        return self.write_text(name, json.dumps(_finite(data), indent=2, sort_keys=True,
                                                allow_nan=False) + "\n")

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
        with storage_errors("write the model", self.model_path), \
                replacing(self.model_path, suffix=".h5") as tmp:
            _quietly_save(model, str(tmp))
            digest = sha256_file(tmp)
        return self.model_path, digest

    def save_export(self, name: str, write: Callable[[Path], None], *,
                    folder: bool = False) -> tuple[Path, str, int]:
        """Write the model file (or ``folder``) ``name`` with ``write(temp_path)`` and rename
        it into place; return (path, sha256, bytes). A folder's sha256 is ``sha256_tree``'s.
        """
        path = self.root / name
        with storage_errors("write the model", path):
            if folder:
                with replacing_folder(path) as tmp:
                    write(tmp)
                    digest, size = sha256_tree(tmp), _tree_bytes(tmp)
            else:
                with replacing(path, suffix=path.suffix) as tmp:
                    write(tmp)
                    digest, size = sha256_file(tmp), tmp.stat().st_size
        return path, digest, size

    def remove_export(self, name: str) -> None:
        """Delete a model file or folder that must not be used (it failed its check)."""
        path = self.root / name
        with storage_errors("remove the model", path):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

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


def sha256_tree(folder: Path) -> str:
    """A folder's digest: the sha256 of its ``sha256sum`` lines (``<hex>  <relative path>``),
    one per file in sorted order: ``(cd F && find . -type f | cut -c3- | LC_ALL=C sort |
    xargs sha256sum) | sha256sum`` prints it too."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    lines = "".join(f"{sha256_file(folder / name)}  {name}\n" for name in files)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _atomic_write(path: Path, data: bytes) -> Path:
    with storage_errors("write", path), replacing(path) as tmp:
        tmp.write_bytes(data)
    return path


@contextlib.contextmanager
def storage_errors(action: str, path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an ``OSError`` from the file system into a one-line ``StorageError``.

    Example:
        >>> with storage_errors("write", "/proc/x"):     # doctest: +SKIP
        ...     open("/proc/x", "w")
        StorageError: /proc/x: cannot write: No such file or directory ...
    """
    try:
        yield
    except OSError as error:
        raise StorageError(describe_os_error(action, path, error)) from None


def describe_os_error(action: str, path: str | os.PathLike[str], error: OSError) -> str:
    """``path: cannot <action>: <the OS's words>; <how to fix it>`` for one OSError."""
    where = error.filename if isinstance(error.filename, str) else os.fspath(path)
    reason = error.strerror or str(error)
    hint = _HINTS.get(error.errno or 0, "check the path and its volume")
    return f"{where}: cannot {action}: {reason}; {hint}"


class RunLock:
    """An exclusive lock on one run, held by the process that trains it.

    A POSIX record lock (``fcntl.lockf``) on ``<output.dir>/.<run-id>.lock``: the
    kernel drops it when the holder dies, however it dies, so a crash never leaves
    a run locked; and NFS (v4, and v3 with lockd) and CephFS honour it across
    nodes, which the models volume needs. The file holds the holder's pid and host
    for the message another process gets. It is removed on release; a process that
    locked a file just removed checks that it still has the current one.
    """

    def __init__(self, path: Path, handle) -> None:
        self.path = path
        self._handle = handle

    @classmethod
    def acquire(cls, path: Path, *, run: str) -> RunLock:
        """Take the lock or raise ``RunInUse`` naming the holder."""
        with storage_errors("lock the run", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open)
                try:
                    fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    handle.close()
                    if error.errno not in (errno.EACCES, errno.EAGAIN):
                        raise
                    raise RunInUse(f"{run}: the run is in use by {_holder(path)}; wait for "
                                   "it to end, or use another --run-id") from None
                if _same_file(handle, path):
                    break
                handle.close()  # Locked a file its holder had just removed: try again.
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
            handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        if self._handle.closed:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._handle.close()  # Closing drops the lock.

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {holder['pid']} on host {holder['host']} (since {holder['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"another process (its lock file {path} names no holder yet)"


def _same_file(handle, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except OSError:
        return False


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value
