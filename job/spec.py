"""The run spec: frozen dataclasses, loaded from YAML and checked in one place.

Owns: the spec's keys and, in each dataclass field, the key's type, default and range:
the default's reason is the field's docstring, the range is the field's metadata
(``low``, ``high``, ``exclusive_low``), and a key with choices has a ``Literal`` type.
The loader reads all three from the dataclasses (``job.spec_yaml.Reader``), so they are
written once. Also owns the checks that are more than a type and a range (numbers finite),
unknown-key rejection, cross-field checks with the one batch-divisibility rule, and path
resolution (relative paths resolve against the spec file's folder). Reading the file safely
and the YAML dialect are ``job.spec_yaml``'s; name rules and the run-id check are
``job.names``'; the cluster section's Kubernetes rules (node selectors, tolerations, pod
labels and annotations, affinity, sizes) are ``job.spec_cluster``'s.
Never touches: TensorFlow, Pillow, kubernetes. Everything after ``load`` trusts
the dataclasses.

Example:
    >>> spec = load("examples/shapes.yaml")   # doctest: +SKIP
    >>> spec.train.global_batch_size
    64
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from job import names, spec_cluster, spec_fine_tune, spec_yaml
from job import overrides as overrides_module
from job.errors import SpecError
from job.spec_fine_tune import FineTuneSpec
from job.spec_yaml import Reader

_QUANTITY = spec_cluster.QUANTITY
NAME_MAX_LENGTH = 40
"""Characters: leaves room for '-<run suffix>-<index>' inside a 63-char DNS label."""


@dataclass(frozen=True)
class AugmentSpec:
    """Training-time augmentation, run as Keras layers on the accelerator."""

    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "horizontal"
    """Horizontal because most photos are left-right symmetric; null or false mean none."""
    rotation: float = field(default=0.0, metadata={"low": 0.0, "high": 0.5})
    """Fraction of a full turn (0.1 = up to ±36°); off by default, it slows small runs."""
    zoom: float = field(default=0.0, metadata={"low": 0.0, "high": 0.9})
    """Fraction of the image size to zoom in or out; off by default."""
    contrast: float = field(default=0.0, metadata={"low": 0.0, "high": 0.9})
    """Contrast jitter factor; off by default."""


@dataclass(frozen=True)
class DataSpec:
    train_dir: Path
    """Class-per-subfolder image tree; the only required key."""
    val_dir: Path | None = None
    """None: hold out a stratified ``val_split`` of train_dir."""
    test_dir: Path | None = None
    """None: no test evaluation; otherwise evaluated once at the end."""
    val_split: float = field(default=0.2, metadata={"low": 0.0, "high": 0.9})
    """Fraction of each class held out for validation when val_dir is None."""
    image_size: tuple[int, int] = field(default=(64, 64), metadata={"low": 8, "high": 1024})
    """(height, width) in pixels: small enough for CPU runs, large enough for shapes."""
    color_mode: Literal["rgb", "grayscale"] = "rgb"
    """rgb or grayscale: the number of input channels."""
    on_bad_image: Literal["skip", "fail"] = "skip"
    """skip: warn, count and list unreadable files; fail: stop with the file's name."""
    cache: Literal["auto", "memory", "disk", "none"] = "auto"
    """auto: decoded images in memory when they fit under cache_memory_mb, else on disk."""
    cache_dir: Path | None = None
    """Where the disk cache lives; None: $TMPDIR/trainjob-cache, on the worker's own disk."""
    cache_memory_mb: int = field(default=2048, metadata={"low": 0})
    """MiB of decoded uint8 pixels kept in memory before the cache moves to disk."""
    decode_workers: int = field(default=0, metadata={"low": 0, "high": 256})
    """Decoder threads; 0: one per CPU core available to this worker."""
    max_image_pixels: int = field(default=40_000_000, metadata={"low": 0})
    """Most pixels (width x height) an image may declare, after JPEG draft scaling; larger
    ones are bad images, refused from their header. Each decoder thread holds one image at
    a time: at 40 MP that peaks at 0.2 GB (RGB), 0.5 GB (RGBA), 0.8 GB (16-bit grayscale),
    where a 0.7 MB PNG declaring 13000x13000 took 2.1 GB. It still lets in an 8K frame
    (33 MP), an A4 page at 600 dpi (35 MP) and any JPEG photo (a 48 MP one is drafted to
    1/8 before the check). 0: no limit of ours (Pillow's own refuses over 179 MP)."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of every decoded image and of the model's input."""
        height, width = self.image_size
        return (height, width, 3 if self.color_mode == "rgb" else 1)


@dataclass(frozen=True)
class ModelSpec:
    backbone: Literal["small_cnn", "vgg16", "resnet50", "mobilenet_v2",
                      "efficientnet_b0"] = "small_cnn"
    """small_cnn trains from scratch in minutes on a CPU; the others are keras.applications."""
    weights: Path | Literal["imagenet"] | None = None
    """None: random init; imagenet: Keras's ImageNet notop file for the backbone, found by
    job.weights; or a local weights file (notop, or full-model weights)."""
    weights_dir: Path | None = None
    """A folder of notop files (``trainjob weights fetch --to``), searched after KERAS_HOME;
    on the cluster, a folder on the data volume. None: KERAS_HOME only."""
    allow_download: bool | Literal["auto"] = "auto"
    """auto: imagenet weights missing here are downloaded, but render writes false for the
    pods, so eight workers never fetch one file at once; true or false forces it."""
    dropout: float = field(default=0.2, metadata={"low": 0.0, "high": 0.9})
    """Dropout before the classifier head: a mild regulariser that rarely hurts."""
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    """Augmentation; by default only a horizontal flip (see AugmentSpec)."""
    fine_tune: FineTuneSpec | None = None
    """None: every layer trains from the first step. Off by default: it needs pretrained
    weights worth keeping (job.spec_fine_tune, where its keys and checks are)."""
    fine_tune: FineTuneSpec | None = None
    """None: every layer trains from the first step. Off by default: it needs pretrained
    weights (model.weights) worth keeping, which a backbone trained from scratch has not."""


BACKBONES: tuple[str, ...] = get_args(get_type_hints(ModelSpec)["backbone"])
"""The model.backbone choices, read from ModelSpec's annotation; job.model builds each."""
IMAGENET = "imagenet"
"""model.weights for Keras's ImageNet weights of the backbone (job.weights finds the file)."""


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """Stop training when a validation figure stops improving, as Keras's EarlyStopping."""

    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    """val_loss, as Keras: it keeps showing progress after accuracy has levelled off."""
    patience: int = field(default=3, metadata={"low": 1, "high": 100_000})
    """Epochs in a row without improvement before stopping: 3 rides out a noisy epoch."""
    min_delta: float = field(default=0.0, metadata={"low": 0.0, "high": 1e9})
    """The least change that counts as an improvement; 0: any."""


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = field(default=10, metadata={"low": 1, "high": 100_000})
    """Passes over the training set."""
    global_batch_size: int = field(default=64, metadata={"low": 1, "high": 65536})
    """Images per step across all replicas; must divide evenly by the replica count."""
    optimizer: Literal["adam", "sgd", "adamw", "rmsprop"] = "adam"
    """adam converges without tuning on most image tasks."""
    learning_rate: float = field(default=0.001, metadata={"low": 0.0, "high": 10.0,
                                                          "exclusive_low": True})
    """The Keras default for Adam."""
    seed: int = field(default=1234, metadata={"low": 0, "high": 2**31 - 1})
    """Seeds the split, shuffling, augmentation and weight init."""
    mixed_precision: bool | Literal["auto"] = "auto"
    """auto: 16-bit math where the hardware has it natively (job.precision: bfloat16 on 8.0+
    GPUs and AVX512_BF16/AMX CPUs, float16 on one 7.x GPU), else float32. true forces it,
    false is off."""
    log_every_steps: int = field(default=20, metadata={"low": 1})
    """Steps between progress lines when stdout is not a terminal."""
    collective_timeout_seconds: int = field(default=300, metadata={"low": 5, "high": 86400})
    """Seconds a worker waits on a lost peer before exiting retryably, instead of hanging."""
    steps_per_call: int = field(default=8, metadata={"low": 1, "high": 1000})
    """Steps run inside one tf.function call: fewer Python round trips per step. SIGTERM
    and progress lines are handled between calls, so keep it small."""
    early_stopping: EarlyStoppingSpec | None = None
    """None: train every epoch. Off by default: a fixed number of epochs is what a user
    asked for, and stopping early is a choice to make knowingly."""


@dataclass(frozen=True)
class OutputSpec:
    dir: Path = Path("models")
    """Runs go in <dir>/<run-id>/; on the cluster this is the shared models volume. Relative
    to the spec file's folder, like every path of the spec."""
    checkpoint_every_steps: int = field(default=200, metadata={"low": 1})
    """Steps between checkpoints: the most work a crash can lose."""
    keep_checkpoints: int = field(default=3, metadata={"low": 1, "high": 1000})
    """Checkpoints kept on disk; older ones are deleted."""
    export_model: Literal["best", "last"] = "best"
    """best: the epoch with the highest val_accuracy (ties: the lower val_loss), the model a
    user would pick by hand; its figures are the best of several, so the test split is the
    unbiased one. last: the final epoch's weights."""
    formats: tuple[Literal["h5", "keras", "saved_model", "litert", "onnx"], ...] = field(
        default=("h5", "keras"), metadata={"includes": ("h5",), "why": "predict, pull and "
                                           "reruns read model.h5"})
    """Model files the chief writes and checks against the trained model (job.export_check):
    model.h5, and Keras 3's own model.keras, which costs about a second and as many bytes
    again on the demo; saved_model, litert and onnx on request (they need the export extra)."""
    export_check: Literal["fail", "warn"] = "fail"
    """fail: a format that predicts differently from the trained model fails the run (exit 1),
    never a silently wrong file; warn: one warning line, and the file stays."""


@dataclass(frozen=True)
class VolumeSpec:
    claim: str
    """Name of an existing PersistentVolumeClaim."""
    mount: str
    """Absolute mount path inside the pod."""
    read_only: bool = False
    """Writable unless asked: the chief writes to the models volume; set true for data."""


@dataclass(frozen=True)
class ClusterSpec:
    """Used only by render and submit."""

    workers: int = field(default=1, metadata={"low": 1, "high": 1024})
    """Pods in the Indexed Job; each is one worker of the training cluster."""
    image: str | None = None
    """Container image; --image overrides; required to render."""
    namespace: str | None = None
    """None: the namespace rule's next steps, the kubeconfig context's namespace, else
    trainjob, the one k8s/ creates (job.submit.namespace); -n overrides it."""
    gpus_per_worker: int = field(default=0, metadata={"low": 0, "high": 64})
    """nvidia.com/gpu limit per pod; 0 = CPU-only."""
    cpu: str = "1"
    """CPU request and limit per pod, a Kubernetes quantity."""
    memory: str = "4Gi"
    """Memory request and limit per pod, a Kubernetes quantity."""
    shm_size: str | None = "1Gi"
    """Size limit of /dev/shm, which is memory-backed and counts against memory: NCCL's
    buffers between a pod's GPUs need more than the runtime's 64 MiB, and 1Gi is ample while a
    runaway writer cannot take the memory limit unseen. None: up to the memory limit."""
    tmp_size: str | None = "20Gi"
    """Size limit of /tmp (HOME, Keras's downloads, and the disk decode cache when
    data.cache_dir is null): a full /tmp evicts this pod alone rather than filling the node's
    disk under other pods; it holds a decoded shard of ~19 GiB. None: no limit."""
    models_volume: VolumeSpec | None = None
    """PVC for output.dir; None: an emptyDir, and the model is lost with the pod."""
    data_volume: VolumeSpec | None = None
    """PVC holding the images; relative data paths resolve against its mount."""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    """Node labels the pods require; empty: any node."""
    tolerations: tuple[Mapping[str, Any], ...] = ()
    """Taints the pods tolerate; empty: none."""
    affinity: Mapping[str, Any] = field(default_factory=dict)
    """The pods' affinity as Kubernetes writes it (nodeAffinity, podAffinity,
    podAntiAffinity); empty: none."""
    priority_class: str | None = None
    """PriorityClass of the pods (it must exist); None: the cluster's default priority."""
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels on the pods (team, cost centre, network policies); empty: trainjob's only."""
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    """Extra annotations on the pods (a service mesh's opt-out, say); empty: trainjob's only."""
    queue: str | None = None
    """Kueue LocalQueue name, rendered as the kueue.x-k8s.io/queue-name label."""
    max_restarts: int = field(default=3, metadata={"low": 0, "high": 100})
    """Group restarts on retryable failures (the Job's backoffLimit)."""
    active_deadline_seconds: int | None = field(default=None, metadata={"low": 1})
    """Wall-clock limit for the whole Job; None: no limit."""
    ttl_seconds_after_finished: int | None = field(default=86400, metadata={"low": 0})
    """Seconds before Kubernetes deletes a finished Job: one day to read its logs. An
    explicit null keeps finished Jobs forever."""
    service_account: str | None = None
    """None: the namespace's default ServiceAccount (no API token is mounted either way)."""
    port: int = field(default=2222, metadata={"low": 1, "high": 65535})
    """TCP port workers use for collectives, the TensorFlow convention."""


@dataclass(frozen=True)
class Spec:
    name: str
    data: DataSpec
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    base_dir: Path = field(default=Path("."), compare=False)
    """Folder the relative paths were resolved against (the spec file's folder)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe dict of the resolved spec (paths as strings, tuples as lists)."""
        return _plain({key: getattr(self, key) for key in _TOP_LEVEL_KEYS})


_TOP_LEVEL_KEYS = tuple(f.name for f in dataclasses.fields(Spec) if f.name != "base_dir")
"""The top-level keys of a spec file: every field of Spec but base_dir, which is not read."""


def load(path: str | Path, *, overrides: Sequence[str] = ()) -> Spec:
    """Read, validate and resolve a spec file, with ``--set KEY=VALUE`` overrides applied.

    Overrides are placed into the parsed file before any check, so they are checked
    exactly like the file's own keys.

    Raises:
        SpecError: naming the file or key, what was wrong, and how to fix it.
    """
    path = Path(path)
    data = overrides_module.apply(spec_yaml.read(path), overrides, known=known_keys())
    return from_dict(data, base_dir=path.resolve().parent, source=str(path))


@functools.cache
def known_keys() -> tuple[str, ...]:
    """Every dotted key a spec may have, e.g. ``train.epochs``, ``model.augment.flip``."""
    return tuple(_keys(Spec, prefix=""))


def _keys(cls: type, *, prefix: str) -> list[str]:
    found = []
    for name, hint in get_type_hints(cls).items():
        if name == "base_dir":
            continue
        nested = [t for t in (hint, *get_args(hint)) if dataclasses.is_dataclass(t)]
        found.append(prefix + name)
        if nested:
            found.extend(_keys(nested[0], prefix=f"{prefix}{name}."))
    return found


def from_dict(data: Any, *, base_dir: Path, source: str = "spec") -> Spec:
    """Validate a parsed spec mapping and build the dataclasses.

    Example:
        >>> from_dict({"name": "x", "data": {"train_dir": "d"}}, base_dir=Path("/s")).data.train_dir
        PosixPath('/s/d')
    """
    reader = Reader(source=source, base_dir=Path(base_dir), known=known_keys())
    if data is None:
        raise SpecError(f"{source}: the spec is empty; start from examples/shapes.yaml.")
    root = reader.mapping(data, "", allowed=_TOP_LEVEL_KEYS)
    name = reader.string(root, "name", required=True)
    if not names.is_dns_label(name, max_length=NAME_MAX_LENGTH):
        reader.fail("name", name, f"a DNS-1123 label: lowercase letters, digits and '-', "
                    f"starting and ending with a letter or digit, at most {NAME_MAX_LENGTH} "
                    "characters", "e.g. 'shapes-v2'")
    spec = Spec(
        name=name,
        data=_data(reader, reader.section(root, "data", required=True)),
        model=_model(reader, reader.section(root, "model")),
        train=reader.build(TrainSpec, reader.section(root, "train"), "train",
                           readers={"early_stopping": _early_stopping}),
        output=reader.build(OutputSpec, reader.section(root, "output"), "output"),
        cluster=_cluster(reader, reader.section(root, "cluster")),
        base_dir=Path(base_dir),
    )
    _cross_checks(reader, spec)
    return spec


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _data(r: Reader, d: dict) -> DataSpec:
    r.allowed(d, "data", DataSpec)
    return r.build(DataSpec, d, "data", given={"image_size": _image_size(r, d)})


def _image_size(r: Reader, d: dict) -> tuple[int, int]:
    size_field = _field(DataSpec, "image_size")
    low, high = size_field.metadata["low"], size_field.metadata["high"]
    size = d.get("image_size", list(size_field.default))
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
            or not all(low <= v <= high for v in size)):
        r.fail("data.image_size", size, f"[height, width], two integers from {low} to {high}",
               f"e.g. {list(size_field.default)}")
    return (size[0], size[1])


def _model(r: Reader, d: dict) -> ModelSpec:
    r.allowed(d, "model", ModelSpec)
    augment = r.section(d, "augment", path="model.augment")
    r.allowed(augment, "model.augment", AugmentSpec)
    if "flip" in augment and (augment["flip"] is None or augment["flip"] is False):
        d = dict(d, augment=dict(augment, flip="none"))  # `flip: null` or `flip: no`
    imagenet = isinstance(d.get("weights"), str) and d["weights"].strip().lower() == IMAGENET
    if imagenet and d.get("backbone") in (None, "small_cnn"):
        r.fail("model.weights", d["weights"], "null or a weights file with backbone "
               "small_cnn (ImageNet weights exist for the keras.applications backbones)",
               "set model.backbone to " + ", ".join(b for b in BACKBONES if b != "small_cnn"))
    weights = IMAGENET if imagenet else r.path(d, "model.weights")
    return r.build(ModelSpec, d, "model", given={"weights": weights},
                   readers={"fine_tune": spec_fine_tune.read})


def _cluster(r: Reader, d: dict) -> ClusterSpec:
    r.allowed(d, "cluster", ClusterSpec)
    checked = {"namespace": _named(r, d, "namespace"),
               "cpu": _quantity(r, d, "cpu"), "memory": _quantity(r, d, "memory"),
               "queue": _named(r, d, "queue"),
               "service_account": _named(r, d, "service_account"),
               "priority_class": _named(r, d, "priority_class"),
               **{name: spec_cluster.size(r, d, f"cluster.{name}",
                                          default=_field(ClusterSpec, name).default)
                  for name in ("shm_size", "tmp_size")}}
    return r.build(ClusterSpec, d, "cluster", given=checked, readers={
        "models_volume": _volume, "data_volume": _volume,
        "node_selector": spec_cluster.node_selector, "tolerations": spec_cluster.tolerations,
        "affinity": spec_cluster.affinity, "pod_labels": spec_cluster.pod_labels,
        "pod_annotations": spec_cluster.pod_annotations})


_NAME_RULES = {
    "namespace": (names.is_dns_label, "a DNS-1123 label", "e.g. 'ml-team'"),
    "queue": (names.is_dns_label, "a Kueue LocalQueue name (a DNS-1123 label, at most 63 "
              "characters: it is also a label value)", "e.g. 'team-a'"),
    "service_account": (names.is_dns_subdomain, "a ServiceAccount name (a lowercase "
                        "DNS-1123 subdomain)", "e.g. 'trainer'"),
    "priority_class": (names.is_dns_subdomain, "a PriorityClass name (a lowercase DNS-1123 "
                       "subdomain)", "e.g. 'training-low'"),
}
"""cluster keys that name Kubernetes objects: the rule, what it expects, an example."""


def _named(r: Reader, d: dict, name: str) -> str | None:
    value = r.read(ClusterSpec, name, d, "cluster")
    rule, expected, example = _NAME_RULES[name]
    if value is not None and not rule(value):
        r.fail(f"cluster.{name}", value, expected, example)
    return value


def _quantity(r: Reader, d: dict, name: str) -> str:
    raw = d.get(name, _field(ClusterSpec, name).default)
    text = str(raw) if isinstance(raw, (int, float, str)) and not isinstance(raw, bool) \
        else None
    if text is None or not _QUANTITY.fullmatch(text):
        r.fail(f"cluster.{name}", raw, "a Kubernetes quantity", "e.g. cpu: \"4\", "
               "memory: 16Gi")
    return text


def _early_stopping(r: Reader, d: dict, key: str) -> EarlyStoppingSpec | None:
    value = d.get("early_stopping")
    if value is None:
        return None
    return r.build(EarlyStoppingSpec, r.allowed(value, key, EarlyStoppingSpec), key)


def _volume(r: Reader, d: dict, key: str) -> VolumeSpec | None:
    value = d.get(key.rsplit(".", 1)[-1])
    if value is None:
        return None
    v = r.allowed(value, key, VolumeSpec)
    claim = r.read(VolumeSpec, "claim", v, key)
    if not names.is_dns_subdomain(claim):
        r.fail(f"{key}.claim", claim, "a PersistentVolumeClaim name (a lowercase DNS-1123 "
               "subdomain)",
               "e.g. 'trainjob-models'")
    mount = r.read(VolumeSpec, "mount", v, key)
    if not mount.startswith("/"):
        r.fail(f"{key}.mount", mount, "an absolute path inside the pod", "e.g. '/models'")
    return VolumeSpec(claim=claim, mount=mount.rstrip("/") or "/",
                      read_only=r.read(VolumeSpec, "read_only", v, key))


def _cross_checks(r: Reader, spec: Spec) -> None:
    check_worker_count(spec, spec.cluster.workers, unit="cluster.workers", source=r.source)
    spec_cluster.check_shm_size(r, shm_size=spec.cluster.shm_size, memory=spec.cluster.memory)
    spec_fine_tune.check(r, spec.model.fine_tune, backbone=spec.model.backbone,
                         weights=spec.model.weights, epochs=spec.train.epochs)
    if spec.data.val_dir is None and spec.data.val_split <= 0:
        r.fail("data.val_split", spec.data.val_split,
               "a fraction above 0 when data.val_dir is null (validation runs every epoch)",
               "set data.val_split: 0.2 or give data.val_dir")


def check_worker_count(spec: Spec, workers: int, *, unit: str = "workers",
                       source: str | None = None) -> None:
    """The one batch-divisibility rule: the global batch splits evenly over ``workers``.

    Checked when the spec loads (``unit="cluster.workers"``), and again at run time, when
    the worker count (``trainjob local --workers`` may differ) and, once the strategy
    exists, the replica count (``unit="replicas"``) are known.

    Raises:
        SpecError: naming the key, the count, why, and the nearest multiple to use;
            prefixed with ``source`` (the spec file) when given.

    Example:
        >>> spec = Spec(name="x", data=DataSpec(train_dir=Path("d")))  # a batch of 64
        >>> check_worker_count(spec, 3)   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        job.errors.SpecError: train.global_batch_size=64 is invalid: ... workers=3 ...; use 63.
    """
    batch = spec.train.global_batch_size
    if batch % workers:
        where = f"{source}: " if source else ""
        nearest = max(workers, batch // workers * workers)
        raise SpecError(f"{where}train.global_batch_size={batch} is invalid: expected a "
                        f"multiple of {unit}={workers} (the batch is split across "
                        f"{unit.rsplit('.', 1)[-1]}); use {nearest}.")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
