"""Training settings: pre-training on synthetic data, transfer, hyper-parameter search."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from services.common.spec.base import SEED_MAX, Name, StrictModel


class AugmentSpec(StrictModel):
    random_resized_crop: bool = Field(default=True, description="torchvision's RandomResizedCrop (area `crop_scale`, aspect `crop_ratio`), then resize to the input size.")
    random_crop: bool = Field(
        default=False,
        description="FractalDB's RandomCrop: an input-size window at a random position, no rescaling (images smaller "
        "than the input are resized up first). Exclusive with random_resized_crop.")
    crop_scale: tuple[float, float] = Field(default=(0.5, 1.0), description="Crop area range (fraction of the image).")
    crop_ratio: tuple[float, float] = Field(default=(3 / 4, 4 / 3), description="Crop aspect-ratio range (width / height).")
    horizontal_flip: bool = Field(default=True, description="Random horizontal flips.")

    @model_validator(mode="after")
    def _ranges(self):
        if self.random_crop and self.random_resized_crop:
            raise ValueError("random_crop and random_resized_crop exclude each other: set random_resized_crop: false")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        return self


class OptimSpec(StrictModel):
    optimizer: Literal["sgd", "adam"] = Field(
        default="sgd", description="'sgd' (with `momentum`) or 'adam' (torch's Adam, betas (0.9, 0.999); `momentum` "
        "unused); pre-training runs only (transfers train with SGD).")
    lr: float = Field(default=0.1, gt=0, description="Peak learning rate.")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(default=1e-4, ge=0, description="L2 weight decay.")
    schedule: Literal["cosine", "step", "constant"] = Field(
        default="cosine", description="Learning-rate schedule after warm-up: cosine to zero, step decay, or constant.")
    warmup_epochs: float = Field(default=1.0, ge=0, description="Linear warm-up length (epochs, may be fractional).")
    step_size: int = Field(default=30, ge=1, le=10_000, description="Step schedule: epochs between decays.")
    step_gamma: float = Field(default=0.1, gt=0, le=1, description="Step schedule: factor applied at each decay.")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy loss.")
    grad_clip_norm: float | None = Field(default=None, gt=0, description="Clip gradients to this global norm.")


class Prior3DLossSpec(StrictModel):
    """Weights of the 3D-prior loss L = rgb L_rgb + depth L_depth + distill L_dist + density_l1 L_norm."""

    rgb: float = Field(default=0.1, ge=0, description="Weight of L_rgb, the mean squared error of the rendered image (inputs in [0, 1]).")
    depth: float = Field(default=1.0, ge=0, description="Weight of L_depth, the mean squared error of the rendered depth (in `depth_units`).")
    distill: float = Field(default=1.0, ge=0, description="Weight of L_dist, the mean squared distance of the backbone's image tokens to a "
                           "frozen copy of the initial backbone's (0: no distillation, and no frozen copy is kept).")
    density_l1: float = Field(default=1e-3, ge=0, description="Weight of L_norm, the mean absolute density over every queried point.")

    @model_validator(mode="after")
    def _some(self):
        if self.rgb == 0 and self.depth == 0:
            raise ValueError("rgb and depth weights are both 0: the decoder would learn nothing")
        return self


class Prior3DSpec(StrictModel):
    """The 3D-prior objective (``task: 3d_prior``): see docs/3d-prior.md. Defaults are the published ones."""

    decoder: Literal["triplane", "conv"] = Field(
        default="triplane", description="'triplane': learnable triplane tokens cross-attend to the image tokens, are "
        "upsampled to triplanes and volume-rendered (as published). 'conv': the ablation without triplanes: "
        "upsampling convolutions from the image tokens straight to an image and a depth map.")
    token_grid: int = Field(default=16, ge=2, le=64, description="Triplane tokens per plane side (published: 16, so 16 x 16 x 3 tokens).")
    token_dim: int = Field(default=256, ge=8, le=4096, description="Width of the triplane tokens and the cross-attention.")
    attention_heads: int = Field(default=8, ge=1, le=64, description="Heads of the cross-attention (must divide token_dim).")
    attention_layers: int = Field(default=1, ge=1, le=16, description="Cross-attention blocks (attention + MLP, pre-norm, residual).")
    triplane_resolution: int = Field(default=128, ge=4, le=1024, description="Side of each triplane (published: 128); token_grid times a power of two.")
    triplane_channels: int = Field(default=32, ge=1, le=512, description="Feature channels C of each triplane.")
    mlp_hidden: int = Field(default=64, ge=4, le=4096, description="Hidden width of the radiance field's two-layer MLP.")
    samples_per_ray: int = Field(default=16, ge=2, le=1024, description="Stratified samples per camera ray (published: 16).")
    importance_samples: int = Field(default=16, ge=0, le=1024, description="Further samples per ray drawn from the first pass's weights (0: none).")
    render_size: int = Field(default=64, ge=4, le=1024, description="Rays per image side: the image and depth targets are resized to this (depth by nearest neighbour).")
    box_half_size: float = Field(
        default=0.4, gt=0, lt=1, description="Half side of the cube the triplanes span, in units of the camera's distance to the "
        "look-at point (the cube is centred there, axes of the camera); rays are sampled through its depth range. "
        "Renders fit the object's bounding sphere in view, so its radius is sin(fov / 2) / auto_fit_margin of the distance (0.30 at 40 degrees).")
    background: Literal["masked", "far"] = Field(
        default="masked", description="Depth target off the object (stored as no surface): 'masked' leaves those pixels out of "
        "L_depth; 'far' asks for the far end of the box there.")
    depth_units: Literal["camera_distance", "metres"] = Field(
        default="camera_distance", description="Units of L_depth's errors: 'camera_distance' (each image's depth divided by "
        "its camera's distance to the look-at point: scale-free, so the loss weights mean the same for any object size, "
        "as for the published method's relative pseudo-depth) or 'metres'.")
    loss: Prior3DLossSpec = Field(default_factory=Prior3DLossSpec, description="Loss weights.")
    image_folder: str | None = Field(
        default=None, description="Train on a folder of <name>.png images, each with <name>.depth.npy beside it (float "
        "depth along the viewing axis in metres; non-finite or <= 0: no surface), e.g. natural images with pseudo-depth, "
        "instead of rendered `datasets` (then none). No camera is recorded there: a pinhole of `fov_deg` looking at the "
        "image's median depth. Every image trains; there is no validation split.")
    fov_deg: float = Field(default=60.0, gt=1, lt=170, description="image_folder: the vertical field of view the depth maps assume.")

    @model_validator(mode="after")
    def _shapes(self):
        if self.token_dim % self.attention_heads:
            raise ValueError(f"attention_heads ({self.attention_heads}) must divide token_dim ({self.token_dim})")
        ratio = self.triplane_resolution / self.token_grid
        if ratio < 1 or ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(f"triplane_resolution ({self.triplane_resolution}) must be token_grid ({self.token_grid}) "
                             "times a power of two (each upsampling block doubles the side)")
        return self


class PretrainSearchSpec(StrictModel):
    """Cross-validated grid search of the pre-training learning rate and weight decay.

    The run's training split is divided into ``folds`` class-stratified folds (after keeping
    ``fraction`` of every class's samples); each (lr, weight decay) trains ``epochs`` epochs on
    all folds but one and is scored by top-1 on the one held out, for every fold. The pair with
    the best mean held-out top-1 trains the run.
    """

    folds: int = Field(default=3, ge=2, le=20, description="Cross-validation folds of the training split.")
    lr: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2], min_length=1, max_length=100, description="Peak learning rates to try.")
    weight_decay: list[float] = Field(default_factory=lambda: [5e-5, 1e-4, 2e-4], min_length=1, max_length=100, description="Weight decays to try.")
    epochs: int = Field(default=5, ge=1, le=10_000, description="Epochs of each trial (short: trials rank settings, they do not finish a run).")
    fraction: float = Field(default=1.0, gt=0, le=1, description="Share of every class's training samples the search uses (cost control).")

    @model_validator(mode="after")
    def _positive(self):
        if any(v <= 0 for v in self.lr) or any(v < 0 for v in self.weight_decay):
            raise ValueError("search.lr values must be > 0 and search.weight_decay values >= 0")
        return self


#: FractalDB's pre-training protocol (hirokatsukataoka16/FractalDB-Pretrained-ResNet-PyTorch,
#: pretraining/main.py and args.py): RandomCrop(224) of the 362-px images, no flip, Normalize(0.2, 0.5),
#: SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 256, 90 epochs, MultiStepLR at 30 and 60 (x0.1).
PRESETS: dict[str, dict] = {
    "fractaldb": {
        "input_size": 224,
        "epochs": 90,
        "batch_size": 256,
        "augment": {"random_resized_crop": False, "random_crop": True, "horizontal_flip": False},
        "mean": (0.2, 0.2, 0.2),
        "std": (0.5, 0.5, 0.5),
        "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "step", "step_size": 30,
                  "step_gamma": 0.1, "warmup_epochs": 0.0, "label_smoothing": 0.0},
    },
}


#: What task 3d_prior fills in when the run does not set it (the published settings).
PRIOR_DEFAULTS: dict = {
    "model": "resnet50",
    "epochs": 10,  # augment: the defaults already are random (resized) crops and horizontal flips only
    "optim": {"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "schedule": "constant", "warmup_epochs": 0.0},
}


def _with_preset(preset: dict, given: dict) -> dict:
    """``given`` over ``preset``: what the spec sets wins, key by key inside augment and optim too."""
    merged = dict(preset)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


class PretrainSpec(StrictModel):
    name: Name = Field(description="Run name (the run id adds a hash of this spec).")
    kind: Literal["synthetic", "torchvision_pretrained"] = Field(
        default="synthetic",
        description="'synthetic': train `model` on the rendered `datasets`. 'torchvision_pretrained': an "
        "ImageNet-trained baseline: torchvision's `model` with the published `weights`, read from a local file "
        "(never downloaded); it takes part in transfer, the filter comparison and neural scoring like a trained run.")
    weights: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$",
        description="torchvision_pretrained: the weights enum, e.g. ResNet50_Weights.IMAGENET1K_V1 (it must belong to `model`).")
    weights_path: str | None = Field(
        default=None,
        description="torchvision_pretrained: the weights file; default: the torch hub cache, "
        "$TORCH_HOME/hub/checkpoints/<the file name of the enum's URL> (e.g. resnet50-0676ba61.pth).")
    preset: Literal["fractaldb"] | None = Field(
        default=None,
        description="A published protocol filling every setting the run does not set itself. 'fractaldb': "
        "FractalDB's pre-training (RandomCrop 224, no flip, Normalize(0.2, 0.5), SGD lr 0.1, weight decay 1e-4, "
        "batch 256, 90 epochs, step decay x0.1 at epochs 30 and 60).")

    task: Literal["classification", "segmentation", "3d_prior"] = Field(
        default="classification",
        description="What the network learns (`objective` is another name for this field). 'classification': the class "
        "of each image (cross-entropy, top-1/top-5). "
        "'segmentation': the label map of each image (each sample's seg.png: class + 1 on objects, 0 background), "
        "per-pixel cross-entropy over classes + 1 outputs, pixel accuracy / IoU / F1 micro- and macro-averaged; "
        "`model` is then a torchvision segmentation model (default fcn_resnet50; deeplabv3_resnet50, "
        "lraspp_mobilenet_v3_large, ...), built from scratch (no backbone weights), and `epochs` defaults to 10. "
        "'3d_prior': the proxy 3D reconstruction task of docs/3d-prior.md on each image's exact depth (settings in "
        "`prior`); defaults as published: resnet50, 10 epochs, Adam lr 1e-4 at a constant rate, random crops and "
        "flips; only the backbone is kept as the checkpoint. Usually `init_from` a supervised run.")
    init_from: Name | None = Field(
        default=None, description="Start from the final weights of this earlier pre-training run of the experiment (same "
        "`model`; listed before this run) instead of a fresh initialisation.")
    prior: Prior3DSpec | None = Field(default=None, description="task 3d_prior: its settings (filled with the defaults).")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and "objective" in data:  # the spelling of `task`
            data = dict(data)
            objective = data.pop("objective")
            if data.get("task", objective) != objective:
                raise ValueError(f"objective ({objective!r}) and task ({data['task']!r}) name the same thing; give one")
            data["task"] = objective
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            data = _with_preset(PRESETS[data["preset"]], data)
        if isinstance(data, dict) and data.get("task") == "segmentation":
            # the published noise-scene study: FCN-ResNet50, 10 epochs
            data = {"model": "fcn_resnet50", "epochs": 10, **data}
        if isinstance(data, dict) and data.get("task") == "3d_prior":
            data = _with_preset(PRIOR_DEFAULTS, data)
        return data

    @model_validator(mode="after")
    def _prior(self):
        if self.task == "3d_prior":
            if self.prior is None:
                self.prior = Prior3DSpec()
            if self.kind != "synthetic":
                raise ValueError("task 3d_prior trains a backbone: it needs kind: synthetic (start it from a "
                                 "torchvision_pretrained run with init_from)")
            if self.search is not None:
                raise ValueError("search: the cross-validated search ranks settings by top-1; task 3d_prior has no "
                                 "classes to score (set optim.lr and optim.weight_decay yourself)")
        elif self.prior is not None:
            raise ValueError(f"prior: settings of task 3d_prior; this run's task is {self.task!r}")
        if self.init_from is not None and self.init_from == self.name:
            raise ValueError("init_from: a run cannot start from itself")
        if self.kind == "torchvision_pretrained" and self.init_from is not None:
            raise ValueError("init_from: a torchvision_pretrained run imports its weights; it starts from nothing else")
        return self

    datasets: list[Name] = Field(default_factory=list, max_length=1000, description="Datasets to mix (uniformly); names from `datasets` (synthetic runs: at least one).")

    @model_validator(mode="after")
    def _distinct_datasets(self):
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"datasets: each dataset may appear once in a mix, got {self.datasets}")
        folder = self.task == "3d_prior" and self.prior is not None and self.prior.image_folder is not None
        if folder and (self.datasets or self.class_budget is not None):
            raise ValueError("prior.image_folder: the run trains on that folder; remove datasets and class_budget")
        if self.kind == "synthetic":
            if not self.datasets and not folder:
                raise ValueError("datasets: a synthetic run needs at least one dataset (task 3d_prior: or prior.image_folder)")
            if self.weights or self.weights_path:
                raise ValueError("weights / weights_path belong to kind: torchvision_pretrained runs")
        else:
            if self.datasets:
                raise ValueError(f"datasets: a torchvision_pretrained run trains on nothing here; remove {self.datasets}")
            if not self.weights:
                raise ValueError("weights: a torchvision_pretrained run names its torchvision weights enum, "
                                 "e.g. ResNet50_Weights.IMAGENET1K_V1")
            if self.task != "classification":
                raise ValueError(f"task: a torchvision_pretrained run is an ImageNet classifier; task {self.task!r} "
                                 "needs kind: synthetic")
        return self

    class_budget: int | None = Field(default=None, ge=1, le=1_000_000, description="Total classes, split evenly across datasets (Table 2). None: all classes.")
    model: str = Field(default="resnet50", description="torchvision classification model name (task segmentation: a "
                       "torchvision segmentation model name, default fcn_resnet50).")
    input_size: int = Field(default=224, ge=16, le=1024, description="Side of the square network input (pixels); images are resized to it.")
    epochs: int = Field(default=90, ge=1, le=10_000, description="Passes over the training split.")
    batch_size: int = Field(default=64, ge=1, le=8192, description="Samples per optimisation step (per process under DDP).")
    workers: int = Field(default=2, ge=0, le=64, description="Data loader worker processes.")
    shuffle_buffer: int = Field(default=1000, ge=1, le=1_000_000, description=(
        "Ignored (kept so older specs validate): training reads each epoch in one global random order "
        "over every sample of the run's datasets, by random access (see docs/train-stage.md)."))
    augment: AugmentSpec = Field(default_factory=AugmentSpec, description="Training-time augmentation.")
    mean: tuple[float, float, float] = Field(default=(0.485, 0.456, 0.406), description="Per-channel mean subtracted from inputs in [0, 1] (recorded in checkpoints; default ImageNet's).")
    std: tuple[float, float, float] = Field(default=(0.229, 0.224, 0.225), description="Per-channel standard deviation inputs are divided by (recorded in checkpoints).")
    optim: OptimSpec = Field(default_factory=OptimSpec, description="Optimiser and schedule.")
    search: PretrainSearchSpec | None = Field(
        default=None, description="Cross-validated search of optim.lr and optim.weight_decay before the run (they are replaced by the best pair).")
    amp: bool = Field(default=True, description="Mixed precision (GPU only; ignored on the CPU).")
    amp_dtype: Literal["bfloat16", "float16"] = Field(
        default="bfloat16", description="Autocast dtype on the GPU; float16 adds a GradScaler."
    )
    channels_last: bool = Field(default=True, description="channels-last memory format (GPU only).")
    train_split: str = Field(default="train", pattern=r"^[a-z0-9-]+$", description="Shard split used for training.")
    val_split: str | None = Field(default="val", pattern=r"^[a-z0-9-]+$", description="Shard split evaluated each epoch (None: none).")
    max_corrupt_fraction: float = Field(default=0.01, ge=0, le=1, description="Fail when more samples than this are corrupt.")
    seed: int = Field(default=0, ge=0, le=SEED_MAX, description="Seed of initialisation, data order and augmentation.")


#: Pascal VOC's 20 classes in the devkit's order (VOCdevkit/VOCcode/VOCinit.m).
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
               "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


#: Segmentation target kinds (their images hold label maps of background + VOC's 20 classes).
SEGMENTATION_TARGETS = ("coco_segmentation", "voc2012_segmentation")
#: Target kinds read with their official split only.
OFFICIAL_ONLY = ("cifar10", "cifar100", "voc2012", *SEGMENTATION_TARGETS)


class TargetSpec(StrictModel):
    name: Name
    kind: Literal["digits", "imagefolder", "cifar10", "cifar100", "voc2012", "omniglot", "coco_segmentation",
                  "voc2012_segmentation"] = Field(
        description="'digits': scikit-learn's bundled handwritten digits (offline); others read `path`: "
        "'imagefolder' path/<class>/<image> (or path/train/ and path/val/ with split: official); 'cifar10'/'cifar100' "
        "the python-pickle layout; 'voc2012' a VOCdevkit (Annotations/, ImageSets/Main/{train,val}.txt, JPEGImages/), "
        "20-class multi-label classification scored by mAP on val; 'omniglot' images_background/ and/or "
        "images_evaluation/<alphabet>/<character>/*.png, one class per character. Semantic segmentation (21 classes: "
        "background + VOC's 20; IoU, pixel accuracy, F1): 'coco_segmentation' COCO 2017 (path/annotations/"
        "instances_{train,val}2017.json, path/train2017/, path/val2017/) restricted to the 20 VOC categories as "
        "torchvision's segmentation reference does; 'voc2012_segmentation' a VOCdevkit's SegmentationClass/*.png, "
        "ImageSets/Segmentation/{train,val}.txt and JPEGImages/ (255 = ignored)."
    )
    path: str | None = Field(default=None, description="Root of the user-provided data set (every kind but digits).")
    split: Literal["random", "official"] | None = Field(
        default=None,
        description="Held-out split. 'official': the data set's own (imagefolder: path/train/ and path/val/, as ImageNet "
        "and Places365 are laid out; cifar: the test batch; voc2012: ImageSets/Main/val.txt; omniglot: the drawings of "
        "drawers 16-20, see docs/train-stage.md). 'random': a stratified `test_fraction` hold-out fixed by the seed. "
        "coco_segmentation: val2017; voc2012_segmentation: ImageSets/Segmentation/val.txt. "
        "Default: official for cifar, voc2012 and the segmentation kinds (they have only that), random otherwise.")
    val_labels: str | None = Field(
        default=None,
        description="imagefolder, split official, when path/val/ holds the images without class folders (Places365's "
        "val_256/, ImageNet's raw validation folder): a text file of '<file name> <class>' lines, the class a "
        "folder name of path/train/ or its index in sorted order (places365_val.txt is such a file).")
    test_fraction: float = Field(default=0.25, gt=0, lt=1, description="Held-out split, fixed by seed.")
    train_per_class: int | None = Field(
        default=None, ge=1, le=1_000_000,
        description="Few-shot transfer: keep this many training images per class (seeded); None keeps all. "
        "The held-out split is unchanged.",
    )

    @property
    def held_out(self) -> str:
        """The split actually used: the given one, or the kind's default."""
        return self.split or ("official" if self.kind in OFFICIAL_ONLY else "random")

    @property
    def multilabel(self) -> bool:
        return self.kind == "voc2012"

    @property
    def segmentation(self) -> bool:
        """A semantic-segmentation target: every pixel has a class (0 background)."""
        return self.kind in SEGMENTATION_TARGETS

    @model_validator(mode="after")
    def _path(self):
        if self.kind != "digits" and not self.path:
            raise ValueError(f"target kind '{self.kind}' needs a `path` to the user's data set")
        if self.kind == "digits" and self.split == "official":
            raise ValueError("split: scikit-learn's digits have no official split; use split: random")
        if self.kind in OFFICIAL_ONLY and self.split == "random":
            raise ValueError(f"split: target kind '{self.kind}' is read with its official split only; remove split: random")
        if self.val_labels and not (self.kind == "imagefolder" and self.held_out == "official"):
            raise ValueError("val_labels: only for kind imagefolder with split: official")
        if (self.multilabel or self.segmentation) and self.train_per_class is not None:
            raise ValueError(f"train_per_class: few-shot subsets are per class, which a {self.kind} target does not have "
                             "(its images hold several classes)")
        return self


class HyperSearchSpec(StrictModel):
    folds: int = Field(default=3, ge=2, le=20, description="Cross-validation folds on the training split.")
    lr: list[float] = Field(default_factory=lambda: [0.01, 0.1], min_length=1, max_length=100, description="Learning rates to try.")
    weight_decay: list[float] = Field(default_factory=lambda: [0.0, 1e-4], min_length=1, max_length=100, description="Weight decays to try.")


class TransferAugmentSpec(StrictModel):
    resize: int | None = Field(
        default=None, ge=16, le=2048,
        description="Resize the shorter image side to this first, keeping the aspect (FractalDB: 256); then training "
        "takes an input-size crop and evaluation the centre one. None: resize straight to input_size x input_size.")
    random_crop: bool = Field(
        default=False, description="Fine-tuning: the input-size crop of the resized image is at a random position "
        "(FractalDB's RandomCrop; otherwise the centre).")
    horizontal_flip: bool = Field(default=False, description="Fine-tuning: random horizontal flips.")


#: Transfer protocols. 'fractaldb': FractalDB's fine-tuning (hirokatsukataoka16/FractalDB-Pretrained-ResNet-PyTorch,
#: finetuning/main.py and args.py): Resize(256), RandomCrop(224), no flip, ImageNet's Normalize, evaluation on the
#: CenterCrop(224); SGD lr 0.01, momentum 0.9, weight decay 1e-4, batch 256, 90 epochs, MultiStepLR at 30 and 60
#: (x0.1). 'basic': this project's earlier settings (no augmentation, resize to the input, 10 epochs, batch 64,
#: lr 0.01 with a cosine schedule, the source's normalisation).
TRANSFER_PRESETS: dict[str, dict] = {
    "fractaldb": {
        "input_size": 224,
        "epochs": 90,
        "batch_size": 256,
        "augment": {"resize": 256, "random_crop": True, "horizontal_flip": False},
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "optim": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "step", "step_size": 30,
                  "step_gamma": 0.1, "warmup_epochs": 0.0, "label_smoothing": 0.0},
    },
    "basic": {
        "epochs": 10,
        "batch_size": 64,
        "augment": {"resize": None, "random_crop": False, "horizontal_flip": False},
        "optim": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine", "warmup_epochs": 0.0,
                  "label_smoothing": 0.0},
    },
}


class TransferSpec(StrictModel):
    name: Name
    preset: Literal["fractaldb", "basic"] | None = Field(
        default=None,
        description="A protocol filling every setting the transfer does not set itself. 'fractaldb': FractalDB's "
        "fine-tuning (Resize 256, RandomCrop 224, no flip, ImageNet's normalisation, centre crop for evaluation, SGD "
        "lr 0.01, momentum 0.9, weight decay 1e-4, batch 256, 90 epochs, x0.1 at epochs 30 and 60). 'basic': the "
        "project's earlier settings (no augmentation, 10 epochs, batch 64, lr 0.01, cosine); the field defaults "
        "are these too.")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset") in TRANSFER_PRESETS:
            return _with_preset(TRANSFER_PRESETS[data["preset"]], data)
        return data

    pretrained: list[Name] = Field(max_length=1000, description="Pre-training runs to start from (names from `pretrain`); from-scratch is always added.")
    targets: list[Name] = Field(min_length=1, max_length=1000, description="Target names from `targets`.")
    modes: list[Literal["finetune", "linear_probe"]] = Field(default_factory=lambda: ["finetune", "linear_probe"], min_length=1, description="Fine-tune all layers, and/or train a linear probe on frozen features.")
    epochs: int = Field(default=10, ge=1, le=10_000, description="Passes over the target training split.")
    batch_size: int = Field(default=64, ge=1, le=8192, description="Samples per step.")
    optim: OptimSpec = Field(default_factory=lambda: OptimSpec(lr=0.01, warmup_epochs=0), description="Optimiser and schedule of the transfer runs.")
    augment: TransferAugmentSpec = Field(
        default_factory=TransferAugmentSpec,
        description="Resizing and fine-tuning augmentation (linear probes train on the evaluation view, so their "
        "features are computed once).")
    mean: tuple[float, float, float] | None = Field(default=None, description="Per-channel input mean; default: the source run's.")
    std: tuple[float, float, float] | None = Field(default=None, description="Per-channel input standard deviation; default: the source run's.")
    search: HyperSearchSpec | None = Field(default=None, description="Cross-validated grid search before the final fit.")
    model: str = Field(
        default="resnet50",
        description="torchvision model for the from-scratch baseline when `pretrained` is empty "
        "(otherwise the baseline uses each pre-trained run's model).",
    )
    input_size: int | None = Field(
        default=None, ge=16, le=1024, description="Network input side (the crop with augment.resize); default: the pre-trained run's input size (224 without one)."
    )
    workers: int = Field(default=2, ge=0, le=64, description="Data loader worker processes (image decoding at ImageNet/Places365 scale).")
    amp: bool = Field(default=True, description="Mixed precision (GPU only; ignored on the CPU).")
    amp_dtype: Literal["bfloat16", "float16"] = Field(default="bfloat16", description="Autocast dtype on the GPU; float16 adds a GradScaler.")
    channels_last: bool = Field(default=True, description="channels-last memory format (GPU only).")
    seed: int = Field(default=0, ge=0, le=SEED_MAX, description="Seed of the head initialisation, data order and the split.")

    @model_validator(mode="after")
    def _sizes(self):
        if self.optim.optimizer != "sgd":
            raise ValueError(f"optim.optimizer: transfers train with SGD; got {self.optim.optimizer!r}")
        if self.augment.resize is not None and self.input_size is not None and self.augment.resize < self.input_size:
            raise ValueError(f"augment.resize ({self.augment.resize}) must be at least input_size ({self.input_size}): "
                             "the input is a crop of the resized image")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std: give both or neither")
        return self
