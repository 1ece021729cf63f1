"""The submitter against a fake Kubernetes API server, through the real ``kubernetes`` client.

Every scenario runs ``job.submit.runs`` (or the CLI) over real HTTP against ``FakeKube``,
whose Job controller plays the pods from a scripted scenario. Nothing of ours is mocked.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pty
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fake_kube import Attempt, FakeKube, Rbac, write_run_directory

from job import cli
from job import spec as spec_module
from job.errors import EXIT_INTERRUPTED, ClusterError, JobFailed
from job.submit import manifests, pull, runs
from job.submit.kube import Forbidden, Kube
from job.submit.namespace import DEFAULT_NAMESPACE, resolve_namespace
from job.submit.state import (
    INDEX_LABEL,
    Event,
    RunState,
    describe,
    format_age,
    model_location,
    pod_view,
    reduce,
    why_failed,
)

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "ml"
RUN = "tiny-run01"
PVCS = ((NAMESPACE, "trainjob-models"), (NAMESPACE, "trainjob-data"))
UNSCHEDULABLE = ("Unschedulable", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
IMAGE_PULL = ("ImagePullBackOff", 'Back-off pulling image "ghcr.io/example/trainjob:0.1.0"')


# --- fixtures -------------------------------------------------------------------------------
def spec_dict(**cluster) -> dict:
    return {
        "name": "tiny",
        "data": {"train_dir": "data/train"},
        "train": {"epochs": 1, "global_batch_size": 4},
        "cluster": {"workers": 2, "image": "ghcr.io/example/trainjob:0.1.0",
                    "namespace": NAMESPACE, "max_restarts": 2,
                    "models_volume": {"claim": "trainjob-models", "mount": "/models"},
                    "data_volume": {"claim": "trainjob-data", "mount": "/data",
                                    "read_only": True},
                    **cluster},
    }


@pytest.fixture
def spec_path(tmp_path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict()))
    return path


@pytest.fixture
def spec(spec_path) -> spec_module.Spec:
    return spec_module.load(spec_path)


@pytest.fixture
def cluster() -> Iterator:
    """Start fake clusters on demand; all are stopped at the end of the test."""
    started: list[FakeKube] = []

    def start(scenario=None, *, pvcs=PVCS, **options) -> FakeKube:
        fake = FakeKube(scenario=scenario, namespaces=("default", NAMESPACE), pvcs=pvcs,
                        **options).__enter__()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


def client(fake: FakeKube, *, namespace: str = NAMESPACE, **options) -> Kube:
    """The real client, pointed at the fake, with short watches and quick reconnects."""
    options = {"watch_timeout_seconds": 5, "reconnect_delays_seconds": (0.0, 0.05, 0.1),
               **options}
    return Kube(fake.configuration(), default_namespace=namespace, **options)


def submit(spec, fake: FakeKube, *, namespace: str | None = None, kube: Kube | None = None,
           out: io.StringIO | None = None, **options) -> tuple[int, list[str]]:
    """``runs.submit`` as run ``RUN`` on ``fake``; ``options`` are ``runs.SubmitOptions``."""
    out = out or io.StringIO()
    target = runs.Target(namespace=namespace, kube=kube or client(fake))
    try:
        code = runs.submit(spec, options=runs.SubmitOptions(**{"run_id": RUN, **options}),
                           target=target, out=out)
    finally:
        lines = out.getvalue().splitlines()
    return code, lines


def status_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith("[worker")]


def assert_in_order(lines: list[str], expected: list[str]) -> None:
    position = 0
    for want in expected:
        found = [i for i, line in enumerate(lines) if i >= position and line.startswith(want)]
        assert found, f"{want!r} not found in order in:\n" + "\n".join(lines)
        position = found[0] + 1


def assert_no_line_twice_in_a_row(lines: list[str]) -> None:
    statuses = status_lines(lines)
    repeats = [a for a, b in zip(statuses, statuses[1:], strict=False) if a == b]
    assert not repeats, repeats


def run_objects(fake: FakeKube, namespace: str = NAMESPACE) -> dict[str, list[str]]:
    return {resource: sorted(o["metadata"]["name"] for o in fake.objects(resource, namespace))
            for resource in ("configmaps", "services", "jobs", "pods")}


NOTHING = {"configmaps": [], "services": [], "jobs": [], "pods": []}


# --- submit: the scenarios ------------------------------------------------------------------
def test_successful_run_reports_pending_reasons_running_chief_logs_and_model_location(
        spec, cluster):
    fake = cluster({0: [Attempt(pending=(UNSCHEDULABLE,), logs=("epoch 1/1", "model saved"))],
                    1: [Attempt(pending=(IMAGE_PULL, IMAGE_PULL), logs=("worker 1 here",))]})

    code, lines = submit(spec, fake)

    assert code == 0
    assert_in_order(lines, [
        f"submitted run {RUN} to namespace 'ml'",
        f"  objects: ConfigMap {RUN}-spec, Service {RUN}, Job {RUN}",
        f"  status: trainjob status {RUN}",
        "pending: 0/2 running (worker 0: Unschedulable: 0/3 nodes are available: 3 "
        "Insufficient nvidia.com/gpu.)",
        "pending: 1/2 running (worker 1: ImagePullBackOff: Back-off pulling image",
        "running: 2/2 workers",
        "succeeded",
        f"model: trainjob-models:/models/{RUN}/model.h5",
    ])
    assert [line for line in lines if line.startswith("[")] == [
        "[worker 0] epoch 1/1", "[worker 0] model saved"]
    assert lines[-1] == f"model: trainjob-models:/models/{RUN}/model.h5"
    assert_no_line_twice_in_a_row(lines)
    assert len(set(status_lines(lines))) == len(status_lines(lines))


def test_permanent_failure_reports_the_pod_exit_code_reason_and_log_tail(spec, cluster):
    log = tuple(f"step {i}" for i in range(30)) + ("SpecError: data.train_dir is missing",)
    fake = cluster({0: [Attempt(hold=True)], 1: [Attempt(exit_code=2, logs=log)]})

    with pytest.raises(JobFailed) as failure:
        submit(spec, fake, out=(out := io.StringIO()))
    lines = out.getvalue().splitlines()

    assert failure.value.exit_code == 1
    assert "worker 1 exited (exit 2, bad input, permanent)" in str(failure.value)
    assert f"trainjob logs {RUN} --worker 1" in str(failure.value)
    pods = run_objects(fake)["pods"]
    assert len(pods) == 1 and pods[0].startswith(f"{RUN}-1-")  # the chief was stopped
    failed_pod = pods[0]
    assert_in_order(lines, [
        "failed: PodFailurePolicy: Container trainjob for pod ml/" + failed_pod,
        f"worker 1 (pod {failed_pod}) failed: exit 2, bad input, permanent "
        "(container reason: Error)",
        f"last 20 lines of {failed_pod}:",
    ])
    tail = [line for line in lines if line.startswith("[worker 1] ")]
    assert tail == [f"[worker 1] {line}" for line in log[-20:]]


def test_retryable_failure_is_reported_as_a_restart_and_the_run_still_succeeds(spec, cluster):
    fake = cluster({0: [Attempt(logs=tuple(f"epoch {i}" for i in range(8)))],
                    1: [Attempt(exit_code=75, logs=("lost peer",)), Attempt()]})

    code, lines = submit(spec, fake)

    assert code == 0
    restarted = [line for line in lines if line.startswith("worker 1 restarted")]
    assert len(restarted) == 1
    assert restarted[0].startswith(f"worker 1 restarted (exit 75, retryable): new pod {RUN}-1-")
    assert_in_order(lines, ["running: 2/2 workers", "pending: 1/2 running (worker 1: exit 75, "
                            "retryable)", "worker 1 restarted", "running: 2/2 workers",
                            "succeeded", "model: "])
    assert_no_line_twice_in_a_row(lines)


def test_too_many_retryable_failures_fail_the_run_at_the_backoff_limit(spec_path, cluster):
    spec = spec_module.from_dict(spec_dict(max_restarts=1), base_dir=spec_path.parent)
    fake = cluster({0: [Attempt(hold=True)], 1: [Attempt(exit_code=75, logs=("lost peer",))]})

    with pytest.raises(JobFailed, match="worker 1 exited \\(exit 75, retryable\\)"):
        submit(spec, fake, out=(out := io.StringIO()))

    lines = out.getvalue().splitlines()
    assert "failed: BackoffLimitExceeded: Job has reached the specified backoff limit" in lines
    assert sum(line.startswith("worker 1 restarted") for line in lines) == 2


def test_no_wait_returns_after_creating_the_run(spec, cluster):
    fake = cluster()

    code, lines = submit(spec, fake, wait=False)

    assert code == 0
    assert lines[0].startswith(f"submitted run {RUN}")
    assert run_objects(fake) == {"configmaps": [f"{RUN}-spec"], "services": [RUN],
                                 "jobs": [RUN], "pods": []}


def test_forbidden_create_names_verb_and_resource_and_leaves_nothing_behind(spec, cluster):
    fake = cluster()
    fake.forbid("create", "services")

    with pytest.raises(ClusterError) as refused:
        submit(spec, fake)

    assert str(refused.value) == (
        "forbidden: user 'alice' cannot create services in namespace 'ml'; ask your cluster "
        "admin to bind the trainjob Role (k8s/rbac.yaml) to you.")
    assert refused.value.exit_code == 2
    assert run_objects(fake) == NOTHING
    created = [path for method, path, _ in fake.requests if method == "POST"]
    assert len(created) == 3  # the Job, the ConfigMap, then the refused Service; two undone


def test_a_refused_resume_leaves_nothing_behind(spec, cluster):
    # A Role from before the Job was created suspended lacks patch on jobs.
    fake = cluster({0: [Attempt(hold=True)], 1: [Attempt(hold=True)]}, start_on_watch=False)
    fake.forbid("patch", "jobs")

    with pytest.raises(ClusterError, match="^forbidden: user 'alice' cannot patch jobs.batch "
                                           "in namespace 'ml'; ask your cluster admin"):
        submit(spec, fake)

    assert run_objects(fake) == NOTHING


def test_missing_volume_claim_fails_before_anything_is_created(spec, cluster):
    fake = cluster(pvcs=[(NAMESPACE, "trainjob-models")])

    with pytest.raises(ClusterError, match="PersistentVolumeClaim 'trainjob-data' "
                                           "\\(cluster.data_volume.claim\\) not found in "
                                           "namespace 'ml'"):
        submit(spec, fake)

    assert not [r for r in fake.requests if r[0] in ("POST", "DELETE")]
    assert run_objects(fake) == NOTHING


def test_missing_namespace_fails_before_anything_is_created(spec, cluster):
    fake = cluster()

    with pytest.raises(ClusterError, match="namespace 'elsewhere' does not exist"):
        submit(spec, fake, namespace="elsewhere")

    assert not [r for r in fake.requests if r[0] == "POST"]


def test_unreadable_namespaces_are_noted_and_a_missing_one_still_fails_clearly(spec_path,
                                                                              cluster):
    spec = spec_module.from_dict(spec_dict(models_volume=None, data_volume=None),
                                 base_dir=spec_path.parent)
    fake = cluster()
    fake.forbid("get", "namespaces")

    with pytest.raises(ClusterError, match="^not found: namespace 'elsewhere' does not exist"):
        submit(spec, fake, namespace="elsewhere", out=(out := io.StringIO()))

    assert "note: cannot check that namespace 'elsewhere' exists" in out.getvalue()
    assert "warning: cluster.models_volume is not set" in out.getvalue()


def test_run_id_already_taken_says_to_pick_another(spec, cluster):
    fake = cluster()
    submit(spec, fake, wait=False)

    with pytest.raises(ClusterError, match=f"^already exists: job '{RUN}' in namespace 'ml'; "
                                           "submit again without --run-id"):
        submit(spec, fake, wait=False)


def test_dropped_watches_and_410_gone_are_survived_without_repeated_lines(spec, cluster):
    fake = cluster({0: [Attempt(pending=(UNSCHEDULABLE,) * 3,
                                logs=tuple(f"epoch {i}" for i in range(12)))],
                    1: [Attempt(pending=(IMAGE_PULL,) * 5)]})
    fake.drop_next_watch("pods", after_events=3)
    fake.expire_next_watch("pods")  # the reconnect after the drop gets 410 and must re-list
    fake.expire_next_watch("jobs", in_stream=False)
    fake.drop_next_log(after_lines=4)

    code, lines = submit(spec, fake)

    assert code == 0
    pod_watches = [q for m, path, q in fake.requests if path.endswith("/pods") and "watch" in q]
    assert len(pod_watches) >= 3  # dropped, then 410 in the stream, then a fresh one
    job_lists = [q for m, path, q in fake.requests
                 if m == "GET" and path.endswith("/jobs") and "watch" not in q]
    assert len(job_lists) == 2  # the first watch got an HTTP 410, so the Job was listed again
    assert [line for line in lines if line.startswith("[")] == [
        f"[worker 0] epoch {i}" for i in range(12)]
    statuses = status_lines(lines)
    assert len(set(statuses)) == len(statuses), statuses
    assert_in_order(lines, ["pending: 0/2 running (worker 0: Unschedulable", "running: 2/2",
                            "succeeded", "model: "])


def test_an_api_server_that_stays_down_ends_the_watch_with_a_clear_error(spec, cluster):
    fake = cluster({0: [Attempt(hold=True)], 1: [Attempt(hold=True)]})

    def stop_when_running():
        fake.wait_for(lambda: sum(p["status"]["phase"] == "Running"
                                  for p in fake.objects("pods")) == 2)
        fake.stop()

    threading.Thread(target=stop_when_running, daemon=True).start()
    with pytest.raises(ClusterError) as lost:
        submit(spec, fake, follow=False)

    message = str(lost.value)
    assert message.startswith(f"lost the watch on run {RUN} after 3 reconnects: cannot reach "
                              f"the Kubernetes API at {fake.url}")
    assert "\n" not in message


def test_cancel_deletes_the_job_its_pods_the_service_and_the_configmap(spec, cluster):
    fake = cluster({0: [Attempt(hold=True)], 1: [Attempt(hold=True)]}, start_on_watch=False)
    submit(spec, fake, wait=False)
    fake.wait_for(lambda: len(fake.objects("pods")) == 2)

    out = io.StringIO()
    assert runs.cancel(RUN, out=out, target=runs.Target(kube=client(fake))) == 0

    assert run_objects(fake) == NOTHING
    assert out.getvalue() == (f"cancelled run {RUN}: deleted its Job, pods, Service and "
                              "ConfigMap\nits run directory stays on the models volume\n")
    deletes = [q for m, _, q in fake.requests if m == "DELETE"]
    assert deletes and all(q == "" for q in deletes)  # propagation went in the body
    with pytest.raises(ClusterError, match=f"^no run named '{RUN}' in namespace 'ml'"):
        runs.cancel(RUN, out=out, target=runs.Target(kube=client(fake)))


def test_status_list_and_logs_describe_a_finished_run(spec, cluster):
    fake = cluster({0: [Attempt(logs=("epoch 1", "done"))],
                    1: [Attempt(exit_code=75), Attempt(hold=True)]})
    assert submit(spec, fake)[0] == 0
    kube = client(fake)

    out = io.StringIO()
    assert runs.status(RUN, out=out, target=runs.Target(kube=kube)) == 0
    summary = out.getvalue().splitlines()
    assert summary[0] == f"run:     {RUN} (namespace ml)"
    assert summary[1] == "state:   succeeded"
    assert summary[2].startswith("workers: 0 running, 1 succeeded, 1 failed pods, of 2")
    assert summary[3].startswith("age:     ")
    assert summary[4] == f"model:   trainjob-models:/models/{RUN}/model.h5"
    assert summary[5].startswith(f"failed:  worker 1 (pod {RUN}-1-") and \
        summary[5].endswith("exit 75, retryable")

    out = io.StringIO()
    assert runs.list_runs(out=out, target=runs.Target(kube=kube)) == 0
    table = [line.split() for line in out.getvalue().splitlines()]
    assert table[0] == ["RUN", "STATE", "WORKERS", "RUNNING", "SUCCEEDED", "FAILED", "AGE"]
    assert table[1][:6] == [RUN, "succeeded", "2", "0", "1", "1"]

    out = io.StringIO()
    assert runs.logs(RUN, worker=0, out=out, target=runs.Target(kube=kube)) == 0
    assert out.getvalue() == "epoch 1\ndone\n"
    out = io.StringIO()
    assert runs.logs(RUN, worker=0, follow=True, out=out, target=runs.Target(kube=kube)) == 0
    assert out.getvalue() == "epoch 1\ndone\n"
    with pytest.raises(ClusterError, match="--worker 2 is out of range: run .* has workers 0 "
                                           "to 1"):
        runs.logs(RUN, worker=2, out=out, target=runs.Target(kube=kube))
    with pytest.raises(ClusterError, match="^no run named 'other' in namespace 'ml'"):
        runs.status("other", out=out, target=runs.Target(kube=kube))


def test_list_says_so_when_there_are_no_runs(cluster):
    out = io.StringIO()
    target = runs.Target(namespace="default", kube=client(cluster()))
    assert runs.list_runs(out=out, target=target) == 0
    assert out.getvalue() == "no trainjob runs in namespace 'default'\n"


# --- the Job owns the run's other objects ----------------------------------------------------
def owner_references(fake: FakeKube, resource: str) -> list:
    (obj,) = fake.objects(resource, NAMESPACE)
    return obj["metadata"].get("ownerReferences")


def test_submit_creates_the_job_suspended_then_what_it_owns_then_resumes_it(spec, cluster):
    # The controller starts pods at once here (no waiting for a watch), so a Job created
    # running before its ConfigMap would leave its pods waiting for their spec.
    fake = cluster({0: [Attempt(hold=True)], 1: [Attempt(hold=True)]}, start_on_watch=False)

    assert submit(spec, fake, wait=False)[0] == 0
    fake.wait_for(lambda: sum(p["status"]["phase"] == "Running"
                              for p in fake.objects("pods")) == 2)

    writes = [(method, path.rsplit("/", 1)[-1]) for method, path, _ in fake.requests
              if method in ("POST", "PATCH")]
    assert writes == [("POST", "jobs"), ("POST", "configmaps"), ("POST", "services"),
                      ("PATCH", RUN)]
    first, *_ = [obj for event, obj in fake.history("jobs") if event == "ADDED"]
    assert first["spec"]["suspend"] is True
    (job,) = fake.objects("jobs", NAMESPACE)
    assert job["spec"]["suspend"] is False
    owner = [{"apiVersion": "batch/v1", "kind": "Job", "name": RUN,
              "uid": job["metadata"]["uid"]}]
    assert owner_references(fake, "configmaps") == owner
    assert owner_references(fake, "services") == owner
    assert fake.mount_failures == []  # no pod ever looked for a spec that was not there


def test_the_fake_kubelet_holds_a_pod_whose_spec_is_missing(spec, cluster):
    # Guards the test above: a Job created running before its ConfigMap is caught.
    fake = cluster({0: [Attempt()], 1: [Attempt()]}, start_on_watch=False)

    job = next(d for d in manifests.render_manifests(spec, run_id=RUN) if d["kind"] == "Job")
    client(fake).create(NAMESPACE, job)
    fake.wait_for(lambda: len(fake.mount_failures) == 2)

    assert {configmap for _, configmap in fake.mount_failures} == {f"{RUN}-spec"}
    assert {p["status"]["phase"] for p in fake.objects("pods")} == {"Pending"}


@pytest.mark.parametrize("propagation", ["Background", "Foreground"])
def test_deleting_the_job_deletes_the_configmap_and_service_it_owns(spec, cluster,
                                                                   propagation):
    # As the Job's TTL, `kubectl delete job` (Background) and `kubectl delete --cascade=
    # foreground` do. The garbage collector also deletes objects whose owner uid names
    # nothing, so a wrong uid would have lost them before the delete.
    fake = cluster({0: [Attempt(hold=True)], 1: [Attempt(hold=True)]}, start_on_watch=False)
    submit(spec, fake, wait=False)
    fake.wait_for(lambda: len(fake.objects("pods")) == 2)
    assert run_objects(fake)["configmaps"] == [f"{RUN}-spec"]
    assert run_objects(fake)["services"] == [RUN]

    client(fake).delete(NAMESPACE, "Job", RUN, propagation=propagation)

    assert run_objects(fake) == NOTHING


def test_orphaning_the_job_keeps_its_configmap_and_service_without_the_owner(spec, cluster):
    fake = cluster(start_on_watch=False)
    submit(spec, fake, wait=False)

    client(fake).delete(NAMESPACE, "Job", RUN, propagation="Orphan")

    assert run_objects(fake)["configmaps"] == [f"{RUN}-spec"]
    assert owner_references(fake, "configmaps") == []


def test_a_job_for_a_kueue_queue_stays_suspended_for_kueue_to_admit(spec_path, cluster):
    spec = spec_module.from_dict(spec_dict(queue="team-a"), base_dir=spec_path.parent)
    fake = cluster(start_on_watch=False)

    code, lines = submit(spec, fake, wait=False)

    assert code == 0
    assert not [r for r in fake.requests if r[0] == "PATCH"]
    (job,) = fake.objects("jobs", NAMESPACE)
    assert job["spec"]["suspend"] is True
    assert owner_references(fake, "configmaps")[0]["uid"] == job["metadata"]["uid"]
    assert fake.objects("pods") == []


# --- -o, -A and the log window ---------------------------------------------------------------
def test_status_prints_json_yaml_and_a_wide_summary(spec, cluster):
    fake = cluster({0: [Attempt(logs=("epoch 1",))], 1: [Attempt(exit_code=75), Attempt()]})
    assert submit(spec, fake)[0] == 0
    target = runs.Target(kube=client(fake))

    out = io.StringIO()
    assert runs.status(RUN, target=target, output="json", out=out) == 0
    data = json.loads(out.getvalue())
    assert {k: data[k] for k in ("run", "namespace", "state", "workers", "model",
                                 "model_written", "image")} == {
        "run": RUN, "namespace": NAMESPACE, "state": "succeeded", "workers": 2,
        "model": f"trainjob-models:/models/{RUN}/model.h5", "model_written": True,
        "image": "ghcr.io/example/trainjob:0.1.0"}
    assert data["failed"]["worker"] == 1 and data["failed"]["reason"] == "exit 75, retryable"
    assert data["failed_pods"] == 1

    out = io.StringIO()
    runs.status(RUN, target=target, output="yaml", out=out)
    assert {k: v for k, v in yaml.safe_load(out.getvalue()).items() if k != "age"} == {
        k: v for k, v in data.items() if k != "age"}

    out = io.StringIO()
    runs.status(RUN, target=target, output="wide", out=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"run:     {RUN} (namespace ml)"
    assert "image:   ghcr.io/example/trainjob:0.1.0" in lines
    table = lines[lines.index("pods:") + 1:]
    assert table[0].split() == ["WORKER", "POD", "PHASE", "DETAIL"]
    assert [row.split()[0] for row in table[1:]] == ["0", "1"]


def test_list_prints_json_yaml_and_a_wide_table(spec, cluster):
    fake = cluster()
    submit(spec, fake, wait=False)
    target = runs.Target(kube=client(fake))

    out = io.StringIO()
    assert runs.list_runs(target=target, output="json", out=out) == 0
    (row,) = json.loads(out.getvalue())["runs"]
    assert (row["run"], row["namespace"], row["workers"], row["spec"], row["queue"]) == (
        RUN, NAMESPACE, 2, "tiny", None)
    out = io.StringIO()
    runs.list_runs(target=target, output="yaml", out=out)
    assert yaml.safe_load(out.getvalue())["runs"][0]["run"] == RUN

    out = io.StringIO()
    runs.list_runs(target=target, output="wide", out=out)
    header, row_text = out.getvalue().splitlines()
    assert header.split() == ["RUN", "STATE", "WORKERS", "RUNNING", "SUCCEEDED", "FAILED",
                              "AGE", "SPEC", "IMAGE", "QUEUE"]
    assert row_text.split()[-3:] == ["tiny", "ghcr.io/example/trainjob:0.1.0", "<none>"]


def test_list_all_namespaces_shows_the_runs_of_each(spec, cluster):
    fake = cluster(pvcs=PVCS + (("default", "trainjob-models"), ("default", "trainjob-data")))
    submit(spec, fake, wait=False)
    submit(spec, fake, wait=False, namespace="default")
    target = runs.Target(kube=client(fake))

    out = io.StringIO()
    assert runs.list_runs(target=target, all_namespaces=True, out=out) == 0
    table = [line.split() for line in out.getvalue().splitlines()]
    assert table[0][:3] == ["NAMESPACE", "RUN", "STATE"]
    assert sorted(row[:2] for row in table[1:]) == [["default", RUN], [NAMESPACE, RUN]]


def test_log_window_tail_since_and_timestamps(spec, cluster):
    fake = cluster({0: [Attempt(logs=("one", "two", "three"))], 1: [Attempt()]})
    assert submit(spec, fake)[0] == 0
    target = runs.Target(kube=client(fake))
    (chief,) = [p["metadata"]["name"] for p in fake.objects("pods", NAMESPACE)
                if p["metadata"]["labels"][INDEX_LABEL] == "0"]

    def logs(follow: bool = False, **window) -> str:
        out = io.StringIO()
        assert runs.logs(RUN, follow=follow, target=target, out=out,
                         options=runs.LogOptions(**window)) == 0
        return out.getvalue()

    for follow in (False, True):
        assert logs(follow, tail_lines=2) == "two\nthree\n"
        stamped = logs(follow, timestamps=True).splitlines()
        assert [re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (\w+)", line).group(1)
                for line in stamped] == ["one", "two", "three"]
    fake.age_log(NAMESPACE, chief, seconds=3600)  # written an hour ago
    assert logs(since_seconds=600) == ""
    assert logs(since_seconds=7200) == "one\ntwo\nthree\n"


# --- RBAC: k8s/rbac.yaml grants exactly what the commands use -------------------------------
def rbac_cluster(cluster, rbac: Rbac, scenario, **options) -> FakeKube:
    """A fake cluster prepared as `kubectl apply -k k8s/` leaves it, enforcing its RBAC."""
    fake = cluster(scenario, pvcs=[(rbac.namespace, "trainjob-models"),
                                   (rbac.namespace, "trainjob-data")], **options)
    fake.add_namespace(rbac.namespace)
    fake.enforce_rbac(rbac)
    return fake


def test_rbac_role_grants_exactly_what_the_submitter_uses(spec_path, cluster, tmp_path):
    # Every command succeeds as a user bound only by k8s/rbac.yaml, and together they use
    # every grant: so the Role lacks nothing and grants nothing unused.
    rbac = Rbac.load()
    spec = spec_module.from_dict(spec_dict(namespace=rbac.namespace), base_dir=spec_path.parent)
    volume = tmp_path / "models-volume"
    write_run_directory(volume / RUN, model=b"weights")  # what the chief leaves there
    good = rbac_cluster(cluster, rbac, {0: [Attempt(logs=("epoch 1", "done"))], 1: [Attempt()]},
                        volumes={"trainjob-models": volume})
    kube = client(good, namespace=rbac.namespace)

    code, lines = submit(spec, good, kube=kube)
    assert code == 0
    assert "[worker 0] done" in lines and lines[-1].startswith("model: ")
    out = io.StringIO()
    assert runs.status(RUN, out=out, target=runs.Target(kube=kube)) == 0
    assert "state:   succeeded" in out.getvalue()
    out = io.StringIO()
    assert runs.list_runs(out=out, target=runs.Target(kube=kube)) == 0
    assert RUN in out.getvalue()
    for follow in (False, True):
        out = io.StringIO()
        assert runs.logs(RUN, follow=follow, out=out, target=runs.Target(kube=kube)) == 0
        assert out.getvalue() == "epoch 1\ndone\n"
    assert pull.pull(RUN, tmp_path / "pulled", kube=kube, out=io.StringIO()) == 0
    assert runs.cancel(RUN, out=io.StringIO(), target=runs.Target(kube=kube)) == 0
    assert run_objects(good, rbac.namespace) == NOTHING

    bad = rbac_cluster(cluster, rbac, {0: [Attempt(hold=True)],
                                       1: [Attempt(exit_code=2, logs=("SpecError: no data",))]})
    with pytest.raises(JobFailed, match="worker 1 exited"):
        submit(spec, bad, kube=client(bad, namespace=rbac.namespace),
               out=(out := io.StringIO()))
    assert "[worker 1] SpecError: no data" in out.getvalue().splitlines()  # the log tail

    assert good.refused == bad.refused == []
    used, granted = set(good.access) | set(bad.access), rbac.granted()
    assert sorted(granted - used) == [], "granted by k8s/rbac.yaml but never used"
    assert sorted(used - granted) == [], "used but granted only through a wildcard"


def test_rbac_mode_refuses_what_the_role_does_not_grant(cluster):
    # Guards the test above against an enforcement that allows everything.
    rbac = Rbac.load()
    fake = rbac_cluster(cluster, rbac, None)
    kube = client(fake, namespace=rbac.namespace)

    with pytest.raises(Forbidden, match=f"^forbidden: user 'alice' cannot get pods in "
                                        f"namespace '{rbac.namespace}'"):
        kube.get(rbac.namespace, "Pod", "any")  # pods are listed and watched, never read
    with pytest.raises(Forbidden, match="cannot list jobs.batch in namespace 'ml'"):
        kube.list(NAMESPACE, "Job", selector="x")  # the Role is bound in its namespace only
    assert kube.namespace_exists(rbac.namespace) is True
    assert kube.namespace_exists(NAMESPACE) is None  # resourceNames: only its own namespace

    assert fake.refused == [("get", "", "pods"), ("list", "batch", "jobs"),
                            ("get", "", "namespaces")]


# --- the CLI, with a kubeconfig file --------------------------------------------------------
@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    """Point KUBECONFIG at a file written for a fake cluster; HOME has no ~/.kube."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    def write(fake: FakeKube, **options) -> Path:
        path = fake.write_kubeconfig(tmp_path / "kubeconfig", **options)
        monkeypatch.setenv("KUBECONFIG", str(path))
        return path

    return write


def test_cli_commands_reach_the_cluster_through_the_kubeconfig(spec_path, cluster, kubeconfig,
                                                                capsys):
    fake = cluster({0: [Attempt(logs=("epoch 1",))], 1: [Attempt()]})
    kubeconfig(fake, namespace=NAMESPACE)

    assert cli.main(["submit", str(spec_path), "--run-id", RUN]) == 0
    out = capsys.readouterr().out
    assert "[worker 0] epoch 1" in out
    assert f"model: trainjob-models:/models/{RUN}/model.h5" in out

    assert cli.main(["status", RUN]) == 0
    assert "state:   succeeded" in capsys.readouterr().out
    assert cli.main(["logs", RUN]) == 0
    assert capsys.readouterr().out == "epoch 1\n"
    assert cli.main(["list"]) == 0
    assert RUN in capsys.readouterr().out
    assert cli.main(["cancel", RUN]) == 0
    assert run_objects(fake) == NOTHING
    assert cli.main(["status", RUN]) == 2
    assert capsys.readouterr().err == (f"trainjob: error: no run named '{RUN}' in namespace "
                                       "'ml'; `trainjob list` shows the runs there (`trainjob "
                                       "list -A`, those of every namespace).\n")


def write_spec(tmp_path: Path, **cluster) -> Path:
    path = tmp_path / "spec-here.yaml"
    path.write_text(yaml.safe_dump(spec_dict(**cluster)))
    return path


def test_a_run_submitted_as_the_readme_says_is_found_by_a_plain_list(tmp_path, cluster,
                                                                      kubeconfig, capsys):
    # `kubectl apply -k k8s/` made the namespace and its volumes; the context names no
    # namespace, and the spec names the one k8s/ creates, as the example does.
    assert spec_module.load(ROOT / "examples" / "shapes.yaml").cluster.namespace == \
        DEFAULT_NAMESPACE
    fake = cluster(pvcs=[(DEFAULT_NAMESPACE, "trainjob-models"),
                         (DEFAULT_NAMESPACE, "trainjob-data")])
    fake.add_namespace(DEFAULT_NAMESPACE)
    kubeconfig(fake)

    for run_id, namespace in (("readme-run1", DEFAULT_NAMESPACE),
                              ("readme-run2", None)):  # left out: the same
        spec_path = write_spec(tmp_path, namespace=namespace)
        assert cli.main(["submit", str(spec_path), "--run-id", run_id, "--no-wait"]) == 0
        out = capsys.readouterr().out
        assert f"submitted run {run_id} to namespace 'trainjob'" in out
        assert f"status: trainjob status {run_id}\n" in out  # no -n needed
        assert cli.main(["list"]) == 0
        assert run_id in capsys.readouterr().out
        assert cli.main(["status", run_id]) == 0
        capsys.readouterr()


def test_a_spec_without_a_namespace_goes_to_the_context_s(tmp_path, cluster, kubeconfig,
                                                          capsys):
    fake = cluster()
    kubeconfig(fake, namespace=NAMESPACE)

    assert cli.main(["submit", str(write_spec(tmp_path, namespace=None)), "--run-id", RUN,
                     "--no-wait"]) == 0
    assert f"status: trainjob status {RUN}\n" in capsys.readouterr().out
    assert run_objects(fake)["jobs"] == [RUN]
    assert cli.main(["list"]) == 0
    assert RUN in capsys.readouterr().out


def test_a_spec_s_namespace_wins_and_the_hints_name_it(spec_path, cluster, kubeconfig, capsys):
    fake = cluster(pvcs=PVCS + (("default", "trainjob-models"), ("default", "trainjob-data")))
    kubeconfig(fake)  # no namespace in the context

    assert cli.main(["submit", str(spec_path), "--run-id", RUN, "--no-wait"]) == 0
    assert f"status: trainjob status {RUN} -n ml" in capsys.readouterr().out
    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out == "no trainjob runs in namespace 'trainjob'\n"
    assert cli.main(["list", "-n", NAMESPACE]) == 0
    assert RUN in capsys.readouterr().out
    assert cli.main(["submit", str(spec_path), "--run-id", "other-run1", "--no-wait",
                     "-n", "default"]) == 0  # -n wins over the spec
    assert run_objects(fake, "default")["jobs"] == ["other-run1"]


def test_render_picks_the_namespace_by_the_same_rule(tmp_path, cluster, kubeconfig, capsys,
                                                     monkeypatch):
    spec_path = write_spec(tmp_path, namespace=None)

    def rendered(*flags: str) -> set[str]:
        assert cli.main(["render", str(spec_path), *flags]) == 0
        return {d["metadata"]["namespace"]
                for d in yaml.safe_load_all(capsys.readouterr().out)}

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nowhere"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert rendered() == {DEFAULT_NAMESPACE}  # offline, no kubeconfig at all
    kubeconfig(cluster(), namespace="team-a")
    assert rendered() == {"team-a"}
    assert rendered("-n", "other") == {"other"}
    spec_path.write_text(yaml.safe_dump(spec_dict(namespace="ml")))
    assert rendered() == {"ml"}
    assert rendered("--context", "fake", "-n", "x") == {"x"}


def test_cli_status_and_list_take_output_and_logs_take_a_window(spec_path, cluster,
                                                                 kubeconfig, capsys):
    fake = cluster({0: [Attempt(logs=("one", "two"))], 1: [Attempt()]})
    kubeconfig(fake, namespace=NAMESPACE)
    assert cli.main(["submit", str(spec_path), "--run-id", RUN]) == 0
    capsys.readouterr()

    assert cli.main(["status", RUN, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "succeeded"
    assert cli.main(["list", "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["runs"][0]["run"] == RUN
    assert cli.main(["list", "--all-namespaces", "-o", "wide"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["NAMESPACE", "RUN"]
    assert cli.main(["logs", RUN, "--tail", "1", "--since", "1h30m", "--timestamps"]) == 0
    assert re.fullmatch(r"\S+Z two\n", capsys.readouterr().out)
    with pytest.raises(SystemExit) as bad:
        cli.main(["logs", RUN, "--since", "10"])
    assert bad.value.code == 2
    assert "usage: trainjob logs" in capsys.readouterr().err


def test_list_all_namespaces_without_a_cluster_role_says_so_in_one_line(cluster, kubeconfig,
                                                                       capsys):
    rbac = Rbac.load()
    kubeconfig(rbac_cluster(cluster, rbac, None))

    assert cli.main(["list", "-A"]) == 2
    assert capsys.readouterr().err == (
        "trainjob: error: forbidden: listing the runs of every namespace (-A) needs list on "
        "jobs.batch at the cluster scope, a ClusterRole that k8s/rbac.yaml does not grant; "
        "ask your cluster admin for one, or list one namespace with -n.\n")
    assert cli.main(["list"]) == 0  # the namespace k8s/ grants, by the rule
    assert capsys.readouterr().out == f"no trainjob runs in namespace '{rbac.namespace}'\n"


def test_cli_reports_a_refused_create_in_one_line_with_exit_2(spec_path, cluster, kubeconfig,
                                                               capsys):
    fake = cluster()
    fake.forbid("create", "services")
    kubeconfig(fake, namespace=NAMESPACE)

    assert cli.main(["submit", str(spec_path), "--run-id", RUN]) == 2

    err = capsys.readouterr().err
    assert err == ("trainjob: error: forbidden: user 'alice' cannot create services in "
                   "namespace 'ml'; ask your cluster admin to bind the trainjob Role "
                   "(k8s/rbac.yaml) to you.\n")
    assert run_objects(fake) == NOTHING


def test_cli_reports_rejected_credentials(spec_path, cluster, kubeconfig, capsys):
    fake = cluster()
    fake.tokens = {"the-right-token"}
    kubeconfig(fake, token="an-expired-token")

    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"trainjob: error: unauthorized: the Kubernetes API at {fake.url} "
                          "rejected the credentials of kubeconfig context 'fake'")
    assert err.count("\n") == 1


def test_cli_reports_an_unreachable_api_server(cluster, kubeconfig, capsys):
    fake = cluster()
    kubeconfig(fake)
    fake.stop()  # the port is closed now

    assert cli.main(["list"]) == 2
    assert capsys.readouterr().err == (
        f"trainjob: error: cannot reach the Kubernetes API at {fake.url}: connection refused; "
        "check that the cluster is up and that kubeconfig context 'fake' points at it "
        "(kubectl cluster-info).\n")


def test_cli_explains_a_missing_kubeconfig(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nowhere"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trainjob: error: no kubeconfig found")
    assert "set KUBECONFIG=" in err


def test_cli_rejects_an_unknown_context(cluster, kubeconfig, capsys):
    kubeconfig(cluster())

    assert cli.main(["list", "--context", "prod"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trainjob: error: kubeconfig ")
    assert err.endswith(" has no context 'prod'; choose one of: fake.\n")


# --- Ctrl-C, in a real process --------------------------------------------------------------
def start_submit(spec_path: Path, kubeconfig_path: Path, *, stdin) -> subprocess.Popen:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig_path), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "job", "submit", str(spec_path),
                             "--run-id", RUN], stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def read_until(process: subprocess.Popen, prefix: str) -> list[str]:
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"{prefix!r} never came; got {lines}, stderr: {process.stderr.read()}")


@pytest.mark.timeout(120)
def test_ctrl_c_then_c_cancels_the_run(spec_path, cluster, tmp_path):
    fake = cluster({0: [Attempt(hold=True)], 1: [Attempt(hold=True)]})
    controller, terminal = pty.openpty()  # a real terminal, so the question is asked
    process = start_submit(spec_path, fake.write_kubeconfig(tmp_path / "kc", namespace="ml"),
                           stdin=terminal)
    try:
        read_until(process, "running: 2/2 workers")
        process.send_signal(signal.SIGINT)
        os.write(controller, b"c\n")
        out, err = process.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
        process.kill()

    assert process.returncode == EXIT_INTERRUPTED, err
    assert "cancel the run (c) or detach (d)? [d] " in out
    assert f"cancelled run {RUN}: deleted its Job (and pods), Service and ConfigMap" in out
    assert run_objects(fake) == NOTHING


@pytest.mark.timeout(120)
def test_ctrl_c_without_a_terminal_detaches_and_the_run_goes_on(spec_path, cluster, tmp_path):
    fake = cluster({0: [Attempt(hold=True)], 1: [Attempt(hold=True)]})
    process = start_submit(spec_path, fake.write_kubeconfig(tmp_path / "kc", namespace="ml"),
                           stdin=subprocess.DEVNULL)
    try:
        read_until(process, "running: 2/2 workers")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()

    assert process.returncode == EXIT_INTERRUPTED, err
    assert "cancel the run" not in out
    assert (f"detached; run {RUN} goes on. Reattach with trainjob status {RUN} or trainjob "
            f"logs {RUN} -f; stop it with trainjob cancel {RUN}") in out
    assert run_objects(fake)["jobs"] == [RUN]
    assert len(run_objects(fake)["pods"]) == 2


# --- the pure part --------------------------------------------------------------------------
def pod(name: str, index: int, phase: str, **status) -> dict:
    return {"metadata": {"name": name, "resourceVersion": "1",
                         "labels": {INDEX_LABEL: str(index)}},
            "status": {"phase": phase, **status}}


def terminated(code: int, reason: str = "Error") -> dict:
    return {"containerStatuses": [{"name": "trainjob", "state": {"terminated": {
        "exitCode": code, "reason": reason}}}]}


def test_reduce_prints_nothing_new_when_a_relist_repeats_what_was_seen():
    state = RunState(workers=2)
    events = [Event("Pod", "ADDED", (pod("a", 1, "Failed", **terminated(75)),)),
              Event("Pod", "ADDED", (pod("b", 1, "Running"),))]
    notices = []
    for event in events:
        state, lines = reduce(state, event)
        notices += lines
    relisted, again = reduce(state, Event("Pod", "SYNC", tuple(
        e.objects[0] for e in events)))

    assert notices == ["worker 1 restarted (exit 75, retryable): new pod b"]
    assert again == []
    assert describe(relisted) == describe(state)


def test_describe_names_the_first_reason_a_worker_is_not_running():
    state, _ = reduce(RunState(workers=2), Event("Pod", "SYNC", (
        pod("a", 0, "Running"),
        pod("b", 1, "Pending", containerStatuses=[{"state": {"waiting": {
            "reason": "ErrImagePull", "message": "manifest\n  unknown"}}}]))))

    assert describe(state) == "pending: 1/2 running (worker 1: ErrImagePull: manifest " \
                              "unknown)"


def test_describe_shows_a_suspended_job_as_queued():
    job = {"metadata": {"labels": {"kueue.x-k8s.io/queue-name": "team-a"}},
           "spec": {"suspend": True}}
    state, _ = reduce(RunState(workers=2), Event("Job", "SYNC", (job,)))

    assert describe(state) == ("queued: the Job is suspended until Kueue queue 'team-a' "
                               "admits it")


def test_why_failed_names_kills_by_their_reason():
    view = pod_view(pod("a", 0, "Failed", **terminated(137, "OOMKilled")), seq=0)
    assert why_failed(view) == "exit 137, OOMKilled"


def test_model_location_without_a_models_volume_warns_it_is_lost():
    text = model_location({"output": {"dir": "/models"}, "cluster": {}}, run_id="r")
    assert text.startswith("/models/r/model.h5 in the pod's emptyDir, deleted with the pod")


@pytest.mark.parametrize(("seconds", "text"), [(5, "5s"), (312, "5m12s"), (11040, "3h04m"),
                                               (183600, "2d03h")])
def test_format_age_keeps_the_two_largest_units(seconds, text):
    assert format_age(seconds) == text


def test_the_namespace_rule_takes_the_flag_then_the_spec_then_the_context_then_trainjob():
    asked = []

    def context() -> str:
        asked.append("kubeconfig")
        return "from-context"

    assert resolve_namespace(flag="flag", spec="spec", context=context) == "flag"
    assert resolve_namespace(flag=None, spec="spec", context=context) == "spec"
    assert asked == []  # the kubeconfig is read only when the flag and the spec say nothing
    assert resolve_namespace(flag=None, spec=None, context=context) == "from-context"
    assert resolve_namespace(flag=None, context=lambda: None) == "trainjob"


def test_the_default_namespace_is_the_one_k8s_creates():
    kustomization = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == DEFAULT_NAMESPACE


# --- import rules ---------------------------------------------------------------------------
def test_only_the_kube_module_imports_kubernetes():
    importers = []
    for path in sorted((ROOT / "job").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "kubernetes" or n.startswith("kubernetes.") for n in names):
                importers.append(path.relative_to(ROOT).as_posix())
    assert sorted(set(importers)) == ["job/submit/kube.py"]


def test_the_submitter_starts_without_importing_tensorflow():
    probe = ("import sys, job.cli, job.submit.runs, job.submit.kube\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('tensorflow', 'keras')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert result.stdout.strip() == "[]"


def test_the_fake_api_server_leaves_no_folder_behind(tmp_path, monkeypatch):
    # Its pods' folders live in one temporary folder, removed when it stops: a suite
    # run must not leave hundreds of them in the machine's temp folder.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with FakeKube():
        assert len(list(tmp_path.iterdir())) == 1

    assert list(tmp_path.iterdir()) == []
