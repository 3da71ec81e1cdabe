"""The ``argo`` engine: one Argo Workflow that runs an experiment as a DAG of steps.

    meshgen[0..n) -> render[0..m) -> train-<run> (one step per run, in parallel) -> transfer -> neuro -> report

With ``cluster.train_nodes > 1`` a run step is a resource step that creates the run's
PyTorchJob or JobSet (``cluster.multinode``; :mod:`services.cluster.training`) and waits for it.

Fan-out stages are Argo parallel steps (``withSequence``): step ``i`` of ``n`` runs
``flatland job <stage> --index i --count n`` and does the share
:mod:`services.experiment.workplan` gives index ``i``. A step's pod is created only when
every step it depends on has succeeded, so nothing waits holding a GPU and each step's
``activeDeadlineSeconds`` counts from its own start. Every step retries on its own
(``retryStrategy``, from ``cluster.<stage>.backoff_limit_per_index``), except on exit
code 2 (bad spec: retrying cannot help). With ``cluster.queue`` every pod carries
``kueue.x-k8s.io/queue-name`` (Kueue's pod integration admits it).

Built from hera's generated Argo models, so each piece is typed; :func:`to_yaml` of the
result is what ``argo submit`` (or ``kubectl create``) reads. The Workflow runs under
the ServiceAccount of ``k8s/components/argo`` (Argo's executor reports step results
through the API).
"""

from __future__ import annotations

from typing import Any

from hera.workflows import models as m

from services.cluster import manifests as k8s
from services.common.spec.experiment import ExperimentSpec
from services.experiment import workplan

WORKFLOW_ACCOUNT = "flatland-workflow"
ENTRYPOINT = "study"
REPORT_RESOURCES = {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
# Step templates of the DAG, and the stage whose pod settings (image, resources, volumes) each uses.
TEMPLATE_STAGE = {"meshgen": "meshgen", "render": "render", "train-run": "train", "transfer": "train",
                  "neuro": "neuro", "report": "neuro"}


def _index_input() -> m.Inputs:
    return m.Inputs(parameters=[m.Parameter(name="index")])


def _retry(spec: ExperimentSpec, stage: str) -> m.RetryStrategy:
    return m.RetryStrategy(
        limit=str(spec.cluster.stage(stage).backoff_limit_per_index),
        retry_policy="Always",  # failures and errors (evictions, node loss) alike...
        expression=f"asInt(lastRetry.exitCode) != {k8s.BAD_SPEC_EXIT_CODE}",  # ...but never a bad spec
    )


def _container(spec: ExperimentSpec, stage: str, args: list[str], store_url: str, configmap: str,
               digests: dict[str, str] | None, *, command: list[str] | None = None,
               resources: dict[str, Any] | None = None, gpu: bool | None = None) -> m.Container:
    mounts, _ = k8s.stage_volumes(spec, stage, configmap)
    body: dict[str, Any] = {
        "name": "main",
        "image": k8s.image_for(spec, stage, gpu=gpu, digests=digests),
        "imagePullPolicy": k8s.pull_policy(k8s.image_for(spec, stage, gpu=gpu, digests=digests)),
        "args": args,
        "env": k8s.stage_env(spec, stage, store_url),
        "volumeMounts": mounts,
        "resources": resources or k8s.stage_resources(spec, stage),
        "securityContext": k8s.container_security(),
    }
    if command:
        body["command"] = command
    return m.Container.model_validate(body)


def _step_template(spec: ExperimentSpec, name: str, stage: str, container: m.Container, *,
                   indexed: bool, gpu_stage: bool = True) -> m.Template:
    sched = k8s.scheduling(spec, stage) if gpu_stage else {}
    labels = {**k8s._labels(spec, stage), k8s.LABEL_ROLE: "stage"}
    return m.Template(
        name=name,
        inputs=_index_input() if indexed else None,
        container=container,
        metadata=m.Metadata(labels=labels),
        retry_strategy=_retry(spec, stage),
        active_deadline_seconds=spec.cluster.deadline(stage),
        node_selector=sched.get("nodeSelector"),
        tolerations=[m.Toleration.model_validate(t) for t in sched.get("tolerations", [])] or None,
    )


def _volumes(spec: ExperimentSpec, configmap: str) -> list[m.Volume]:
    """The union of every stage's volumes (names agree across stages; /dev/shm sized for the largest)."""
    by_name: dict[str, dict[str, Any]] = {}
    for stage in k8s.STAGES:
        for volume in k8s.stage_volumes(spec, stage, configmap)[1]:
            if volume["name"] == "shm" and "shm" in by_name:
                continue
            by_name.setdefault(volume["name"], volume)
    if "shm" in by_name:
        largest = max((spec.cluster.stage(s).memory for s in k8s.SHM_STAGES), key=_bytes)
        by_name["shm"]["emptyDir"]["sizeLimit"] = largest
    return [m.Volume.model_validate(v) for v in by_name.values()]


def _bytes(quantity: str) -> float:
    from kubernetes.utils import parse_quantity

    return float(parse_quantity(quantity))


def _fanout(name: str, template: str, count: int, dependencies: list[str]) -> m.DAGTask:
    return m.DAGTask(
        name=name, template=template, dependencies=dependencies or None,
        with_sequence=m.Sequence(count=str(count)),
        arguments=m.Arguments(parameters=[m.Parameter(name="index", value="{{item}}")]),
    )


def build_workflow(spec: ExperimentSpec, spec_text: str, *, store_url: str | None = None,
                   image_digests: dict[str, str] | None = None) -> tuple[m.Workflow, list[dict[str, Any]]]:
    """The typed Workflow and the objects it needs beside it (NetworkPolicies of multi-node ranks).

    See :func:`experiment_workflow`."""
    multinode = spec.cluster.train_nodes > 1
    if multinode and spec.cluster.multinode == "indexed":
        raise ValueError("cluster.multinode: 'indexed' (an Indexed Job with a headless Service) runs only on the jobs engine; "
                         "for cluster.train_nodes > 1 with the argo engine set cluster.multinode to pytorchjob or jobset, "
                         "or use one node with cluster.train.gpus")
    store_url = store_url or k8s.default_store_url(spec)
    if not store_url.startswith("s3://"):
        raise ValueError(f"store_url must be an s3:// URL for the cluster (pods share no disk), got {store_url!r}")
    if not spec_text.strip():
        raise ValueError("spec_text is empty; pass the YAML the spec was loaded from")
    configmap = k8s.object_name(spec.name, "spec")
    spec_path = k8s.SPEC_PATH
    templates: list[m.Template] = []
    tasks: list[m.DAGTask] = []
    done_before: list[str] = []  # the tasks of the previous stage

    def job_args(stage: str, *extra: str) -> list[str]:
        return ["job", stage, "--spec", spec_path, *extra]

    for stage, completions in (("meshgen", workplan.meshgen_completions(spec)),
                               ("render", workplan.render_completions(spec))):
        if completions:  # a fan-out stage: one parallel step per Indexed-job completion
            args = job_args(stage, "--index", "{{inputs.parameters.index}}", "--count", str(completions))
            templates.append(_step_template(spec, stage, stage,
                                            _container(spec, stage, args, store_url, configmap, image_digests), indexed=True))
            tasks.append(_fanout(stage, stage, completions, done_before))
            done_before = [stage]
    gpus = spec.cluster.train.gpus if k8s.uses_gpu(spec, "train") else 0
    extra_objects: list[dict[str, Any]] = []
    if spec.pretrain and multinode:  # each run a PyTorchJob/JobSet, created by a resource step once its inputs are done
        runs = len(spec.pretrain)
        run_tasks = []
        for i, run in enumerate(spec.pretrain):  # run i is index i of count runs (services/train/job.py)
            tail = ["--part", "pretrain", "--index", str(i), "--count", str(runs)]
            policy, obj = k8s.rank_group(spec, tail, store_url, configmap, suffix=f"train-{i}", for_argo=True,
                                         digests=image_digests)
            extra_objects.append(policy)
            templates.append(_operator_step(spec, f"train-run-{i}", obj))
            name = f"train-{run.name}"
            after = done_before + ([f"train-{run.init_from}"] if run.init_from else [])  # init_from: that run first
            tasks.append(m.DAGTask(name=name, template=f"train-run-{i}", dependencies=after or None))
            run_tasks.append(name)
        done_before = run_tasks
    elif spec.pretrain:
        runs = len(spec.pretrain)
        tail = ["--part", "pretrain", "--index", "{{inputs.parameters.index}}", "--count", str(runs)]
        if gpus > 1:  # one pod per run with every GPU of it: torchrun on one node
            command = ["torchrun"]
            args = ["--standalone", "--nproc-per-node", str(gpus), "--module", "services.cli", *job_args("train", *tail)]
        else:
            command, args = None, job_args("train", *tail)
        templates.append(_step_template(
            spec, "train-run", "train",
            _container(spec, "train", args, store_url, configmap, image_digests, command=command), indexed=True))
        run_tasks = []
        for i, run in enumerate(spec.pretrain):  # run i is index i of count runs (services/train/job.py)
            name = f"train-{run.name}"
            # a run that starts from another run's weights (init_from) also waits for that run
            after = done_before + ([f"train-{run.init_from}"] if run.init_from else [])
            tasks.append(m.DAGTask(name=name, template="train-run", dependencies=after or None,
                                   arguments=m.Arguments(parameters=[m.Parameter(name="index", value=str(i))])))
            run_tasks.append(name)
        done_before = run_tasks
    if spec.transfer:
        args = job_args("train", "--part", "transfer", "--index", "0", "--count", "1")
        templates.append(_step_template(spec, "transfer", "train",
                                        _container(spec, "train", args, store_url, configmap, image_digests), indexed=False))
        tasks.append(m.DAGTask(name="transfer", template="transfer", dependencies=done_before or None))
        done_before = ["transfer"]
    if spec.scoring:
        templates.append(_step_template(spec, "neuro", "neuro",
                                        _container(spec, "neuro", job_args("neuro"), store_url, configmap, image_digests),
                                        indexed=False))
        tasks.append(m.DAGTask(name="neuro", template="neuro", dependencies=done_before or None))
        done_before = ["neuro"]
    report = _container(spec, "neuro", ["report", spec_path], store_url, configmap, image_digests,
                        resources=REPORT_RESOURCES, gpu=False)
    report_template = _step_template(spec, "report", "neuro", report, indexed=False, gpu_stage=False)
    report_template.metadata.labels[k8s.LABEL_STAGE] = "report"
    templates.append(report_template)
    tasks.append(m.DAGTask(name="report", template="report", dependencies=done_before or None))
    if spec.cluster.node is not None:
        _check_fits_node(spec, templates)
    templates.insert(0, m.Template(name=ENTRYPOINT, dag=m.DAGTemplate(tasks=tasks, fail_fast=True)))

    pod_labels = {"app.kubernetes.io/part-of": k8s.PART_OF, k8s.LABEL_EXPERIMENT: spec.name}
    if spec.cluster.queue:
        pod_labels[k8s.QUEUE_LABEL] = spec.cluster.queue
    workflow = m.Workflow(
        api_version="argoproj.io/v1alpha1",
        kind="Workflow",
        metadata=m.ObjectMeta(name=k8s.object_name(spec.name, "study"), namespace=spec.cluster.namespace,
                              labels=k8s._labels(spec, None)),
        spec=m.WorkflowSpec(
            entrypoint=ENTRYPOINT,
            service_account_name=WORKFLOW_ACCOUNT,
            security_context=m.PodSecurityContext.model_validate(k8s.pod_security_context()),
            pod_metadata=m.Metadata(labels=pod_labels),
            pod_gc=m.PodGC(strategy="OnPodSuccess"),  # keep failed pods for their logs
            ttl_strategy=m.TTLStrategy(seconds_after_completion=spec.cluster.ttl_seconds_after_finished),
            volumes=_volumes(spec, configmap),
            templates=templates,
        ),
    )
    return workflow, extra_objects


def _check_fits_node(spec: ExperimentSpec, templates: list[m.Template]) -> None:
    """Refuse a step whose pod (or a created PyTorchJob's/JobSet's rank pod) cannot fit on ``cluster.node``."""
    import yaml

    node = spec.cluster.node
    for template in templates:
        pods = []
        if template.container is not None:
            pods.append({"containers": [template.container.model_dump(by_alias=True, exclude_none=True, mode="json")]})
        if template.resource is not None:
            pods.extend(k8s.workload_pods(yaml.safe_load(template.resource.manifest)))
        for pod in pods:
            problems = k8s.fit_problems(pod, node.cpu, node.memory, node.gpus)
            if problems:
                stage = TEMPLATE_STAGE.get(template.name, "train")
                raise ValueError(f"cluster.{stage}: the {template.name} step's pod cannot fit on a node of cluster.node "
                                 f"({node.cpu} CPU, {node.memory}, {node.gpus} GPU): {'; '.join(problems)}")


def _operator_step(spec: ExperimentSpec, name: str, obj: dict[str, Any]) -> m.Template:
    """A resource step that creates ``obj`` (a PyTorchJob or JobSet) and waits for it to finish.

    The object is owned by the Workflow (deleted with it). A PyTorchJob's failed rank fails
    the step and Argo's retry creates a fresh job (its name is generated): the whole group
    restarts. A JobSet restarts its group itself (``failurePolicy``), so its step is not retried.
    """
    if obj["kind"] == "PyTorchJob":
        nodes = obj["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"]
        success = f"status.replicaStatuses.Worker.succeeded = {nodes}"
        failure = "status.replicaStatuses.Worker.failed > 0"
        retry = m.RetryStrategy(limit=str(spec.cluster.backoff_limit), retry_policy="Always")
    else:
        success, failure, retry = "status.terminalState = Completed", "status.terminalState = Failed", None
    return m.Template(
        name=name,
        # No store-access role: this pod only talks to the API server; the rank pods carry their own labels.
        metadata=m.Metadata(labels=k8s._labels(spec, "train")),
        resource=m.ResourceTemplate(action="create", manifest=k8s.to_yaml([obj]), set_owner_reference=True,
                                    success_condition=success, failure_condition=failure),
        retry_strategy=retry,
        # The object's own deadline ends its pods; this bounds the step watching it.
        active_deadline_seconds=spec.cluster.deadline("train") + 600,
    )


def experiment_workflow(spec: ExperimentSpec, spec_text: str, *, store_url: str | None = None,
                        image_digests: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The spec ConfigMap, the NetworkPolicies of multi-node ranks, and the Workflow that runs ``spec``.

    Plain dicts for :func:`manifests.to_yaml`. With ``cluster.train_nodes > 1`` every run is a
    PyTorchJob or JobSet (``cluster.multinode``) that a resource step of the Workflow creates.

    Raises
    ------
    ValueError
        Bad ``spec_text``/``store_url``, a missing image digest, or ``cluster.multinode:
        indexed`` with several train nodes (jobs engine only).
    """
    workflow, extra = build_workflow(spec, spec_text, store_url=store_url, image_digests=image_digests)
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": k8s.object_name(spec.name, "spec"), "namespace": spec.cluster.namespace,
                     "labels": k8s._labels(spec, None)},
        "data": {k8s.SPEC_FILE: spec_text},
    }
    return [configmap, *extra, workflow.model_dump(by_alias=True, exclude_none=True, mode="json")]
