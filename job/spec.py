"""The run spec: frozen dataclasses, loaded from YAML and checked in one place.

Owns: the spec's keys, their defaults (each with its reason), type and range
checks (numbers finite; node selectors and tolerations by Kubernetes' own rules),
unknown-key rejection, cross-field checks, and path resolution (relative paths
resolve against the spec file's folder). Reading the file safely and the YAML
dialect are ``job.spec_yaml``'s; name rules and the run-id check are ``job.names``'.
Never touches: TensorFlow, Pillow, kubernetes. Everything after ``load`` trusts
the dataclasses.

Example:
    >>> spec = load("examples/shapes.yaml")   # doctest: +SKIP
    >>> spec.train.global_batch_size
    64
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job import names, spec_yaml
from job.errors import SpecError
from job.spec_yaml import Reader

BACKBONES = ("small_cnn", "vgg16", "resnet50", "mobilenet_v2", "efficientnet_b0")
OPTIMIZERS = ("adam", "sgd", "adamw", "rmsprop")
COLOR_MODES = ("rgb", "grayscale")
BAD_IMAGE_POLICIES = ("skip", "fail")
FLIP_MODES = ("none", "horizontal", "vertical", "horizontal_and_vertical")
CACHE_MODES = ("auto", "memory", "disk", "none")
TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
TOLERATION_FIELDS = ("key", "operator", "value", "effect", "tolerationSeconds")

_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?")
NAME_MAX_LENGTH = 40
"""Characters: leaves room for '-<run suffix>-<index>' inside a 63-char DNS label."""


@dataclass(frozen=True)
class AugmentSpec:
    """Training-time augmentation, run as Keras layers on the accelerator."""

    flip: str = "horizontal"
    """One of FLIP_MODES; horizontal because most photos are left-right symmetric."""
    rotation: float = 0.0
    """Fraction of a full turn (0.1 = up to ±36°); off by default, it slows small runs."""
    zoom: float = 0.0
    """Fraction of the image size to zoom in or out; off by default."""
    contrast: float = 0.0
    """Contrast jitter factor; off by default."""


@dataclass(frozen=True)
class DataSpec:
    train_dir: Path
    """Class-per-subfolder image tree; the only required key."""
    val_dir: Path | None = None
    """None: hold out a stratified ``val_split`` of train_dir."""
    test_dir: Path | None = None
    """None: no test evaluation; otherwise evaluated once at the end."""
    val_split: float = 0.2
    """Fraction of each class held out for validation when val_dir is None."""
    image_size: tuple[int, int] = (64, 64)
    """(height, width) in pixels: small enough for CPU runs, large enough for shapes."""
    color_mode: str = "rgb"
    """rgb or grayscale: the number of input channels."""
    on_bad_image: str = "skip"
    """skip: warn, count and list unreadable files; fail: stop with the file's name."""
    cache: str = "auto"
    """auto: decoded images in memory when they fit under cache_memory_mb, else on disk."""
    cache_dir: Path | None = None
    """Where the disk cache lives; None: $TMPDIR/trainjob-cache, on the worker's own disk."""
    cache_memory_mb: int = 2048
    """MiB of decoded uint8 pixels kept in memory before the cache moves to disk."""
    decode_workers: int = 0
    """Decoder threads; 0: one per CPU core available to this worker."""
    max_image_pixels: int = 40_000_000
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
    backbone: str = "small_cnn"
    """small_cnn trains from scratch in minutes on a CPU; the others are keras.applications."""
    weights: Path | None = None
    """None: random init; or a local weights file (there is no download at runtime)."""
    dropout: float = 0.2
    """Dropout before the classifier head: a mild regulariser that rarely hurts."""
    augment: AugmentSpec = field(default_factory=AugmentSpec)


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 10
    """Passes over the training set."""
    global_batch_size: int = 64
    """Images per step across all replicas; must divide evenly by the replica count."""
    optimizer: str = "adam"
    """adam converges without tuning on most image tasks."""
    learning_rate: float = 0.001
    """The Keras default for Adam."""
    seed: int = 1234
    """Seeds the split, shuffling, augmentation and weight init."""
    mixed_precision: bool | str = "auto"
    """auto: 16-bit math where the hardware has it natively (job.precision: bfloat16 on 8.0+
    GPUs and AVX512_BF16/AMX CPUs, float16 on one 7.x GPU), else float32. true forces it,
    false is off."""
    log_every_steps: int = 20
    """Steps between progress lines when stdout is not a terminal."""
    collective_timeout_seconds: int = 300
    """Seconds a worker waits on a lost peer before exiting retryably, instead of hanging."""
    steps_per_call: int = 8
    """Steps run inside one tf.function call: fewer Python round trips per step. SIGTERM
    and progress lines are handled between calls, so keep it small."""


@dataclass(frozen=True)
class OutputSpec:
    dir: Path = Path("models")
    """Runs go in <dir>/<run-id>/; on the cluster this is the shared models volume."""
    checkpoint_every_steps: int = 200
    """Steps between checkpoints: the most work a crash can lose."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk; older ones are deleted."""


@dataclass(frozen=True)
class VolumeSpec:
    claim: str
    """Name of an existing PersistentVolumeClaim."""
    mount: str
    """Absolute mount path inside the pod."""
    read_only: bool = False


@dataclass(frozen=True)
class ClusterSpec:
    """Used only by render and submit."""

    workers: int = 1
    """Pods in the Indexed Job; each is one worker of the training cluster."""
    image: str | None = None
    """Container image; --image overrides; required to render."""
    namespace: str = "default"
    gpus_per_worker: int = 0
    """nvidia.com/gpu limit per pod; 0 = CPU-only."""
    cpu: str = "1"
    """CPU request and limit per pod, a Kubernetes quantity."""
    memory: str = "4Gi"
    """Memory request and limit per pod, a Kubernetes quantity."""
    models_volume: VolumeSpec | None = None
    """PVC for output.dir; None: an emptyDir, and the model is lost with the pod."""
    data_volume: VolumeSpec | None = None
    """PVC holding the images; relative data paths resolve against its mount."""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    queue: str | None = None
    """Kueue LocalQueue name, rendered as the kueue.x-k8s.io/queue-name label."""
    max_restarts: int = 3
    """Group restarts on retryable failures (the Job's backoffLimit)."""
    active_deadline_seconds: int | None = None
    """Wall-clock limit for the whole Job; None: no limit."""
    ttl_seconds_after_finished: int | None = 86400
    """Seconds before Kubernetes deletes a finished Job: one day to read its logs."""
    service_account: str | None = None
    port: int = 2222
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
        return _plain({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                       if f.name != "base_dir"})


def load(path: str | Path) -> Spec:
    """Read, validate and resolve a spec file.

    Raises:
        SpecError: naming the file or key, what was wrong, and how to fix it.
    """
    path = Path(path)
    data = spec_yaml.read(path)
    return from_dict(data, base_dir=path.resolve().parent, source=str(path))


def from_dict(data: Any, *, base_dir: Path, source: str = "spec") -> Spec:
    """Validate a parsed spec mapping and build the dataclasses.

    Example:
        >>> from_dict({"name": "x", "data": {"train_dir": "d"}}, base_dir=Path("/s")).data.train_dir
        PosixPath('/s/d')
    """
    reader = Reader(source=source, base_dir=Path(base_dir))
    if data is None:
        raise SpecError(f"{source}: the spec is empty; start from examples/shapes.yaml.")
    root = reader.mapping(data, "", allowed=("name", "data", "model", "train", "output",
                                            "cluster"))
    name = reader.string(root, "name", required=True)
    if not names.is_dns_label(name, max_length=NAME_MAX_LENGTH):
        reader.fail("name", name, f"a DNS-1123 label: lowercase letters, digits and '-', "
                    f"starting and ending with a letter or digit, at most {NAME_MAX_LENGTH} "
                    "characters", "e.g. 'shapes-v2'")
    spec = Spec(
        name=name,
        data=_data(reader, reader.section(root, "data", required=True)),
        model=_model(reader, reader.section(root, "model")),
        train=_train(reader, reader.section(root, "train")),
        output=_output(reader, reader.section(root, "output")),
        cluster=_cluster(reader, reader.section(root, "cluster")),
        base_dir=Path(base_dir),
    )
    _cross_checks(reader, spec)
    return spec


def _data(r: Reader, d: dict) -> DataSpec:
    r.allowed(d, "data", DataSpec)
    size = d.get("image_size", [64, 64])
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
            or not all(8 <= v <= 1024 for v in size)):
        r.fail("data.image_size", size, "[height, width], two integers from 8 to 1024",
               "e.g. [64, 64]")
    return DataSpec(
        train_dir=r.path(d, "data.train_dir", required=True),
        val_dir=r.path(d, "data.val_dir"),
        test_dir=r.path(d, "data.test_dir"),
        val_split=r.number(d, "data.val_split", 0.2, low=0.0, high=0.9),
        image_size=(size[0], size[1]),
        color_mode=r.choice(d, "data.color_mode", COLOR_MODES, "rgb"),
        on_bad_image=r.choice(d, "data.on_bad_image", BAD_IMAGE_POLICIES, "skip"),
        cache=r.choice(d, "data.cache", CACHE_MODES, "auto"),
        cache_dir=r.path(d, "data.cache_dir"),
        cache_memory_mb=r.integer(d, "data.cache_memory_mb", 2048, low=0),
        decode_workers=r.integer(d, "data.decode_workers", 0, low=0, high=256),
        max_image_pixels=r.integer(d, "data.max_image_pixels", 40_000_000, low=0),
    )


def _model(r: Reader, d: dict) -> ModelSpec:
    r.allowed(d, "model", ModelSpec)
    weights = d.get("weights")
    if isinstance(weights, str) and weights.strip().lower() == "imagenet":
        r.fail("model.weights", weights, "null or a path to a local weights file "
               "(there is no internet at runtime, so 'imagenet' cannot be downloaded)",
               "download the .h5/.weights.h5 file once, put it on the data volume and "
               "give its path")
    augment = r.section(d, "augment", path="model.augment")
    r.allowed(augment, "model.augment", AugmentSpec)
    flip = augment.get("flip", "horizontal")
    if flip is None or flip is False:
        flip = "none"
    augment = dict(augment, flip=flip)
    return ModelSpec(
        backbone=r.choice(d, "model.backbone", BACKBONES, "small_cnn"),
        weights=r.path(d, "model.weights"),
        dropout=r.number(d, "model.dropout", 0.2, low=0.0, high=0.9),
        augment=AugmentSpec(
            flip=r.choice(augment, "model.augment.flip", FLIP_MODES, "horizontal"),
            rotation=r.number(augment, "model.augment.rotation", 0.0, low=0.0, high=0.5),
            zoom=r.number(augment, "model.augment.zoom", 0.0, low=0.0, high=0.9),
            contrast=r.number(augment, "model.augment.contrast", 0.0, low=0.0, high=0.9),
        ),
    )


def _train(r: Reader, d: dict) -> TrainSpec:
    r.allowed(d, "train", TrainSpec)
    return TrainSpec(
        epochs=r.integer(d, "train.epochs", 10, low=1, high=100_000),
        global_batch_size=r.integer(d, "train.global_batch_size", 64, low=1, high=65536),
        optimizer=r.choice(d, "train.optimizer", OPTIMIZERS, "adam"),
        learning_rate=r.number(d, "train.learning_rate", 0.001, low=0.0, high=10.0,
                               exclusive_low=True),
        seed=r.integer(d, "train.seed", 1234, low=0, high=2**31 - 1),
        mixed_precision=r.boolean_or_auto(d, "train.mixed_precision", "auto"),
        log_every_steps=r.integer(d, "train.log_every_steps", 20, low=1),
        collective_timeout_seconds=r.integer(d, "train.collective_timeout_seconds", 300,
                                             low=5, high=86400),
        steps_per_call=r.integer(d, "train.steps_per_call", 8, low=1, high=1000),
    )


def _output(r: Reader, d: dict) -> OutputSpec:
    r.allowed(d, "output", OutputSpec)
    return OutputSpec(
        dir=r.path(d, "output.dir") or r.base_dir / "models",
        checkpoint_every_steps=r.integer(d, "output.checkpoint_every_steps", 200, low=1),
        keep_checkpoints=r.integer(d, "output.keep_checkpoints", 3, low=1, high=1000),
    )


def _volume(r: Reader, d: dict, key: str) -> VolumeSpec | None:
    value = d.get(key.rsplit(".", 1)[-1])
    if value is None:
        return None
    v = r.mapping(value, key, allowed=("claim", "mount", "read_only"))
    claim = r.string(v, f"{key}.claim", required=True)
    if not names.is_dns_subdomain(claim):
        r.fail(f"{key}.claim", claim, "a PersistentVolumeClaim name (a lowercase DNS-1123 "
               "subdomain)",
               "e.g. 'trainjob-models'")
    mount = r.string(v, f"{key}.mount", required=True)
    if not mount.startswith("/"):
        r.fail(f"{key}.mount", mount, "an absolute path inside the pod", "e.g. '/models'")
    return VolumeSpec(claim=claim, mount=mount.rstrip("/") or "/",
                      read_only=r.boolean(v, f"{key}.read_only", False))


def _cluster(r: Reader, d: dict) -> ClusterSpec:
    r.allowed(d, "cluster", ClusterSpec)
    namespace = r.string(d, "cluster.namespace") or "default"
    if not names.is_dns_label(namespace):
        r.fail("cluster.namespace", namespace, "a DNS-1123 label", "e.g. 'ml-team'")
    quantities = {}
    for key, default in (("cpu", "1"), ("memory", "4Gi")):
        raw = d.get(key, default)
        text = str(raw) if isinstance(raw, (int, float, str)) and not isinstance(raw, bool) \
            else None
        if text is None or not _QUANTITY.fullmatch(text):
            r.fail(f"cluster.{key}", raw, "a Kubernetes quantity", "e.g. cpu: \"4\", "
                   "memory: 16Gi")
        quantities[key] = text
    queue = r.string(d, "cluster.queue")
    if queue is not None and not names.is_dns_label(queue):
        r.fail("cluster.queue", queue, "a Kueue LocalQueue name (a DNS-1123 label, at most 63 "
               "characters: it is also a label value)",
               "e.g. 'team-a'")
    account = r.string(d, "cluster.service_account")
    if account is not None and not names.is_dns_subdomain(account):
        r.fail("cluster.service_account", account, "a ServiceAccount name (a lowercase DNS-1123 "
               "subdomain)", "e.g. 'trainer'")
    return ClusterSpec(
        workers=r.integer(d, "cluster.workers", 1, low=1, high=1024),
        image=r.string(d, "cluster.image"),
        namespace=namespace,
        gpus_per_worker=r.integer(d, "cluster.gpus_per_worker", 0, low=0, high=64),
        cpu=quantities["cpu"],
        memory=quantities["memory"],
        models_volume=_volume(r, d, "cluster.models_volume"),
        data_volume=_volume(r, d, "cluster.data_volume"),
        node_selector=_node_selector(r, d.get("node_selector")),
        tolerations=_tolerations(r, d.get("tolerations")),
        queue=queue,
        max_restarts=r.integer(d, "cluster.max_restarts", 3, low=0, high=100),
        active_deadline_seconds=r.integer(d, "cluster.active_deadline_seconds", None, low=1),
        # An explicit null keeps finished Jobs forever; a missing key means one day.
        ttl_seconds_after_finished=(
            None if "ttl_seconds_after_finished" in d and d["ttl_seconds_after_finished"] is None
            else r.integer(d, "cluster.ttl_seconds_after_finished", 86400, low=0)),
        service_account=account,
        port=r.integer(d, "cluster.port", 2222, low=1, high=65535),
    )


def _node_selector(r: Reader, selector: Any) -> dict[str, str]:
    """Node labels by Kubernetes' rules; a bad pair is shown whole, so both parts are seen."""
    selector = {} if selector is None else selector
    if not isinstance(selector, dict):
        r.fail("cluster.node_selector", selector, "a mapping of node label to value",
               "e.g. {gpu: \"true\"}")
    for label, value in selector.items():
        if not names.is_label_key(label):
            r.fail("cluster.node_selector", {label: value}, names.LABEL_KEY_RULE,
                   "e.g. {kubernetes.io/arch: amd64}")
        if not names.is_label_value(value):
            r.fail("cluster.node_selector", {label: value}, names.LABEL_VALUE_RULE,
                   "quote numbers and booleans, e.g. {gpu: \"true\"}")
    return dict(selector)


def _tolerations(r: Reader, tolerations: Any) -> tuple[dict[str, Any], ...]:
    """Tolerations by Kubernetes' rules; fields set to null are dropped (null means unset)."""
    tolerations = [] if tolerations is None else tolerations
    if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
        r.fail("cluster.tolerations", tolerations, "a list of Kubernetes toleration mappings",
               "e.g. [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]")
    checked = []
    for i, toleration in enumerate(tolerations):
        r.mapping(toleration, f"cluster.tolerations[{i}]", allowed=TOLERATION_FIELDS)
        given = {k: v for k, v in toleration.items() if v is not None}
        _toleration(r, given, f"cluster.tolerations[{i}]")
        checked.append(given)
    return tuple(checked)


def _toleration(r: Reader, t: dict[str, Any], at: str) -> None:
    key, operator = t.get("key", ""), t.get("operator", "Equal")
    value, effect = t.get("value", ""), t.get("effect", "")
    if key != "" and not names.is_label_key(key):
        r.fail(f"{at}.key", key, "empty or " + names.LABEL_KEY_RULE, "e.g. nvidia.com/gpu")
    if operator not in TOLERATION_OPERATORS:
        r.fail(f"{at}.operator", operator, "Exists or Equal (the default)", "pick one of those")
    if key == "" and operator != "Exists":
        r.fail(f"{at}.operator", operator, "Exists when key is empty (which tolerates every "
               "taint)", "give a key, or set operator: Exists")
    if operator == "Exists" and value != "":
        r.fail(f"{at}.value", value, "no value with operator Exists (it matches any value)",
               "remove value, or set operator: Equal")
    if not names.is_label_value(value):
        r.fail(f"{at}.value", value, names.LABEL_VALUE_RULE, "quote numbers and booleans")
    if effect not in ("", *TOLERATION_EFFECTS):
        r.fail(f"{at}.effect", effect, "empty (every effect) or one of "
               + ", ".join(TOLERATION_EFFECTS), "pick one of those")
    if "tolerationSeconds" in t:
        seconds = t["tolerationSeconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, int) \
                or not -2**63 <= seconds < 2**63:
            r.fail(f"{at}.tolerationSeconds", seconds, "an integer number of seconds",
                   "write it without quotes, e.g. 300")
        if effect != "NoExecute":
            r.fail(f"{at}.tolerationSeconds", seconds, "tolerationSeconds only with effect: "
                   "NoExecute (seconds before eviction)", "set effect: NoExecute, or remove it")


def _cross_checks(r: Reader, spec: Spec) -> None:
    workers = spec.cluster.workers
    if spec.train.global_batch_size % workers:
        r.fail("train.global_batch_size", spec.train.global_batch_size,
               f"a multiple of cluster.workers={workers} (the batch is split across workers)",
               f"use {max(workers, spec.train.global_batch_size // workers * workers)}")
    if spec.data.val_dir is None and spec.data.val_split <= 0:
        r.fail("data.val_split", spec.data.val_split,
               "a fraction above 0 when data.val_dir is null (validation runs every epoch)",
               "set data.val_split: 0.2 or give data.val_dir")


def check_worker_count(spec: Spec, workers: int, *, unit: str = "workers") -> None:
    """Check that the global batch splits evenly over ``workers`` (known only at run time).

    Also used with ``unit="replicas"`` once the strategy knows its replica count.
    """
    if spec.train.global_batch_size % workers:
        raise SpecError(
            f"train.global_batch_size={spec.train.global_batch_size} is not divisible by "
            f"{unit}={workers}; use a multiple of {workers}.")


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
