"""Transfer targets as they are laid out: VOCdevkit, Omniglot, official splits; VOC's AP; FractalDB's crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from services.common.errors import FlatlandError, ObjectNotFoundError
from services.common.spec.experiment import parse_spec
from services.common.spec.train import VOC_CLASSES, TargetSpec, TransferSpec
from services.train.targets import IGNORE, View, load_target, voc_labels
from services.train.transfer import run_transfer, voc_average_precision

# Three VOC classes drawn as coloured squares at fixed corners: learnable from pixels.
DRAWN = {"cat": ((220, 30, 30), (0, 0)), "dog": ((30, 30, 220), (10, 10)), "car": ((30, 200, 30), (0, 10))}


def _voc_xml(objects: list[tuple[str, bool]]) -> str:
    body = "".join(f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{int(d)}</difficult>"
                   "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>8</xmax><ymax>8</ymax></bndbox></object>" for n, d in objects)
    return f"<annotation><folder>VOC2012</folder><filename>x.jpg</filename>{body}</annotation>"


def make_voc(root, n_train=40, n_val=24, seed=0):
    """A VOCdevkit/VOC2012 with real XML annotations; returns {image_id: set of present classes}."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    present = {}
    for split, n in (("train", n_train), ("val", n_val)):
        ids = [f"2008_{split}{i:04d}" for i in range(n)]
        for i, image_id in enumerate(ids):
            classes = {c for c in DRAWN if rng.random() < 0.5} or {list(DRAWN)[i % 3]}
            pixels = rng.integers(100, 140, (20, 20, 3)).astype(np.uint8)
            for c in classes:
                colour, (top, left) = DRAWN[c]
                pixels[top:top + 10, left:left + 10] = colour
            Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
            objects = [(c, False) for c in sorted(classes)]
            if i == 0:
                objects.append(("person", True))  # difficult only: ignored for 'person'
            (voc / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(objects))
            present[image_id] = classes
        (voc / "ImageSets/Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root / "VOCdevkit", present


def make_omniglot(root, drawers=20):
    """images_background with 2 alphabets x 2 characters (distinct strokes), images_evaluation with 1 x 1."""
    rng = np.random.default_rng(1)
    strokes = [lambda a: a.__setitem__((slice(None), slice(8, 12)), 0),      # vertical bar
               lambda a: a.__setitem__((slice(8, 12), slice(None)), 0),      # horizontal bar
               lambda a: np.fill_diagonal(a, 0),                             # diagonal
               lambda a: a.__setitem__((slice(2, 6), slice(2, 18)), 0),      # top bar
               lambda a: a.__setitem__((slice(14, 18), slice(2, 18)), 0)]    # bottom bar
    layout = [("images_background", "Alpha", "character01"), ("images_background", "Alpha", "character02"),
              ("images_background", "Beta", "character01"), ("images_background", "Beta", "character02"),
              ("images_evaluation", "Gamma", "character01")]
    for k, (part, alphabet, character) in enumerate(layout):
        folder = root / part / alphabet / character
        folder.mkdir(parents=True)
        for d in range(1, drawers + 1):
            a = np.full((20, 20), 255, np.uint8)
            strokes[k](a)
            a = np.roll(a, tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
            Image.fromarray(a, mode="L").save(folder / f"{900 + k:04d}_{d:02d}.png")
    return root


def test_voc_average_precision_is_the_devkit_formula_and_agrees_with_scikit_learn():
    def devkit_ap(scores, labels):  # VOCdevkit VOCevalcls.m / VOCap.m, literally (labels 1 / -1, 0 ignored)
        keep = labels != 0
        order = np.argsort(-scores[keep], kind="stable")
        gt = labels[keep][order]
        tp, fp = np.cumsum(gt > 0), np.cumsum(gt < 0)
        rec, prec = tp / (gt > 0).sum(), tp / (fp + tp)
        mrec, mpre = np.concatenate([[0], rec, [1]]), np.concatenate([[0], prec, [0]])
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
        return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))

    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.choice([1.0, 0.0, IGNORE], size=60, p=[0.3, 0.6, 0.1])
        labels[0] = 1.0
        scores = rng.normal(size=60) + labels  # continuous: no ties
        ours = voc_average_precision(scores, labels)
        devkit = devkit_ap(scores, np.where(labels == IGNORE, 0, np.where(labels > 0, 1, -1)))
        assert ours == pytest.approx(devkit, abs=1e-12)
        keep = labels != IGNORE
        plain = average_precision_score(labels[keep] > 0, scores[keep])
        assert ours >= plain - 1e-12  # the devkit's envelope never lowers precision
    # Where precision only falls with recall, the envelope changes nothing: both are the same number.
    labels, scores = np.array([1, 1, 0, 1, 0, 0.0]), np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert voc_average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores))
    assert voc_average_precision(scores, np.zeros(6)) is None


def test_voc2012_reads_the_devkit_layout_as_multilabel(tmp_path):
    root, present = make_voc(tmp_path, n_train=6, n_val=4)
    data = load_target(TargetSpec(name="voc", kind="voc2012", path=str(root)), 16, seed=0)
    assert data.multilabel and data.num_classes == 20 and data.classes == list(VOC_CLASSES)
    assert len(data.train) == 6 and len(data.test) == 4
    image, label = data.test[1]
    assert image.shape == (16, 16, 3) and label.shape == (20,)
    expected = {VOC_CLASSES.index(c) for c in present["2008_val0001"]}
    assert set(np.flatnonzero(label.numpy() == 1)) == expected and (label.numpy() >= 0).all()
    first = data.train_labels[0]
    assert first[VOC_CLASSES.index("person")] == IGNORE  # only a difficult person
    assert set(np.flatnonzero(first == 1)) == {VOC_CLASSES.index(c) for c in present["2008_train0000"]}
    (tmp_path / "bad.xml").write_text(_voc_xml([("unicorn", False)]))
    with pytest.raises(FlatlandError, match="unknown class 'unicorn'"):
        voc_labels(tmp_path / "bad.xml")
    with pytest.raises(ObjectNotFoundError, match="ImageSets/Main/train.txt"):
        load_target(TargetSpec(name="voc", kind="voc2012", path=str(tmp_path / "empty")), 16, seed=0)
    with pytest.raises(ValueError, match="official split only"):
        TargetSpec(name="voc", kind="voc2012", path="x", split="random")


def test_omniglot_is_character_classification_with_the_drawer_split(tmp_path):
    root = make_omniglot(tmp_path / "omniglot")
    data = load_target(TargetSpec(name="o", kind="omniglot", path=str(root), split="official"), 16, seed=0)
    assert data.num_classes == 5  # characters, not alphabets (3)
    assert data.classes[:2] == ["images_background/Alpha/character01", "images_background/Alpha/character02"]
    assert data.classes[-1] == "images_evaluation/Gamma/character01"
    assert len(data.train) == 5 * 15 and len(data.test) == 5 * 5
    assert sorted(np.bincount(data.train_labels)) == [15] * 5
    image, label = data.test[0]
    assert image.shape == (16, 16, 3) and label == 0
    random = load_target(TargetSpec(name="o", kind="omniglot", path=str(root), test_fraction=0.2), 16, seed=0)
    assert len(random.test) == 20 and sorted(np.bincount(random.train_labels)) == [16] * 5
    with pytest.raises(ObjectNotFoundError, match="images_background"):
        load_target(TargetSpec(name="o", kind="omniglot", path=str(tmp_path)), 16, seed=0)


def test_official_image_folder_splits_and_flat_validation_folders(tmp_path):
    rng = np.random.default_rng(2)
    for split, n in (("train", 5), ("val", 3)):
        for c in ("airfield", "beach"):
            (tmp_path / "places" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3)).astype(np.uint8)).save(tmp_path / "places" / split / c / f"{i}.png")
    data = load_target(TargetSpec(name="p", kind="imagefolder", path=str(tmp_path / "places"), split="official"), 16, 0)
    assert (len(data.train), len(data.test), data.num_classes) == (10, 6, 2)
    assert sorted(np.bincount(data.train_labels)) == [5, 5]
    # Places365's val_256 + places365_val.txt: a flat folder and '<file> <class index>' lines.
    flat = tmp_path / "flat"
    (flat / "val").mkdir(parents=True)
    (flat / "train").symlink_to(tmp_path / "places" / "train")
    lines = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3)).astype(np.uint8)).save(flat / "val" / f"Places365_val_{i:08d}.jpg")
        lines.append(f"Places365_val_{i:08d}.jpg {i % 2 if i < 3 else 'beach'}")
    (flat / "labels.txt").write_text("\n".join(lines))
    target = TargetSpec(name="p", kind="imagefolder", path=str(flat), split="official", val_labels=str(flat / "labels.txt"))
    data = load_target(target, 16, 0)
    assert [label for _, label in data.test.samples] == [0, 1, 0, 1]
    with pytest.raises(FlatlandError, match="give `val_labels`"):
        load_target(target.model_copy(update={"val_labels": None}), 16, 0)
    with pytest.raises(ValueError, match="no official split"):
        TargetSpec(name="d", kind="digits", split="official")


def test_fractaldb_preset_crops_at_random_for_training_and_in_the_centre_for_evaluation(tmp_path):
    spec = TransferSpec(name="x", pretrained=[], targets=["t"], preset="fractaldb")
    assert (spec.epochs, spec.batch_size, spec.input_size, spec.augment.resize) == (90, 256, 224, 256)
    assert spec.augment.random_crop and not spec.augment.horizontal_flip and spec.optim.schedule == "step"
    assert (spec.optim.lr, spec.optim.weight_decay, spec.optim.step_size) == (0.01, 1e-4, 30)
    assert spec.mean == (0.485, 0.456, 0.406)
    assert TransferSpec(name="x", pretrained=[], targets=["t"], preset="fractaldb", epochs=3).epochs == 3  # the spec wins
    basic = TransferSpec(name="x", pretrained=[], targets=["t"], preset="basic")
    assert basic.augment.resize is None and basic.epochs == 10 and basic.optim.schedule == "cosine"
    # Resize(shorter side 20) of a 40x30 image, then 16-pixel crops.
    (tmp_path / "f" / "a").mkdir(parents=True)
    (tmp_path / "f" / "b").mkdir(parents=True)
    pixels = np.arange(30 * 40 * 3, dtype=np.uint32).reshape(30, 40, 3) % 251
    for c in "ab":
        for i in range(4):
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "f" / c / f"{i}.png")
    data = load_target(TargetSpec(name="f", kind="imagefolder", path=str(tmp_path / "f")), 16, 0, resize=20)
    base = data.train[0][0]
    assert base.shape == (20, 26, 3)  # torchvision's Resize(20): 30x40 -> 20x26 (aspect kept, floor)
    centre = View(data.train, 16)[0][0]
    assert torch.equal(centre, base[2:18, 5:21])  # CenterCrop's rounding
    torch.manual_seed(0)
    crops = {tuple(View(data.train, 16, random_crop=True)[0][0][0, 0].tolist()) for _ in range(20)}
    assert len(crops) > 3  # different positions


@pytest.mark.slow
def test_voc_and_omniglot_transfer_learn_above_chance(tmp_path, local_store):
    voc_root, _ = make_voc(tmp_path)
    omniglot = make_omniglot(tmp_path / "omniglot")
    spec = parse_spec({
        "name": "t",
        "targets": [{"name": "voc", "kind": "voc2012", "path": str(voc_root)},
                    {"name": "omni", "kind": "omniglot", "path": str(omniglot), "split": "official"}],
        "transfer": [{"name": "x", "pretrained": [], "targets": ["voc", "omni"], "model": "resnet18", "input_size": 16,
                      "modes": ["finetune"], "epochs": 8, "batch_size": 8, "workers": 0,
                      "optim": {"lr": 0.02, "warmup_epochs": 0}}],
    })
    results = {r["target"]: r for r in run_transfer(spec, "x", local_store)["results"]}
    voc = results["voc"]
    assert voc["metric"] == "map" and voc["test_score"] == voc["test_map"]
    aps = {k: v for k, v in voc["test_ap"].items() if v is not None}
    assert set(aps) == {"cat", "dog", "car"}  # classes without a positive in val have no AP
    assert voc["test_map"] == pytest.approx(np.mean(list(aps.values())))
    # Chance AP is the share of positives (about 0.5 here); coloured corners are learnable.
    assert voc["test_map"] > 0.75, voc["test_ap"]
    omni = results["omni"]
    assert omni["metric"] == "top1" and omni["test_samples"] == 25 and omni["train_samples"] == 75
    assert omni["test_top1"] > 0.5, omni  # 5 characters: chance is 0.2
