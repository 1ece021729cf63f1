"""``trainjob pull`` against the fake API server, through the real ``kubernetes`` client.

The fake runs each exec for real on this machine (``du``, ``tar``) with the pull pod's claim
mapped to a folder standing for the models volume, so a real tar stream of a real run
directory crosses the WebSocket channel protocol and is unpacked here. Nothing of ours is
mocked.
"""

from __future__ import annotations

import filecmp
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from fake_kube import Attempt, FakeKube, write_run_directory

from job import cli
from job import spec as spec_module
from job.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, ClusterError
from job.submit import manifests, pods, pull, runs
from job.submit.kube import Forbidden, Kube
from job.submit.unpack import Progress, PullFailed, PullRefused

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "ml"
RUN = "tiny-pull01"
IMAGE = "ghcr.io/example/trainjob:0.1.0"
CLAIM = "trainjob-models"
MODEL = os.urandom(300_000)
"""A model's bytes: big enough to cross many WebSocket frames."""
IMAGE_PULL = ("ErrImagePull", f'failed to pull image "{IMAGE}": not found')
UNSCHEDULABLE = ("Unschedulable", "0/3 nodes are available: 3 Insufficient cpu.")


# --- fixtures -------------------------------------------------------------------------------
def spec_dict(**cluster) -> dict:
    return {
        "name": "tiny",
        "data": {"train_dir": "data/train"},
        "train": {"epochs": 1, "global_batch_size": 4},
        "cluster": {"workers": 1, "image": IMAGE, "namespace": NAMESPACE,
                    "models_volume": {"claim": CLAIM, "mount": "/models"}, **cluster},
    }


@pytest.fixture
def volume(tmp_path) -> Path:
    """The models volume: a folder the fake mounts wherever a pod asks for the claim."""
    folder = tmp_path / "models-volume"
    folder.mkdir()
    return folder


@pytest.fixture
def cluster(volume) -> Iterator:
    """Start fake clusters on demand; all are stopped at the end of the test."""
    started: list[FakeKube] = []

    def start(scenario=None, *, pvcs=((NAMESPACE, CLAIM),), **options) -> FakeKube:
        fake = FakeKube(scenario=scenario, namespaces=("default", NAMESPACE), pvcs=pvcs,
                        volumes={CLAIM: volume}, start_on_watch=False, **options).__enter__()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


def client(fake: FakeKube) -> Kube:
    return Kube(fake.configuration(), default_namespace=NAMESPACE, watch_timeout_seconds=5,
                reconnect_delays_seconds=(0.0, 0.05, 0.1))


def submitted(fake: FakeKube, tmp_path: Path, *, outcome: str | None = "Complete",
              **cluster) -> None:
    """Create the run's ConfigMap, Service and Job as submit does; wait for ``outcome``."""
    spec = spec_module.from_dict(spec_dict(**cluster), base_dir=tmp_path)
    kube = client(fake)
    for doc in manifests.render_manifests(spec, run_id=RUN):
        kube.create(NAMESPACE, doc)
    fake.wait_for(lambda: outcome in conditions(fake) if outcome else
                  any(p["status"].get("phase") == "Running" for p in fake.objects("pods")))


def conditions(fake: FakeKube) -> list[str]:
    return [c["type"] for job in fake.objects("jobs", NAMESPACE)
            for c in job["status"].get("conditions") or []]


def pull_pods(fake: FakeKube) -> list[str]:
    return [p["metadata"]["name"] for p in fake.objects("pods", NAMESPACE)
            if p["metadata"]["name"].startswith(f"{RUN}-pull-")]


def created_pull_pods(fake: FakeKube) -> int:
    return sum(1 for method, path, _ in fake.requests
               if method == "POST" and path == f"/api/v1/namespaces/{NAMESPACE}/pods")


def pull_run(fake: FakeKube, dest: Path, **options) -> list[str]:
    out = io.StringIO()
    try:
        assert pull.pull(RUN, dest, kube=client(fake), out=out,
                         options=pull.PullOptions(namespace=NAMESPACE, **options)) == 0
    finally:
        lines = out.getvalue().splitlines()
    return lines


def cli_pull(fake: FakeKube, tmp_path: Path, monkeypatch, capsys, *args: str
             ) -> tuple[int, str, str]:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    code = cli.main(["pull", RUN, str(tmp_path / "here"), *args])
    out, err = capsys.readouterr()
    return code, out, err


def same_tree(left: Path, right: Path) -> None:
    """Both folders hold the same files with the same bytes."""
    names = sorted(str(p.relative_to(left)) for p in left.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(right)) for p in right.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(left, right, names, shallow=False)
    assert mismatch == errors == []


def nothing_left(dest: Path) -> None:
    """No run folder, and no staging folder beside it."""
    assert not dest.exists() or list(dest.iterdir()) == []


# --- a real tar stream of a real run directory -----------------------------------------------
def test_pull_brings_the_run_directory_leaves_checkpoints_and_deletes_its_pod(
        cluster, volume, tmp_path):
    run_dir = write_run_directory(volume / RUN, model=MODEL)
    fake = cluster()
    submitted(fake, tmp_path)

    lines = pull_run(fake, tmp_path / "here")

    pulled = tmp_path / "here" / RUN
    assert not (pulled / "checkpoints").exists()
    (pulled / "checkpoints").mkdir()  # to compare the rest with the volume
    for name in ("checkpoint", "ckpt-2.index", "ckpt-2.data-00000-of-00001"):
        (pulled / "checkpoints" / name).write_bytes((run_dir / "checkpoints" / name)
                                                    .read_bytes())
    same_tree(run_dir, pulled)
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == [RUN]  # no staging left
    assert lines[0].startswith(f"pulling {RUN} (")
    assert lines[0].endswith(f" KiB) from {CLAIM}:/models/{RUN}")
    sha = hashlib.sha256(MODEL).hexdigest()
    assert lines[-3].startswith(f"pulled {RUN} to {pulled}: 6 files, ")
    assert lines[-2:] == [f"model.h5 matches metrics.json (sha256 {sha[:16]}...)",
                          "checkpoints/ stayed on the volume (--with-checkpoints fetches it)"]
    assert created_pull_pods(fake) == 1 and pull_pods(fake) == []


def test_claim_is_for_runs_the_cluster_forgot_and_says_so_when_not_used(
        cluster, volume, tmp_path):
    write_run_directory(volume / RUN, model=MODEL)
    fake = cluster()
    submitted(fake, tmp_path)

    lines = pull_run(fake, tmp_path / "here", claim="other")

    assert lines[0] == f"note: --claim 'other' is not used: run {RUN} wrote to claim '{CLAIM}'"
    assert (tmp_path / "here" / RUN / "model.h5").read_bytes() == MODEL


def test_with_checkpoints_brings_them_too(cluster, volume, tmp_path):
    run_dir = write_run_directory(volume / RUN, model=MODEL)
    fake = cluster()
    submitted(fake, tmp_path)

    lines = pull_run(fake, tmp_path / "here", with_checkpoints=True)

    same_tree(run_dir, tmp_path / "here" / RUN)
    assert lines[-1].startswith("model.h5 matches metrics.json")


def test_pull_pod_mounts_the_claim_read_only_under_the_training_pods_security_profile(
        cluster, volume, tmp_path):
    write_run_directory(volume / RUN, model=MODEL)
    fake = cluster()
    submitted(fake, tmp_path)
    seen: list[dict] = []
    original = fake._store

    def spy(resource, namespace, obj, event):
        if resource == "pods" and event == "ADDED" and "-pull-" in obj["metadata"]["name"]:
            seen.append(yaml.safe_load(yaml.safe_dump(obj)))
        return original(resource, namespace, obj, event)

    fake._store = spy
    pull_run(fake, tmp_path / "here")

    (pod,) = seen
    job = fake.objects("jobs", NAMESPACE)[0]["spec"]["template"]["spec"]
    assert pod["spec"]["securityContext"] == job["securityContext"]
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"] == job["containers"][0]["securityContext"]
    assert container["image"] == IMAGE  # the run's own: the cluster could pull it
    assert container["command"] == ["sleep", str(pull.PULL_POD_LIFETIME_SECONDS)]
    assert pod["spec"]["activeDeadlineSeconds"] == pull.PULL_POD_LIFETIME_SECONDS
    assert container["volumeMounts"] == [{"name": "models", "mountPath": "/models",
                                          "readOnly": True}]
    assert pod["spec"]["volumes"] == [{"name": "models", "persistentVolumeClaim": {
        "claimName": CLAIM, "readOnly": True}}]
    # Not a worker of the run: status and submit count pods by the run-id label.
    assert manifests.LABEL_RUN_ID not in pod["metadata"]["labels"]


def test_the_pull_pod_passes_strict_schema_validation():
    pod = pods.render_pull_pod(pods.PullPod(
        name=f"{RUN}-pull-bcdfg", run_id=RUN, claim=CLAIM, mount="/models", image=IMAGE,
        lifetime_seconds=3600, service_account="puller"))
    for version in sorted({"1.31", kubernetes_validate.utils.latest_version()}):
        kubernetes_validate.validate(pod, version, strict=True)


def test_the_default_claim_is_the_kustomize_base_claim():
    (pvc,) = [d for d in yaml.safe_load_all((ROOT / "k8s" / "pvc-models.yaml").read_text())
              if d]
    assert pvc["metadata"]["name"] == pull.DEFAULT_MODELS_CLAIM


# --- a damaged model -------------------------------------------------------------------------
def test_a_model_that_does_not_match_its_sha256_fails_with_one_line_and_nothing_placed(
        cluster, volume, tmp_path, monkeypatch, capsys):
    write_run_directory(volume / RUN, model=MODEL, sha256="0" * 64)
    fake = cluster()
    submitted(fake, tmp_path)

    code, _, err = cli_pull(fake, tmp_path, monkeypatch, capsys)

    assert code == EXIT_FAILED
    assert err.count("\n") == 1
    assert err.startswith("trainjob: error: model.h5 does not match metrics.json: sha256 ")
    assert "the transfer or the file on the volume is damaged" in err
    nothing_left(tmp_path / "here")
    assert created_pull_pods(fake) == 1 and pull_pods(fake) == []


def test_a_link_leaving_the_run_directory_is_refused_and_nothing_placed(
        cluster, volume, tmp_path):
    run_dir = write_run_directory(volume / RUN, model=MODEL)
    (run_dir / "labels.json").unlink()
    (run_dir / "labels.json").symlink_to("/etc/passwd")
    fake = cluster()
    submitted(fake, tmp_path)

    with pytest.raises(PullFailed, match="holds an unsafe member: .*labels.json") as failure:
        pull_run(fake, tmp_path / "here")

    assert failure.value.exit_code == EXIT_FAILED
    nothing_left(tmp_path / "here")
    assert pull_pods(fake) == []


# --- the pull pod never starts ---------------------------------------------------------------
def test_an_image_the_cluster_cannot_pull_fails_at_once_with_one_line(
        cluster, volume, tmp_path, monkeypatch, capsys):
    write_run_directory(volume / RUN, model=MODEL)
    fake = cluster()
    submitted(fake, tmp_path)
    fake.script_pod_start(IMAGE_PULL, starts=False)

    code, _, err = cli_pull(fake, tmp_path, monkeypatch, capsys)

    assert code == EXIT_BAD_INPUT
    assert err.count("\n") == 1
    assert err.startswith(f"trainjob: error: the pull pod {RUN}-pull-")
    assert f"cannot start: ErrImagePull: failed to pull image \"{IMAGE}\": not found; pass " \
           "--image with an image the cluster can pull; the pod is deleted." in err
    nothing_left(tmp_path / "here")
    assert created_pull_pods(fake) == 1 and pull_pods(fake) == []


def test_an_unschedulable_pull_pod_times_out_naming_why_and_is_deleted(
        cluster, volume, tmp_path):
    write_run_directory(volume / RUN, model=MODEL)
    fake = cluster()
    submitted(fake, tmp_path)
    fake.script_pod_start(UNSCHEDULABLE, starts=False)

    with pytest.raises(ClusterError) as failure:
        pull_run(fake, tmp_path / "here", start_timeout_seconds=1.5)

    assert f"did not start within 1.5 s (Unschedulable: {UNSCHEDULABLE[1]})" \
        in str(failure.value)
    nothing_left(tmp_path / "here")
    assert created_pull_pods(fake) == 1 and pull_pods(fake) == []


def test_a_pull_pod_that_starts_late_is_waited_for(cluster, volume, tmp_path):
    write_run_directory(volume / RUN, model=MODEL)
    fake = cluster()
    submitted(fake, tmp_path)
    fake.script_pod_start(UNSCHEDULABLE, ("ContainerCreating", ""), ("ContainerCreating", ""))

    pull_run(fake, tmp_path / "here")

    assert (tmp_path / "here" / RUN / "model.h5").read_bytes() == MODEL


# --- refusals ----------------------------------------------------------------------------------
def test_forbidden_exec_is_one_line_exit_2_and_the_pod_is_deleted(
        cluster, volume, tmp_path, monkeypatch, capsys):
    write_run_directory(volume / RUN, model=MODEL)
    fake = cluster()
    submitted(fake, tmp_path)
    fake.forbid("create", "pods/exec")

    code, _, err = cli_pull(fake, tmp_path, monkeypatch, capsys)

    assert code == EXIT_BAD_INPUT
    assert err == ("trainjob: error: forbidden: user 'alice' cannot create pods/exec in "
                   "namespace 'ml'; ask your cluster admin to bind the trainjob Role "
                   "(k8s/rbac.yaml) to you.\n")
    nothing_left(tmp_path / "here")
    assert created_pull_pods(fake) == 1 and pull_pods(fake) == []


def test_a_claim_that_does_not_exist_is_one_line_and_no_pod_is_made(
        cluster, volume, tmp_path, monkeypatch, capsys):
    write_run_directory(volume / RUN, model=MODEL)
    fake = cluster(pvcs=())  # deleted after the run, say
    submitted(fake, tmp_path)

    code, _, err = cli_pull(fake, tmp_path, monkeypatch, capsys)

    assert code == EXIT_BAD_INPUT
    assert err == (f"trainjob: error: PersistentVolumeClaim '{CLAIM}' not found in namespace "
                   "'ml'; pass --claim with the claim of the spec's cluster.models_volume (or -n "
                   "with the run's namespace).\n")
    assert created_pull_pods(fake) == 0


def test_a_run_directory_missing_from_the_claim_is_one_line(cluster, tmp_path):
    fake = cluster()
    submitted(fake, tmp_path)

    with pytest.raises(PullRefused, match=f"there is no run directory /models/{RUN} on claim "
                                          f"'{CLAIM}'"):
        pull_run(fake, tmp_path / "here")
    assert pull_pods(fake) == []


def test_an_existing_destination_is_refused_before_anything_is_made(cluster, volume, tmp_path):
    write_run_directory(volume / RUN, model=MODEL)
    fake = cluster()
    submitted(fake, tmp_path)
    (tmp_path / "here" / RUN).mkdir(parents=True)

    with pytest.raises(PullRefused, match=f"{tmp_path / 'here' / RUN} already exists"):
        pull_run(fake, tmp_path / "here")
    assert created_pull_pods(fake) == 0


def test_a_run_without_a_models_volume_has_nothing_to_pull(cluster, tmp_path):
    fake = cluster()
    submitted(fake, tmp_path, models_volume=None)

    with pytest.raises(PullRefused, match="wrote to an emptyDir .* nothing to pull"):
        pull_run(fake, tmp_path / "here")
    assert created_pull_pods(fake) == 0


# --- runs that are not finished --------------------------------------------------------------
def test_a_running_run_is_refused_in_one_line_and_partial_fetches_what_exists(
        cluster, volume, tmp_path):
    run_dir = volume / RUN
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "ckpt-1.index").write_bytes(b"x" * 100)
    (run_dir / "logs").mkdir()
    (run_dir / "logs" / "events").write_bytes(b"y" * 100)
    fake = cluster({0: [Attempt(hold=True)]})
    submitted(fake, tmp_path, outcome=None)

    with pytest.raises(PullRefused) as refused:
        pull_run(fake, tmp_path / "here")
    assert str(refused.value) == (
        f"run {RUN} is still running; its model is written when it succeeds. Wait for it "
        f"(trainjob status {RUN}), or pass --partial to fetch what it has written so far.")
    assert created_pull_pods(fake) == 0

    lines = pull_run(fake, tmp_path / "here", partial=True, with_checkpoints=True)

    assert lines[0] == f"note: run {RUN} is still running; pulling what it has written"
    same_tree(run_dir, tmp_path / "here" / RUN)


def test_a_failed_run_is_refused_and_partial_fetches_what_it_left(cluster, volume, tmp_path):
    (volume / RUN / "logs").mkdir(parents=True)
    (volume / RUN / "logs" / "events").write_bytes(b"y" * 100)
    fake = cluster({0: [Attempt(exit_code=2, logs=("SpecError: no data",))]})
    submitted(fake, tmp_path, outcome="Failed")

    with pytest.raises(PullRefused, match=f"^run {RUN} failed \\(PodFailurePolicy: .*\\), so "
                                          "it has no model; pass --partial"):
        pull_run(fake, tmp_path / "here")

    lines = pull_run(fake, tmp_path / "here", partial=True)
    assert lines[0] == f"note: run {RUN} failed; pulling what it has written"
    assert (tmp_path / "here" / RUN / "logs" / "events").read_bytes() == b"y" * 100


def test_a_forgotten_run_needs_an_image_and_is_found_on_the_default_claim(
        cluster, volume, tmp_path):
    write_run_directory(volume / RUN, model=MODEL)
    fake = cluster()  # no Job, no ConfigMap: cancelled, or cleaned up

    with pytest.raises(PullRefused, match="its image is unknown; pass --image"):
        pull_run(fake, tmp_path / "here")

    lines = pull_run(fake, tmp_path / "here", image=IMAGE)
    assert lines[0] == (f"note: run {RUN}: the cluster does not know it (no Job, no "
                        "ConfigMap: cleaned up, cancelled, or a typo); looking for it on claim "
                        f"'{CLAIM}' at /models/{RUN}")
    assert (tmp_path / "here" / RUN / "model.h5").read_bytes() == MODEL


def test_a_forgotten_unfinished_run_needs_partial(cluster, volume, tmp_path):
    (volume / RUN / "logs").mkdir(parents=True)
    (volume / RUN / "logs" / "events").write_bytes(b"y")
    fake = cluster()

    with pytest.raises(PullRefused, match="has no usable model.h5: the run did not finish"):
        pull_run(fake, tmp_path / "here", image=IMAGE)
    nothing_left(tmp_path / "here")

    pull_run(fake, tmp_path / "here", image=IMAGE, partial=True)
    assert (tmp_path / "here" / RUN / "logs" / "events").read_bytes() == b"y"


# --- Ctrl-C ----------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_ctrl_c_mid_transfer_deletes_the_pod_and_leaves_no_run_folder(
        cluster, volume, tmp_path):
    write_run_directory(volume / RUN, model=MODEL)
    fake = cluster()
    submitted(fake, tmp_path)
    fake.hold_exec_after(output_bytes=100_000)
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "job", "pull", RUN,
                                str(tmp_path / "here")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert process.stdout.readline().startswith(f"pulling {RUN} (")
        deadline = time.monotonic() + 30
        while not any((tmp_path / "here").glob(f".{RUN}.pull-*/*")):  # the transfer began
            assert time.monotonic() < deadline, "the transfer never began"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()

    assert process.returncode == EXIT_INTERRUPTED, err
    assert err == "trainjob: interrupted\n"
    nothing_left(tmp_path / "here")
    assert created_pull_pods(fake) == 1 and pull_pods(fake) == []


# --- submit --pull ---------------------------------------------------------------------------
def test_submit_pull_brings_the_run_home_once_it_succeeds(cluster, volume, tmp_path):
    write_run_directory(volume / RUN, model=MODEL)
    fake = cluster()
    spec = spec_module.from_dict(spec_dict(), base_dir=tmp_path)
    out = io.StringIO()

    code = runs.submit(spec, out=out, target=runs.Target(kube=client(fake)),
                       options=runs.SubmitOptions(run_id=RUN, pull_to=tmp_path / "here"))

    assert code == 0
    lines = out.getvalue().splitlines()
    model_line = lines.index(f"model: {CLAIM}:/models/{RUN}/model.h5")
    assert lines[model_line + 1].startswith(f"pulling {RUN} (")
    assert lines[-3].startswith(f"pulled {RUN} to {tmp_path / 'here' / RUN}: ")
    assert (tmp_path / "here" / RUN / "model.h5").read_bytes() == MODEL


def test_submit_pull_refuses_no_wait_before_creating_anything(cluster, tmp_path):
    fake = cluster()
    spec = spec_module.from_dict(spec_dict(), base_dir=tmp_path)

    with pytest.raises(PullRefused, match="--pull needs submit to watch the run"):
        runs.submit(spec, out=io.StringIO(), target=runs.Target(kube=client(fake)),
                    options=runs.SubmitOptions(run_id=RUN, wait=False, pull_to=tmp_path))
    assert fake.objects("jobs") == []


# --- the progress bar --------------------------------------------------------------------------
class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_fits_80_columns_and_ends_full():
    out = Tty()
    progress = Progress(out, total=5 * 1024**3)
    for _ in range(3):
        progress.advance(1024**3)
        time.sleep(0.21)  # past the redraw interval, so each step draws
    progress.finish()

    frames = [frame.removesuffix("\x1b[K") for frame in out.getvalue().split("\r") if frame]
    assert frames[0].startswith("[====.") and " 20%  1.0 GiB / 5.0 GiB  " in frames[0]
    assert frames[-1].startswith("[" + "=" * 24 + "] 100%  5.0 GiB / 5.0 GiB  ")
    assert frames[-1].endswith("\x1b[K\n") or frames[-1].endswith("/s\n")
    assert max(len(frame.rstrip("\n")) for frame in frames) <= 80


def test_progress_without_a_terminal_prints_nothing_between_lines():
    out = io.StringIO()
    progress = Progress(out, total=100)
    progress.advance(50)
    progress.finish()
    assert out.getvalue() == ""


def test_progress_without_a_total_shows_bytes_and_speed():
    out = Tty()
    progress = Progress(out, total=None)
    progress.advance(2048)
    progress.finish()
    assert out.getvalue().startswith("\r2.0 KiB  ")


# --- RBAC --------------------------------------------------------------------------------------
def test_forbidden_helper_pod_create_is_one_line(cluster, volume, tmp_path):
    write_run_directory(volume / RUN, model=MODEL)
    fake = cluster()
    submitted(fake, tmp_path)
    fake.forbid("create", "pods")

    with pytest.raises(Forbidden, match="cannot create pods in namespace 'ml'"):
        pull_run(fake, tmp_path / "here")
    nothing_left(tmp_path / "here")
