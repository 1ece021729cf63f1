"""Rendering the Kubernetes manifests of a run, and the cluster files in k8s/.

Proves: the rendered YAML matches a reviewed golden file; every document passes
kubernetes-validate in strict mode (Kubernetes 1.31 and the newest schema it ships) and the
real ``kubernetes`` client's models; the Job keeps the exit-code contract, the environment
contract and the security settings; the pod's spec points into the pod's volumes.

Golden file: after an intended change to the rendering, regenerate it with
    TRAINJOB_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_manifests.py
and review the diff of tests/golden/shapes.yaml like code.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import kubernetes.client
import kubernetes_validate
import pytest
import yaml

from job import spec as spec_module
from job import spec_cluster
from job.cluster import JobDns, indexed_job_env
from job.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_RETRYABLE,
    PERMANENT_EXIT_CODES,
    RETRYABLE_EXIT_CODES,
    SpecError,
)
from job.submit import manifests
from job.submit.runs import RunRef

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "shapes.yaml"
GOLDEN_RUN_ID = "shapes-abcde"
GOLDEN_IMAGE = "registry.example.com/trainjob:0.1.0"
OLDEST_SUPPORTED = "1.31"
"""successPolicy and podFailurePolicy's strict schema need Kubernetes 1.31 or later."""
NEWEST_SCHEMA = kubernetes_validate.utils.latest_version()
K8S_VERSIONS = sorted({OLDEST_SUPPORTED, NEWEST_SCHEMA})


def load_spec(tmp_path: Path, *, cluster: dict | None = None, data: dict | None = None,
              **sections: dict) -> spec_module.Spec:
    """Write a spec file in ``tmp_path/project/specs`` and load it as the CLI would."""
    body = {
        "name": "shapes",
        "data": {"train_dir": "../data/shapes/train", **(data or {})},
        "train": {"global_batch_size": 64},
        "cluster": {"workers": 2, "image": "ghcr.io/example/trainjob:0.1.0",
                    "models_volume": {"claim": "trainjob-models", "mount": "/models"},
                    "data_volume": {"claim": "trainjob-data", "mount": "/data",
                                    "read_only": True},
                    **(cluster or {})},
        **sections,
    }
    folder = tmp_path / "project" / "specs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return spec_module.load(path)


def render(spec: spec_module.Spec, **options) -> dict[str, dict]:
    docs = manifests.render_manifests(spec, run_id=options.pop("run_id", "shapes-x7k2p"),
                                      **options)
    return {doc["kind"]: doc for doc in docs}


def pod_spec_of(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def container_of(job: dict) -> dict:
    (container,) = pod_spec_of(job)["containers"]
    return container


def env_of(job: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container_of(job)["env"]}


def spec_in_config_map(config_map: dict) -> spec_module.Spec:
    """Load the ConfigMap's spec.yaml the way the pod does: from /etc/trainjob."""
    data = yaml.safe_load(config_map["data"][manifests.SPEC_FILE_NAME])
    return spec_module.from_dict(data, base_dir=Path(manifests.SPEC_MOUNT_DIR),
                                 source=manifests.POD_SPEC_PATH)


# --- golden file ----------------------------------------------------------------------------

def test_rendered_example_spec_matches_the_golden_file():
    spec = spec_module.load(ROOT / "examples" / "shapes.yaml")
    text = manifests.to_yaml(manifests.render_manifests(spec, run_id=GOLDEN_RUN_ID,
                                                        image=GOLDEN_IMAGE))
    if os.environ.get("TRAINJOB_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert GOLDEN.exists(), "no golden file; run with TRAINJOB_UPDATE_GOLDEN=1 to create it"
    assert text == GOLDEN.read_text(encoding="utf-8"), (
        "rendered manifests differ from tests/golden/shapes.yaml; if the change is intended, "
        "regenerate with TRAINJOB_UPDATE_GOLDEN=1 and review the diff")


def test_golden_file_holds_no_machine_paths():
    text = GOLDEN.read_text(encoding="utf-8")
    assert str(ROOT) not in text
    assert str(Path.home()) not in text


def test_to_yaml_round_trips_and_uses_no_anchors(tmp_path):
    docs = manifests.render_manifests(load_spec(tmp_path), run_id="shapes-x7k2p")
    text = manifests.to_yaml(docs)
    assert list(yaml.safe_load_all(text)) == docs
    assert "&id" not in text and "*id" not in text
    assert text.count("\n---\n") + text.startswith("---\n") == 3
    assert manifests.to_yaml(docs) == text


# --- schema and client validation over the supported shapes --------------------------------

SHAPES = [
    pytest.param(workers, gpus, queue, volumes,
                 id=f"{workers}w-{gpus}gpu-{'queue' if queue else 'noqueue'}-"
                    f"{'volumes' if volumes else 'novolumes'}")
    for workers, gpus, queue, volumes in itertools.product(
        (1, 2, 4), (0, 1), (None, "team-a"), (True, False))
]


AFFINITY = {
    "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In",
                               "values": ["zone-a", "zone-b"]}]}]}},
    "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "trainjob"}},
            "topologyKey": "kubernetes.io/hostname"}}]},
}
"""A platform team's affinity: two zones only, and workers spread over nodes."""
PLATFORM = {"pod_labels": {"team": "vision", "example.com/cost-centre": "42"},
            "pod_annotations": {"sidecar.istio.io/inject": "false",
                                "example.com/owner": "ml team <ml@example.com>"},
            "priority_class": "training-low", "affinity": AFFINITY}
"""Every knob of cluster a platform team asks for, set."""


def shaped_spec(tmp_path: Path, *, workers: int, gpus: int, queue: str | None,
                volumes: bool) -> spec_module.Spec:
    cluster = {"workers": workers, "gpus_per_worker": gpus, "queue": queue,
               "active_deadline_seconds": 7200 if queue else None,
               "node_selector": {"pool": "gpu"} if gpus else {},
               "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                "effect": "NoSchedule"}] if gpus else [],
               "service_account": "trainer" if queue else None,
               **(PLATFORM if gpus else {"shm_size": None, "tmp_size": None})}
    if not volumes:
        cluster.update(models_volume=None, data_volume=None)
    return load_spec(tmp_path, cluster=cluster)


@pytest.mark.parametrize("workers, gpus, queue, volumes", SHAPES)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_document_passes_strict_schema_validation(tmp_path, version, workers,
                                                                 gpus, queue, volumes):
    spec = shaped_spec(tmp_path, workers=workers, gpus=gpus, queue=queue, volumes=volumes)
    for doc in manifests.render_manifests(spec, run_id="shapes-x7k2p"):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(p) for p in error.path)
            pytest.fail(f"{doc['kind']} fails Kubernetes {version} at {where}: {error.message}")


CLIENT_MODELS = {"ConfigMap": kubernetes.client.V1ConfigMap,
                 "Service": kubernetes.client.V1Service,
                 "Job": kubernetes.client.V1Job}


@pytest.mark.parametrize("workers, gpus, queue, volumes", SHAPES)
def test_kubernetes_client_models_accept_every_document_unchanged(tmp_path, workers, gpus,
                                                                  queue, volumes):
    # The client's models reject non-string quantities and silently drop unknown fields;
    # a lossless round trip proves neither happens.
    spec = shaped_spec(tmp_path, workers=workers, gpus=gpus, queue=queue, volumes=volumes)
    api = kubernetes.client.ApiClient()
    for doc in manifests.render_manifests(spec, run_id="shapes-x7k2p"):
        model = CLIENT_MODELS[doc["kind"]].from_dict(doc)
        assert api.sanitize_for_serialization(model) == doc


def test_strict_validation_catches_a_bad_document(tmp_path):
    # Guards the two tests above against validating nothing.
    job = render(load_spec(tmp_path))["Job"]
    job["spec"]["completionz"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, OLDEST_SUPPORTED, strict=True)
    del job["spec"]["completionz"]
    pod_spec_of(job)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 1
    with pytest.raises(ValueError):
        kubernetes.client.V1Job.from_dict(job)


# --- the Job's behaviour --------------------------------------------------------------------

def action_for(job: dict, *, exit_code: int, conditions: tuple[str, ...] = ()) -> str:
    """What the Job controller does with a failed pod, evaluating podFailurePolicy in order."""
    for rule in job["spec"]["podFailurePolicy"]["rules"]:
        on_codes = rule.get("onExitCodes")
        if on_codes is not None:
            assert on_codes["containerName"] == container_of(job)["name"]
            assert on_codes["operator"] == "In"
            if exit_code in on_codes["values"]:
                return rule["action"]
        for pattern in rule.get("onPodConditions", []):
            if pattern["type"] in conditions and pattern["status"] == "True":
                return rule["action"]
    return "Count"  # the Job controller's default


@pytest.mark.parametrize("code", PERMANENT_EXIT_CODES)
def test_permanent_exit_codes_fail_the_job_at_once(tmp_path, code):
    assert action_for(render(load_spec(tmp_path))["Job"], exit_code=code) == "FailJob"


@pytest.mark.parametrize("code", RETRYABLE_EXIT_CODES)
def test_retryable_exit_codes_count_toward_the_backoff_limit(tmp_path, code):
    assert action_for(render(load_spec(tmp_path))["Job"], exit_code=code) == "Count"


@pytest.mark.parametrize("code", (EXIT_FAILED, EXIT_BAD_INPUT, EXIT_RETRYABLE, 137))
def test_a_disrupted_pod_counts_toward_retries_whatever_its_exit_code(tmp_path, code):
    job = render(load_spec(tmp_path))["Job"]
    assert action_for(job, exit_code=code, conditions=("DisruptionTarget",)) == "Count"


def test_job_succeeds_when_the_chief_succeeds(tmp_path):
    job = render(load_spec(tmp_path, cluster={"workers": 4}))["Job"]
    assert job["spec"]["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}


@pytest.mark.parametrize("workers, max_restarts, expected", [(1, 3, 3), (4, 3, 12), (4, 0, 0)])
def test_backoff_limit_allows_max_restarts_group_restarts(tmp_path, workers, max_restarts,
                                                          expected):
    job = render(load_spec(tmp_path, cluster={"workers": workers,
                                              "max_restarts": max_restarts}))["Job"]
    assert job["spec"]["backoffLimit"] == expected


def test_job_runs_one_pod_per_worker_index_on_the_headless_service(tmp_path):
    docs = render(load_spec(tmp_path, cluster={"workers": 4}), run_id="shapes-q9z2w")
    job, service = docs["Job"], docs["Service"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    assert job["spec"]["podReplacementPolicy"] == "Failed"
    assert pod_spec_of(job)["restartPolicy"] == "Never"
    assert pod_spec_of(job)["subdomain"] == service["metadata"]["name"] == "shapes-q9z2w"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    (container_port,) = container_of(job)["ports"]
    assert port["port"] == container_port["containerPort"] == 2222
    assert port["name"] == container_port["name"]


def test_pod_environment_gives_cluster_from_env_every_worker(tmp_path):
    from job.cluster import cluster_from_env

    spec = load_spec(tmp_path, cluster={"workers": 3, "port": 2345},
                     train={"global_batch_size": 96})
    job = render(spec, run_id="shapes-q9z2w")["Job"]
    env = env_of(job)
    assert "JOB_COMPLETION_INDEX" not in env  # set by the Job controller, never shadowed
    expected = tuple(f"shapes-q9z2w-{i}.shapes-q9z2w:2345" for i in range(3))
    for index in range(3):
        # What the Job controller adds to each pod of an Indexed Job.
        cluster = cluster_from_env({**env, "JOB_COMPLETION_INDEX": str(index)})
        assert (cluster.num_workers, cluster.index) == (3, index)
        assert cluster.is_chief == (index == 0)
        assert cluster.worker_addresses == expected
    assert env["TRAINJOB_RUN_ID"] == "shapes-q9z2w"


def test_pod_environment_is_the_env_contract_found_by_dns(tmp_path):
    spec = load_spec(tmp_path, cluster={"workers": 3, "port": 2345},
                     train={"global_batch_size": 96})
    env = env_of(render(spec, run_id="shapes-q9z2w")["Job"])

    contract = indexed_job_env(num_workers=3, run_id="shapes-q9z2w",
                               dns=JobDns("shapes-q9z2w", "shapes-q9z2w", 2345))
    assert contract.items() <= env.items()


def test_container_runs_train_on_the_mounted_spec_with_the_run_id(tmp_path):
    docs = render(load_spec(tmp_path), run_id="shapes-q9z2w")
    container = container_of(docs["Job"])
    assert container["command"] + container["args"] == [
        "trainjob", "train", "/etc/trainjob/spec.yaml", "--run-id", "shapes-q9z2w"]
    spec_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/trainjob")
    assert spec_mount["readOnly"] is True
    spec_volume = next(v for v in pod_spec_of(docs["Job"])["volumes"]
                       if v["name"] == spec_mount["name"])
    assert spec_volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert "spec.yaml" in docs["ConfigMap"]["data"]


def test_pod_runs_locked_down_with_writable_tmp_and_shm(tmp_path):
    job = render(load_spec(tmp_path))["Job"]
    pod = pod_spec_of(job)
    container = container_of(job)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert mounts["/tmp"]["emptyDir"] == {"sizeLimit": "20Gi"}
    assert mounts["/dev/shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    assert env_of(job)["HOME"] == "/tmp"
    assert pod["terminationGracePeriodSeconds"] == manifests.TERMINATION_GRACE_SECONDS


def test_tmp_and_shm_take_the_spec_s_size_limits_and_null_lifts_them(tmp_path):
    def empty_dirs(**cluster) -> dict:
        volumes = pod_spec_of(render(load_spec(tmp_path, cluster=cluster))["Job"])["volumes"]
        return {v["name"]: v["emptyDir"] for v in volumes if "emptyDir" in v}

    assert empty_dirs(tmp_size="50Gi", shm_size="256Mi") == {
        "tmp": {"sizeLimit": "50Gi"}, "dshm": {"medium": "Memory", "sizeLimit": "256Mi"}}
    assert empty_dirs(tmp_size=None, shm_size=None) == {"tmp": {}, "dshm": {"medium": "Memory"}}


def test_platform_knobs_reach_the_pods_and_only_the_pods(tmp_path):
    docs = render(load_spec(tmp_path, cluster=PLATFORM))
    template = docs["Job"]["spec"]["template"]
    pod = template["spec"]
    assert pod["affinity"] == AFFINITY
    assert pod["priorityClassName"] == "training-low"
    assert template["metadata"]["labels"]["team"] == "vision"
    assert template["metadata"]["labels"]["example.com/cost-centre"] == "42"
    assert template["metadata"]["labels"]["trainjob.dev/run-id"] == "shapes-x7k2p"
    assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert "trainjob.dev/spec-sha256" in template["metadata"]["annotations"]
    for doc in docs.values():  # the Job, ConfigMap and Service keep trainjob's own
        assert "team" not in doc["metadata"]["labels"]
        assert "sidecar.istio.io/inject" not in doc["metadata"].get("annotations", {})


def test_a_spec_cannot_set_a_label_or_annotation_the_pods_carry_already(tmp_path):
    # The spec refuses the keys job.spec_cluster reserves; they must cover every key that
    # rendering puts on the pods, or a spec could silently change how runs are found.
    template = render(load_spec(tmp_path))["Job"]["spec"]["template"]["metadata"]
    for key, reserved in ((template["labels"], spec_cluster.RESERVED_POD_LABELS),
                          (template["annotations"], spec_cluster.RESERVED_POD_ANNOTATIONS)):
        for name in key:
            assert name in reserved or name.startswith(spec_cluster.RESERVED_PREFIXES), name
    for name in ("app.kubernetes.io/name", "trainjob.dev/run-id", "job-name"):
        with pytest.raises(SpecError, match=re.escape("cluster.pod_labels={")):
            load_spec(tmp_path, cluster={"pod_labels": {name: "mine"}})
    with pytest.raises(SpecError, match="do not set themselves"):
        load_spec(tmp_path, cluster={"pod_annotations": {"trainjob.dev/spec-sha256": "x"}})


def test_resources_request_what_they_limit_and_gpus_are_string_quantities(tmp_path):
    job = render(load_spec(tmp_path, cluster={"cpu": "4", "memory": "16Gi",
                                              "gpus_per_worker": 2}))["Job"]
    resources = container_of(job)["resources"]
    assert resources["requests"] == {"cpu": "4", "memory": "16Gi"}
    assert resources["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}


def test_cpu_only_workers_ask_for_no_gpu(tmp_path):
    job = render(load_spec(tmp_path, cluster={"gpus_per_worker": 0}))["Job"]
    assert "nvidia.com/gpu" not in json.dumps(job)


def test_scheduling_options_reach_the_pod(tmp_path):
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    job = render(load_spec(tmp_path, cluster={
        "node_selector": {"pool": "gpu"}, "tolerations": [toleration],
        "service_account": "trainer", "active_deadline_seconds": 3600,
        "ttl_seconds_after_finished": 600}))["Job"]
    pod = pod_spec_of(job)
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [toleration]
    assert pod["serviceAccountName"] == "trainer"
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["ttlSecondsAfterFinished"] == 600


def test_unset_options_are_left_out(tmp_path):
    spec = load_spec(tmp_path, cluster={"active_deadline_seconds": None})
    spec = dataclasses.replace(spec, cluster=dataclasses.replace(
        spec.cluster, ttl_seconds_after_finished=None))
    job = render(spec)["Job"]
    assert "activeDeadlineSeconds" not in job["spec"]
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert "suspend" not in job["spec"]
    for key in ("nodeSelector", "tolerations", "serviceAccountName"):
        assert key not in pod_spec_of(job)


def test_queue_labels_the_job_for_kueue_and_creates_it_suspended(tmp_path):
    job = render(load_spec(tmp_path, cluster={"queue": "team-a"}))["Job"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True


def test_without_a_queue_there_is_no_kueue_label(tmp_path):
    job = render(load_spec(tmp_path))["Job"]
    assert not any(k.startswith("kueue.x-k8s.io/") for k in job["metadata"]["labels"])


def test_every_object_and_pod_carries_the_run_labels(tmp_path):
    docs = render(load_spec(tmp_path), run_id="shapes-q9z2w")
    label_sets = [d["metadata"]["labels"] for d in docs.values()]
    label_sets.append(docs["Job"]["spec"]["template"]["metadata"]["labels"])
    for labels in label_sets:
        assert labels["trainjob.dev/run-id"] == "shapes-q9z2w"
        assert labels["trainjob.dev/name"] == "shapes"
        assert labels["app.kubernetes.io/instance"] == "shapes-q9z2w"
        assert labels["app.kubernetes.io/managed-by"] == "trainjob"
        assert labels["app.kubernetes.io/name"] == "trainjob"
        assert labels["app.kubernetes.io/version"]
    components = {labels["app.kubernetes.io/component"] for labels in label_sets}
    assert len(components) == 4


def test_the_commands_find_the_objects_under_the_names_rendered(tmp_path):
    docs = render(load_spec(tmp_path), run_id="shapes-q9z2w")
    run = RunRef(kube=None, namespace="default", run_id="shapes-q9z2w")

    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs.values()}
    assert {(o["kind"], o["metadata"]["name"]) for o in run.objects()} == rendered
    assert ("ConfigMap", run.config_map) in rendered
    (spec_volume,) = [v for v in pod_spec_of(docs["Job"])["volumes"] if "configMap" in v]
    assert spec_volume["configMap"]["name"] == run.config_map
    assert pod_spec_of(docs["Job"])["subdomain"] == manifests.service_name("shapes-q9z2w")


def test_without_a_namespace_anywhere_render_uses_the_one_k8s_creates(tmp_path):
    docs = render(load_spec(tmp_path, cluster={"namespace": None}))
    assert {d["metadata"]["namespace"] for d in docs.values()} == {"trainjob"}
    assert spec_in_config_map(docs["ConfigMap"]).cluster.namespace == "trainjob"


def test_objects_are_named_for_the_run_in_the_spec_namespace(tmp_path):
    docs = render(load_spec(tmp_path, cluster={"namespace": "ml"}), run_id="shapes-q9z2w")
    assert [(d["metadata"]["name"], d["metadata"]["namespace"]) for d in docs.values()] == [
        ("shapes-q9z2w-spec", "ml"), ("shapes-q9z2w", "ml"), ("shapes-q9z2w", "ml")]
    docs = render(load_spec(tmp_path, cluster={"namespace": "ml"}), namespace="other")
    assert {d["metadata"]["namespace"] for d in docs.values()} == {"other"}
    assert spec_in_config_map(docs["ConfigMap"]).cluster.namespace == "other"


def test_spec_hash_ties_the_job_and_its_pods_to_the_config_map(tmp_path):
    import hashlib

    docs = render(load_spec(tmp_path))
    digest = hashlib.sha256(docs["ConfigMap"]["data"]["spec.yaml"].encode()).hexdigest()
    key = "trainjob.dev/spec-sha256"
    assert docs["ConfigMap"]["metadata"]["annotations"][key] == digest
    assert docs["Job"]["metadata"]["annotations"][key] == digest
    assert docs["Job"]["spec"]["template"]["metadata"]["annotations"][key] == digest


# --- the spec the pod reads -----------------------------------------------------------------

def test_pod_spec_resolves_relative_data_paths_against_the_data_volume(tmp_path):
    # The spec lives in project/specs/; ../data/... resolves against the mount, which acts
    # as a root: '..' cannot climb out of it.
    spec = load_spec(tmp_path, data={"train_dir": "../data/shapes/train",
                                     "val_dir": "val", "test_dir": "/data/shared/test"},
                     model={"weights": "weights/base.weights.h5"})
    pod = spec_in_config_map(render(spec)["ConfigMap"])
    assert pod.data.train_dir == Path("/data/data/shapes/train")
    assert pod.data.val_dir == Path("/data/val")
    assert pod.data.test_dir == Path("/data/shared/test")  # already on the volume: kept
    assert pod.model.weights == Path("/data/weights/base.weights.h5")


def test_pod_spec_writes_output_to_the_models_volume(tmp_path):
    spec = load_spec(tmp_path, cluster={"models_volume": {"claim": "m", "mount": "/mnt/out"}},
                     output={"dir": "../models"})
    pod = spec_in_config_map(render(spec)["ConfigMap"])
    assert pod.output.dir == Path("/mnt/out")
    kept = load_spec(tmp_path, output={"dir": "/models/team-a"})
    assert spec_in_config_map(render(kept)["ConfigMap"]).output.dir == Path("/models/team-a")


def test_pod_spec_keeps_the_rest_of_the_spec_and_records_the_image(tmp_path):
    spec = load_spec(tmp_path, cluster={"workers": 4}, train={"global_batch_size": 128,
                                                              "epochs": 3})
    pod = spec_in_config_map(render(spec, image="registry.example.com/t:2")["ConfigMap"])
    assert pod.cluster.workers == 4
    assert pod.train == spec.train
    # allow_download: auto means "here, not in the pods" (job.weights), so the pods read false.
    assert pod.model == dataclasses.replace(spec.model, allow_download=False)
    assert pod.cluster.image == "registry.example.com/t:2"
    assert pod.data.image_size == spec.data.image_size


@pytest.mark.parametrize("cache_dir, expected", [
    (None, None),
    ("../cache", None),                      # a laptop path: back to the default
    ("/models/.cache-big", "/models/.cache-big"),  # already on a writable volume: kept
    ("/tmp/cache", None),                    # per-pod scratch: nothing to share
    ("/data/cache", None),                   # the data volume is read-only
])
def test_pod_spec_keeps_a_cache_dir_only_on_a_writable_mount(tmp_path, cache_dir, expected):
    spec = load_spec(tmp_path, data={"cache_dir": cache_dir})
    pod = spec_in_config_map(render(spec)["ConfigMap"])
    assert pod.data.cache_dir == (Path(expected) if expected else None)


def test_without_volumes_models_go_to_an_emptydir_and_data_paths_stay(tmp_path):
    spec = load_spec(tmp_path, cluster={"models_volume": None, "data_volume": None},
                     data={"train_dir": "/srv/images/train"})
    docs = render(spec)
    pod = spec_in_config_map(docs["ConfigMap"])
    assert pod.output.dir == Path("/models")
    assert pod.data.train_dir == Path("/srv/images/train")
    volumes = {v["name"]: v for v in pod_spec_of(docs["Job"])["volumes"]}
    assert volumes["models"] == {"name": "models", "emptyDir": {}}
    assert "data" not in volumes
    warnings = " ".join(manifests.render_warnings(spec))
    assert "cluster.models_volume" in warnings and "cluster.data_volume" in warnings
    assert manifests.render_warnings(load_spec(tmp_path)) == []


def test_data_volume_is_mounted_read_only_when_the_spec_says_so(tmp_path):
    for read_only in (True, False):
        spec = load_spec(tmp_path, cluster={"data_volume": {
            "claim": "trainjob-data", "mount": "/data", "read_only": read_only}})
        job = render(spec)["Job"]
        (mount,) = [m for m in container_of(job)["volumeMounts"] if m["name"] == "data"]
        (volume,) = [v for v in pod_spec_of(job)["volumes"] if v["name"] == "data"]
        assert mount["readOnly"] is volume["persistentVolumeClaim"]["readOnly"] is read_only


# --- errors and run ids ---------------------------------------------------------------------

def test_missing_image_is_a_spec_error_that_says_how_to_fix_it(tmp_path):
    spec = load_spec(tmp_path, cluster={"image": None})
    with pytest.raises(SpecError, match=r"cluster\.image is not set; pass --image"):
        manifests.render_manifests(spec, run_id="shapes-x7k2p")


def test_image_option_overrides_the_spec(tmp_path):
    job = render(load_spec(tmp_path), image="registry.example.com/t:9")["Job"]
    assert container_of(job)["image"] == "registry.example.com/t:9"


def test_read_only_models_volume_is_a_spec_error(tmp_path):
    spec = load_spec(tmp_path, cluster={"models_volume": {"claim": "m", "mount": "/models",
                                                          "read_only": True}})
    with pytest.raises(SpecError, match=r"cluster\.models_volume\.read_only"):
        manifests.render_manifests(spec, run_id="shapes-x7k2p")


@pytest.mark.parametrize("run_id", ["Shapes-1", "shapes_1", "-shapes", "s" * 53, ""])
def test_invalid_run_id_is_refused(tmp_path, run_id):
    with pytest.raises(SpecError, match="--run-id"):
        manifests.render_manifests(load_spec(tmp_path), run_id=run_id)


def test_new_run_ids_are_fresh_dns_labels_leaving_room_for_pod_names():
    longest_name = "n" * spec_module.NAME_MAX_LENGTH
    ids = {manifests.new_run_id(longest_name) for _ in range(20)}
    assert len(ids) == 20
    for run_id in ids:
        assert re.fullmatch(rf"{longest_name}-[a-z0-9]{{5}}", run_id)
        manifests.check_run_id(run_id)
        assert len(f"{run_id}-1023-abcde") <= 63  # the longest pod name the Job creates


def test_new_run_id_refuses_a_name_that_cannot_start_one():
    with pytest.raises(SpecError, match="name="):
        manifests.new_run_id("n" * 60)


def test_rendering_imports_neither_kubernetes_nor_tensorflow():
    code = ("import sys; import job.submit.manifests; "
            "bad = [m for m in ('kubernetes', 'tensorflow', 'keras') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the cluster files in k8s/ --------------------------------------------------------------

K8S = ROOT / "k8s"
KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))
PLAIN_FILES = sorted(p for p in K8S.rglob("*.yaml")
                     if p.name != "kustomization.yaml" and "kueue" not in p.parts)


def k8s_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


@pytest.mark.parametrize("path", PLAIN_FILES, ids=lambda p: str(p.relative_to(K8S)))
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_files_pass_strict_schema_validation(path, version):
    # The Kueue LocalQueue is a CRD, which kubernetes-validate has no schema for; it is
    # checked by test_kueue_example_is_a_local_queue instead.
    for doc in k8s_documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomizations_list_every_file_beside_them_and_nothing_missing():
    assert K8S / "kustomization.yaml" in KUSTOMIZATIONS
    for kustomization in KUSTOMIZATIONS:
        body = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
        assert body["kind"] == "Kustomization"
        listed = set(body["resources"])
        beside = {p.name for p in kustomization.parent.glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == beside, kustomization
        assert body["namespace"] == "trainjob"


def test_kustomize_namespace_matches_the_namespace_object_and_the_rbac():
    (namespace,) = k8s_documents(K8S / "namespace.yaml")
    assert namespace["metadata"]["name"] == "trainjob"
    (cluster_role,) = [d for d in k8s_documents(K8S / "rbac.yaml") if d["kind"] == "ClusterRole"]
    assert cluster_role["rules"] == [{"apiGroups": [""], "resources": ["namespaces"],
                                      "resourceNames": ["trainjob"], "verbs": ["get"]}]


def test_models_volume_is_shared_by_all_workers():
    (pvc,) = k8s_documents(K8S / "pvc-models.yaml")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    (pvc,) = k8s_documents(K8S / "pvc-data.yaml")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rbac_binds_both_roles_to_the_same_people_without_wildcards_or_object_names():
    # Which verbs the Role grants is proven by behaviour, not by a table copied here:
    # test_submit.py::test_rbac_role_grants_exactly_what_the_submitter_uses runs every
    # command against a fake API server enforcing this file and checks each grant is used.
    docs = {d["kind"]: d for d in k8s_documents(K8S / "rbac.yaml")}
    for binding, role in (("RoleBinding", "Role"), ("ClusterRoleBinding", "ClusterRole")):
        assert docs[binding]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                            "kind": role, "name": docs[role]["metadata"]["name"]}
        assert docs[binding]["subjects"]
    assert docs["RoleBinding"]["subjects"] == docs["ClusterRoleBinding"]["subjects"]
    rules = docs["Role"]["rules"]
    for rule in rules:
        # Run names are random, so a resourceNames list could never match a run's objects.
        assert "resourceNames" not in rule
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
    # One rule per resource, so its comment is the one place that says which command uses it.
    resources = [(group, resource) for rule in rules
                 for group, resource in itertools.product(rule["apiGroups"], rule["resources"])]
    assert len(resources) == len(set(resources)) == len(rules)


def test_kueue_example_is_a_local_queue():
    (queue,) = k8s_documents(K8S / "kueue" / "localqueue.yaml")
    assert (queue["apiVersion"], queue["kind"]) == ("kueue.x-k8s.io/v1beta1", "LocalQueue")
    assert queue["spec"]["clusterQueue"]
    spec_queue = queue["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", spec_queue)


def test_volume_shell_and_example_use_the_claims_the_base_creates(tmp_path):
    (pod,) = k8s_documents(K8S / "tools" / "volume-shell.yaml")
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]}
    created = {k8s_documents(K8S / f)[0]["metadata"]["name"]
               for f in ("pvc-models.yaml", "pvc-data.yaml")}
    assert claims == created
    example = spec_module.load(ROOT / "examples" / "shapes.yaml").cluster
    assert {example.models_volume.claim, example.data_volume.claim} == created
    job = render(load_spec(tmp_path))["Job"]
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        assert pod["spec"]["securityContext"][key] == pod_spec_of(job)["securityContext"][key]
