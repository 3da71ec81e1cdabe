"""Neural scoring settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.spec.base import Name, StrictModel


class NeuralDataSpec(StrictModel):
    name: Name
    kind: Literal["planted", "file"] = Field(description="'planted': synthetic ground-truth benchmark (test data); 'file': a user's HDF5 file.")
    path: str | None = Field(default=None, description="HDF5 file in the documented neural data format (kind 'file').")
    # Planted benchmark parameters (synthetic, clearly labelled as such).
    stimuli: int = Field(default=200, ge=10)
    neuroids: int = Field(default=64, ge=1)
    repetitions: int = Field(default=4, ge=2)
    reliability: float = Field(default=0.7, gt=0, lt=1, description="Planted split-half reliability target.")
    planted_layer: str = Field(default="layer3", description="Layer of the fixed network whose features drive the responses.")
    seed: int = Field(default=0, ge=0)


class ScoringSpec(StrictModel):
    name: Name
    runs: list[Name] = Field(min_length=1, description="Pre-training runs to score (names from `pretrain`).")
    benchmarks: list[Name] = Field(min_length=1, description="Neural data sets to score against (names from `neural_data`).")
    layers: list[str] = Field(default_factory=lambda: ["layer1", "layer2", "layer3", "layer4", "avgpool"])
    mapping: Literal["pls", "ridge"] = Field(default="pls")
    pls_components: int = Field(default=25, ge=1)
    splits: Literal["stratified_kfold", "brainscore"] = Field(default="stratified_kfold")
    n_splits: int = Field(default=10, ge=2)
    pca_components: int | None = Field(default=1000, ge=1, description="Reduce features with PCA first (Brain-Score uses 1000). None: off.")
    rdm_metric: Literal["correlation", "euclidean"] = Field(default="correlation")
    rsa_compare: Literal["spearman", "kendall_tau_a"] = Field(default="spearman")
    compare_models: bool = Field(default=True, description="Also compute model–model RSA between the scored runs.")
    seed: int = Field(default=0, ge=0)
