"""Transfer targets, read offline from the user's copies (nothing is ever downloaded).

Kinds (``TargetSpec.kind``):

- ``digits``: scikit-learn's bundled handwritten digits (1797 8×8 grey images, 10 classes);
- ``imagefolder``: ``path/<class>/<image>`` (torchvision ``ImageFolder``); with ``split:
  official``, ``path/train/<class>/`` and ``path/val/`` — class folders (ImageNet after the
  usual validation re-layout, Places365's ``places365_standard``) or a flat folder with a
  ``val_labels`` file (Places365's ``val_256`` + ``places365_val.txt``);
- ``cifar10`` / ``cifar100``: the python-pickle layout, with the official test batch;
- ``voc2012``: a VOCdevkit (``Annotations/*.xml``, ``ImageSets/Main/{train,val}.txt``,
  ``JPEGImages/``): 20-class multi-label classification on the official train/val split;
- ``omniglot``: ``images_background/`` and/or ``images_evaluation/<alphabet>/<character>/*.png``,
  one class per character (1623 with both sets);
- ``coco_segmentation`` / ``voc2012_segmentation``: semantic segmentation, items ``(image, label
  map)`` (:mod:`services.train.segtargets`).

Every item is ``(image, label)``: image an (H, W, 3) uint8 tensor, already resized (to
``size × size``, or with ``resize`` so its shorter side is ``resize``); label an int, or for
a multi-label target a float vector with 1 (present), 0 (absent) and -1 (only "difficult"
objects: ignored by the loss and by VOC's AP, as the devkit's 0 labels are).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from services.common.errors import FlatlandError, ObjectNotFoundError
from services.common.seeds import derive_rng, derive_seed
from services.common.spec.train import VOC_CLASSES, TargetSpec

IGNORE = -1.0  # a multi-label entry the loss and AP skip (VOC's "difficult"-only classes)


@dataclass
class TargetData:
    """A target's fixed train / held-out split."""

    name: str
    train: Dataset
    test: Dataset
    train_labels: np.ndarray  # (n_train,) int, or (n_train, classes) for multi-label targets
    num_classes: int
    multilabel: bool = False
    classes: list[str] = field(default_factory=list)
    segmentation: bool = False  # items are (image, label map) (services.train.segtargets)


class ResizeToTensor:
    """PIL image → (H, W, 3) uint8 tensor: ``size × size``, or shorter side ``resize`` (picklable)."""

    def __init__(self, size: int, resize: int | None = None):
        self.size, self.resize = size, resize

    def __call__(self, image):
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        image = image.convert("RGB")
        if self.resize is None:
            image = F.resize(image, [self.size, self.size], interpolation=InterpolationMode.BILINEAR)
        else:  # torchvision's Resize(int), as FractalDB's fine-tuning uses
            image = F.resize(image, self.resize, interpolation=InterpolationMode.BILINEAR)
        return torch.from_numpy(np.array(image))



class Files(Dataset):
    """Images listed as (file, label) pairs, loaded with PIL."""

    def __init__(self, samples: list[tuple[str, object]], transform: Callable):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as image:
            pixels = self.transform(image)
        if isinstance(label, np.ndarray):
            label = torch.from_numpy(label)
        return pixels, label


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train, test = train_test_split(indices, test_size=test_fraction, stratify=labels, random_state=seed % 2**32)
    return np.sort(train), np.sort(test)


def load_digits_target(target: TargetSpec, input_size: int, seed: int, resize: int | None = None) -> TargetData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    side = resize or input_size
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # (n, 1, 8, 8) in [0, 1]
    images = nn.functional.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).expand(-1, -1, -1, 3)
    labels = digits.target.astype(np.int64)
    train, test = _stratified_split(labels, target.test_fraction, derive_seed(seed, "split", target.name))
    data = TensorDataset(images.contiguous(), torch.from_numpy(labels))
    return TargetData(target.name, Subset(data, train), Subset(data, test), labels[train], 10,
                      classes=[str(d) for d in range(10)])


def _image_folder(target: TargetSpec, root: Path, transform):
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise ObjectNotFoundError(f"target '{target.name}': image folder {root} does not exist")
    try:
        folder = ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise FlatlandError(f"target '{target.name}': {root} is not an image folder (root/<class>/<image>): {exc}") from None
    if len(folder.classes) < 2:
        raise FlatlandError(f"target '{target.name}': {root} needs at least 2 class folders, found {folder.classes}")
    return folder


def _flat_validation(target: TargetSpec, root: Path, classes: list[str], transform) -> Files:
    """path/val/<image> with a '<file> <class>' label file (class: a train folder name or its sorted index)."""
    if not target.val_labels:
        raise FlatlandError(f"target '{target.name}': {root} has no class folders; give `val_labels`, a file of "
                            "'<file name> <class>' lines (e.g. Places365's places365_val.txt)")
    labels_file = Path(target.val_labels)
    if not labels_file.is_file():
        raise ObjectNotFoundError(f"target '{target.name}': val_labels file {labels_file} does not exist")
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for number, line in enumerate(labels_file.read_text().splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        if len(parts) < 2:
            raise FlatlandError(f"target '{target.name}': {labels_file}:{number}: expected '<file> <class>', got {line!r}")
        name, label = parts[0], parts[1]
        if label in index:
            label_index = index[label]
        elif label.isdigit() and int(label) < len(classes):
            label_index = int(label)
        else:
            raise FlatlandError(f"target '{target.name}': {labels_file}:{number}: class {label!r} is neither a folder "
                                f"of the training split nor an index below {len(classes)}")
        image = root / name
        if not image.suffix:
            matches = sorted(root.glob(f"{name}.*"))
            image = matches[0] if matches else image
        if not image.is_file():
            raise ObjectNotFoundError(f"target '{target.name}': {labels_file}:{number} names {image}, which does not exist")
        samples.append((str(image), label_index))
    if not samples:
        raise FlatlandError(f"target '{target.name}': {labels_file} lists no images")
    return Files(samples, transform)


def load_imagefolder_target(target: TargetSpec, input_size: int, seed: int, resize: int | None = None) -> TargetData:
    root = Path(target.path or "")
    transform = ResizeToTensor(input_size, resize)
    if target.held_out == "official":
        train = _image_folder(target, root / "train", transform)
        val_root = root / "val"
        if not val_root.is_dir():
            raise ObjectNotFoundError(f"target '{target.name}': split official needs {val_root} next to {root / 'train'}")
        if any(p.is_dir() for p in val_root.iterdir()):
            test = _image_folder(target, val_root, transform)
            if test.classes != train.classes:
                extra = sorted(set(test.classes) - set(train.classes))
                missing = sorted(set(train.classes) - set(test.classes))
                raise FlatlandError(f"target '{target.name}': class folders of {val_root} differ from {root / 'train'}: "
                                    f"only in val {extra[:5]}, only in train {missing[:5]}")
        else:
            test = _flat_validation(target, val_root, train.classes, transform)
        labels = np.asarray(train.targets, dtype=np.int64)
        return TargetData(target.name, train, test, labels, len(train.classes), classes=list(train.classes))
    folder = _image_folder(target, root, transform)
    labels = np.asarray(folder.targets, dtype=np.int64)
    train, test = _stratified_split(labels, target.test_fraction, derive_seed(seed, "split", target.name))
    return TargetData(target.name, Subset(folder, train), Subset(folder, test), labels[train], len(folder.classes),
                      classes=list(folder.classes))


def _cifar_loader(kind: str):
    def load(target: TargetSpec, input_size: int, seed: int, resize: int | None = None) -> TargetData:
        from torchvision import datasets

        cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
        transform = ResizeToTensor(input_size, resize)
        try:
            train = cls(target.path, train=True, download=False, transform=transform)
            test = cls(target.path, train=False, download=False, transform=transform)
        except RuntimeError as exc:
            raise ObjectNotFoundError(
                f"target '{target.name}': no {kind} data under {target.path} (expected the standard python "
                f"layout, e.g. {cls.base_folder}/; downloads are disabled): {exc}") from None
        return TargetData(target.name, train, test, np.asarray(train.targets, dtype=np.int64), len(train.classes),
                          classes=list(train.classes))

    return load


# -- Pascal VOC 2012 --------------------------------------------------------------------
def voc_root(path: str) -> Path:
    """The VOC2012 folder: ``path`` itself, or ``path/VOC2012`` when given the VOCdevkit."""
    root = Path(path)
    return root / "VOC2012" if (root / "VOC2012").is_dir() and not (root / "Annotations").is_dir() else root


def voc_labels(annotation: Path) -> np.ndarray:
    """(20,) float32: 1 for a class with a non-difficult object, -1 (ignored) with only difficult ones, else 0.

    This is what the devkit's ``ImageSets/Main/<class>_<split>.txt`` files hold (as 1 / 0 / -1).
    """
    try:
        tree = ElementTree.parse(annotation)
    except (ElementTree.ParseError, OSError) as exc:
        raise FlatlandError(f"VOC annotation {annotation} is not readable XML: {exc}") from None
    labels = np.zeros(len(VOC_CLASSES), dtype=np.float32)
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise FlatlandError(f"VOC annotation {annotation}: unknown class {name!r} (VOC's classes: {', '.join(VOC_CLASSES)})")
        k = VOC_CLASSES.index(name)
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        if not difficult:
            labels[k] = 1.0
        elif labels[k] == 0:
            labels[k] = IGNORE
    return labels


def load_voc2012_target(target: TargetSpec, input_size: int, seed: int, resize: int | None = None) -> TargetData:
    root = voc_root(target.path or "")
    needed = [root / "Annotations", root / "JPEGImages", root / "ImageSets/Main/train.txt", root / "ImageSets/Main/val.txt"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise ObjectNotFoundError(f"target '{target.name}': not a VOCdevkit VOC2012 folder, missing {', '.join(missing)}")
    transform = ResizeToTensor(input_size, resize)
    splits = {}
    for split in ("train", "val"):
        ids = [line.split()[0] for line in (root / f"ImageSets/Main/{split}.txt").read_text().splitlines() if line.strip()]
        if not ids:
            raise FlatlandError(f"target '{target.name}': {root}/ImageSets/Main/{split}.txt lists no images")
        samples = []
        for image_id in ids:
            image = root / "JPEGImages" / f"{image_id}.jpg"
            if not image.is_file():
                raise ObjectNotFoundError(f"target '{target.name}': {split}.txt lists {image_id}, but {image} does not exist")
            samples.append((str(image), voc_labels(root / "Annotations" / f"{image_id}.xml")))
        splits[split] = Files(samples, transform)
    labels = np.stack([label for _, label in splits["train"].samples])
    return TargetData(target.name, splits["train"], splits["val"], labels, len(VOC_CLASSES), multilabel=True,
                      classes=list(VOC_CLASSES))


# -- Omniglot ---------------------------------------------------------------------------
OMNIGLOT_SETS = ("images_background", "images_evaluation")
OMNIGLOT_TRAIN_DRAWERS = 15  # official split: drawers 1-15 train, 16-20 held out
_DRAWING = re.compile(r"^\d+_(\d+)$")


def load_omniglot_target(target: TargetSpec, input_size: int, seed: int, resize: int | None = None) -> TargetData:
    root = Path(target.path or "")
    sets = [root / s for s in OMNIGLOT_SETS if (root / s).is_dir()]
    if not sets:
        raise ObjectNotFoundError(f"target '{target.name}': no Omniglot under {root} (expected "
                                  f"{root / OMNIGLOT_SETS[0]}/<alphabet>/<character>/*.png and/or {root / OMNIGLOT_SETS[1]}/...)")
    classes, samples, drawers = [], [], []
    for set_dir in sets:
        for alphabet in sorted(p for p in set_dir.iterdir() if p.is_dir()):
            for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
                images = sorted(character.glob("*.png"))
                if not images:
                    continue
                label = len(classes)
                classes.append(f"{set_dir.name}/{alphabet.name}/{character.name}")
                for image in images:
                    samples.append((str(image), label))
                    match = _DRAWING.match(image.stem)
                    drawers.append(int(match[1]) if match else -1)
    if len(classes) < 2:
        raise FlatlandError(f"target '{target.name}': {root} needs at least 2 characters "
                            "(<set>/<alphabet>/<character>/*.png), found {len(classes)}")
    labels = np.asarray([label for _, label in samples], dtype=np.int64)
    if target.held_out == "official":
        drawers_arr = np.asarray(drawers)
        if (drawers_arr < 0).any():
            bad = samples[int(np.flatnonzero(drawers_arr < 0)[0])][0]
            raise FlatlandError(f"target '{target.name}': split official needs Omniglot's file names "
                                f"<image>_<drawer>.png (e.g. 0709_01.png); got {bad}")
        train = np.flatnonzero(drawers_arr <= OMNIGLOT_TRAIN_DRAWERS)
        test = np.flatnonzero(drawers_arr > OMNIGLOT_TRAIN_DRAWERS)
        if len(train) == 0 or len(test) == 0:
            raise FlatlandError(f"target '{target.name}': the drawer split (1-{OMNIGLOT_TRAIN_DRAWERS} train, the rest "
                                f"held out) leaves {len(train)} training and {len(test)} held-out drawings")
    else:
        train, test = _stratified_split(labels, target.test_fraction, derive_seed(seed, "split", target.name))
    files = Files(samples, ResizeToTensor(input_size, resize))
    return TargetData(target.name, Subset(files, train), Subset(files, test), labels[train], len(classes), classes=classes)


def _segmentation_loader(kind: str):
    def load(target: TargetSpec, input_size: int, seed: int, resize: int | None = None) -> TargetData:
        from services.train.segtargets import LOADERS, SEGMENTATION_CLASSES

        train, test = LOADERS[kind](target, input_size)
        return TargetData(target.name, train, test, np.zeros(len(train), dtype=np.int64), len(SEGMENTATION_CLASSES),
                          classes=list(SEGMENTATION_CLASSES), segmentation=True)

    return load


TARGET_LOADERS: dict[str, Callable[..., TargetData]] = {
    "digits": load_digits_target,
    "imagefolder": load_imagefolder_target,
    "cifar10": _cifar_loader("cifar10"),
    "cifar100": _cifar_loader("cifar100"),
    "voc2012": load_voc2012_target,
    "omniglot": load_omniglot_target,
    "coco_segmentation": _segmentation_loader("coco_segmentation"),
    "voc2012_segmentation": _segmentation_loader("voc2012_segmentation"),
}


def load_target(target: TargetSpec, input_size: int, seed: int, resize: int | None = None) -> TargetData:
    """The target's split; with ``train_per_class``, a seeded per-class subset of the training split."""
    data = TARGET_LOADERS[target.kind](target, input_size, seed, resize)
    if target.train_per_class is not None:
        rng = derive_rng(seed, "few-shot", target.name)
        keep = []
        for label in np.unique(data.train_labels):
            members = np.flatnonzero(data.train_labels == label)
            keep.append(rng.permutation(members)[: target.train_per_class])
        keep = np.sort(np.concatenate(keep))
        data.train = Subset(data.train, keep)
        data.train_labels = data.train_labels[keep]
    return data


# -- views: crops and flips of the resized images ---------------------------------------
class View(Dataset):
    """``base`` items cropped to ``size`` (at random or in the centre) and, optionally, flipped at random.

    Randomness comes from torch's generator, which DataLoader seeds per worker from the
    loader's own generator: a seeded loader gives the same crops every time.
    """

    def __init__(self, base: Dataset, size: int, *, random_crop: bool = False, horizontal_flip: bool = False):
        self.base, self.size, self.random_crop, self.horizontal_flip = base, size, random_crop, horizontal_flip

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        height, width = image.shape[:2]
        size = self.size
        if (height, width) != (size, size):
            if min(height, width) < size:
                raise FlatlandError(f"image of {width}x{height} is smaller than the {size}-pixel crop; raise augment.resize")
            if self.random_crop:
                top = int(torch.randint(0, height - size + 1, ()))
                left = int(torch.randint(0, width - size + 1, ()))
            else:  # torchvision's CenterCrop rounding
                top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
            image = image[top:top + size, left:left + size]
        if self.horizontal_flip and bool(torch.rand(()) < 0.5):
            image = image.flip(1)
        return image.contiguous(), label


def view(base: Dataset, size: int, *, random_crop: bool = False, horizontal_flip: bool = False) -> Dataset:
    """``base`` as the network sees it; ``base`` itself when nothing is to crop or flip."""
    if not random_crop and not horizontal_flip:
        sample = base[0][0] if len(base) else None
        if sample is not None and tuple(sample.shape[:2]) == (size, size) and _uniform(base):
            return base
    return View(base, size, random_crop=random_crop, horizontal_flip=horizontal_flip)


def _uniform(base: Dataset) -> bool:
    """Whether every item of ``base`` has one size (datasets resized straight to a square do)."""
    inner = base
    while isinstance(inner, Subset):
        inner = inner.dataset
    transform = getattr(inner, "transform", None)
    return isinstance(inner, TensorDataset) or (isinstance(transform, ResizeToTensor) and transform.resize is None)
