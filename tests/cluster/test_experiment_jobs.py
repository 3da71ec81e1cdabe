"""Experiment manifests (services.cluster.manifests) and the work plan behind their Indexed Jobs."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import yaml

from services.experiment import workplan
from services.cluster.engines import cluster_manifests
from services.cluster.manifests import experiment_manifests, object_name, to_yaml
from services.common.spec.experiment import load_spec, parse_spec

from .k8s_checks import (
    pod_specs,
    REPO,
    check_job_bounded,
    check_no_secret_values,
    check_pod_security,
    env_of,
    gpu_containers,
    validate_object,
)

SPEC = {
    "name": "tiny",
    "seed": 3,
    "datasets": [
        {"name": "proc", "family": {"family": "procsynth"}, "classes": 5,
         "render": {"views_per_instance": 10, "shard_size": 7, "val_fraction": 0.2}},
        {"name": "frac", "family": {"family": "fractal2d", "flips": 2}, "classes": 3,
         "fractal_render": {"drawings_per_variant": 4, "shard_size": 100, "val_fraction": 0.25}},
        {"name": "noise", "family": {"family": "noisescenes", "scenes": 50, "shard_size": 20}, "classes": 4},
    ],
    "pretrain": [{"name": "r1", "datasets": ["proc", "frac"]}],
    "cluster": {"meshgen_parallelism": 4, "render_parallelism": 8},
}
# Worked by hand from SPEC:
#   proc: 5 classes x 3 meshes (1 + 2 stretch variants) x 10 views; 2 views/instance held out
#         -> train 120, val 30 samples -> ceil(/7): 18 + 5 shards
#   frac: 3 classes x 25 variants x 2 flips x 4 drawings; 1 drawing held out
#         -> train 450, val 150 -> ceil(/100): 5 + 2 shards
#   noise: 50 scenes; round(5.0) = 5 held out -> train 45, val 5 -> ceil(/20): 3 + 1 shards
EXPECTED_SHARDS = {"proc": {"train": 18, "val": 5}, "frac": {"train": 5, "val": 2}, "noise": {"train": 3, "val": 1}}


def make(overrides: dict | None = None):
    data = copy.deepcopy(SPEC)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    text = yaml.safe_dump(data, sort_keys=False)
    return parse_spec(data), text


def jobs_of(objs):
    """Each stage's Job: applied directly (the first stage) or held in the ConfigMap for its release step."""
    jobs = {o["metadata"]["labels"]["flatland.io/stage"]: o for o in objs
            if o["kind"] == "Job" and o["metadata"]["labels"]["app.kubernetes.io/component"] != "release"}
    for cm in (o for o in objs if o["kind"] == "ConfigMap"):
        for key, text in cm["data"].items():
            if key.endswith("-job.yaml"):
                (job,) = yaml.safe_load_all(text)
                jobs[key.removesuffix("-job.yaml")] = job
    return jobs


def releases_of(objs):
    return {o["metadata"]["labels"]["flatland.io/stage"]: o for o in objs
            if o["kind"] == "Job" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "release"}


def test_shard_counts_match_hand_count():
    spec, _ = make()
    for dataset in spec.datasets:
        assert workplan.shard_counts(dataset) == EXPECTED_SHARDS[dataset.name]
    sizes = {d.name: workplan.split_sizes(d) for d in spec.datasets}
    assert sizes["proc"] == {"train": 120, "val": 30}
    assert sizes["frac"] == {"train": 450, "val": 150}
    assert sizes["noise"] == {"train": 45, "val": 5}
    assert len(workplan.render_items(spec)) == 34


def test_shard_counts_agree_with_render_stage():
    plan = pytest.importorskip("services.render.plan", reason="the render stage's shard plan is not in this tree")
    for overrides in ({}, {"datasets": [
        {"name": "m", "family": {"family": "morphsynth"}, "classes": 7, "instances_per_class": 2,
         "render": {"views_per_instance": 3, "val_fraction": 0.5, "shard_size": 4}},
        {"name": "f", "family": {"family": "fractal2d"}, "classes": 2, "instances_per_class": 5,
         "fractal_render": {"drawings_per_variant": 5, "val_fraction": 0.1, "shard_size": 9}},
    ], "pretrain": []}):
        spec, _ = make(overrides)
        ours = [tuple(item) for item in workplan.render_items(spec)]
        theirs = [(t.dataset, t.split, t.shard) for t in plan.all_shards(spec)]
        assert ours == theirs
        for count in (1, 3, 8):
            for index in range(count):
                assert [tuple(i) for i in workplan.render_items_for_index(spec, index, count)] == [
                    (t.dataset, t.split, t.shard) for t in plan.shards_for_index(spec, index, count)]


def test_meshgen_split_agrees_with_meshgen_stage():
    job = pytest.importorskip("services.meshgen.job", reason="the meshgen stage's job is not in this tree")
    dataset_mod = pytest.importorskip("services.meshgen.dataset")
    spec, _ = make()
    assert [d.name for d in spec.datasets if dataset_mod.is_meshgen_dataset(d)] == ["proc", "frac"]
    for count in (1, 2, 4):
        for index in range(count):
            ours = workplan.meshgen_items_for_index(spec, index, count)
            for dataset in ("proc", "frac"):
                expected = job.shard_classes(spec.dataset(dataset).classes, index, count)
                assert [i.class_index for i in ours if i.dataset == dataset] == expected


@pytest.mark.parametrize("parallelism", [1, 3, 8, 34, 100])
def test_render_indexes_cover_every_shard_exactly_once(parallelism):
    spec, text = make({"cluster": {"render_parallelism": parallelism}})
    render = jobs_of(experiment_manifests(spec, text))["render"]["spec"]
    assert render["completionMode"] == "Indexed"
    count = render["completions"]
    assert count == min(parallelism, 34) and render["parallelism"] == count
    assigned = [item for index in range(count) for item in workplan.render_items_for_index(spec, index, count)]
    assert Counter(assigned) == Counter(workplan.render_items(spec))  # every shard, each exactly once
    assert all(workplan.render_items_for_index(spec, index, count) for index in range(count))  # no idle index
    # Kubernetes sets JOB_COMPLETION_INDEX itself; the count must come from the manifest.
    assert env_of(render["template"]["spec"]["containers"][0])["JOB_COMPLETION_COUNT"] == str(count)
    with pytest.raises(ValueError, match="index"):
        workplan.render_items_for_index(spec, count, count)


@pytest.mark.parametrize("parallelism", [1, 2, 4, 5, 50])
def test_meshgen_indexes_cover_every_class_exactly_once(parallelism):
    spec, text = make({"cluster": {"meshgen_parallelism": parallelism}})
    meshgen = jobs_of(experiment_manifests(spec, text))["meshgen"]["spec"]
    count = meshgen["completions"]
    assert count == min(parallelism, 5)  # the largest mesh dataset has 5 classes; noisescenes has no meshgen work
    assigned = [item for index in range(count) for item in workplan.meshgen_items_for_index(spec, index, count)]
    assert Counter(assigned) == Counter(workplan.meshgen_items(spec))
    assert len(assigned) == 5 + 3
    assert env_of(meshgen["template"]["spec"]["containers"][0])["JOB_COMPLETION_COUNT"] == str(count)
    assert all(workplan.meshgen_items_for_index(spec, index, count) for index in range(count))


def _experiment_specs():
    cases = [pytest.param(*make(), id="built-in-test"),
             pytest.param(*make({"cluster": {"gpu": True, "train_nodes": 3}, "scoring": []}), id="gpu-multinode")]
    for name in ("quickstart", "beyond-flatland"):
        path = REPO / "experiments" / f"{name}.yaml"
        marks = () if path.exists() else (pytest.mark.skip(reason=f"{path.relative_to(REPO)} not written yet"),)
        spec = load_spec(path) if path.exists() else None
        cases.append(pytest.param(spec, path.read_text() if path.exists() else "", id=name, marks=marks))
    return cases


@pytest.mark.parametrize(("spec", "text"), _experiment_specs())
def test_generated_manifests_validate_and_are_safe(spec, text):
    objs = experiment_manifests(spec, text)
    jobs = jobs_of(objs)
    for obj in objs + [j for j in jobs.values() if j not in objs]:
        validate_object(obj)
        check_pod_security(obj)
        check_no_secret_values(obj)
        check_job_bounded(obj)
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "beyond-flatland"
        assert labels["flatland.io/experiment"] == spec.name
        assert obj["metadata"]["namespace"] == spec.cluster.namespace
        assert len(obj["metadata"]["name"]) <= 52
    for stage, job in jobs.items():
        pod = job["spec"]["template"]
        assert pod["metadata"]["labels"]["flatland.io/stage"] == stage
        assert pod["metadata"]["labels"]["flatland.io/role"] == "stage"  # admitted to MinIO by the NetworkPolicy
        assert pod["spec"]["restartPolicy"] == "Never"
        assert "initContainers" not in pod["spec"]  # nothing waits inside a pod that holds the stage's requests
        (main,) = pod["spec"]["containers"]
        command = [*main.get("command", []), *main["args"]]  # image ENTRYPOINT is `flatland`; torchrun for multi-node train
        start = command.index("job")
        assert command[start:start + 4] == ["job", stage, "--spec", "/etc/flatland/spec.yaml"]
        assert start == 0 or (command[0] == "torchrun" and command[start - 2:start] == ["--module", "services.cli"])
        assert env_of(main)["FLATLAND_STORE"].startswith("s3://")
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}} in rules
        assert any(r["action"] == "Ignore" and r["onPodConditions"][0]["type"] == "DisruptionTarget" for r in rules)
        assert job["spec"]["activeDeadlineSeconds"] == spec.cluster.deadline(stage)
        if stage in ("meshgen", "render"):  # each index retries on its own
            assert job["spec"]["backoffLimitPerIndex"] == spec.cluster.stage(stage).backoff_limit_per_index
            assert "backoffLimit" not in job["spec"]
        else:
            assert job["spec"]["backoffLimit"] == spec.cluster.backoff_limit
    # Only the first stage's Job is applied; every later one is created by its release step.
    first, *later = jobs
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "Job" and o in jobs.values()] == [jobs[first]["metadata"]["name"]]
    assert set(releases_of(objs)) == set(later)
    assert gpu_containers(objs) == set()  # nothing applied up front holds a GPU
    (configmap,) = [o for o in objs if o["kind"] == "ConfigMap"]
    assert configmap["data"]["spec.yaml"] == text
    assert parse_spec(yaml.safe_load(configmap["data"]["spec.yaml"])) == spec
    # to_yaml is what `kubectl apply -f` reads: it must parse back to the same objects.
    assert list(yaml.safe_load_all(to_yaml(objs))) == objs
    expected_gpu = {"render", "train"} & set(jobs) if spec.cluster.gpu else set()
    assert gpu_containers(list(jobs.values())) == expected_gpu


def test_gpu_switch():
    spec, text = make({"cluster": {"gpu": True}})
    jobs = jobs_of(experiment_manifests(spec, text))
    assert gpu_containers(list(jobs.values())) == {"render", "train"}
    render = jobs["render"]["spec"]["template"]["spec"]
    assert render["containers"][0]["image"] == "ghcr.io/beyond-flatland/render-gpu:0.1.0"
    assert env_of(render["containers"][0])["PYOPENGL_PLATFORM"] == "egl"
    assert render["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert jobs["meshgen"]["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/beyond-flatland/meshgen:0.1.0"
    for job in jobs.values():  # a GPU image in a container without a GPU request must not see the node's GPUs
        pod = job["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            if "-gpu:" in container["image"] and "nvidia.com/gpu" not in container["resources"]["limits"]:
                assert env_of(container)["NVIDIA_VISIBLE_DEVICES"] == "void", container["name"]
    cpu_spec, cpu_text = make()
    cpu_jobs = jobs_of(experiment_manifests(cpu_spec, cpu_text))
    assert gpu_containers(list(cpu_jobs.values())) == set()
    assert env_of(cpu_jobs["render"]["spec"]["template"]["spec"]["containers"][0])["PYOPENGL_PLATFORM"] == "osmesa"


def test_multinode_train_is_indexed_with_headless_service():
    spec, text = make({"cluster": {"train_nodes": 4}})
    objs = experiment_manifests(spec, text)
    train = jobs_of(objs)["train"]
    (service,) = [o for o in objs if o["kind"] == "Service"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": train["metadata"]["name"]}
    assert train["spec"]["completionMode"] == "Indexed"
    assert train["spec"]["completions"] == train["spec"]["parallelism"] == 4  # all ranks run together
    pod = train["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    env = env_of(pod["containers"][0])
    assert env["PET_NNODES"] == "4"
    # Elastic c10d rendezvous hosted by rank 0's agent: a failed rank restarts the group.
    assert env["PET_RDZV_BACKEND"] == "c10d"
    assert env["PET_RDZV_ENDPOINT"] == f"{train['metadata']['name']}-0.{service['metadata']['name']}:29500"
    assert env["PET_RDZV_ID"] == train["metadata"]["name"]
    assert int(env["PET_MAX_RESTARTS"]) >= 1
    main = pod["containers"][0]
    # torchrun launches the ranks; every rank does the whole train stage (not a share of it).
    assert main["command"] == ["torchrun"]
    assert main["args"][:4] == ["--module", "services.cli", "job", "train"] and main["args"][-4:] == ["--index", "0", "--count", "1"]
    assert "JOB_COMPLETION_COUNT" not in env
    (policy,) = [o for o in objs if o["kind"] == "NetworkPolicy"]
    ranks = {"matchLabels": {"batch.kubernetes.io/job-name": train["metadata"]["name"]}}
    assert policy["spec"]["podSelector"] == ranks and policy["spec"]["ingress"] == [{"from": [{"podSelector": ranks}]}]
    single = jobs_of(experiment_manifests(*make()))["train"]
    assert "completionMode" not in single["spec"] and "subdomain" not in single["spec"]["template"]["spec"]


def test_stages_without_work_get_no_job():
    spec, text = make({"datasets": [{"name": "noise", "family": {"family": "noisescenes", "scenes": 10}}], "pretrain": []})
    objs = experiment_manifests(spec, text)
    assert set(jobs_of(objs)) == {"render"}  # no mesh family, no training, no scoring
    assert jobs_of(objs)["render"]["spec"]["completions"] == 2  # 9 train + 1 val sample -> 2 shards


def test_names_store_and_errors():
    long_name = "a-very-long-experiment-name-that-goes-on-and-on-and-on-x"
    names = {object_name(long_name, stage) for stage in ("spec", "meshgen", "render", "train", "train-ranks", "neuro")}
    assert len(names) == 6 and all(len(n) <= 52 for n in names)
    spec, text = make()
    objs = experiment_manifests(spec, text)
    assert env_of(jobs_of(objs)["render"]["spec"]["template"]["spec"]["containers"][0])["FLATLAND_STORE"] == "s3://flatland/tiny"
    objs = experiment_manifests(spec, text, store_url="s3://lab/exp1")
    assert env_of(jobs_of(objs)["train"]["spec"]["template"]["spec"]["containers"][0])["FLATLAND_STORE"] == "s3://lab/exp1"
    with pytest.raises(ValueError, match="s3://"):
        experiment_manifests(spec, text, store_url="/data/local")
    with pytest.raises(ValueError, match="spec_text"):
        experiment_manifests(spec, "  ")


def test_checks_catch_unsafe_objects():
    """The property checks used above really reject what they are meant to reject."""
    spec, text = make()
    job = jobs_of(experiment_manifests(spec, text))["render"]
    leaky = copy.deepcopy(job)
    leaky["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"})
    with pytest.raises(AssertionError, match="secretKeyRef"):
        check_no_secret_values(leaky)
    url = copy.deepcopy(job)
    url["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "MC_HOST_x", "value": "http://me:pw@minio:9000"})
    with pytest.raises(AssertionError, match="literal credentials"):
        check_no_secret_values(url)
    writable = copy.deepcopy(job)
    writable["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    with pytest.raises(AssertionError, match="readOnlyRootFilesystem"):
        check_pod_security(writable)
    unbounded = copy.deepcopy(job)
    del unbounded["spec"]["activeDeadlineSeconds"]
    with pytest.raises(AssertionError, match="deadline"):
        check_job_bounded(unbounded)
    typo = copy.deepcopy(job)
    typo["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(AssertionError, match="readOnlyRootFS"):
        validate_object(typo)


def test_user_data_claim_mounted_only_where_read():
    spec, text = make({
        "targets": [{"name": "c10", "kind": "cifar10", "path": "/data/cifar10"}, {"name": "dig", "kind": "digits"}],
        "transfer": [{"name": "t", "pretrained": ["r1"], "targets": ["c10", "dig"]}],
        "neural_data": [{"name": "planted", "kind": "planted"}],
        "scoring": [{"name": "s", "runs": ["r1"], "benchmarks": ["planted"]}],
    })
    jobs = jobs_of(experiment_manifests(spec, text))

    def claims(stage):
        pod = jobs[stage]["spec"]["template"]["spec"]
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        return [(v["persistentVolumeClaim"]["claimName"], mounts[v["name"]]["mountPath"], mounts[v["name"]]["readOnly"])
                for v in pod["volumes"] if "persistentVolumeClaim" in v]

    assert claims("train") == [("flatland-data", "/data", True)]
    assert claims("neuro") == []  # the planted benchmark needs no files
    assert claims("meshgen") == claims("render") == []
    for job in jobs.values():
        validate_object(job)


@pytest.mark.parametrize("name", ["quickstart", "beyond-flatland"])
def test_committed_examples_are_current_and_valid(name):
    example = REPO / "k8s" / "experiments" / f"{name}.yaml"
    source = REPO / "experiments" / f"{name}.yaml"
    if not source.exists():
        pytest.skip(f"{source.relative_to(REPO)} does not exist")
    expected = to_yaml(cluster_manifests(load_spec(source), source.read_text()))  # the spec's engine
    assert example.exists() and example.read_text() == expected, (
        f"{example.relative_to(REPO)} is stale; regenerate it with "
        f"`flatland k8s manifests {source.relative_to(REPO)} -o {example.relative_to(REPO)}`"
    )
    for obj in yaml.safe_load_all(example.read_text()):
        validate_object(obj)
        check_pod_security(obj)
        check_no_secret_values(obj)
        check_job_bounded(obj)


def _dev_node_left():
    """The dev overlay's declared node, less what its base install requests."""
    from .k8s_checks import kustomize, parse_quantity, pod_specs

    objs = kustomize("overlays/dev")
    (namespace,) = [o for o in objs if o["kind"] == "Namespace"]
    shape = dict(kv.split("=") for kv in namespace["metadata"]["annotations"]["flatland.io/node-shape"].split(","))
    cpu, memory = parse_quantity(shape["cpu"]), parse_quantity(shape["memory"])
    for obj in objs:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for pod in pod_specs(obj):
                for c in pod["containers"]:
                    requests = c.get("resources", {}).get("requests", {})
                    cpu -= obj["spec"].get("replicas", 1) * parse_quantity(requests.get("cpu", 0))
                    memory -= obj["spec"].get("replicas", 1) * parse_quantity(requests.get("memory", 0))
    return cpu, memory, int(shape["gpus"])


@pytest.mark.parametrize("engine", ["jobs", "argo"])
def test_quickstart_pods_fit_the_dev_node(engine):
    from services.cluster.manifests import fit_problems

    cpu, memory, gpus = _dev_node_left()
    assert cpu > 0 and memory > 0
    source = REPO / "experiments" / "quickstart.yaml"
    objs = cluster_manifests(load_spec(source), source.read_text(), engine=engine)
    if engine == "jobs":
        pods = [j["spec"]["template"]["spec"] for j in [*jobs_of(objs).values(), *releases_of(objs).values()]]
    else:
        (wf,) = [o for o in objs if o["kind"] == "Workflow"]
        pods = [{"containers": [t["container"]]} for t in wf["spec"]["templates"] if "container" in t]
    assert len(pods) >= 4
    for pod in pods:  # each pod alone next to the base install (stages run one after another)
        assert fit_problems(pod, f"{cpu}", f"{int(memory)}", gpus) == [], pod["containers"][0]["name"]
    # And the check does reject a pod that is too big for it.
    big = {"containers": [{"resources": {"requests": {"cpu": "4", "memory": "1Gi"}}}]}
    assert fit_problems(big, f"{cpu}", f"{int(memory)}", gpus) == [f"cpu request 4 > node's {cpu}"]


def test_node_shape_from_spec_is_enforced():
    node = {"cpu": "4", "memory": "16Gi", "gpus": 1}
    spec, text = make({"cluster": {"gpu": True, "node": node, "train": {"cpu": "2", "memory": "8Gi", "gpus": 1}}})
    assert experiment_manifests(spec, text)  # fits
    spec, text = make({"cluster": {"gpu": True, "node": node, "train": {"cpu": "2", "memory": "32Gi", "gpus": 2}}})
    with pytest.raises(ValueError, match=r"cluster.train: .*memory request .* > node's .*GPU|nvidia.com/gpu request 2 > node's 1"):
        experiment_manifests(spec, text)


def test_resources_and_scheduling_from_spec():
    spec, text = make({"cluster": {"gpu": True, "render": {"cpu": "3", "memory": "6Gi", "gpus": 2, "node_selector": {"pool": "render"},
                                                            "backoff_limit_per_index": 5, "max_failed_indexes": 2,
                                                            "deadline_seconds": 3600}}})
    render = jobs_of(experiment_manifests(spec, text))["render"]
    pod = render["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "3", "memory": "6Gi", "nvidia.com/gpu": "2"},
                                                 "limits": {"memory": "6Gi", "nvidia.com/gpu": "2"}}
    assert pod["nodeSelector"] == {"pool": "render"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert render["spec"]["backoffLimitPerIndex"] == 5 and render["spec"]["maxFailedIndexes"] == 2
    assert render["spec"]["activeDeadlineSeconds"] == 3600
    validate_object(render)
    with pytest.raises(Exception, match="cpu"):
        make({"cluster": {"render": {"cpu": "lots", "memory": "1Gi"}}})


def test_kueue_queue_and_release_steps():
    spec, text = make({"cluster": {"queue": "lab-gpus", "gpu": True}, "scoring": []})
    objs = experiment_manifests(spec, text)
    jobs, releases = jobs_of(objs), releases_of(objs)
    for job in [*jobs.values(), *releases.values()]:  # every Job queued, created suspended for Kueue to admit
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "lab-gpus"
        assert job["spec"]["suspend"] is True
    assert set(releases) == {"render", "train"}  # meshgen is applied directly
    release = releases["train"]["spec"]["template"]["spec"]
    (container,) = release["containers"]
    assert container["args"][:3] == ["k8s", "release", "train"]
    assert container["args"][container["args"].index("--job") + 1] == "/etc/flatland/train-job.yaml"
    assert "-gpu" not in container["image"] and "nvidia.com/gpu" not in str(container["resources"])
    assert release["automountServiceAccountToken"] is True
    (role,) = [o for o in objs if o["kind"] == "Role"]
    assert role["rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get"]}]
    (binding,) = [o for o in objs if o["kind"] == "RoleBinding"]
    assert binding["subjects"][0]["name"] == release["serviceAccountName"] == role["metadata"]["name"]
    for obj in objs:
        validate_object(obj)
        check_pod_security(obj)
    plain = experiment_manifests(*make())
    assert all("suspend" not in j["spec"] and "kueue.x-k8s.io/queue-name" not in j["metadata"]["labels"]
               for j in jobs_of(plain).values())


def test_release_waits_then_creates_the_job(tmp_path, monkeypatch):
    from kubernetes import client

    from services.cluster import release
    from services.experiment import readiness

    spec, text = make()
    objs = experiment_manifests(spec, text)
    (configmap,) = [o for o in objs if o["kind"] == "ConfigMap"]
    jobs = release.read_objects(configmap["data"]["render-job.yaml"])
    assert [j["metadata"]["name"] for j in jobs] == ["tiny-render"]

    class FakeBatch:
        def __init__(self):
            self.created = []

        def create_namespaced_job(self, namespace, body):
            if any(b["metadata"]["name"] == body["metadata"]["name"] for _, b in self.created):
                raise client.ApiException(status=409, reason="AlreadyExists")
            self.created.append((namespace, body))

    missing = [["meshes/x (3 of 5 classes)"], ["meshes/x (1 of 5 classes)"], []]
    monkeypatch.setattr(readiness, "missing_inputs", lambda stage, spec, store: missing.pop(0))
    lines = []
    readiness.wait_for_inputs("render", spec, None, timeout=100, poll=0, report=lines.append, sleep=lambda s: None)
    assert lines[-1] == "render: inputs complete" and len(lines) == 3
    api = FakeBatch()
    assert list(release.create_objects(jobs, api)) == ["created job/tiny-render in flatland"]
    assert list(release.create_objects(jobs, api)) == ["job/tiny-render already exists in flatland"]  # retried step
    assert api.created == [("flatland", jobs[0])]
    with pytest.raises(ValueError, match="only batch/v1 Jobs"):
        release.read_objects("apiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: y}\n")
    monkeypatch.setattr(readiness, "missing_inputs", lambda stage, spec, store: ["meshes/x (5 of 5 classes)"])
    clock = iter([0.0, 1.0, 2.0, 50.0])
    with pytest.raises(TimeoutError, match="meshes/x"):
        readiness.wait_for_inputs("render", spec, None, timeout=10, poll=0, clock=lambda: next(clock), sleep=lambda s: None)


def test_tags_are_pulled_always_digests_if_not_present():
    from services.cluster.argo import experiment_workflow

    spec, text = make()
    digests = {n: "sha256:" + "cd" * 32 for n in ("meshgen", "render", "train", "neuro")}
    for engine_objs, pinned in ((experiment_manifests(spec, text), False), (experiment_manifests(spec, text, image_digests=digests), True),
                                (experiment_workflow(spec, text), False), (experiment_workflow(spec, text, image_digests=digests), True)):
        objs = list(engine_objs) + list(jobs_of(engine_objs).values())
        containers = [c for o in objs for pod in pod_specs(o) for c in pod["containers"]]
        containers += [t["container"] for o in objs if o["kind"] == "Workflow" for t in o["spec"]["templates"] if "container" in t]
        assert containers
        for c in containers:  # a tag may be pushed again: resolve it on every start; a digest cannot change
            assert ("@sha256:" in c["image"]) is pinned
            assert c["imagePullPolicy"] == ("IfNotPresent" if pinned else "Always"), c["image"]
