"""cluster_from_env and tf_config_for, table-tested on the environments clusters really set,
and indexed_job_env, the inverse the launcher and the manifests render, held to it by a round
trip."""

from __future__ import annotations

import json

import pytest

from job import cluster as cluster_module
from job.cluster import Cluster, JobDns, cluster_from_env, indexed_job_env, tf_config_for
from job.errors import EXIT_BAD_INPUT, EnvironmentConfigError


def tf_config(cluster: dict, task_type: str, index: int, **extra: object) -> dict[str, str]:
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type,
                                                                  "index": index}, **extra})}


TFJOB_CHIEF_AND_WORKERS = {
    "chief": ["mnist-chief-0.ns.svc:2222"],
    "worker": ["mnist-worker-0.ns.svc:2222", "mnist-worker-1.ns.svc:2222"],
}
VERTEX = {
    "chief": ["cmle-training-workerpool0-1a2b-0:2222"],
    "worker": ["cmle-training-workerpool1-1a2b-0:2222", "cmle-training-workerpool1-1a2b-1:2222"],
    "evaluator": ["cmle-training-workerpool3-1a2b-0:2222"],
}
VERTEX_EXTRA = {"environment": "cloud", "job": {"worker_pool_specs": [{"replica_count": 1}]}}
WORKERS_ONLY = {"worker": ["10.0.0.5:40001", "10.0.0.6:40002", "10.0.0.7:40003"]}
INDEXED = {"TRAINJOB_WORKERS": "3", "TRAINJOB_JOB_NAME": "shapes-x1y2z",
           "TRAINJOB_SERVICE": "shapes-x1y2z-workers", "TRAINJOB_PORT": "2222"}
PATTERN_ADDRESSES = tuple(f"shapes-x1y2z-{i}.shapes-x1y2z-workers:2222" for i in range(3))
LOCAL_HOSTS = "127.0.0.1:5001, 127.0.0.1:5002"


# (env, num_workers, index, is_chief, task_type, source)
GOOD_ENVIRONMENTS = {
    "nothing set: one chief worker": ({}, 1, 0, True, "chief", "single"),
    "TRAINJOB_WORKERS=1 alone is one worker": (
        {"TRAINJOB_WORKERS": "1"}, 1, 0, True, "chief", "single"),
    "empty TF_CONFIG is ignored": ({"TF_CONFIG": "  "}, 1, 0, True, "chief", "single"),
    "TFJob chief is index 0": (
        tf_config(TFJOB_CHIEF_AND_WORKERS, "chief", 0), 3, 0, True, "chief", "tf_config"),
    "TFJob worker 0 comes after the chief": (
        tf_config(TFJOB_CHIEF_AND_WORKERS, "worker", 0), 3, 1, False, "worker", "tf_config"),
    "TFJob worker 1 is index 2": (
        tf_config(TFJOB_CHIEF_AND_WORKERS, "worker", 1), 3, 2, False, "worker", "tf_config"),
    "TFJob workers only: worker 0 is chief": (
        tf_config(WORKERS_ONLY, "worker", 0), 3, 0, True, "worker", "tf_config"),
    "Ray Train worker 2": (tf_config(WORKERS_ONLY, "worker", 2), 3, 2, False, "worker",
                           "tf_config"),
    "Vertex chief with evaluator and extra keys": (
        tf_config(VERTEX, "chief", 0, **VERTEX_EXTRA), 3, 0, True, "chief", "tf_config"),
    "Vertex worker 1 with evaluator: evaluator not counted": (
        tf_config(VERTEX, "worker", 1, **VERTEX_EXTRA), 3, 2, False, "worker", "tf_config"),
    "TF_CONFIG numeric-string index, as TensorFlow accepts": (
        {"TF_CONFIG": json.dumps({"cluster": WORKERS_ONLY, "task": {"type": "worker",
                                                                    "index": "1"}})},
        3, 1, False, "worker", "tf_config"),
    "TF_CONFIG chief alone is one worker": (
        tf_config({"chief": ["c:2222"], "evaluator": ["e:2222"]}, "chief", 0),
        1, 0, True, "chief", "tf_config"),
    "TF_CONFIG wins over the Indexed Job": (
        {**INDEXED, "JOB_COMPLETION_INDEX": "2", **tf_config(WORKERS_ONLY, "worker", 1)},
        3, 1, False, "worker", "tf_config"),
    "Indexed Job worker 0 is chief": (
        {**INDEXED, "JOB_COMPLETION_INDEX": "0"}, 3, 0, True, "worker", "indexed_job"),
    "Indexed Job worker 2": (
        {**INDEXED, "JOB_COMPLETION_INDEX": "2"}, 3, 2, False, "worker", "indexed_job"),
    "Indexed Job of one needs no addresses": (
        {"JOB_COMPLETION_INDEX": "0", "TRAINJOB_WORKERS": "1"}, 1, 0, True, "worker",
        "indexed_job"),
    "Indexed Job with explicit hosts": (
        {"JOB_COMPLETION_INDEX": "1", "TRAINJOB_WORKERS": "2",
         "TRAINJOB_WORKER_HOSTS": LOCAL_HOSTS}, 2, 1, False, "worker", "indexed_job"),
}


@pytest.mark.parametrize("env, num_workers, index, is_chief, task_type, source",
                         GOOD_ENVIRONMENTS.values(), ids=GOOD_ENVIRONMENTS.keys())
def test_cluster_from_env_numbers_workers_like_tensorflow(env, num_workers, index, is_chief,
                                                          task_type, source):
    cluster = cluster_from_env(env)

    assert (cluster.num_workers, cluster.index, cluster.is_chief, cluster.task_type,
            cluster.source) == (num_workers, index, is_chief, task_type, source)
    assert cluster.is_multi_worker == (num_workers > 1)
    assert len(cluster.worker_addresses) == (num_workers if num_workers > 1 else 0)


@pytest.mark.parametrize("env, addresses", [
    (tf_config(TFJOB_CHIEF_AND_WORKERS, "worker", 1),
     ("mnist-chief-0.ns.svc:2222", "mnist-worker-0.ns.svc:2222", "mnist-worker-1.ns.svc:2222")),
    (tf_config(VERTEX, "chief", 0, **VERTEX_EXTRA),
     tuple(VERTEX["chief"] + VERTEX["worker"])),
    ({**INDEXED, "JOB_COMPLETION_INDEX": "1"}, PATTERN_ADDRESSES),
    ({**INDEXED, "JOB_COMPLETION_INDEX": "1", "TRAINJOB_WORKERS": "2",
      "TRAINJOB_WORKER_HOSTS": LOCAL_HOSTS}, ("127.0.0.1:5001", "127.0.0.1:5002")),
], ids=["tfjob chief first", "vertex without evaluator", "hostname pattern",
        "explicit hosts override the pattern"])
def test_worker_addresses_are_in_index_order(env, addresses):
    assert cluster_from_env(env).worker_addresses == addresses


def test_tf_config_is_none_for_a_single_worker():
    assert tf_config_for(cluster_from_env({})) is None
    assert tf_config_for(cluster_from_env({"JOB_COMPLETION_INDEX": "0",
                                           "TRAINJOB_WORKERS": "1"})) is None


def test_tf_config_for_indexed_job_lists_every_worker_and_this_task():
    cluster = cluster_from_env({**INDEXED, "JOB_COMPLETION_INDEX": "2"})

    assert json.loads(tf_config_for(cluster)) == {
        "cluster": {"worker": list(PATTERN_ADDRESSES)},
        "task": {"type": "worker", "index": 2},
    }


@pytest.mark.parametrize("task_type, index", [("chief", 0), ("worker", 0), ("worker", 1)])
def test_tf_config_for_vertex_drops_evaluator_and_extra_keys_but_keeps_roles(task_type, index):
    cluster = cluster_from_env(tf_config(VERTEX, task_type, index, **VERTEX_EXTRA))

    assert json.loads(tf_config_for(cluster)) == {
        "cluster": {"chief": VERTEX["chief"], "worker": VERTEX["worker"]},
        "task": {"type": task_type, "index": index},
    }


def test_tf_config_for_workers_only_round_trips():
    original = tf_config(WORKERS_ONLY, "worker", 2)

    rebuilt = tf_config_for(cluster_from_env(original))

    assert json.loads(rebuilt) == json.loads(original["TF_CONFIG"])
    assert cluster_from_env({"TF_CONFIG": rebuilt}) == cluster_from_env(original)


def test_describe_names_index_count_chief_and_source():
    cluster = cluster_from_env({**INDEXED, "JOB_COMPLETION_INDEX": "0"})

    assert cluster.describe() == "worker 0 of 3, chief (from indexed_job)"


def test_cluster_rejects_inconsistent_construction():
    with pytest.raises(ValueError, match="index=2"):
        Cluster(num_workers=2, index=2, is_chief=False, worker_addresses=("a:1", "b:1"),
                source="indexed_job", task_type="worker")


# --- the inverse: indexed_job_env -------------------------------------------------------

# shape -> the worker addresses cluster_from_env must read back from it
ROUND_TRIP_SHAPES = {
    "one worker, the launcher's host": (
        {"num_workers": 1, "hosts": ["127.0.0.1:4001"]}, ()),
    "one worker, the Indexed Job's DNS": (
        {"num_workers": 1, "dns": JobDns("shapes-x1y2z", "shapes-x1y2z", 2222)}, ()),
    "three workers, explicit hosts": (
        {"num_workers": 3, "hosts": ["10.0.0.5:2222", "10.0.0.6:2222", "10.0.0.6:2223"]},
        ("10.0.0.5:2222", "10.0.0.6:2222", "10.0.0.6:2223")),
    "three workers, the Indexed Job's service DNS": (
        {"num_workers": 3, "dns": JobDns("shapes-x1y2z", "shapes-x1y2z-workers", 2222)},
        PATTERN_ADDRESSES),
}


@pytest.mark.parametrize("shape, addresses", ROUND_TRIP_SHAPES.values(), ids=ROUND_TRIP_SHAPES)
def test_indexed_job_env_is_read_back_as_the_same_cluster(shape, addresses):
    for index in range(shape["num_workers"]):
        env = indexed_job_env(**shape, index=index, run_id="shapes-x1y2z")

        assert cluster_from_env(env) == Cluster(
            num_workers=shape["num_workers"], index=index, is_chief=index == 0,
            worker_addresses=addresses, source="indexed_job", task_type="worker")
        assert env["TRAINJOB_RUN_ID"] == "shapes-x1y2z"


def test_indexed_job_env_without_an_index_leaves_it_to_the_job_controller():
    env = indexed_job_env(num_workers=3, run_id="shapes-x1y2z",
                          dns=JobDns("shapes-x1y2z", "shapes-x1y2z-workers", 2222))

    assert "JOB_COMPLETION_INDEX" not in env  # a rendered copy would shadow the controller's
    assert env == INDEXED | {"TRAINJOB_RUN_ID": "shapes-x1y2z"}
    cluster = cluster_from_env({**env, "JOB_COMPLETION_INDEX": "2"})
    assert (cluster.index, cluster.worker_addresses) == (2, PATTERN_ADDRESSES)


def test_the_contract_keeps_the_variable_names_pods_and_users_rely_on():
    names = {name: getattr(cluster_module, name) for name in dir(cluster_module)
             if name.endswith("_ENV")}

    assert names == {
        "TF_CONFIG_ENV": "TF_CONFIG", "INDEX_ENV": "JOB_COMPLETION_INDEX",
        "WORKERS_ENV": "TRAINJOB_WORKERS", "WORKER_HOSTS_ENV": "TRAINJOB_WORKER_HOSTS",
        "JOB_NAME_ENV": "TRAINJOB_JOB_NAME", "SERVICE_ENV": "TRAINJOB_SERVICE",
        "PORT_ENV": "TRAINJOB_PORT", "RUN_ID_ENV": "TRAINJOB_RUN_ID"}


@pytest.mark.parametrize("arguments", [
    {"num_workers": 2, "hosts": ["a:1", "b:1"], "dns": JobDns("j", "s", 1)},
    {"num_workers": 2},
    {"num_workers": 3, "hosts": ["a:1", "b:1"]},
    {"num_workers": 2, "hosts": ["a:1", "b:1"], "index": 2},
    {"num_workers": 0, "dns": JobDns("j", "s", 1)},
], ids=["hosts and dns", "neither", "a host short", "index out of range", "no workers"])
def test_indexed_job_env_refuses_arguments_that_are_not_one_cluster(arguments):
    with pytest.raises(ValueError, match="do not describe one cluster"):
        indexed_job_env(run_id="r", **arguments)


def _raw(text: str) -> dict[str, str]:
    return {"TF_CONFIG": text}


# (env, fragments the message must contain)
BAD_ENVIRONMENTS = {
    "TF_CONFIG not JSON": (_raw("{cluster: worker}"), ["TF_CONFIG", "not valid JSON",
                                                       "{cluster: worker}"]),
    "TF_CONFIG a list": (_raw("[1, 2]"), ["TF_CONFIG", "list", "expected an object"]),
    "TF_CONFIG without cluster": (_raw('{"task": {"type": "worker", "index": 0}}'),
                                  ["TF_CONFIG", '"cluster"', "unset TF_CONFIG"]),
    "TF_CONFIG without task": (_raw(json.dumps({"cluster": WORKERS_ONLY})),
                               ["TF_CONFIG", '"task"']),
    "TF_CONFIG empty object": (_raw("{}"), ["TF_CONFIG", '"cluster"']),
    "TF_CONFIG empty cluster": (tf_config({}, "worker", 0), ["TF_CONFIG", "non-empty"]),
    "task without index": (_raw(json.dumps({"cluster": WORKERS_ONLY,
                                            "task": {"type": "worker"}})),
                           ["TF_CONFIG task=", '"index": 0']),
    "task type not in cluster": (tf_config(WORKERS_ONLY, "chief", 0),
                                 ["TF_CONFIG", "task.type='chief'", "cluster.chief"]),
    "unknown task type": (tf_config(WORKERS_ONLY, "trainer", 0), ["task.type='trainer'"]),
    "legacy master role": (tf_config({"master": ["m:2222"], "worker": ["w:2222"]}, "worker", 0),
                           ["['master']", "'chief'"]),
    "index out of range": (tf_config(WORKERS_ONLY, "worker", 3),
                           ["TF_CONFIG task.index=3", "3 'worker'", "0 to 2"]),
    "negative index": (tf_config(WORKERS_ONLY, "worker", -1), ["task.index=-1"]),
    "boolean index": (tf_config(WORKERS_ONLY, "worker", True), ["task.index=True"]),
    "address without port": (tf_config({"worker": ["w0", "w1:2222"]}, "worker", 0),
                             ["TF_CONFIG cluster.worker[0]='w0'", "host:port"]),
    "address with scheme": (tf_config({"worker": ["grpc://w0:2222"]}, "worker", 0),
                            ["cluster.worker[0]", "no scheme"]),
    "port out of range": (tf_config({"worker": ["w0:70000"]}, "worker", 0),
                          ["'w0:70000'", "65535"]),
    "address not a string": (tf_config({"worker": [2222]}, "worker", 0),
                             ["cluster.worker[0]=2222"]),
    "role not a list": (tf_config({"worker": "w0:2222"}, "worker", 0),
                        ['cluster.worker="w0:2222"', "list"]),
    "two chiefs": (tf_config({"chief": ["a:1", "b:1"], "worker": ["c:1"]}, "chief", 0),
                   ["cluster.chief", "at most one chief"]),
    "duplicate addresses": (tf_config({"chief": ["a:1"], "worker": ["a:1"]}, "chief", 0),
                            ["['a:1'] more than once"]),
    "parameter servers in the cluster": (
        tf_config({"ps": ["p:2222"], "worker": ["w:2222"]}, "worker", 0),
        ["TF_CONFIG", "parameter-server training is unsupported"]),
    "this task is a parameter server": (
        tf_config({"worker": ["w:2222"]}, "ps", 0), ["parameter-server training is unsupported"]),
    "this task is the evaluator": (
        tf_config(VERTEX, "evaluator", 0, **VERTEX_EXTRA),
        ["TF_CONFIG", "evaluator tasks are not part of training", "no evaluator role"]),
    "evaluator only": (tf_config({"evaluator": ["e:2222"]}, "worker", 0),
                       ["no 'chief' or 'worker' task"]),
    "index without worker count": ({"JOB_COMPLETION_INDEX": "0"},
                                   ["JOB_COMPLETION_INDEX=0", "TRAINJOB_WORKERS is not"]),
    "index out of range for workers": (
        {"JOB_COMPLETION_INDEX": "3", "TRAINJOB_WORKERS": "2", "TRAINJOB_WORKER_HOSTS": "a:1,b:1"},
        ["JOB_COMPLETION_INDEX=3 is out of range for TRAINJOB_WORKERS=2", "0 to 1"]),
    "index not a number": ({**INDEXED, "JOB_COMPLETION_INDEX": "one"},
                           ["JOB_COMPLETION_INDEX='one'", "whole number"]),
    "negative index env": ({**INDEXED, "JOB_COMPLETION_INDEX": "-1"},
                           ["JOB_COMPLETION_INDEX='-1'"]),
    "zero workers": ({**INDEXED, "JOB_COMPLETION_INDEX": "0", "TRAINJOB_WORKERS": "0"},
                     ["TRAINJOB_WORKERS='0'", "from 1 up"]),
    "workers not a number": ({**INDEXED, "JOB_COMPLETION_INDEX": "0", "TRAINJOB_WORKERS": "2.5"},
                             ["TRAINJOB_WORKERS='2.5'"]),
    "several workers but no index": ({"TRAINJOB_WORKERS": "2"},
                                     ["TRAINJOB_WORKERS=2", "JOB_COMPLETION_INDEX is not set"]),
    "bad worker count without index": ({"TRAINJOB_WORKERS": "many"}, ["TRAINJOB_WORKERS='many'"]),
    "missing port": ({**INDEXED, "JOB_COMPLETION_INDEX": "0", "TRAINJOB_PORT": ""},
                     ["TRAINJOB_PORT not set", "{TRAINJOB_JOB_NAME}-{i}.{TRAINJOB_SERVICE}"]),
    "missing name and service": (
        {"JOB_COMPLETION_INDEX": "0", "TRAINJOB_WORKERS": "2", "TRAINJOB_PORT": "2222"},
        ["TRAINJOB_JOB_NAME, TRAINJOB_SERVICE not set"]),
    "port not a number": ({**INDEXED, "JOB_COMPLETION_INDEX": "0", "TRAINJOB_PORT": "http"},
                          ["TRAINJOB_PORT='http'", "from 1 to 65535"]),
    "port zero": ({**INDEXED, "JOB_COMPLETION_INDEX": "0", "TRAINJOB_PORT": "0"},
                  ["TRAINJOB_PORT='0'"]),
    "port too large": ({**INDEXED, "JOB_COMPLETION_INDEX": "0", "TRAINJOB_PORT": "65536"},
                       ["TRAINJOB_PORT='65536'"]),
    "service with a colon": ({**INDEXED, "JOB_COMPLETION_INDEX": "0",
                              "TRAINJOB_SERVICE": "svc:2222"}, ["TRAINJOB_SERVICE='svc:2222'"]),
    "hosts count mismatch": ({**INDEXED, "JOB_COMPLETION_INDEX": "0",
                              "TRAINJOB_WORKER_HOSTS": LOCAL_HOSTS},
                             ["TRAINJOB_WORKER_HOSTS=", "2 entries but TRAINJOB_WORKERS=3"]),
    "hosts entry without port": ({"JOB_COMPLETION_INDEX": "0", "TRAINJOB_WORKERS": "2",
                                  "TRAINJOB_WORKER_HOSTS": "127.0.0.1:5001,127.0.0.1"},
                                 ["TRAINJOB_WORKER_HOSTS entry 1='127.0.0.1'", "host:port"]),
    "hosts with an empty entry": ({"JOB_COMPLETION_INDEX": "0", "TRAINJOB_WORKERS": "2",
                                   "TRAINJOB_WORKER_HOSTS": "127.0.0.1:5001,"},
                                  ["TRAINJOB_WORKER_HOSTS entry 1=''"]),
    "hosts repeated": ({"JOB_COMPLETION_INDEX": "0", "TRAINJOB_WORKERS": "2",
                        "TRAINJOB_WORKER_HOSTS": "127.0.0.1:5001,127.0.0.1:5001"},
                       ["TRAINJOB_WORKER_HOSTS", "more than once", "different ports"]),
}


@pytest.mark.parametrize("env, fragments", BAD_ENVIRONMENTS.values(),
                         ids=BAD_ENVIRONMENTS.keys())
def test_bad_environment_is_a_bad_input_error_naming_the_variable(env, fragments):
    with pytest.raises(EnvironmentConfigError) as caught:
        cluster_from_env(env)

    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message
    assert caught.value.exit_code == EXIT_BAD_INPUT
