"""ImageNet weights for the keras.applications backbones: finding, fetching and checking them.

Owns: Keras's own "notop" file for each backbone (its name, URL and the hash Keras checks it
by), written down here and compared with the installed Keras by the tests, so that neither
this module nor the submitter that uses it imports Keras; the lookup of
``model.weights: imagenet`` (Keras's cache ``$KERAS_HOME/models``, then
``model.weights_dir``, then a download when ``model.allow_download`` lets the run make one);
``fetch``, which downloads files with their sha256 written beside them; and what ``render``
and ``submit`` can tell about the weights before launching.
Never touches: TensorFlow and Keras (``job.model`` loads the file found here), the network
other than a download from Keras's storage or its stand-in, ``$TRAINJOB_WEIGHTS_MIRROR``.

Example:
    >>> notop_file("vgg16").name
    'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5'
    >>> notop_file("mobilenet_v2", image_size=(64, 64)).name   # Keras's file for 224
    'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5'
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job import atomic
from job.errors import WeightsError
from job.spec import IMAGENET, ModelSpec, Spec

KERAS_STORAGE = "https://storage.googleapis.com"
"""The host Keras downloads its applications' weights from; a mirror stands in for it."""
MIRROR_ENV = "TRAINJOB_WEIGHTS_MIRROR"
"""A base URL that replaces KERAS_STORAGE, keeping Keras's paths below it: an in-house
mirror of storage.googleapis.com, or the tests' server on loopback."""
MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)
"""Square input sizes Keras has a MobileNetV2 file for; any other input uses 224's."""
DEFAULT_SIZE = 224
"""The input size the ImageNet backbones were trained at, and MobileNetV2's default file."""
CHECKSUM_SUFFIX = ".sha256"
"""Beside each fetched file, its sha256 in ``sha256sum`` format, so copies can be checked."""
LOCK_NAME = ".trainjob-fetch.lock"
"""Held while a process fetches into a folder: workers sharing a cache download once."""
TIMEOUT_SECONDS = 60
"""Seconds a download may wait on the network for one read: a stalled connection fails."""
CHUNK_BYTES = 1 << 20
"""Bytes read and hashed at a time: 1 MiB, a few dozen reads for the largest file."""

_KERAS_FILES = {
    # backbone: (folder on KERAS_STORAGE, Keras's file name, the file_hash Keras checks)
    "vgg16": ("/tensorflow/keras-applications/vgg16/",
              "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
              "6d6bbae143d832006294945121d1f1fc"),
    "resnet50": ("/tensorflow/keras-applications/resnet/",
                 "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 "4d473c1dd8becc155b73f8504c6f6626"),
    # Keras checks no hash for MobileNetV2's files; the sha256 fetch writes is the only one.
    "mobilenet_v2": ("/tensorflow/keras-applications/mobilenet_v2/",
                     "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5",
                     None),
    "efficientnet_b0": ("/keras-applications/", "efficientnetb0_notop.h5",
                        "50bc09e76180e00e4465e1a485ddc09d"),
}
BACKBONES = tuple(_KERAS_FILES)
"""The backbones that have ImageNet weights: every keras.applications one trainjob builds."""

Log = Callable[[str], Any]
"""Prints one line of progress (``print``, or a test's list.append)."""


@dataclass(frozen=True)
class NotopFile:
    """One of Keras's ImageNet "notop" weights files (the backbone without its classifier)."""

    backbone: str
    name: str
    """Keras's file name, as Keras caches it in ``$KERAS_HOME/models``."""
    folder: str
    """Its folder on KERAS_STORAGE (or a mirror)."""
    keras_hash: str | None
    """The hash Keras checks the file by (md5, or sha256 when 64 digits); None: none."""
    size: int | None = None
    """MobileNetV2's input size the file is for; None for the others (one file each)."""

    @property
    def command(self) -> str:
        """The command that provides the file."""
        size = f" --image-size {self.size}" if self.size not in (None, DEFAULT_SIZE) else ""
        return f"trainjob weights fetch {self.backbone}{size}"

    def url(self, mirror: str | None = None) -> str:
        """Keras's URL for the file, on ``mirror`` instead of KERAS_STORAGE when given."""
        return (mirror or KERAS_STORAGE).rstrip("/") + self.folder + self.name


def notop_file(backbone: str, *, image_size: tuple[int, int] = (DEFAULT_SIZE, DEFAULT_SIZE)
               ) -> NotopFile:
    """Keras's ImageNet notop file for ``backbone`` at ``image_size`` (height, width).

    Raises:
        WeightsError: the backbone has no ImageNet weights.
    """
    if backbone not in _KERAS_FILES:
        raise WeightsError(f"{backbone!r} has no ImageNet weights; choose from "
                           f"{', '.join(BACKBONES)}.")
    folder, name, keras_hash = _KERAS_FILES[backbone]
    if "{size}" not in name:
        return NotopFile(backbone, name, folder, keras_hash)
    height, width = image_size  # Keras's rule: its own size when square and listed, else 224.
    size = height if height == width and height in MOBILENET_V2_SIZES else DEFAULT_SIZE
    return NotopFile(backbone, name.format(size=size), folder, keras_hash, size)


def keras_models_dir(env: Mapping[str, str]) -> Path:
    """Where Keras keeps downloaded weights: ``$KERAS_HOME/models``; without KERAS_HOME,
    ``~/.keras/models``, or ``/tmp/.keras/models`` when the home folder is not writable."""
    if "KERAS_HOME" in env:
        return Path(env["KERAS_HOME"]).expanduser() / "models"
    home = Path(env.get("HOME") or os.path.expanduser("~"))
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras" / "models"


def download_dir(env: Mapping[str, str]) -> Path:
    """Keras's cache when it can be written (an image's baked-in one cannot, in a pod), else
    ``.keras/models`` in the temp folder, where Keras itself falls back to."""
    cache = keras_models_dir(env)
    with contextlib.suppress(OSError):
        cache.mkdir(parents=True, exist_ok=True)
    if os.access(cache, os.W_OK):
        return cache
    return Path(tempfile.gettempdir(), ".keras", "models")


def resolve(model: ModelSpec, *, image_size: tuple[int, int], env: Mapping[str, str],
            log: Log = print) -> Path:
    """The notop file ``model.weights: imagenet`` stands for, checked, or downloaded if allowed.

    Looks in Keras's cache (``keras_models_dir``), then in ``model.weights_dir``; a file is
    checked against the sha256 beside it, or else Keras's own hash. Downloads only when
    ``model.allow_download`` is not false (``auto`` is on here; ``render`` writes false for
    the pods).

    Raises:
        WeightsError: one line naming the file, where it was looked for and the command that
            provides it; or the file that fails its check.
    """
    notop = notop_file(model.backbone, image_size=image_size)
    searched = [(keras_models_dir(env), "KERAS_HOME")]
    if model.weights_dir is not None:
        searched.append((Path(model.weights_dir), "model.weights_dir"))
    for folder, _ in searched:
        if (folder / notop.name).is_file():
            return verified(folder / notop.name, notop)
    if model.allow_download is not False:
        return fetch_one(notop, to=download_dir(env), mirror=mirror_url(env), log=log)
    where = " or ".join(f"{folder} ({label})" for folder, label in searched)
    provide = (f"run `{notop.command} --to DIR` on a machine with internet and put DIR's files "
               f"in {model.weights_dir}" if model.weights_dir is not None else
               f"run `{notop.command}` on a machine with internet (into Keras's cache), set "
               f"model.weights_dir to a folder that `{notop.command} --to DIR` filled")
    raise WeightsError(f"model.weights=imagenet: {notop.name} is not in {where}, and "
                       f"model.allow_download is false; {provide}, or build the image with "
                       f"--build-arg WEIGHTS={notop.backbone}.")


def fetch(backbones: Sequence[str], *, to: Path | None, image_size: int = DEFAULT_SIZE,
          env: Mapping[str, str], log: Log = print) -> list[Path]:
    """Download the notop files of ``backbones`` into ``to`` (default: Keras's cache).

    ``image_size`` picks MobileNetV2's file. The URL base is ``$TRAINJOB_WEIGHTS_MIRROR``,
    else Keras's storage. Files already there that pass their check are kept.

    Example:
        >>> fetch(["vgg16"], to=Path("weights"), env=os.environ)   # doctest: +SKIP
        vgg16: downloading https://storage.googleapis.com/tensorflow/keras-applications/...
    """
    files = [notop_file(b, image_size=(image_size, image_size)) for b in backbones]
    folder = Path(to) if to is not None else download_dir(env)
    return [fetch_one(notop, to=folder, mirror=mirror_url(env), log=log) for notop in files]


def mirror_url(env: Mapping[str, str]) -> str | None:
    """``$TRAINJOB_WEIGHTS_MIRROR``, checked; None when unset (Keras's own storage)."""
    mirror = env.get(MIRROR_ENV) or None
    if mirror is not None and not mirror.startswith(("http://", "https://")):
        raise WeightsError(f"{MIRROR_ENV}={mirror!r} is not a URL; give an http:// or https:// "
                           "base URL (Keras's paths go below it), or unset it.")
    return mirror


def fetch_one(notop: NotopFile, *, to: Path, mirror: str | None, log: Log = print) -> Path:
    """``to``/name, downloaded unless a copy that passes its check is there; sha256 beside it.

    A lock in ``to`` makes processes sharing the folder download one after the other, so
    the later ones find the file. The file appears whole or not at all (``job.atomic``).
    """
    target = to / notop.name
    try:
        to.mkdir(parents=True, exist_ok=True)
        with _locked(to / LOCK_NAME):
            if target.is_file() and problem(target, notop) is None:
                log(f"{notop.backbone}: {target} is already there")
            else:
                url = notop.url(mirror)
                log(f"{notop.backbone}: downloading {url}")
                _download(url, target, notop)
            if not _checksum_path(target).is_file():
                _write_checksum(target, _hash(target, "sha256"))
    except OSError as error:
        raise WeightsError(f"cannot write {notop.name} into {to} ({error.strerror or error}); "
                           "give a writable folder with --to DIR.") from None
    log(f"{notop.backbone}: {target} ({target.stat().st_size} bytes, sha256 "
        f"{_checksum_path(target).read_text().split()[0]})")
    return target


def verified(path: Path, notop: NotopFile) -> Path:
    """``path``, once it passes its check (see ``problem``).

    Raises:
        WeightsError: naming the file, what failed and the command that provides it again.
    """
    found = problem(path, notop)
    if found is not None:
        raise WeightsError(f"model.weights=imagenet: {path} {found}: a partial or damaged "
                           f"copy; delete it and run `{notop.command}` again.")
    return path


def problem(path: Path, notop: NotopFile) -> str | None:
    """What is wrong with the file at ``path``, or None: its sha256 must match the checksum
    file beside it; without one, Keras's own hash (where Keras has one) decides."""
    checksum = _checksum_path(path)
    if checksum.is_file():
        expected = (checksum.read_text(encoding="ascii", errors="replace").split() or [""])[0]
        algorithm, source = "sha256", f"{checksum.name} beside it"
    elif notop.keras_hash is not None:
        expected, source = notop.keras_hash, "Keras's hash for it"
        algorithm = "sha256" if len(expected) == 64 else "md5"
    else:
        return None
    actual = _hash(path, algorithm)
    return None if actual == expected.lower() else (
        f"does not match {source} ({algorithm} {actual[:12]}..., expected {expected[:12]}...)")


def launch_warnings(spec: Spec, *, pod_model: Mapping[str, Any]) -> list[str]:
    """What ``render`` and ``submit`` can tell, before launching, about the pods' weights.

    They cannot look inside the image or on the data volume. What they can say: downloads
    by several workers at once; that only a baked image can then hold the file; and, when
    ``model.weights_dir`` is the folder on this machine the volume's copy comes from,
    whether the file is there and passes its check.

    Args:
        pod_model: the model section as the pods read it (``weights_dir`` on the volume,
            ``allow_download`` as rendered).
    """
    model = spec.model
    if model.weights != IMAGENET:
        return []
    notop = notop_file(model.backbone, image_size=spec.data.image_size)
    pod_dir, workers = pod_model.get("weights_dir"), spec.cluster.workers
    if pod_model.get("allow_download") is True:
        return [] if workers == 1 else [
            f"model.allow_download is true: each of the {workers} workers downloads "
            f"{notop.name} itself; put it on the data volume (model.weights_dir) or in the "
            f"image (--build-arg WEIGHTS={notop.backbone}) instead."]
    if pod_dir is None:
        return [f"model.weights=imagenet: the pods find {notop.name} only if the image was "
                f"built with --build-arg WEIGHTS={notop.backbone} (render cannot look inside "
                f"the image); or set model.weights_dir to a data-volume folder filled by "
                f"`{notop.command} --to DIR`."]
    local = Path(model.weights_dir)
    if str(local) == pod_dir or not local.is_dir():
        return []  # a path only the pods have: nothing on this machine to check
    path = local / notop.name
    found = problem(path, notop) if path.is_file() else "is missing"
    return [] if found is None else [
        f"model.weights_dir: {path} {found} on this machine, and the pods read its copy in "
        f"{pod_dir}: run `{notop.command} --to {local}`, then copy the folder to the volume."]


def _download(url: str, target: Path, notop: NotopFile) -> None:
    algorithm = "sha256" if notop.keras_hash and len(notop.keras_hash) == 64 else "md5"
    sha256, keras = hashlib.sha256(), hashlib.new(algorithm)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response, \
                atomic.replacing(target, suffix=".part") as tmp, tmp.open("wb") as file:
            declared = response.headers.get("Content-Length")
            while chunk := response.read(CHUNK_BYTES):
                file.write(chunk)
                sha256.update(chunk)
                keras.update(chunk)
            file.flush()
            received = file.tell()
            if declared is not None and int(declared) != received:
                raise WeightsError(f"{url} ended after {received} of {declared} bytes; "
                                   "fetch again.")
            if notop.keras_hash is not None and keras.hexdigest() != notop.keras_hash:
                raise WeightsError(f"{url} does not match Keras's {algorithm} for "
                                   f"{notop.name} ({keras.hexdigest()[:12]}..., expected "
                                   f"{notop.keras_hash[:12]}...); nothing was kept; check "
                                   f"the mirror ({MIRROR_ENV}) or fetch again.")
    except urllib.error.HTTPError as error:
        raise WeightsError(f"could not download {url}: HTTP {error.code} {error.reason}; "
                           f"check the URL's base ({MIRROR_ENV}).") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError,
            http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise WeightsError(f"could not download {url} ({reason}); this needs a machine that "
                           f"can reach it, or a mirror in {MIRROR_ENV}.") from None
    _write_checksum(target, sha256.hexdigest())


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _write_checksum(path: Path, digest: str) -> None:
    with atomic.replacing(_checksum_path(path)) as tmp:
        tmp.write_text(f"{digest}  {path.name}\n", encoding="ascii")


def _hash(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """A POSIX record lock on ``path`` (honoured across NFS clients), released on exit."""
    with path.open("a") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)
