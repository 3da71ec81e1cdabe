"""Tiny segmentation data sets in the real on-disk layouts (Pascal VOC 2012, COCO 2017), with a learnable target.

Each image shows one or two axis-parallel rectangles on grey noise; a rectangle's colour says its
class (red: person, green: dog, blue: car), so a network can learn the label maps from few images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from services.common.spec.train import VOC_CLASSES

#: (VOC class index + 1 = label value, RGB colour)
CLASSES = {VOC_CLASSES.index("person") + 1: (220, 30, 30), VOC_CLASSES.index("dog") + 1: (30, 200, 40),
           VOC_CLASSES.index("car") + 1: (40, 60, 230)}
#: COCO category ids of those classes (torchvision's CAT_LIST at the label value)
COCO_IDS = {15: 1, 12: 18, 7: 3}


def scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int]]]]:
    """An RGB image and its rectangles ``(label, (x0, y0, x1, y1))`` (pixels [x0, x1) x [y0, y1))."""
    image = rng.integers(90, 150, (height, width, 1)).repeat(3, axis=2).astype(np.uint8)
    boxes = []
    for _ in range(int(rng.integers(1, 3))):
        label = int(rng.choice(list(CLASSES)))
        w, h = int(rng.integers(width // 3, width // 2 + 1)), int(rng.integers(height // 3, height // 2 + 1))
        x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        image[y0:y0 + h, x0:x0 + w] = CLASSES[label]
        boxes.append((label, (x0, y0, x0 + w, y0 + h)))
    return image, boxes


def label_map(boxes, width: int, height: int, border: bool = False) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    for label, (x0, y0, x1, y1) in boxes:
        mask[y0:y1, x0:x1] = label
        if border:  # VOC outlines objects with 255 ("void")
            mask[y0, x0:x1] = mask[y1 - 1, x0:x1] = 255
    return mask


def write_voc(root: Path, train: int = 8, val: int = 4, size: tuple[int, int] = (48, 40), seed: int = 0) -> dict:
    """VOCdevkit/VOC2012 with SegmentationClass palette PNGs; returns {image id: label map} (at image size)."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = [0] * 768
    for k in range(256):  # any palette: the indices are the classes
        palette[3 * k:3 * k + 3] = [(k * 37) % 256, (k * 91) % 256, (k * 53) % 256]
    masks = {}
    for split, count in (("train", train), ("val", val)):
        ids = [f"2007_{split}_{i:03d}" for i in range(count)]
        for image_id in ids:
            image, boxes = scene(rng, *size)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=98)
            mask = label_map(boxes, *size, border=True)
            png = Image.fromarray(mask, mode="P")
            png.putpalette(palette)
            png.save(voc / "SegmentationClass" / f"{image_id}.png")
            masks[image_id] = mask
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return masks


def rle_of(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major run lengths starting with zeros), as crowd annotations store it."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def write_coco(root: Path, train: int = 8, val: int = 4, size: tuple[int, int] = (120, 100), seed: int = 1,
               extras: bool = True) -> dict:
    """annotations/instances_{train,val}2017.json + train2017/ val2017/; returns {(split, file name): label map}.

    Rectangles are polygons (the first of each image as an uncompressed RLE crowd annotation); with ``extras``
    the training split gets an image whose only object is under 1000 pixels (dropped, as torchvision drops it;
    at the default size every other image's objects cover more than 1000 pixels),
    a non-VOC annotation (ignored) and an overlap of two instances (255 there).
    """
    rng = np.random.default_rng(seed)
    width, height = size
    expected = {}
    for split, count in (("train", train), ("val", val)):
        folder = root / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image, boxes = scene(rng, width, height)
            name = f"{i:012d}.jpg"
            Image.fromarray(image).save(folder / name, quality=98)
            images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
            for j, (label, (x0, y0, x1, y1)) in enumerate(boxes):
                box = np.zeros((height, width), dtype=np.uint8)
                box[y0:y1, x0:x1] = 1
                if j == 0:
                    segmentation, crowd = rle_of(box), 1
                else:  # polygon along the pixel edges: pycocotools fills exactly [x0, x1) x [y0, y1)
                    segmentation, crowd = [[x0, y0, x1, y0, x1, y1, x0, y1]], 0
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": COCO_IDS[label],
                                    "segmentation": segmentation, "area": float(box.sum()), "iscrowd": crowd,
                                    "bbox": [x0, y0, x1 - x0, y1 - y0]})
            mask = label_map(boxes, width, height)
            boxes_masks = [np.zeros((height, width), bool) for _ in boxes]
            for m, (_, (x0, y0, x1, y1)) in zip(boxes_masks, boxes):
                m[y0:y1, x0:x1] = True
            mask = np.zeros((height, width), dtype=np.uint8)
            for m, (label, _) in zip(boxes_masks, boxes):
                mask = np.maximum(mask, m * label).astype(np.uint8)  # the reference: largest class index
            mask[np.sum(boxes_masks, axis=0) > 1] = 255
            expected[(split, name)] = mask
        if extras and split == "train":
            small = {"id": count + 1, "file_name": f"{count:012d}.jpg", "width": width, "height": height}
            Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(folder / small["file_name"])
            images.append(small)
            annotations.append({"id": len(annotations) + 1, "image_id": small["id"], "category_id": 1,
                                "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]], "area": 100.0, "iscrowd": 0,
                                "bbox": [2, 2, 10, 10]})
            annotations.append({"id": len(annotations) + 1, "image_id": 1, "category_id": 13,  # stop sign: not VOC
                                "segmentation": [[0, 0, 8, 0, 8, 8, 0, 8]], "area": 64.0, "iscrowd": 0,
                                "bbox": [0, 0, 8, 8]})
        categories = [{"id": c, "name": n, "supercategory": "x"} for c, n in ((1, "person"), (3, "car"), (13, "stop sign"),
                                                                              (18, "dog"))]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return expected
