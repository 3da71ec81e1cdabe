"""Evaluations that need no fine-tuning: shape bias and a linear depth probe of pre-trained runs; the shape
recoverability of rendered datasets (meshes fitted to their silhouettes)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.common.spec.base import SEED_MAX, Name, StrictModel
from services.common.spec.meshgen import FitParams


class ShapeBiasSpec(StrictModel):
    """Shape bias = shape decisions / (shape + texture decisions) over cue-conflict images."""

    name: Name = Field(description="Name of this evaluation (results: evaluations/<name>-<hash>/<run>.json).")
    runs: list[Name] = Field(min_length=1, max_length=1000, description="Pre-training runs to evaluate (names from `pretrain`).")
    kind: Literal["renders", "cue_conflict_folder"] = Field(
        default="renders",
        description="'renders': this experiment's cue-conflict dataset (`conflict`, a dataset with render.cue_conflict). "
        "'cue_conflict_folder': the standard cue-conflict set of Geirhos et al. (2019) at `path` (16 class folders, "
        "images named <shape>N-<texture>M.png); ImageNet classifiers decide among the 16 categories by the "
        "mean softmax over each category's ImageNet classes, other networks by a linear probe trained on `probe_path`.")
    conflict: Name | None = Field(default=None, description="renders: the cue-conflict dataset.")
    probe: Name | None = Field(
        default=None,
        description="renders: the dataset of non-conflict renders of the same classes (same meshes, same class_texture) "
        "a linear probe is trained on (its train split). Needed unless every run is decided by its own head.")
    classifier: Literal["auto", "head", "probe"] = Field(
        default="auto",
        description="Who decides: 'head' the network's own classifier (only for runs pre-trained on the conflict set's "
        "classes: a single dataset drawing the same meshes with as many classes; ImageNet runs on the standard set), "
        "'probe' a linear probe on frozen penultimate features, 'auto' the head where it applies, else a probe.")
    path: str | None = Field(default=None, description="cue_conflict_folder: root of the standard cue-conflict set.")
    probe_path: str | None = Field(
        default=None,
        description="cue_conflict_folder: an image folder (root/<category>/<image>) of natural images of the 16 "
        "categories, for the probe of networks that are not ImageNet classifiers.")
    probe_max_images: int = Field(default=2000, ge=16, le=1_000_000, description="At most this many probe-training images (evenly over classes).")
    input_size: int | None = Field(default=None, ge=16, le=1024, description="Network input side; default: the run's.")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Images per forward pass.")
    bootstrap: int = Field(default=1000, ge=0, le=100_000, description="Bootstrap resamples of the conflict images for the confidence interval (0: none).")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Confidence level of the percentile bootstrap interval.")
    seed: int = Field(default=0, ge=0, le=SEED_MAX, description="Seed of the bootstrap and the probe's image choice.")

    @model_validator(mode="after")
    def _inputs(self):
        if self.kind == "renders":
            if self.conflict is None:
                raise ValueError("conflict: a 'renders' shape-bias evaluation names its cue-conflict dataset")
            if self.classifier == "probe" and self.probe is None:
                raise ValueError("probe: classifier 'probe' needs the dataset of non-conflict renders to train it on")
            if self.path or self.probe_path:
                raise ValueError("path / probe_path: only for kind cue_conflict_folder")
        else:
            if not self.path:
                raise ValueError("path: kind cue_conflict_folder needs the root of the cue-conflict set")
            if self.conflict or self.probe:
                raise ValueError("conflict / probe: only for kind renders (the folder kind uses path / probe_path)")
        return self


class DepthProbeSpec(StrictModel):
    """A frozen backbone with a per-pixel linear depth readout (1x1 convolution on a feature map, bilinearly
    upsampled), fitted by ridge regression; RMSE in metres on held-out images, with the mean-depth baseline."""

    name: Name = Field(description="Name of this evaluation (results: evaluations/<name>-<hash>/<run>.json).")
    runs: list[Name] = Field(min_length=1, max_length=1000, description="Pre-training runs to evaluate (names from `pretrain`).")
    kind: Literal["renders", "nyu_labeled_mat", "depth_folder"] = Field(
        default="renders",
        description="'renders': `dataset` (procsynth/morphsynth with depth): fit on its train split, score on its "
        "val split, object pixels only. 'nyu_labeled_mat': NYU-Depth v2's nyu_depth_v2_labeled.mat at `path` (HDF5, "
        "read with h5py) with the official 795/654 split from splits.mat at `splits_path`. 'depth_folder': "
        "`path`/train and `path`/test holding <name>.png with <name>.depth.npy (metres) beside it.")
    dataset: Name | None = Field(default=None, description="renders: the dataset whose depth is read.")
    path: str | None = Field(default=None, description="nyu_labeled_mat: the .mat file; depth_folder: the folder.")
    splits_path: str | None = Field(default=None, description="nyu_labeled_mat: splits.mat (trainNdxs, testNdxs; 1-based).")
    layer: str | None = Field(
        default=None,
        description="Feature map read out (a module name, e.g. layer3); default: the last one before pooling "
        "(layer4 of a ResNet, `features` of VGG / MobileNet / EfficientNet / ConvNeXt).")
    ridge: float = Field(default=1e-3, ge=0, le=1e3, description="Ridge penalty relative to the mean feature variance.")
    pixels_per_image: int = Field(default=256, ge=1, le=1_000_000, description="Valid pixels drawn per fitting image (all are scored).")
    max_images: int = Field(default=1000, ge=2, le=1_000_000, description="At most this many fitting images (and as many test images).")
    max_depth_m: float | None = Field(
        default=None, gt=0, le=1000,
        description="Pixels farther than this (or without depth) are left out; default: 10 m for NYU-Depth v2 (its "
        "sensor's range), no limit otherwise (renders: only background pixels have no depth).")
    input_size: int | None = Field(default=None, ge=16, le=1024, description="Shorter side of the network input; default: the run's input size.")
    batch_size: int = Field(default=32, ge=1, le=4096, description="Images per forward pass.")
    seed: int = Field(default=0, ge=0, le=SEED_MAX, description="Seed of the pixel draws.")

    @model_validator(mode="after")
    def _inputs(self):
        if self.kind == "renders" and self.dataset is None:
            raise ValueError("dataset: a 'renders' depth probe names the rendered dataset it reads depth from")
        if self.kind != "renders" and not self.path:
            raise ValueError(f"path: kind {self.kind} needs the location of the data set")
        if self.kind == "nyu_labeled_mat" and not self.splits_path:
            raise ValueError("splits_path: nyu_labeled_mat is scored on the official split (splits.mat)")
        return self


class RecoverabilitySpec(StrictModel):
    """Shape recoverability: an ico-sphere fitted to each of the first ``classes`` classes' rendered masks (every view of
    instance ``instance``), compared with the true mesh (chamfer, F-score) and on held-out views (silhouette IoU).
    Run by the train stage after render; results: fits/<dataset_id>/recoverability.json, shown in the report."""

    datasets: list[Name] = Field(min_length=1, max_length=1000, description="Rendered procsynth/morphsynth datasets to "
                                 "fit (with 'mask' in render.outputs).")
    classes: int = Field(default=3, ge=1, le=100_000, description="Fit the first this many classes of each dataset.")
    instance: int = Field(default=0, ge=0, le=1_000_000, description="Which instance of each class is fitted.")
    params: FitParams = Field(default_factory=FitParams, description="Fitting parameters (FitParams; held_out_views "
                              "of the rendered views are held out for the IoU).")


class EvaluationSpec(StrictModel):
    shape_bias: list[ShapeBiasSpec] = Field(default_factory=list, max_length=1000, description="Shape-bias evaluations (cue conflict).")
    depth_probe: list[DepthProbeSpec] = Field(default_factory=list, max_length=1000, description="Linear depth probes of frozen backbones.")
    recoverability: RecoverabilitySpec | None = Field(default=None, description="Shape recoverability of rendered "
                                                      "datasets (meshes fitted to their masks); none by default.")
