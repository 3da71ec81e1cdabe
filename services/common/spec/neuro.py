"""Neural scoring settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from services.common.spec.base import SEED_MAX, Name, StrictModel

Pooling = Literal["avg", "grid", "flatten"]


class NeuralDataSpec(StrictModel):
    name: Name
    kind: Literal["planted", "file"] = Field(description="'planted': synthetic ground-truth benchmark (test data); 'file': a user's HDF5 file.")
    path: str | None = Field(
        default=None,
        description="kind 'file': HDF5 file in the documented neural data format (docs/neural-data-format.md); "
        "a local path, or a store key when no such local file exists.",
    )
    # Planted benchmark parameters (synthetic, clearly labelled as such).
    stimuli: int = Field(default=200, ge=10, le=100_000, description="Planted: number of generated stimuli.")
    objects: int = Field(default=10, ge=2, le=1000, description="Planted: object labels (stimuli are split evenly; used to stratify splits).")
    neuroids: int = Field(default=64, ge=1, le=100_000, description="Planted: number of synthetic neuroids (one region, 'planted').")
    repetitions: int = Field(default=4, ge=2, le=1000, description="Planted: presentations per stimulus (>= 2 for a noise ceiling).")
    reliability: float = Field(
        default=0.7, gt=0, lt=1,
        description="Planted reliability of the repetition-averaged response (what the noise ceiling estimates).",
    )
    planted_layer: str = Field(default="layer3", description="Layer of the fixed network whose features drive the responses.")
    planted_model: str = Field(default="resnet18", description="Planted: torchvision model of the fixed, seeded network.")
    image_size: int = Field(default=64, ge=16, le=1024, description="Planted: stimulus image side in pixels.")
    pooling: Pooling = Field(default="avg", description="Planted: how the planted layer's activations are reduced to features.")
    seed: int = Field(default=0, ge=0, le=SEED_MAX, description="Planted: seed of the stimuli, the fixed network's weights, the linear map and the noise.")
    time_window_ms: tuple[float, float] | None = Field(
        default=None,
        description="Kind 'file' with time-binned responses: [start, end] in ms after stimulus onset; the responses are the "
        "mean of the /time_bins lying wholly inside it (e.g. [70, 170] for IT). None: the mean of all bins.",
    )

    @model_validator(mode="after")
    def _path(self):
        if self.kind == "file" and not self.path:
            raise ValueError("neural_data of kind 'file' needs a `path` to an HDF5 file")
        if self.time_window_ms is not None:
            if self.kind != "file":
                raise ValueError(f"neural_data '{self.name}': time_window_ms needs kind 'file' (planted data have no time bins)")
            if not self.time_window_ms[1] > self.time_window_ms[0]:
                raise ValueError(f"neural_data '{self.name}': time_window_ms {list(self.time_window_ms)} must be [start, end] with end > start")
        if self.kind == "planted" and self.stimuli < 2 * self.objects:
            raise ValueError(f"stimuli ({self.stimuli}) must be at least twice objects ({self.objects}) for stratified splits")
        return self


MAX_LAYERS = 64  # layers scored or compared per run: each holds a stimuli x stimuli RDM and its features


def check_layers(layers: list[str], field: str = "layers") -> list[str]:
    """``layers`` unchanged, or :class:`ValueError` naming ``field``: at most MAX_LAYERS, none listed twice, none empty."""
    if len(layers) > MAX_LAYERS:
        raise ValueError(f"{field}: {len(layers)} layers listed, at most {MAX_LAYERS}")
    seen: set[str] = set()
    for i, layer in enumerate(layers):
        if not layer.strip():
            raise ValueError(f"{field}[{i}]: empty layer name")
        if layer in seen:
            raise ValueError(f"{field}[{i}]: layer {layer[:80]!r} is listed twice")
        seen.add(layer)
    return layers


class SpatialReduction(StrictModel):
    """How one layer's every unit (no global pooling) is reduced while the stimuli pass, within the feature memory cap."""

    method: Literal["random_projection", "incremental_pca"] = Field(
        description="'random_projection': a seeded random projection (scikit-learn SparseRandomProjection or "
        "GaussianRandomProjection; seed from the scoring entry's `seed`), one pass; 'incremental_pca': streaming PCA "
        "(scikit-learn IncrementalPCA) fitted on `pca_fit_images` when given, else on the stimuli, then applied.",
    )
    components: int = Field(default=1000, ge=1, le=100_000,
                            description="Dimensions kept (a layer with no more units is kept whole; a streaming PCA "
                            "keeps at most as many as it has fit images).")
    projection: Literal["sparse", "gaussian"] = Field(
        default="sparse",
        description="random_projection: 'sparse' (density 1/sqrt(units), a small matrix) or 'gaussian' (a dense "
        "components x units matrix, counted against the memory cap).",
    )


class ScoringSpec(StrictModel):
    name: Name
    runs: list[Name] = Field(min_length=1, max_length=1000, description="Pre-training runs to score (names from `pretrain`).")
    benchmarks: list[Name] = Field(min_length=1, max_length=1000, description="Neural data sets to score against (names from `neural_data`).")
    layers: list[str] = Field(
        default_factory=lambda: ["layer1", "layer2", "layer3", "layer4", "avgpool"], min_length=1,
        max_length=MAX_LAYERS,
        description="Layers to score: torchvision feature-extraction node or module names (e.g. 'layer3', 'layer3.1.relu'); "
        f"at most {MAX_LAYERS}, each once.",
    )
    pooling: Pooling = Field(
        default="avg",
        description="How a layer's (C, H, W) activations become features: 'avg' global average (C), "
        "'grid' adaptive average to grid x grid then flatten (C*grid*grid), 'flatten' all units.",
    )
    grid: int = Field(default=4, ge=1, le=64, description="Side of the pooled grid when pooling is 'grid'.")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Stimuli per forward pass.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Where activations are computed; 'auto': the GPU when there is one.")
    mapping: Literal["pls", "ridge"] = Field(default="pls", description="Features-to-responses mapping: PLS regression (no scaling) or ridge.")
    pls_components: int = Field(default=25, ge=1, le=1000, description="PLS components (clipped to the features and training stimuli available).")
    ridge_alphas: list[float] = Field(
        default_factory=lambda: [10.0 ** k for k in range(-2, 7)], min_length=1, max_length=100,
        description="Ridge: penalties tried per neuroid by efficient leave-one-out on the training stimuli.",
    )
    splits: Literal["stratified_kfold", "brainscore", "file"] = Field(
        default="stratified_kfold",
        description="'stratified_kfold': K folds stratified by object (each stimulus held out once), shuffled from `seed`; "
        "'brainscore': Brain-Score's own splits, StratifiedShuffleSplit(n_splits, train_size=1 - test_fraction, random_state=1) "
        "on the object labels in the data set's stimulus order (equal to Brain-Score's for the same order); "
        "'file': explicit splits from `split_file`.",
    )
    split_file: str | None = Field(
        default=None,
        description="splits 'file': a JSON split file ({\"format\": \"flatland-splits\", \"splits\": [{\"train\": [...], \"test\": [...]}]}, "
        "stimulus ids or 0-based indices; docs/neuro-scoring.md); a local path, or a store key when no such local file exists.",
    )
    n_splits: int = Field(default=10, ge=2, le=1000, description="Folds or shuffle splits (Brain-Score: 10); ignored for 'file'.")
    test_fraction: float = Field(default=0.1, gt=0, lt=1, description="'brainscore' splits: held-out fraction (Brain-Score: 0.1).")
    pca_components: int | None = Field(default=1000, ge=1, le=100_000, description="Reduce features with PCA first (Brain-Score uses 1000). None: off.")
    pca_fit_images: str | None = Field(
        default=None,
        description="A local folder of images (png, jpg, bmp, webp, tif; searched recursively, sorted by path, resized "
        "to the stimuli's size) on whose features the PCA is fitted, and the 'incremental_pca' of `spatial` layers, "
        "instead of the stimuli's. Brain-Score fits its 1000 components (PCA, random_state 0) on 1000 ImageNet "
        "validation images, the first of each class, and leaves layers with at most 1000 features unreduced. "
        "None: fitted on the stimuli.",
    )
    spatial: dict[str, SpatialReduction] = Field(
        default_factory=dict, max_length=MAX_LAYERS,
        description="Per layer (a name from `layers`): use every unit, without global pooling, reduced while the "
        "stimuli pass (random projection or streaming PCA) so the features stay within the memory cap. These layers "
        "ignore `pooling` and are not PCA-reduced again.",
    )
    bootstrap: int = Field(default=1000, ge=0, le=100_000, description="Bootstrap resamples of neuroids for confidence intervals (0: off).")
    rdm_metric: Literal["correlation", "euclidean"] = Field(default="correlation", description="RDM dissimilarity: 1 - Pearson r, or Euclidean distance.")
    rsa_compare: Literal["spearman", "kendall_tau_a"] = Field(default="spearman", description="How RDMs are compared: Spearman rho or Kendall's tau-a.")
    compare_models: bool = Field(default=True, description="Also compute model–model RSA between the scored runs.")
    seed: int = Field(default=0, ge=0, le=SEED_MAX, description="Seed of the 'stratified_kfold' splits, PCA, bootstrap and the Kendall RSA ceiling's pair sample.")

    @field_validator("layers")
    @classmethod
    def _distinct_layers(cls, layers: list[str]) -> list[str]:
        return check_layers(layers)

    @model_validator(mode="after")
    def _split_file(self):
        if self.splits == "file" and not self.split_file:
            raise ValueError(f"scoring '{self.name}': splits 'file' needs a `split_file` (JSON split file)")
        unknown = [layer for layer in self.spatial if layer not in self.layers]
        if unknown:
            raise ValueError(f"scoring '{self.name}': spatial names {unknown[:5]}, not in layers {self.layers[:10]}")
        if self.pca_fit_images is not None and not self.pca_fit_images.strip():
            raise ValueError(f"scoring '{self.name}': pca_fit_images is empty; give a folder of images or leave it out")
        if self.split_file and self.splits != "file":
            raise ValueError(f"scoring '{self.name}': split_file is given but splits is {self.splits!r}; set splits: file to use it")
        return self
