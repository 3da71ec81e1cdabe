"""The experiment spec: one validated document describing a whole study."""

from __future__ import annotations

import hashlib
import json
import reprlib
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from services.common.errors import SpecError
from services.common.spec.base import SEED_MAX, Name, StrictModel
from services.common.spec.loading import parse_document, read_spec_text
from services.common.spec.evaluation import EvaluationSpec
from services.common.spec.local import LocalSpec
from services.common.spec.meshgen import MESH_KINDS, FittedParams, Fractal2DParams, MorphSynthParams, ProcSynthParams
from services.common.spec.neuro import NeuralDataSpec, ScoringSpec
from services.common.spec.render import FractalRenderSettings, NoiseSceneParams, RenderSettings
from services.common.spec.train import PretrainSpec, TargetSpec, TransferSpec

FamilyParams = Annotated[
    Union[ProcSynthParams, MorphSynthParams, Fractal2DParams, NoiseSceneParams, FittedParams], Field(discriminator="family")
]


class DatasetSpec(StrictModel):
    name: Name = Field(description="Dataset name, unique in the experiment.")
    family: FamilyParams = Field(description="How classes are generated: procsynth, morphsynth, fractal2d, noisescenes or fitted.")
    classes: int = Field(default=10, ge=1, le=100_000, description="Number of classes.")
    instances_per_class: int | None = Field(
        default=None, ge=1, le=10_000,
        description="Meshes (or IFS variants) per class; default: the family's natural count "
        "(procsynth: 1 + stretch variants; morphsynth: 3 GP samples; fractal2d: 25 weight variants).",
    )
    render: RenderSettings = Field(default_factory=RenderSettings, description="3D families: how images are rendered.")
    fractal_render: FractalRenderSettings = Field(default_factory=FractalRenderSettings, description="fractal2d: how images are drawn.")
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX, description="Root seed; default: the experiment's seed.")
    meshes_from: Name | None = Field(
        default=None,
        description="Render the meshes of this other dataset instead of generating new ones "
        "(FlatWorld: the same meshes with pose and illumination variation switched off).",
    )

    @property
    def kind(self) -> str:
        return self.family.family

    @model_validator(mode="after")
    def _fitted_folders(self):
        if self.kind == "fitted" and self.classes > len(self.family.folders):
            raise ValueError(f"classes: {self.classes} classes, but family.folders lists {len(self.family.folders)} "
                             "silhouette folders (one per class)")
        return self

    @model_validator(mode="after")
    def _cue_conflict(self):
        if not self.render.cue_conflict and not self.render.class_texture.enabled:
            return self
        if self.kind not in MESH_KINDS:
            raise ValueError(f"render.cue_conflict / render.class_texture: only for procsynth, morphsynth and fitted datasets, "
                             f"not {self.kind}")
        if self.render.cue_conflict and self.classes < 2:
            raise ValueError(f"render.cue_conflict: needs at least 2 classes (shape of one, texture of another), got {self.classes}")
        if self.render.cue_conflict and self.kind != "morphsynth" and not self.render.class_texture.enabled:
            raise ValueError(f"render.cue_conflict: {self.kind} classes are all grey and have no appearance of their own; "
                             "set render.class_texture.enabled: true (and the same class_texture on the non-conflict dataset)")
        return self


class StoreSpec(StrictModel):
    url: str = Field(
        default="./flatland-data",
        description="Local directory, file://PATH, or s3://BUCKET/PREFIX (endpoint and credentials come from the environment, never the spec).",
    )

    @model_validator(mode="after")
    def _no_credentials(self):
        if "://" in self.url and "@" in urlsplit(self.url).netloc:
            raise ValueError("store URLs must not contain credentials; set them in the environment or a mounted secret")
        return self


# A Kubernetes resource quantity ("500m", "2", "1.5", "4Gi"): checked here so a typo fails at
# `flatland validate`, not when the API server rejects the Job.
Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")]


class Toleration(StrictModel):
    key: str = Field(description="Taint key to tolerate.")
    operator: Literal["Exists", "Equal"] = Field(default="Exists", description="Exists (any value) or Equal (value must match).")
    value: str | None = Field(default=None, description="Taint value (operator Equal only).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(default=None, description="Taint effect; unset: all.")

    @model_validator(mode="after")
    def _value_needs_equal(self):
        if self.value is not None and self.operator != "Equal":
            raise ValueError(f"toleration {self.key!r}: a value needs operator Equal")
        return self


class StageCluster(StrictModel):
    """What one stage's pods request and how its Job retries and times out."""

    cpu: Quantity = Field(description="CPU request per pod (cores, e.g. '500m' or '4'); no CPU limit is set.")
    memory: Quantity = Field(description="Memory request and limit per pod (e.g. '4Gi').")
    gpus: int = Field(default=0, ge=0, le=16, description="GPUs per pod when cluster.gpu is true (render, train).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods must match.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the pods tolerate (GPU stages also tolerate nvidia.com/gpu).")
    deadline_seconds: int | None = Field(
        default=None, ge=60,
        description="Kill the stage after this long, counted from when the stage starts (not while it waits for inputs); "
        "default: cluster.active_deadline_seconds.",
    )
    backoff_limit_per_index: int = Field(default=2, ge=0, le=100, description="Retries of each failed index (shard share, run) on its own.")
    max_failed_indexes: int | None = Field(
        default=None, ge=0,
        description="Fail the stage at once when more indexes than this have failed for good; default: run every index, then fail if any did.",
    )


class NodeShape(StrictModel):
    """The allocatable size of the nodes the pods run on; when given, every pod is checked to fit."""

    cpu: Quantity = Field(description="Allocatable CPU of one node.")
    memory: Quantity = Field(description="Allocatable memory of one node.")
    gpus: int = Field(default=0, ge=0, le=64, description="GPUs of one node.")


def _stage(cpu: str, memory: str, gpus: int = 0) -> Any:
    return Field(default_factory=lambda: StageCluster(cpu=cpu, memory=memory, gpus=gpus),
                 description=f"Pods, retries and deadline of this stage (default: {cpu} CPU, {memory}"
                 + (f", {gpus} GPU with cluster.gpu" if gpus else "") + ").")


class ClusterSpec(StrictModel):
    engine: Literal["jobs", "argo"] = Field(
        default="jobs",
        description="`flatland k8s manifests` output: plain Kubernetes Jobs released stage by stage, or one Argo Workflow.",
    )
    queue: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Kueue LocalQueue: every Job (pod, with argo) is labelled kueue.x-k8s.io/queue-name and admitted by Kueue.",
    )
    namespace: str = Field(default="flatland", description="Kubernetes namespace for the experiment's Jobs.")
    image_registry: str = Field(default="ghcr.io/beyond-flatland",
                                description="Where the service images are pulled from (`make images REGISTRY=...` pushes there).")
    image_tag: str = Field(default="0.1.0", description="Tag of the service images: the project version `make images` builds "
                           "(a version is pushed once; pin by digest with `flatland k8s manifests --image-digests`).")
    meshgen_parallelism: int = Field(default=4, ge=1, le=1000, description="Pods of the meshgen Indexed Job (capped by the number of classes).")
    render_parallelism: int = Field(default=8, ge=1, le=1000, description="Pods of the render Indexed Job (capped by the number of shards).")
    gpu: bool = Field(default=False, description="Run render (EGL) and train on GPU nodes.")
    train_nodes: int = Field(default=1, ge=1, le=64, description="Nodes for multi-node torchrun training.")
    multinode: Literal["indexed", "pytorchjob", "jobset"] = Field(
        default="indexed",
        description="With train_nodes > 1, what runs the ranks: an Indexed Job with a headless Service (jobs engine only), "
        "a Kubeflow PyTorchJob (training operator) or a JobSet; all use elastic c10d rendezvous.",
    )
    active_deadline_seconds: int = Field(default=86_400, ge=60, le=2**31 - 1, description="Default per-stage deadline (see each stage's deadline_seconds).")
    wait_timeout_seconds: int = Field(default=604_800, ge=60, description="jobs engine: how long a stage's release step waits for its inputs.")
    backoff_limit: int = Field(default=3, ge=0, le=100, description="Retries of a failed pod of a non-indexed Job (single-pod stages, multi-node train).")
    ttl_seconds_after_finished: int = Field(default=86_400, ge=0, le=2**31 - 1, description="Finished Jobs are deleted after this many seconds.")
    node: NodeShape | None = Field(default=None, description="Node size; when given, `flatland k8s manifests` refuses pods that cannot fit.")
    # Defaults fit the dev overlay's one 2-CPU / 8 GiB node next to the base install (k8s/README.md).
    meshgen: StageCluster = _stage("500m", "1Gi")
    render: StageCluster = _stage("500m", "2Gi", gpus=1)
    train: StageCluster = _stage("1", "3Gi", gpus=1)
    neuro: StageCluster = _stage("500m", "3Gi")

    def stage(self, name: str) -> StageCluster:
        """The settings of stage ``name`` (meshgen, render, train, neuro)."""
        if name not in ("meshgen", "render", "train", "neuro"):
            raise ValueError(f"unknown stage {name!r}")
        return getattr(self, name)

    def deadline(self, name: str) -> int:
        return self.stage(name).deadline_seconds or self.active_deadline_seconds


#: Most datasets in one experiment (validation is linear in their number: 20,000 take about a second).
MAX_DATASETS = 20_000
#: Most entries in each of pretrain, targets, transfer, neural_data and scoring.
MAX_ENTRIES = 1000
#: Most (run, benchmark) pairs scored in one experiment.
MAX_SCORED_PAIRS = 100_000


class ExperimentSpec(StrictModel):
    name: Name = Field(description="Experiment name.")
    description: str = Field(default="", description="Free text for people.")
    seed: int = Field(default=0, ge=0, le=SEED_MAX, description="Root seed; every random choice derives from it.")
    store: StoreSpec = Field(default_factory=StoreSpec, description="Where every stage reads and writes.")
    datasets: list[DatasetSpec] = Field(default_factory=list, max_length=MAX_DATASETS, description="Synthetic datasets to generate and render.")
    pretrain: list[PretrainSpec] = Field(default_factory=list, max_length=MAX_ENTRIES, description="Networks pre-trained on one dataset or a mix.")
    targets: list[TargetSpec] = Field(default_factory=list, max_length=MAX_ENTRIES, description="Transfer targets (user-provided data sets, or the offline digits).")
    transfer: list[TransferSpec] = Field(default_factory=list, max_length=MAX_ENTRIES, description="Fine-tuning and linear probes of pre-trained networks.")
    neural_data: list[NeuralDataSpec] = Field(default_factory=list, max_length=MAX_ENTRIES, description="Neural benchmarks (user files, or the planted synthetic one).")
    scoring: list[ScoringSpec] = Field(default_factory=list, max_length=MAX_ENTRIES, description="Neural predictivity and RSA of pre-trained networks.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Shape bias and depth probes of pre-trained runs (run by the train stage after transfer).")
    cluster: ClusterSpec = Field(default_factory=ClusterSpec, description="How `flatland k8s manifests` runs this experiment as Kubernetes Jobs.")
    local: LocalSpec = Field(default_factory=LocalSpec, description="How `flatland run` uses the local machine (worker processes).")
    _dataset_index: dict[str, int] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _references(self):
        # Linear in the number of entries: a spec with 20,000 datasets validates in about a second.
        def unique(items, what):
            counts = Counter(i.name for i in items)
            dup = sorted(n for n, c in counts.items() if c > 1)
            if dup:
                raise ValueError(f"{what} names must be unique; repeated: {_few(dup)}")
            return set(counts)

        datasets = unique(self.datasets, "dataset")
        runs = unique(self.pretrain, "pretrain")
        targets = unique(self.targets, "target")
        neural = unique(self.neural_data, "neural_data")
        unique(self.transfer, "transfer")
        unique(self.scoring, "scoring")
        by_name = {d.name: d for d in self.datasets}
        for i, d in enumerate(self.datasets):
            if d.meshes_from is None:
                continue
            if d.meshes_from not in datasets or d.meshes_from == d.name:
                raise ValueError(f"datasets[{i}].meshes_from: '{d.meshes_from}' is not another dataset of this experiment")
            source = by_name[d.meshes_from]
            if source.meshes_from is not None:
                raise ValueError(f"datasets[{i}].meshes_from: '{d.meshes_from}' itself borrows meshes; name the original")
            if source.family != d.family or source.classes != d.classes or source.instances_per_class != d.instances_per_class:
                raise ValueError(
                    f"datasets[{i}].meshes_from: '{d.meshes_from}' must have the same family, classes and "
                    "instances_per_class as this dataset"
                )
        for i, p in enumerate(self.pretrain):
            for d in p.datasets:
                if d not in datasets:
                    raise ValueError(f"pretrain[{i}].datasets: unknown dataset '{d}' (known: {_few_list(sorted(datasets))})")
        position = {p.name: i for i, p in enumerate(self.pretrain)}
        for i, p in enumerate(self.pretrain):
            if p.init_from is None:
                continue
            if p.init_from not in position:
                raise ValueError(f"pretrain[{i}].init_from: unknown pretrain run '{p.init_from}' (known: {_few_list(sorted(runs))})")
            source = self.pretrain[position[p.init_from]]
            if position[p.init_from] > i:
                raise ValueError(f"pretrain[{i}].init_from: run '{p.init_from}' must be listed before '{p.name}' "
                                 "(runs train in the order listed)")
            if source.model != p.model:
                raise ValueError(f"pretrain[{i}].init_from: run '{p.init_from}' trains {source.model}, this run {p.model}; "
                                 "a run starts from weights of its own architecture")
            if source.task == "segmentation":
                raise ValueError(f"pretrain[{i}].init_from: run '{p.init_from}' is a segmentation network; start from a "
                                 "classification or 3d_prior run")
            if (source.mean, source.std) != (p.mean, p.std):
                raise ValueError(f"pretrain[{i}].init_from: run '{p.init_from}' normalises its inputs with mean "
                                 f"{list(source.mean)}, std {list(source.std)}, this run with {list(p.mean)}, "
                                 f"{list(p.std)}; set this run's mean and std to the ones its weights learned with")
            if p.model.startswith(("vit_", "maxvit_")) and source.input_size != p.input_size:
                raise ValueError(f"pretrain[{i}].init_from: {p.model}'s weights depend on the input size; run "
                                 f"'{p.init_from}' uses {source.input_size}, this run {p.input_size}")
        for i, t in enumerate(self.transfer):
            for r in t.pretrained:
                if r not in runs:
                    raise ValueError(f"transfer[{i}].pretrained: unknown pretrain run '{r}' (known: {_few_list(sorted(runs))})")
            for g in t.targets:
                if g not in targets:
                    raise ValueError(f"transfer[{i}].targets: unknown target '{g}' (known: {_few_list(sorted(targets))})")
        for i, s in enumerate(self.scoring):
            for r in s.runs:
                if r not in runs:
                    raise ValueError(f"scoring[{i}].runs: unknown pretrain run '{r}' (known: {_few_list(sorted(runs))})")
            for b in s.benchmarks:
                if b not in neural:
                    raise ValueError(f"scoring[{i}].benchmarks: unknown neural_data '{b}' (known: {_few_list(sorted(neural))})")
        self._check_evaluation(runs, by_name)
        # Scores live at scores/<run_id>/<benchmark>.json: two entries scoring the same pair
        # would overwrite each other's results on every run.
        pairs = sum(len(s.runs) * len(s.benchmarks) for s in self.scoring)
        if pairs > MAX_SCORED_PAIRS:
            raise ValueError(f"scoring: {pairs:,} (run, benchmark) pairs; at most {MAX_SCORED_PAIRS:,} per experiment")
        scored: dict[tuple[str, str], int] = {}
        for i, s in enumerate(self.scoring):
            for r in s.runs:
                for b in s.benchmarks:
                    if (r, b) in scored:
                        raise ValueError(
                            f"scoring[{i}]: run '{r}' on benchmark '{b}' is already scored by scoring[{scored[r, b]}] "
                            f"('{self.scoring[scored[r, b]].name}'); both would write scores/<run>/{b}.json. "
                            "Score each run and benchmark pair in one entry (or declare the neural data again under another name)"
                        )
                    scored[r, b] = i
        return self

    def _check_evaluation(self, runs: set[str], by_name: dict) -> None:
        names = Counter(e.name for e in self.evaluation.shape_bias + self.evaluation.depth_probe)
        repeated = sorted(n for n, c in names.items() if c > 1)
        if repeated:
            raise ValueError(f"evaluation names must be unique across shape_bias and depth_probe; repeated: {_few(repeated)}")
        for section in ("shape_bias", "depth_probe"):
            for i, e in enumerate(getattr(self.evaluation, section)):
                where = f"evaluation.{section}[{i}]"
                for r in e.runs:
                    if r not in runs:
                        raise ValueError(f"{where}.runs: unknown pretrain run '{r}' (known: {_few_list(sorted(runs))})")
                for field in ("conflict", "probe", "dataset"):
                    name = getattr(e, field, None)
                    if name is not None and name not in by_name:
                        raise ValueError(f"{where}.{field}: unknown dataset '{name}' (known: {_few_list(sorted(by_name))})")
        for i, e in enumerate(self.evaluation.shape_bias):
            if e.kind != "renders":
                continue
            where = f"evaluation.shape_bias[{i}]"
            conflict = by_name[e.conflict]
            if conflict.kind not in MESH_KINDS or not conflict.render.cue_conflict:
                raise ValueError(f"{where}.conflict: dataset '{e.conflict}' is not a cue-conflict dataset "
                                 "(procsynth/morphsynth with render.cue_conflict: true)")
            if e.probe is not None:
                probe = by_name[e.probe]
                if probe.kind != conflict.kind or probe.render.cue_conflict or probe.classes != conflict.classes \
                        or (probe.meshes_from or probe.name) != (conflict.meshes_from or conflict.name) \
                        or probe.render.class_texture != conflict.render.class_texture:
                    raise ValueError(
                        f"{where}.probe: dataset '{e.probe}' must show the conflict set's classes without conflict: "
                        "no cue_conflict, the same meshes (meshes_from) and classes, and the same class_texture")
        rec = self.evaluation.recoverability
        for i, name in enumerate(rec.datasets if rec is not None else []):
            where = f"evaluation.recoverability.datasets[{i}]"
            if name not in by_name:
                raise ValueError(f"{where}: unknown dataset '{name}' (known: {_few_list(sorted(by_name))})")
            d = by_name[name]
            if d.kind not in MESH_KINDS or "mask" not in d.render.outputs:
                raise ValueError(f"{where}: '{name}' must be a procsynth/morphsynth/fitted dataset that stores masks "
                                 "(render.outputs with 'mask'); the fit reads them with their cameras")
            if rec.classes > d.classes:
                raise ValueError(f"evaluation.recoverability.classes: {rec.classes} classes, but dataset '{name}' has "
                                 f"{d.classes}")
        for i, e in enumerate(self.evaluation.depth_probe):
            if e.kind == "renders":
                d = by_name[e.dataset]
                if d.kind not in MESH_KINDS or "depth" not in d.render.outputs or d.render.val_fraction <= 0:
                    raise ValueError(f"evaluation.depth_probe[{i}].dataset: '{e.dataset}' must be a procsynth/morphsynth "
                                     "dataset that stores depth (render.outputs) and holds out a val split (val_fraction > 0)")

    def __eq__(self, other) -> bool:
        # Fields only: the private dataset index is a lookup cache, not part of the spec.
        if isinstance(other, ExperimentSpec):
            return type(self) is type(other) and self.__dict__ == other.__dict__
        return NotImplemented

    def dataset(self, name: str) -> DatasetSpec:
        # An index (name -> position), checked on every use and rebuilt when the list changed,
        # so looking every dataset up stays linear overall (Validate does, for 20,000 datasets).
        i = self._dataset_index.get(name)
        if i is None or i >= len(self.datasets) or self.datasets[i].name != name:
            self._dataset_index = {}
            for j, d in enumerate(self.datasets):
                self._dataset_index.setdefault(d.name, j)
            i = self._dataset_index.get(name)
        if i is not None:
            return self.datasets[i]
        raise KeyError(f"no dataset named '{name}' in experiment '{self.name}'")

    def dataset_seed(self, dataset: DatasetSpec) -> int:
        return self.seed if dataset.seed is None else dataset.seed

    def dataset_id(self, name: str) -> str:
        """Store name of a dataset: its name plus a hash of everything that made it."""
        d = self.dataset(name)
        return f"{d.name}-{content_hash({'dataset': d, 'seed': self.dataset_seed(d)})}"

    def mesh_dataset_id(self, name: str) -> str:
        """Store name of the meshes a dataset renders (its own, or those of ``meshes_from``)."""
        d = self.dataset(name)
        return self.dataset_id(d.meshes_from or d.name)

    def run_id(self, name: str) -> str:
        """Store name of a pre-training run: name plus a hash of the run, its datasets and the run it starts from."""
        run = next(p for p in self.pretrain if p.name == name)
        inputs = {"run": without_later_defaults(run), "datasets": [self.dataset_id(d) for d in run.datasets]}
        if run.init_from is not None:
            inputs["init_from"] = self.run_id(run.init_from)
        return f"{run.name}-{content_hash(inputs)}"


#: Fields added after runs were first named, with their defaults: left out of a run's hash while they keep them,
#: so the runs of earlier specs keep their ids (and their finished outputs in the store).
LATER_DEFAULTS = {("init_from",): None, ("prior",): None, ("optim", "optimizer"): "sgd"}


def without_later_defaults(model) -> dict:
    """``model``'s JSON dump without the :data:`LATER_DEFAULTS` fields that hold their default."""
    dump = model.model_dump(mode="json")
    for path, default in LATER_DEFAULTS.items():
        parent = dump
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent and parent[path[-1]] == default:
            del parent[path[-1]]
    return dump


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def content_hash(obj: Any, length: int = 10) -> str:
    """Stable hash of a spec (or any JSON-able structure of specs): canonical JSON, SHA-256.

    Defaults are filled in before hashing, so writing a default explicitly does not
    change the hash, while changing any value does.
    """
    canonical = json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:length]


# Error messages show a bounded preview of a bad value: never the whole value, whose repr
# could be gigabytes (a YAML alias bomb) or recurse without end.
_PREVIEW = reprlib.Repr()
_PREVIEW.maxlevel = 3
_PREVIEW.maxdict = _PREVIEW.maxlist = _PREVIEW.maxtuple = _PREVIEW.maxset = 4
_PREVIEW.maxstring = _PREVIEW.maxother = 60
_PREVIEW.maxlong = 40
#: Problems listed in one error message; the rest are counted.
MAX_ERRORS_SHOWN = 20


def _few(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(str(n) for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _few_list(names: list[str], limit: int = 10) -> str:
    if len(names) <= limit:
        return repr(names)
    return repr(names[:limit])[:-1] + f", ...] ({len(names) - limit} more)"


def preview(value: Any, limit: int = 80) -> str:
    """A repr of ``value`` of at most ``limit`` characters, in time bounded by ``limit``."""
    shown = _PREVIEW.repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``path: why (got value)``; at most :data:`MAX_ERRORS_SHOWN` lines."""
    lines = []
    errors = exc.errors(include_url=False, include_context=False)
    for err in errors[:MAX_ERRORS_SHOWN]:
        loc = ""
        for part in err["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            else:
                loc += f".{part}" if loc else str(part)
        loc = loc or "(spec)"
        msg = err["msg"].removeprefix("Value error, ")
        if len(msg) > 500:
            msg = msg[:497] + "..."
        if err["type"] in ("missing",):
            lines.append(f"{loc}: field required")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown field (check the spelling; `flatland schema` lists the fields)")
        else:
            value = err.get("input")
            if isinstance(value, dict):
                # A whole section failed a cross-field check; its message names the fields.
                shown = preview(value, 81)
                if len(shown) > 80:
                    lines.append(f"{loc}: {msg}")
                    continue
            lines.append(f"{loc}: {msg} (got {preview(value)})")
    if len(errors) > MAX_ERRORS_SHOWN:
        lines.append(f"... and {len(errors) - MAX_ERRORS_SHOWN} more problems")
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "spec") -> ExperimentSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a mapping of fields, got {type(data).__name__}")
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source} is not a valid experiment spec:\n{format_validation_error(exc)}") from None


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate a YAML (or JSON) experiment spec (bounded: see :mod:`.loading`)."""
    path = Path(path)
    data = parse_document(read_spec_text(path), "yaml", str(path))
    return parse_spec(data, str(path))


def spec_to_yaml(spec: ExperimentSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def json_schema() -> dict:
    schema = ExperimentSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Beyond Flatland experiment spec"
    return schema


