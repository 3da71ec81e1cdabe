"""Multi-node training on a training operator: PyTorchJob (kubeflow-training SDK models) and JobSet (vendored CRD schema)."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml

from services.cluster import release
from services.cluster.argo import experiment_workflow
from services.cluster.manifests import experiment_manifests, to_yaml
from services.common.spec.experiment import parse_spec

from .k8s_checks import check_job_bounded, check_no_secret_values, check_pod_security, env_of, pod_specs, validate_object
from .test_argo_workflow import full, walk, workflow_of
from .test_experiment_jobs import jobs_of, make, releases_of

NODES, GPUS = 3, 4


def multinode(mode, **cluster):
    return make({"cluster": {"gpu": True, "train_nodes": NODES, "multinode": mode, "queue": "lab-gpus",
                             "train": {"cpu": "8", "memory": "32Gi", "gpus": GPUS}, **cluster}, "scoring": []})


def train_of(objs):
    return jobs_of_any(objs)["train"]


def jobs_of_any(objs):
    """Like jobs_of, for any released kind (the train stage's object sits in the ConfigMap)."""
    out = {}
    for cm in (o for o in objs if o["kind"] == "ConfigMap"):
        for key, text in cm["data"].items():
            if key.endswith("-job.yaml"):
                (obj,) = yaml.safe_load_all(text)
                out[key.removesuffix("-job.yaml")] = obj
    return out


def check_all(objs):
    released = list(jobs_of_any(objs).values())
    for obj in objs + released:
        validate_object(obj)
        check_pod_security(obj)
        check_no_secret_values(obj)
        check_job_bounded(obj)
    return released


def test_pytorchjob_on_the_jobs_engine():
    spec, text = multinode("pytorchjob")
    objs = experiment_manifests(spec, text)
    check_all(objs)
    job = train_of(objs)
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    name = job["metadata"]["name"]
    assert name == "tiny-train"
    # Elastic c10d rendezvous over a fixed-size group; a failed worker restarts the whole group.
    elastic = job["spec"]["elasticPolicy"]
    assert elastic == {"rdzvBackend": "c10d", "minReplicas": NODES, "maxReplicas": NODES, "maxRestarts": spec.cluster.backoff_limit}
    assert job["spec"]["nprocPerNode"] == str(GPUS)  # one process per GPU of the pod
    (replica,) = job["spec"]["pytorchReplicaSpecs"].values()
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Worker"] and replica["replicas"] == NODES
    assert replica["restartPolicy"] == "ExitCode"  # signals (evictions) retried; exit 1-127 (2 = bad spec) final
    pod = replica["template"]["spec"]
    (main,) = pod["containers"]
    assert main["name"] == "pytorch" and main["ports"] == [{"name": "pytorchjob-port", "containerPort": 29500}]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == str(GPUS) == main["resources"]["requests"]["nvidia.com/gpu"]
    assert main["image"].endswith("/train-gpu:0.1.0")
    assert [*main["command"], *main["args"]] == ["torchrun", "--module", "services.cli", "job", "train", "--spec",
                                                 "/etc/flatland/spec.yaml", "--index", "0", "--count", "1"]
    assert not any(k.startswith("PET_") for k in env_of(main))  # the operator sets torchrun's PET_* from elasticPolicy
    # Kueue: the PyTorchJob is the workload (admitted whole, created suspended); its pods are not queued one by one.
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "lab-gpus"
    assert job["spec"]["runPolicy"]["suspend"] is True
    assert "kueue.x-k8s.io/queue-name" not in replica["template"]["metadata"]["labels"]
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == spec.cluster.deadline("train")
    # Only its ranks reach each other.
    (policy,) = [o for o in objs if o["kind"] == "NetworkPolicy"]
    ranks = {"matchLabels": {"flatland.io/ranks": name}}
    assert replica["template"]["metadata"]["labels"]["flatland.io/ranks"] == name
    assert policy["spec"]["podSelector"] == ranks and policy["spec"]["ingress"] == [{"from": [{"podSelector": ranks}]}]
    assert not [o for o in objs if o["kind"] == "Service"]  # the operator makes the rendezvous Service
    # The release step may create exactly this kind too.
    (role,) = [o for o in objs if o["kind"] == "Role"]
    assert {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "verbs": ["create", "get"]} in role["rules"]
    assert "train" in releases_of(objs)
    no_queue = train_of(experiment_manifests(*multinode("pytorchjob", queue=None)))
    assert "suspend" not in no_queue["spec"]["runPolicy"] and "kueue.x-k8s.io/queue-name" not in no_queue["metadata"]["labels"]


def test_jobset_on_the_jobs_engine():
    spec, text = multinode("jobset")
    objs = experiment_manifests(spec, text)
    check_all(objs)
    js = train_of(objs)
    assert js["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and js["kind"] == "JobSet"
    name = js["metadata"]["name"]
    # Restart as a group: any failed rank fails its Job (backoffLimit 0) and the JobSet recreates all of them,
    # except a bad spec (exit 2 -> podFailurePolicy FailJob -> FailJobSet).
    assert js["spec"]["failurePolicy"]["maxRestarts"] == spec.cluster.backoff_limit
    assert js["spec"]["failurePolicy"]["rules"] == [
        {"name": "bad-spec", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}]
    assert js["spec"]["network"]["enableDNSHostnames"] is True
    (rj,) = js["spec"]["replicatedJobs"]
    assert rj["replicas"] == 1
    job = rj["template"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == NODES
    assert job["backoffLimit"] == 0 and "suspend" not in job
    assert {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}} in job["podFailurePolicy"]["rules"]
    (main,) = job["template"]["spec"]["containers"]
    env = env_of(main)
    assert env["PET_RDZV_BACKEND"] == "c10d" and env["PET_NNODES"] == str(NODES)
    assert env["PET_NPROC_PER_NODE"] == str(GPUS) and env["PET_MAX_RESTARTS"] == str(spec.cluster.backoff_limit)
    # Rank 0's pod by JobSet's DNS scheme: <jobset>-<replicatedJob>-<job index>-<pod index>.<jobset>
    assert env["PET_RDZV_ENDPOINT"] == f"{name}-{rj['name']}-0-0.{name}:29500"
    assert main["resources"]["limits"]["nvidia.com/gpu"] == str(GPUS)
    assert js["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "lab-gpus" and js["spec"]["suspend"] is True
    assert "kueue.x-k8s.io/queue-name" not in job["template"]["metadata"]["labels"]
    (role,) = [o for o in objs if o["kind"] == "Role"]
    assert {"apiGroups": ["jobset.x-k8s.io"], "resources": ["jobsets"], "verbs": ["create", "get"]} in role["rules"]


@pytest.mark.parametrize("mode", ["pytorchjob", "jobset"])
def test_release_creates_operator_objects(mode):
    from kubernetes import client

    spec, text = multinode(mode)
    (configmap,) = [o for o in experiment_manifests(spec, text) if o["kind"] == "ConfigMap"]
    objects = release.read_objects(configmap["data"]["train-job.yaml"])

    class FakeCustom:
        def __init__(self):
            self.created = []

        def create_namespaced_custom_object(self, group, version, namespace, plural, body):
            if self.created:
                raise client.ApiException(status=409, reason="AlreadyExists")
            self.created.append((group, version, namespace, plural, body["metadata"]["name"]))

    api = FakeCustom()
    kind = objects[0]["kind"].lower()
    assert list(release.create_objects(objects, api=object(), custom_api=api)) == [f"created {kind}/tiny-train in flatland"]
    assert list(release.create_objects(objects, api=object(), custom_api=api)) == [f"{kind}/tiny-train already exists in flatland"]
    group, version, _ = release.RELEASABLE[objects[0]["apiVersion"], objects[0]["kind"]]
    assert api.created == [(group, version, "flatland", {"pytorchjob": "pytorchjobs", "jobset": "jobsets"}[mode], "tiny-train")]


@pytest.mark.parametrize("mode", ["pytorchjob", "jobset"])
def test_argo_creates_one_operator_object_per_run(mode):
    spec, text = full(mode)
    objs = experiment_workflow(spec, text)
    wf = workflow_of(objs)
    for obj in objs:
        validate_object(obj)
    order, deps, pods = walk(wf)
    templates = {t["name"]: t for t in wf["spec"]["templates"]}
    runs = [r.name for r in spec.pretrain]
    policies = {o["metadata"]["name"]: o for o in objs if o["kind"] == "NetworkPolicy"}
    assert len(policies) == len(runs)
    for i, run in enumerate(runs):
        (step,) = pods[f"train-{run}"]
        obj = step.resource
        validate_object(obj)
        check_pod_security(obj)
        check_job_bounded(obj)
        template = templates[f"train-run-{i}"]
        resource = template["resource"]
        assert resource["action"] == "create" and resource["setOwnerReference"] is True
        assert deps[f"train-{run}"] == {"render"}  # created only once every shard is rendered
        assert step.option("--part") == "pretrain" and (step.option("--index"), step.option("--count")) == (str(i), str(len(runs)))
        assert obj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        (pod,) = pod_specs(obj)
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
        if mode == "pytorchjob":
            # A fresh name per try: Argo's retry of the step recreates the whole group.
            assert obj["metadata"]["generateName"] == f"tiny-train-{i}-" and "name" not in obj["metadata"]
            assert obj["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] == "Never"
            assert resource["successCondition"] == "status.replicaStatuses.Worker.succeeded = 3"
            assert resource["failureCondition"] == "status.replicaStatuses.Worker.failed > 0"
            assert template["retryStrategy"]["limit"] == str(spec.cluster.backoff_limit)
            group = obj["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["metadata"]["labels"]["flatland.io/ranks"]
        else:
            assert obj["metadata"]["name"] == f"tiny-train-{i}"
            assert resource["successCondition"] == "status.terminalState = Completed"
            assert resource["failureCondition"] == "status.terminalState = Failed"
            assert "retryStrategy" not in template  # the JobSet restarts its group itself
            group = obj["metadata"]["name"]
        assert policies[f"tiny-train-{i}-ranks"]["spec"]["podSelector"] == {"matchLabels": {"flatland.io/ranks": group}}
    assert list(yaml.safe_load_all(to_yaml(objs))) == objs


def test_indexed_multinode_is_jobs_engine_only():
    spec, text = make({"cluster": {"train_nodes": 2}})
    assert spec.cluster.multinode == "indexed"
    with pytest.raises(ValueError, match="cluster.multinode.*train_nodes"):
        experiment_workflow(spec, text)
    with pytest.raises(Exception, match="multinode"):
        make({"cluster": {"train_nodes": 2, "multinode": "mpijob"}})


def test_validation_catches_bad_operator_objects():
    spec, text = multinode("pytorchjob")
    job = train_of(experiment_manifests(spec, text))
    typo = copy.deepcopy(job)
    typo["spec"]["elasticPolicy"]["rdzvBackendd"] = "c10d"
    with pytest.raises(AssertionError, match="rdzvBackendd"):
        validate_object(typo)
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "3"
    with pytest.raises(AssertionError, match="expected int"):
        validate_object(wrong_type)
    bad_pod = copy.deepcopy(job)
    bad_pod["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["gpus"] = 4
    with pytest.raises(AssertionError, match="gpus"):
        validate_object(bad_pod)
    js = train_of(experiment_manifests(*multinode("jobset")))
    typo = copy.deepcopy(js)
    typo["spec"]["failurePolicy"]["maxRestart"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxRestart"):
        validate_object(typo)
    bad_action = copy.deepcopy(js)
    bad_action["spec"]["failurePolicy"]["rules"][0]["action"] = "Retry"
    with pytest.raises(jsonschema.ValidationError, match="Retry"):
        validate_object(bad_action)
    bad_job = copy.deepcopy(js)
    bad_job["spec"]["replicatedJobs"][0]["template"]["spec"]["completionsMode"] = "Indexed"
    with pytest.raises(AssertionError, match="completionsMode"):
        validate_object(bad_job)


def test_operator_pods_are_checked_against_the_node():
    with pytest.raises(ValueError, match="cluster.train.*nvidia.com/gpu request 4 > node's 2"):
        experiment_manifests(*multinode("pytorchjob", node={"cpu": "64", "memory": "480Gi", "gpus": 2}))
    experiment_manifests(*multinode("jobset", node={"cpu": "64", "memory": "480Gi", "gpus": 8}))


@pytest.mark.parametrize("mode", [None, "pytorchjob", "jobset"])
def test_argo_steps_are_checked_against_the_node(mode):
    spec, text = full(mode)  # train: 2 GPUs and 32Gi per pod
    node = {"cpu": "64", "memory": "480Gi", "gpus": 8}
    ok = parse_spec({**yaml.safe_load(text), "cluster": {**yaml.safe_load(text)["cluster"], "node": node}})
    experiment_workflow(ok, text)
    small = parse_spec({**yaml.safe_load(text), "cluster": {**yaml.safe_load(text)["cluster"], "node": {**node, "gpus": 1}}})
    with pytest.raises(ValueError, match=r"cluster.train: the train-run(-0)? step's pod cannot fit.*nvidia.com/gpu request 2 > node's 1"):
        experiment_workflow(small, text)
