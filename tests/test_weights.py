"""``model.weights: imagenet``: Keras's own files, found, fetched, checked and used.

No weights can be downloaded here, so the files are Keras's exact names and shapes written
from randomly initialised backbones, in Keras's legacy HDF5 layout (the one its notop files
use), and "Keras's storage" is an HTTP server on loopback that ``$TRAINJOB_WEIGHTS_MIRROR``
points at.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import subprocess
import sys
import threading
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import yaml

from job import cli, weights
from job import spec as spec_module
from job.errors import WeightsError
from job.submit import manifests
from tests.conftest import CLUSTER_VARIABLES, ROOT, tiny_spec, train
from tests.test_dockerfile import DOCKERFILE, instructions

# Keras's own HDF5 writer trips numpy 2's copy-keyword deprecation once per weight: noise.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning:keras")

EXAMPLE = ROOT / "examples" / "vgg16-transfer.yaml"
APPLICATIONS = {"vgg16": "VGG16", "resnet50": "ResNet50", "mobilenet_v2": "MobileNetV2",
                "efficientnet_b0": "EfficientNetB0"}
"""Each backbone's keras.applications constructor."""
MODULES = {"vgg16": "vgg16", "resnet50": "resnet50", "mobilenet_v2": "mobilenet_v2",
           "efficientnet_b0": "efficientnet"}
"""Each backbone's keras.applications module, which has its preprocess_input."""
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                   "ALL_PROXY")


@pytest.fixture(autouse=True)
def keras_home(tmp_path, monkeypatch) -> Path:
    """An empty Keras cache of the test's own, no mirror, no proxy, one local worker."""
    home = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    for name in (weights.MIRROR_ENV, *PROXY_VARIABLES, *CLUSTER_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(autouse=True)
def float32_policy_after():
    yield
    import keras

    keras.mixed_precision.set_global_policy("float32")


def write_notop(backbone: str, folder: Path, *, image_size=(224, 224),
                checksum: bool = True) -> Path:
    """Keras's notop file for ``backbone``, written from a random backbone as Keras's are."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(7)
    constructor = getattr(keras.applications, APPLICATIONS[backbone])
    # The weights' shapes do not depend on the input size: build small, it is faster.
    model = constructor(include_top=False, weights=None, input_shape=(32, 32, 3))
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):  # EfficientNet: ImageNet's, as Keras's
            layer.adapt_mean.assign([0.485, 0.456, 0.406])
            layer.adapt_variance.assign(np.square([0.229, 0.224, 0.225]))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / weights.notop_file(backbone, image_size=image_size).name
    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)
    if checksum:
        write_checksum(path)
    return path


def write_checksum(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")


@pytest.fixture(scope="session")
def notop_files(tmp_path_factory):
    """backbone -> its notop file (made once per session), with its sha256 beside it."""
    folder, made = tmp_path_factory.mktemp("notop"), {}

    def get(backbone: str) -> Path:
        if backbone not in made:
            made[backbone] = write_notop(backbone, folder / backbone)
        return made[backbone]

    return get


class Storage(http.server.ThreadingHTTPServer):
    """Keras's storage on loopback: serves ``files`` (URL path -> bytes), logs ``requests``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StorageHandler)
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.delay = 0.0
        self.url = f"http://127.0.0.1:{self.server_port}"

    def put(self, notop: weights.NotopFile, body: bytes) -> None:
        self.files[notop.folder + notop.name] = body


class _StorageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        time.sleep(self.server.delay)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def storage(monkeypatch):
    server = Storage()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(weights.MIRROR_ENV, server.url)
    yield server
    server.shutdown()
    server.server_close()


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def model_spec(backbone: str, **values) -> spec_module.ModelSpec:
    return spec_module.ModelSpec(backbone=backbone, weights="imagenet",
                                 augment=spec_module.AugmentSpec(flip="none"), **values)


def one_line_error(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("trainjob: error: "), err
    assert "Traceback" not in err
    return err


# --- Keras's own files -----------------------------------------------------------------


@pytest.mark.parametrize(("backbone", "size"), [
    ("vgg16", 32), ("resnet50", 32), ("mobilenet_v2", 64), ("mobilenet_v2", 128),
    ("efficientnet_b0", 32)])
def test_the_file_url_and_hash_are_the_ones_keras_itself_asks_for(monkeypatch, backbone, size):
    import keras
    from keras.src.utils import file_utils

    asked = []

    class Asked(Exception):
        pass

    def get_file(fname=None, origin=None, *, cache_subdir="datasets", file_hash=None, **_):
        asked.append((fname, origin, cache_subdir, file_hash))
        raise Asked

    monkeypatch.setattr(file_utils, "get_file", get_file)
    constructor = getattr(keras.applications, APPLICATIONS[backbone])
    with pytest.raises(Asked), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MobileNetV2 at 64 px: "weights for 224 will be loaded"
        constructor(include_top=False, weights="imagenet", input_shape=(size, size, 3))

    notop = weights.notop_file(backbone, image_size=(size, size))
    assert asked == [(notop.name, notop.url(), "models", notop.keras_hash)]


def test_keras_cache_folder_follows_keras_rules(tmp_path):
    assert weights.keras_models_dir({"KERAS_HOME": str(tmp_path / "k")}) == tmp_path / "k/models"
    assert weights.keras_models_dir({"HOME": str(tmp_path)}) == tmp_path / ".keras/models"
    # A home folder that cannot be written (here: none at all) sends Keras to /tmp.
    assert weights.keras_models_dir({"HOME": str(tmp_path / "nowhere")}) \
        == Path("/tmp/.keras/models")


# --- lookup and refusal ----------------------------------------------------------------


def fake_file(folder: Path, backbone: str = "mobilenet_v2", body: bytes = b"weights") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / weights.notop_file(backbone).name
    path.write_bytes(body)
    write_checksum(path)
    return path


def test_keras_home_is_searched_before_weights_dir(keras_home, tmp_path):
    in_dir = fake_file(tmp_path / "dir", body=b"from weights_dir")
    model = model_spec("mobilenet_v2", weights_dir=tmp_path / "dir", allow_download=False)

    assert weights.resolve(model, image_size=(32, 32), env={"KERAS_HOME": str(keras_home)}) \
        == in_dir
    in_home = fake_file(keras_home / "models", body=b"from KERAS_HOME")
    assert weights.resolve(model, image_size=(32, 32), env={"KERAS_HOME": str(keras_home)}) \
        == in_home


def test_a_copy_that_fails_its_sha256_is_refused_naming_it(tmp_path):
    path = fake_file(tmp_path / "dir", body=b"all of the weights")
    path.write_bytes(b"all of the")  # a copy cut short
    model = model_spec("mobilenet_v2", weights_dir=tmp_path / "dir", allow_download=False)

    with pytest.raises(WeightsError, match="does not match .*sha256 beside it") as error:
        weights.resolve(model, image_size=(32, 32), env={"KERAS_HOME": str(tmp_path / "k")})
    assert str(path) in str(error.value) and "trainjob weights fetch mobilenet_v2" in \
        str(error.value)


def test_without_a_checksum_file_keras_own_hash_decides(tmp_path):
    path = tmp_path / "models" / weights.notop_file("efficientnet_b0").name
    path.parent.mkdir()
    path.write_bytes(b"not Keras's EfficientNetB0")
    model = model_spec("efficientnet_b0", allow_download=False)

    with pytest.raises(WeightsError, match="Keras's hash"):
        weights.resolve(model, image_size=(32, 32), env={"KERAS_HOME": str(tmp_path)})


def test_missing_weights_without_download_exit_2_naming_places_and_command(
        shapes_data, tmp_path, keras_home):
    spec = tiny_spec(shapes_data, tmp_path / "models", data={"test_dir": None},
                     model={"backbone": "mobilenet_v2", "weights": "imagenet",
                            "weights_dir": str(tmp_path / "volume"), "allow_download": False})

    run = train(tmp_path, spec, run_id="nofile")

    assert run.code == 2
    err = one_line_error(run.err)
    name = weights.notop_file("mobilenet_v2").name
    assert f"{name} is not in {keras_home / 'models'} (KERAS_HOME) or {tmp_path / 'volume'} " \
           "(model.weights_dir)" in err
    assert "`trainjob weights fetch mobilenet_v2 --to DIR`" in err
    assert not run.run_dir.exists()


# --- the model starts from the file ----------------------------------------------------


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "efficientnet_b0"])
def test_imagenet_model_computes_what_keras_imagenet_model_does(monkeypatch, keras_home,
                                                                notop_files, backbone):
    """Our model on 0-255 pixels == Keras's own ImageNet model on preprocess_input(pixels).

    Proves the file is loaded into the backbone, the backbone's preprocess_input is inside
    the model, and EfficientNet gets the input scaling Keras adds only for ImageNet weights.
    """
    import keras
    from keras.src.utils import file_utils

    from job.model import build_model

    path = notop_files(backbone)
    fake_file(keras_home / "models", backbone, path.read_bytes())
    ours = build_model(input_shape=(32, 32, 3), num_classes=3,
                       model=model_spec(backbone, allow_download=False))
    monkeypatch.setattr(file_utils, "get_file", lambda *args, **kwargs: str(path))
    module = getattr(keras.applications, MODULES[backbone])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MobileNetV2 at 32 px: "weights for 224 will be loaded"
        theirs = getattr(keras.applications, APPLICATIONS[backbone])(
            include_top=False, weights="imagenet", input_shape=(32, 32, 3), pooling="avg")

    pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    features = keras.Model(ours.inputs, ours.get_layer("head_dropout").input)([pixels]).numpy()
    expected = theirs(module.preprocess_input(pixels.copy())).numpy()
    # Relative: a randomly initialised backbone's features are tiny (about 1e-5 here).
    np.testing.assert_allclose(features, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50"])
def test_caffe_backbones_preprocess_as_keras_preprocess_input(backbone):
    import keras

    from job.model import build_model

    model = build_model(input_shape=(32, 32, 3), num_classes=3, model=spec_module.ModelSpec(
        backbone=backbone, augment=spec_module.AugmentSpec(flip="none")))
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")

    ours = keras.Model(model.inputs, model.get_layer("preprocess").output)([pixels]).numpy()
    module = getattr(keras.applications, MODULES[backbone])
    np.testing.assert_allclose(ours, module.preprocess_input(pixels.copy()), atol=1e-3)


# --- fetch -----------------------------------------------------------------------------


def test_fetch_downloads_keras_url_from_the_mirror_and_writes_its_sha256(storage, tmp_path):
    notop = weights.notop_file("mobilenet_v2", image_size=(128, 128))
    body = b"mobilenet weights" * 1000
    storage.put(notop, body)

    code, out, err = run_cli("weights", "fetch", "mobilenet_v2", "--image-size", "128",
                             "--to", str(tmp_path / "w"))

    assert code == 0, err
    assert storage.requests == [notop.folder + notop.name]
    assert notop.url() == weights.KERAS_STORAGE + notop.folder + notop.name
    assert (tmp_path / "w" / notop.name).read_bytes() == body
    checksum = (tmp_path / "w" / (notop.name + ".sha256")).read_text()
    assert checksum == f"{hashlib.sha256(body).hexdigest()}  {notop.name}\n"  # sha256sum -c
    assert sorted(p.name for p in (tmp_path / "w").iterdir() if not p.name.startswith(".")) \
        == [notop.name, notop.name + ".sha256"]

    code, out, _ = run_cli("weights", "fetch", "mobilenet_v2", "--image-size", "128",
                           "--to", str(tmp_path / "w"))
    assert code == 0 and "already there" in out
    assert len(storage.requests) == 1


def test_fetch_defaults_to_keras_cache(storage, keras_home):
    notop = weights.notop_file("mobilenet_v2")
    storage.put(notop, b"x" * 100)

    code, _, err = run_cli("weights", "fetch", "mobilenet_v2")

    assert code == 0, err
    assert (keras_home / "models" / notop.name).read_bytes() == b"x" * 100


def test_fetch_keeps_nothing_that_fails_keras_hash(storage, tmp_path):
    notop = weights.notop_file("vgg16")
    storage.put(notop, b"not VGG16")

    code, _, err = run_cli("weights", "fetch", "vgg16", "--to", str(tmp_path / "w"))

    assert code == 2
    assert "does not match Keras's md5" in one_line_error(err)
    assert [p.name for p in (tmp_path / "w").iterdir() if p.name != weights.LOCK_NAME] == []


def test_fetch_of_a_missing_file_or_unreachable_host_is_one_line(storage, tmp_path, monkeypatch):
    code, _, err = run_cli("weights", "fetch", "resnet50", "--to", str(tmp_path))
    assert code == 2 and "HTTP 404" in one_line_error(err)

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(weights.MIRROR_ENV, f"http://127.0.0.1:{port}")
    code, _, err = run_cli("weights", "fetch", "resnet50", "--to", str(tmp_path))
    assert code == 2 and "could not download" in one_line_error(err)

    monkeypatch.setenv(weights.MIRROR_ENV, "storage.example.com")
    code, _, err = run_cli("weights", "fetch", "resnet50")
    assert code == 2 and weights.MIRROR_ENV in one_line_error(err)


def test_processes_fetching_into_one_folder_download_once(storage, tmp_path):
    notop = weights.notop_file("mobilenet_v2")
    storage.put(notop, b"w" * 100_000)
    storage.delay = 1.0  # long enough for both processes to ask while the first downloads

    command = [sys.executable, "-m", "job", "weights", "fetch", "mobilenet_v2",
               "--to", str(tmp_path / "w")]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  cwd=ROOT) for _ in range(2)]
    results = [p.communicate(timeout=60) for p in processes]

    assert [p.returncode for p in processes] == [0, 0], results
    assert storage.requests == [notop.folder + notop.name]


def test_a_run_downloads_missing_weights_when_allowed(storage, keras_home, notop_files):
    from job.model import build_model

    path = notop_files("mobilenet_v2")
    storage.put(weights.notop_file("mobilenet_v2"), path.read_bytes())

    build_model(input_shape=(32, 32, 3), num_classes=2, model=model_spec("mobilenet_v2"))
    build_model(input_shape=(32, 32, 3), num_classes=2, model=model_spec("mobilenet_v2"))

    assert (keras_home / "models" / path.name).read_bytes() == path.read_bytes()
    assert len(storage.requests) == 1  # the second build found the file


def test_dockerfile_weights_build_arg_bakes_files_into_keras_home(storage, tmp_path):
    """The Dockerfile's own RUN line, run by sh as the build runs it, both ways."""
    steps = instructions(DOCKERFILE.read_text())
    (command,) = [a for kind, a in steps if kind == "RUN" and "weights fetch" in a]
    notop = weights.notop_file("mobilenet_v2")
    storage.put(notop, b"baked")
    bin_dir = str(Path(sys.executable).parent)  # where the trainjob console script is

    for value, expected in (("", []), ("mobilenet_v2", [notop.name, notop.name + ".sha256"])):
        home = tmp_path / f"home-{value or 'none'}"
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "KERAS_HOME": str(home), "WEIGHTS": value,
               weights.MIRROR_ENV: storage.url, "HOME": str(tmp_path)}
        result = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        found = sorted(p.name for p in (home / "models").glob("*") if not p.name.startswith("."))
        assert found == expected


# --- the spec --------------------------------------------------------------------------


def load(tmp_path, model: dict, **sections):
    document = {"name": "x", "data": {"train_dir": "data"}, "model": model, **sections}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(document))
    return spec_module.load(path)


def test_spec_takes_imagenet_for_an_applications_backbone(tmp_path):
    spec = load(tmp_path, {"backbone": "vgg16", "weights": "ImageNet", "weights_dir": "w"})

    assert spec.model.weights == "imagenet"
    assert spec.model.weights_dir == tmp_path / "w"
    assert spec.model.allow_download == "auto"


@pytest.mark.parametrize(("model", "key"), [
    ({"weights": "imagenet"}, "model.weights"),                       # small_cnn has none
    ({"backbone": "vgg16", "weights": "imagenet", "allow_download": "yes"},
     "model.allow_download"),
    ({"backbone": "vgg16", "weights": "imagenet", "weights_dir": 3}, "model.weights_dir"),
])
def test_bad_weights_keys_exit_2_naming_the_key(tmp_path, model, key):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "data": {"train_dir": "d"}, "model": model}))

    code, _, err = run_cli("validate", str(path))

    assert code == 2 and f"{key}=" in one_line_error(err)


# --- render and submit -----------------------------------------------------------------


CLUSTER = {"workers": 2, "image": "registry.example.com/t:1",
           "data_volume": {"claim": "data", "mount": "/data", "read_only": True},
           "models_volume": {"claim": "models", "mount": "/models"}}


def pod_model(spec) -> dict:
    docs = manifests.render_manifests(spec, run_id="x-abcde")
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    return yaml.safe_load(config_map["data"]["spec.yaml"])["model"]


@pytest.mark.parametrize(("allow", "rendered"), [("auto", False), (False, False), (True, True)])
def test_pods_download_only_when_the_spec_says_true(tmp_path, allow, rendered):
    spec = load(tmp_path, {"backbone": "vgg16", "weights": "imagenet", "weights_dir": "w",
                           "allow_download": allow}, cluster=CLUSTER)

    model = pod_model(spec)

    assert model["allow_download"] is rendered
    assert model["weights"] == "imagenet"
    assert model["weights_dir"] == "/data/w"


def weights_warnings(spec) -> list[str]:
    return [w for w in manifests.render_warnings(spec) if "weights" in w]


def test_render_says_only_a_baked_image_can_hold_the_file_without_weights_dir(tmp_path):
    spec = load(tmp_path, {"backbone": "vgg16", "weights": "imagenet"}, cluster=CLUSTER)

    (warning,) = weights_warnings(spec)

    assert "--build-arg WEIGHTS=vgg16" in warning and "model.weights_dir" in warning


def test_render_checks_the_local_folder_the_volume_copy_comes_from(tmp_path):
    spec = load(tmp_path, {"backbone": "mobilenet_v2", "weights": "imagenet",
                           "weights_dir": "w"}, cluster=CLUSTER)
    (tmp_path / "w").mkdir()

    (missing,) = weights_warnings(spec)
    assert "is missing on this machine" in missing and "/data/w" in missing

    path = fake_file(tmp_path / "w")
    assert weights_warnings(spec) == []

    path.write_bytes(b"damaged")
    (damaged,) = weights_warnings(spec)
    assert "does not match" in damaged


def test_render_warns_when_every_worker_would_download(tmp_path):
    spec = load(tmp_path, {"backbone": "vgg16", "weights": "imagenet", "allow_download": True},
                cluster=CLUSTER)

    (warning,) = weights_warnings(spec)

    assert "each of the 2 workers downloads" in warning


def test_render_prints_the_weights_warning_and_still_renders(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "data": {"train_dir": "d"}, "cluster": CLUSTER,
                                    "model": {"backbone": "vgg16", "weights": "imagenet"}}))

    code, out, err = run_cli("render", str(path), "--run-id", "x-abcde")

    assert code == 0 and "kind: Job" in out
    assert "trainjob: warning: model.weights=imagenet" in err


# --- the example -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory) -> Path:
    """4 classes x 8 images at 32 px: with val_split 0.25, 24 training images."""
    from job import sample_data

    return sample_data.generate(tmp_path_factory.mktemp("small") / "data", images_per_class=8,
                                test_per_class=0, image_size=32)


def test_vgg16_transfer_example_fine_tunes_its_top_block_from_provisioned_weights(
        tmp_path, notop_files, small_shapes):
    import keras

    weights_file = notop_files("vgg16")  # ~59 MB, Keras's VGG16 notop shapes
    example = yaml.safe_load(EXAMPLE.read_text())
    assert example["model"]["backbone"] == "vgg16" and example["model"]["weights"] == "imagenet"
    assert example["model"]["fine_tune"]["unfreeze"] == 5  # VGG16's top block
    # The example as written, on the small data at 32 px, for one step of the whole set in
    # each phase: the head alone, then the top block too.
    example["data"].update(train_dir=str(small_shapes / "train"), test_dir=None,
                           image_size=[32, 32], val_split=0.25, decode_workers=1)
    example["model"].update(weights_dir=str(weights_file.parent), allow_download=False)
    example["model"]["fine_tune"]["head_epochs"] = 1
    example["train"].update(epochs=2, global_batch_size=24)
    example["output"]["dir"] = str(tmp_path)
    path = tmp_path / "vgg16-transfer.yaml"
    path.write_text(yaml.safe_dump(example))

    code, out, err = run_cli("train", str(path), "--run-id", "example")

    assert code == 0, err
    run_dir = tmp_path / "example"
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 2
    assert "fine-tuning: unfroze 5 layers of vgg16 from epoch 2, learning rate 1e-05" in out
    trained = keras.models.load_model(run_dir / "model.h5", compile=False)
    start = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    start.load_weights(weights_file)

    def kernel(model, name):
        return model.get_layer(name).kernel.numpy()

    vgg16 = trained.get_layer("vgg16")
    # Below the top block, the file's weights as they were; the top block moved, by about
    # the fine-tuning rate (1e-5) in its one step.
    for name in ("block1_conv1", "block4_conv3"):
        np.testing.assert_array_equal(kernel(vgg16, name), kernel(start, name))
    moved = np.abs(kernel(vgg16, "block5_conv3") - kernel(start, "block5_conv3"))
    assert 0 < moved.max() < 1e-4
    assert trained.input_shape == (None, 32, 32, 3)
