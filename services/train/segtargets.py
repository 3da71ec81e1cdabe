"""Semantic-segmentation transfer targets, read offline from the user's copies.

Both kinds give 21 classes: 0 background and Pascal VOC's 20 (in VOC's order); pixels
labelled 255 (VOC's object borders, COCO's overlapping instances) are ignored by the loss
and the metrics (:data:`services.train.data.IGNORE_INDEX`).

- ``coco_segmentation``: COCO 2017, ``path/annotations/instances_{train,val}2017.json`` with
  ``path/train2017/`` and ``path/val2017/``, read with ``pycocotools``, exactly as torchvision's
  ``references/segmentation/coco_utils.py`` does: only annotations of the 20 VOC categories
  (:data:`CAT_LIST`, COCO ids in VOC order, 0 = background) are kept and renumbered; each
  instance's polygons (or RLE) become a mask; the label map is the largest class index over
  the masks, and pixels covered by more than one instance are set to 255; training images
  whose kept annotations cover 1000 pixels or fewer (by their ``area``) are dropped
  (validation keeps every image).
- ``voc2012_segmentation``: a VOCdevkit's ``SegmentationClass/<id>.png`` (palette PNGs whose
  indices are the classes, 255 the border), ``ImageSets/Segmentation/{train,val}.txt`` and
  ``JPEGImages/<id>.jpg``.

Items are ``(image, mask)``: image an (S, S, 3) uint8 tensor resized bilinearly to the input
side S, mask an (S, S) int64 tensor resized by nearest neighbour.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from services.common.errors import FlatlandError, ObjectNotFoundError
from services.common.spec.train import VOC_CLASSES, TargetSpec

#: torchvision's reference: COCO category ids of background (0) and VOC's 20 classes, in VOC's order.
CAT_LIST = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
#: The classes of a segmentation target, index = label value.
SEGMENTATION_CLASSES = ("background", *VOC_CLASSES)
#: Label of pixels to ignore in the stored masks (VOC borders, COCO overlaps).
VOID = 255
#: torchvision's reference keeps a COCO training image only if its kept annotations cover more pixels than this.
MIN_COCO_AREA = 1000


class SegmentationFiles(Dataset):
    """Images and their label maps, resized to ``size`` x ``size``. ``items`` are ``(image file, source)``, the
    source ``("voc", png file)`` or ``("coco", [annotations])``: plain data, so the set pickles to loader workers."""

    def __init__(self, items: list[tuple[str, tuple]], size: int):
        self.items, self.size = items, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        from PIL import Image

        from services.train.data import IGNORE_INDEX

        path, source = self.items[index]
        with Image.open(path) as image:
            image = image.convert("RGB")
            width, height = image.size
            pixels = np.asarray(image.resize((self.size, self.size), Image.BILINEAR))
        mask = read_voc_label_map(source[1]) if source[0] == "voc" else coco_label_map(source[1], height, width)
        if mask.shape != (height, width):
            raise FlatlandError(f"label map of {path} is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}")
        mask = np.asarray(Image.fromarray(mask).resize((self.size, self.size), Image.NEAREST)).astype(np.int64)
        mask[mask == VOID] = IGNORE_INDEX
        return torch.from_numpy(pixels.copy()), torch.from_numpy(mask)

    def label_map(self, index: int) -> np.ndarray:
        """The item's label map at the image's own size (255 = ignored), before resizing."""
        from PIL import Image

        path, source = self.items[index]
        if source[0] == "voc":
            return read_voc_label_map(source[1])
        with Image.open(path) as image:
            width, height = image.size
        return coco_label_map(source[1], height, width)


# -- COCO -------------------------------------------------------------------------------------
def coco_label_map(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """(H, W) uint8 label map of one image's annotations, as torchvision's reference builds it: VOC
    categories only, renumbered by :data:`CAT_LIST`; overlaps of instances 255."""
    import warnings

    from pycocotools import mask as coco_mask

    masks, cats = [], []
    for obj in annotations:
        if obj["category_id"] not in CAT_LIST:
            continue
        segmentation = obj["segmentation"]
        if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
            rles = segmentation  # compressed RLE: decode as is
        else:  # polygons (list of lists) or uncompressed RLE ({"counts": [..], "size": [h, w]})
            rles = coco_mask.frPyObjects(segmentation, height, width)
        with warnings.catch_warnings():  # pycocotools 2.0.11 on numpy 2: a DeprecationWarning about __array__(copy)
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = coco_mask.decode(rles)
        if mask.ndim < 3:
            mask = mask[..., None]
        masks.append(mask.any(axis=2))
        cats.append(CAT_LIST.index(obj["category_id"]))
    if not masks:
        return np.zeros((height, width), dtype=np.uint8)
    stack = np.stack(masks)
    target = (stack * np.asarray(cats, dtype=np.uint8)[:, None, None]).max(axis=0).astype(np.uint8)
    target[stack.sum(axis=0) > 1] = VOID
    return target


def _coco_split(target: TargetSpec, root: Path, split: str, size: int) -> SegmentationFiles:
    from pycocotools.coco import COCO

    annotation_file = root / "annotations" / f"instances_{split}2017.json"
    images = root / f"{split}2017"
    for needed in (annotation_file, images):
        if not needed.exists():
            raise ObjectNotFoundError(f"target '{target.name}': not a COCO 2017 folder, missing {needed}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(annotation_file))
    except (ValueError, KeyError, TypeError, OSError, AssertionError) as exc:  # pycocotools asserts on the format
        raise FlatlandError(f"target '{target.name}': {annotation_file} is not a COCO instances file: {exc}") from None
    items = []
    for image_id in sorted(coco.imgs):
        kept = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None)) if a["category_id"] in CAT_LIST]
        if split == "train" and not (kept and sum(a["area"] for a in kept) > MIN_COCO_AREA):
            continue  # torchvision's _coco_remove_images_without_annotations (training split only)
        anns = [{"category_id": a["category_id"], "segmentation": a["segmentation"]} for a in kept]
        items.append((str(images / coco.imgs[image_id]["file_name"]), ("coco", anns)))
    if not items:
        raise FlatlandError(f"target '{target.name}': {annotation_file} has no usable images (training images need "
                            f"VOC-category annotations covering more than {MIN_COCO_AREA} pixels)")
    missing = [path for path, _ in items if not Path(path).is_file()]
    if missing:
        raise ObjectNotFoundError(f"target '{target.name}': {annotation_file} lists {len(missing)} image(s) missing "
                                  f"from {images}, e.g. {missing[0]}")
    return SegmentationFiles(items, size)


def load_coco_segmentation(target: TargetSpec, size: int) -> tuple[SegmentationFiles, SegmentationFiles]:
    root = Path(target.path or "")
    return _coco_split(target, root, "train", size), _coco_split(target, root, "val", size)


# -- Pascal VOC 2012 -----------------------------------------------------------------------------
def read_voc_label_map(path: str | Path) -> np.ndarray:
    """(H, W) uint8 classes of a VOC ``SegmentationClass`` PNG (palette indices; 255 the border)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise FlatlandError(f"{path}: a VOC label map is a palette (or greyscale) PNG of class indices, "
                                f"got mode {image.mode}")
        mask = np.asarray(image).astype(np.uint8)
    bad = np.setdiff1d(np.unique(mask), [*range(len(SEGMENTATION_CLASSES)), VOID])
    if bad.size:
        raise FlatlandError(f"{path}: label values must be 0-{len(SEGMENTATION_CLASSES) - 1} or {VOID}, "
                            f"found {bad[:5].tolist()}")
    return mask


def load_voc_segmentation(target: TargetSpec, size: int) -> tuple[SegmentationFiles, SegmentationFiles]:
    root = Path(target.path or "")
    if (root / "VOC2012").is_dir() and not (root / "SegmentationClass").is_dir():
        root = root / "VOC2012"  # given the VOCdevkit
    lists = root / "ImageSets" / "Segmentation"
    needed = [root / "SegmentationClass", root / "JPEGImages", lists / "train.txt", lists / "val.txt"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise ObjectNotFoundError(f"target '{target.name}': not a VOC2012 segmentation folder, missing {', '.join(missing)}")
    splits = []
    for split in ("train", "val"):
        ids = [line.split()[0] for line in (lists / f"{split}.txt").read_text().splitlines() if line.strip()]
        if not ids:
            raise FlatlandError(f"target '{target.name}': {lists / f'{split}.txt'} lists no images")
        for image_id in ids:
            for path in (root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClass" / f"{image_id}.png"):
                if not path.is_file():
                    raise ObjectNotFoundError(f"target '{target.name}': {split}.txt lists {image_id}, but {path} does not exist")
        splits.append(SegmentationFiles([(str(root / "JPEGImages" / f"{i}.jpg"),
                                          ("voc", str(root / "SegmentationClass" / f"{i}.png"))) for i in ids], size))
    return splits[0], splits[1]


LOADERS = {"coco_segmentation": load_coco_segmentation, "voc2012_segmentation": load_voc_segmentation}
