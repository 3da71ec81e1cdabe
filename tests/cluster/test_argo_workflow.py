"""The argo engine (services.cluster.argo): one Workflow whose DAG runs the stages in order."""

from __future__ import annotations

import copy
import shlex
from collections import Counter
from graphlib import TopologicalSorter

import pytest
import yaml

from services.cluster.argo import experiment_workflow
from services.cluster.engines import cluster_manifests
from services.cluster.manifests import to_yaml, workload_pods
from services.common.spec.experiment import load_spec, parse_spec
from services.experiment import workplan

from .k8s_checks import REPO, check_no_secret_values, env_of, validate_object
from .test_experiment_jobs import SPEC, make

FULL = {**copy.deepcopy(SPEC),
        "pretrain": [{"name": "r1", "datasets": ["proc"]}, {"name": "r2", "datasets": ["frac"]},
                     {"name": "r3", "datasets": ["proc", "noise"]}],
        "targets": [{"name": "dig", "kind": "digits"}],
        "transfer": [{"name": "t", "pretrained": ["r1", "r2"], "targets": ["dig"]}],
        "neural_data": [{"name": "planted", "kind": "planted"}],
        "scoring": [{"name": "s", "runs": ["r1", "r3"], "benchmarks": ["planted"]}],
        "cluster": {"engine": "argo", "gpu": True, "queue": "gpu-queue", "meshgen_parallelism": 3, "render_parallelism": 5,
                    "render": {"cpu": "2", "memory": "4Gi", "gpus": 1, "backoff_limit_per_index": 4},
                    "train": {"cpu": "8", "memory": "32Gi", "gpus": 2, "deadline_seconds": 7200,
                              "node_selector": {"gpu": "a100"},
                              "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]}}}


def workflow_of(objs):
    (wf,) = [o for o in objs if o["kind"] == "Workflow"]
    return wf


class Step:
    """One pod the Workflow creates: a DAG task (expanded over withSequence) and its template."""

    def __init__(self, task, template, item):
        self.task = task["name"]
        self.template = template
        params = {p["name"]: p["value"] for p in task.get("arguments", {}).get("parameters", [])}
        if "resource" in template:  # a resource step: the pods are the created PyTorchJob's/JobSet's ranks
            self.resource = yaml.safe_load(template["resource"]["manifest"])
            (pod,) = workload_pods(self.resource)
            (container,) = pod["containers"]
        else:
            self.resource = None
            container = template["container"]
        args = [*container.get("command", []), *container["args"]]
        text = shlex.join(args).replace("{{inputs.parameters.index}}", params.get("index", "").replace("{{item}}", str(item)))
        self.args = shlex.split(text)
        self.gpus = int(container["resources"].get("requests", {}).get("nvidia.com/gpu", 0))

    def option(self, name):
        return self.args[self.args.index(name) + 1] if name in self.args else None

    @property
    def stage(self):
        return self.args[self.args.index("job") + 1] if "job" in self.args else self.args[0]


def walk(wf):
    """(tasks in an order the DAG allows, their dependencies, the pods of each task)."""
    templates = {t["name"]: t for t in wf["spec"]["templates"]}
    dag = templates[wf["spec"]["entrypoint"]]["dag"]["tasks"]
    deps = {t["name"]: set(t.get("dependencies", [])) for t in dag}
    order = list(TopologicalSorter(deps).static_order())
    pods = {}
    for task in dag:
        seq = task.get("withSequence")
        items = range(int(seq["count"])) if seq else [None]
        pods[task["name"]] = [Step(task, templates[task["template"]], i) for i in items]
    return order, deps, pods


def ancestors(deps, name):
    seen, todo = set(), list(deps[name])
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(deps[n])
    return seen


MULTINODE = pytest.mark.parametrize("multinode", [None, "pytorchjob", "jobset"])


def full(multinode=None):
    data = copy.deepcopy(FULL)
    if multinode:  # every run on 3 nodes of 2 GPUs, created by a resource step
        data["cluster"].update({"train_nodes": 3, "multinode": multinode})
    return parse_spec(copy.deepcopy(data)), yaml.safe_dump(data, sort_keys=False)


@MULTINODE
def test_dag_order_and_coverage(multinode):
    spec, text = full(multinode)
    wf = workflow_of(experiment_workflow(spec, text))
    order, deps, pods = walk(wf)
    stage_of = {name: ps[0].stage for name, ps in pods.items()}
    # Stage order: meshgen -> render -> every run (in parallel) -> transfer -> neuro -> report.
    assert deps["meshgen"] == set() and deps["render"] == {"meshgen"}
    runs = {f"train-{r}" for r in ("r1", "r2", "r3")}
    assert all(deps[r] == {"render"} for r in runs)
    assert deps["transfer"] == runs and deps["neuro"] == {"transfer"} and deps["report"] == {"neuro"}
    assert [stage_of[n] for n in order if stage_of[n] != "train"] == ["meshgen", "render", "neuro", "report"]
    # Every shard exactly once, over the render pods' (index, count).
    shards = []
    for pod in pods["render"]:
        shards += workplan.render_items_for_index(spec, int(pod.option("--index")), int(pod.option("--count")))
    assert len(pods["render"]) == 5 and Counter(shards) == Counter(workplan.render_items(spec))
    classes = []
    for pod in pods["meshgen"]:
        classes += workplan.meshgen_items_for_index(spec, int(pod.option("--index")), int(pod.option("--count")))
    assert Counter(classes) == Counter(workplan.meshgen_items(spec))
    # Every run exactly once: train's job gives run i to index i % count (services/train/job.py).
    trained = []
    for name in runs:
        (pod,) = pods[name]
        assert pod.option("--part") == "pretrain"
        index, count = int(pod.option("--index")), int(pod.option("--count"))
        trained += [r.name for i, r in enumerate(spec.pretrain) if i % count == index]
        assert name == f"train-{trained[-1]}"
    assert sorted(trained) == ["r1", "r2", "r3"]
    (transfer,) = pods["transfer"]
    assert transfer.option("--part") == "transfer"
    assert pods["report"][0].args == ["report", "/etc/flatland/spec.yaml"]


@MULTINODE
def test_no_gpu_pod_before_its_inputs(multinode):
    spec, text = full(multinode)
    order, deps, pods = walk(workflow_of(experiment_workflow(spec, text)))
    # Which tasks produce what each stage reads (services/experiment/readiness.py).
    producers = {"render": {"meshgen"}, "train": {"render"}, "neuro": {n for n in pods if n.startswith("train-")}}
    gpu_tasks = {name for name, ps in pods.items() if any(p.gpus for p in ps)}
    assert gpu_tasks == {"render", "transfer"} | {n for n in pods if n.startswith("train-")}
    for name in gpu_tasks:
        assert producers.get(pods[name][0].stage, set()) <= ancestors(deps, name), name
    (run,) = pods["train-r1"]
    if multinode is None:  # multi-GPU runs: one pod per run, torchrun over its GPUs
        assert run.gpus == 2 and run.args[:4] == ["torchrun", "--standalone", "--nproc-per-node", "2"]
    else:  # every rank pod of the run's PyTorchJob/JobSet: 2 GPUs, torchrun with the operator's rendezvous
        assert run.gpus == 2 and run.args[:3] == ["torchrun", "--module", "services.cli"]
        assert run.resource["kind"] == {"pytorchjob": "PyTorchJob", "jobset": "JobSet"}[multinode]


def test_workflow_settings_from_spec():
    spec, text = full()
    objs = experiment_workflow(spec, text)
    wf = workflow_of(objs)
    for obj in objs:
        validate_object(obj)
    templates = {t["name"]: t for t in wf["spec"]["templates"]}
    assert wf["spec"]["podMetadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert templates["render"]["retryStrategy"]["limit"] == "4"  # each render step retries on its own
    assert "!= 2" in templates["render"]["retryStrategy"]["expression"]  # never on a bad spec
    assert templates["train-run"]["activeDeadlineSeconds"] == 7200  # per step, from its start
    assert templates["meshgen"]["activeDeadlineSeconds"] == spec.cluster.active_deadline_seconds
    assert templates["train-run"]["nodeSelector"] == {"gpu": "a100"}
    keys = [t["key"] for t in templates["train-run"]["tolerations"]]
    assert keys == ["dedicated", "nvidia.com/gpu"]
    assert templates["render"]["container"]["image"].endswith("/render-gpu:0.1.0")
    assert templates["report"]["container"]["image"].endswith("/neuro:0.1.0")
    assert "nodeSelector" not in templates["meshgen"]
    for t in templates.values():
        if "container" in t:
            c = t["container"]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["runAsNonRoot"] is True
            assert env_of(c)["FLATLAND_STORE"] == "s3://flatland/tiny"
    check_no_secret_values({"kind": "Workflow", "metadata": wf["metadata"]})
    assert list(yaml.safe_load_all(to_yaml(objs))) == objs


def test_validation_catches_bad_workflow():
    spec, text = full()
    wf = workflow_of(experiment_workflow(spec, text))
    typo = copy.deepcopy(wf)
    typo["spec"]["templates"][1]["retryStrategy"]["limt"] = "3"
    with pytest.raises(AssertionError, match="dropped"):
        validate_object(typo)
    wrong_type = copy.deepcopy(wf)
    wrong_type["spec"]["templates"][0]["dag"]["tasks"] = "meshgen"
    with pytest.raises(AssertionError, match="Argo's model"):
        validate_object(wrong_type)


def test_engine_choice_and_errors():
    spec, text = make()
    assert [o["kind"] for o in cluster_manifests(spec, text, engine="argo")] == ["ConfigMap", "Workflow"]
    assert "Workflow" not in {o["kind"] for o in cluster_manifests(spec, text)}  # the spec's default: jobs
    with pytest.raises(ValueError, match="engine"):
        cluster_manifests(spec, text, engine="airflow")
    multi, multi_text = make({"cluster": {"train_nodes": 2}})
    with pytest.raises(ValueError, match="train_nodes"):
        experiment_workflow(multi, multi_text)
    digests = {n: "sha256:" + "ab" * 32 for n in ("meshgen", "render", "train", "neuro")}
    wf = workflow_of(experiment_workflow(spec, text, image_digests=digests))
    images = {t["container"]["image"] for t in wf["spec"]["templates"] if "container" in t}
    assert images and all(i.endswith("@sha256:" + "ab" * 32) and ":0.1.0" not in i for i in images)
    with pytest.raises(ValueError, match="render-gpu"):
        experiment_workflow(*full(), image_digests=digests)


def test_full_study_workflow_validates():
    path = REPO / "experiments" / "beyond-flatland.yaml"
    spec = load_spec(path)
    assert spec.cluster.engine == "argo"
    objs = cluster_manifests(spec, path.read_text())
    for obj in objs:
        validate_object(obj)
    order, deps, pods = walk(workflow_of(objs))
    # Table 2, FlatWorld, two 3D-prior runs, 3 ImageNet baselines
    assert sum(1 for n in pods if n.startswith("train-")) == len(spec.pretrain) == 12
    # a 3D-prior run starts from its supervised run's weights: its step waits for that run's
    assert deps["train-r50-procsynth-prior"] == {"render", "train-r50-procsynth"}
    assert deps["train-r50-morphsynth-prior"] == {"render", "train-r50-morphsynth"}
    assert len(pods["render"]) == workplan.render_completions(spec)
