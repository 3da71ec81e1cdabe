"""Shape bias: how often a network decides by shape when shape and texture disagree (Geirhos et al., 2019).

Over cue-conflict images (the shape of class A, the texture of class B != A), a *shape decision* is a
decision for A, a *texture decision* one for B, and::

    shape bias = shape decisions / (shape decisions + texture decisions)

Decisions for any third class count for neither (they are reported as ``other``), and images whose
shape and texture classes agree are left out, as in Geirhos et al.'s analysis. The confidence
interval is a percentile bootstrap over the conflict images (resampled with replacement).

Who decides:

- **the network's own classifier** when it was pre-trained on the conflict images' classes: a run on
  a single dataset drawing the same meshes with as many classes (renders), or an ImageNet classifier
  on the standard set, whose 1000 softmax probabilities become 16 by averaging over each category's
  ImageNet classes (:data:`IMAGENET_16`, the decision mapping of Geirhos et al.'s ``model-vs-human``);
- otherwise **a linear probe**: multinomial logistic regression (scikit-learn) on the frozen
  penultimate features, trained on non-conflict images of the same classes (the ``probe`` dataset's
  train split; for the standard set, the user's 16-category image folder).

Sources: ``cue_conflict_folder`` reads the standard set's layout (``<root>/<category>/<shape>N-<texture>M.png``,
16 category folders); ``renders`` reads this project's cue-conflict datasets (records hold ``shape_class`` and
``texture_class``; :mod:`services.render.kinds.meshes`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from services.common.errors import ObjectNotFoundError, SpecError
from services.common.spec.evaluation import ShapeBiasSpec
from services.common.spec.experiment import ExperimentSpec
from services.common.store import Store
from services.train.evaluation import Network, batches, load_network, rendered_samples, stack_images

#: The 16 entry-level categories of the cue-conflict set, in the (alphabetical) order of model-vs-human.
GEIRHOS_CATEGORIES = ("airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat", "chair", "clock", "dog",
                      "elephant", "keyboard", "knife", "oven", "truck")

#: ImageNet-1k class indices of each category: ``HumanCategories.<category>_indices`` in
#: bethgelab/model-vs-human, modelvshuman/helper/human_categories.py (Geirhos et al.'s mapping; 207 classes).
IMAGENET_16 = {
    "airplane": [404],
    "bear": [294, 295, 296, 297],
    "bicycle": [444, 671],
    "bird": [8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 24, 80, 81, 82, 83, 87, 88, 89, 90, 91, 92, 93, 94, 95,
             96, 98, 99, 100, 127, 128, 129, 130, 131, 132, 133, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145],
    "boat": [472, 554, 625, 814, 914],
    "bottle": [440, 720, 737, 898, 899, 901, 907],
    "car": [436, 511, 817],
    "cat": [281, 282, 283, 284, 285, 286],
    "chair": [423, 559, 765, 857],
    "clock": [409, 530, 892],
    "dog": [152, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 172,
            173, 174, 175, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191, 193, 194,
            195, 196, 197, 198, 199, 200, 201, 202, 203, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216,
            217, 218, 219, 220, 221, 222, 223, 224, 225, 226, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238,
            239, 240, 241, 243, 244, 245, 246, 247, 248, 249, 250, 252, 253, 254, 255, 256, 257, 259, 261, 262, 263,
            265, 266, 267, 268],
    "elephant": [385, 386],
    "keyboard": [508, 878],
    "knife": [499],
    "oven": [766],
    "truck": [555, 569, 656, 675, 717, 734, 864, 867],
}

CONFLICT_NAME = re.compile(r"^(?P<shape>[a-z]+)(?P<n>\d+)-(?P<texture>[a-z]+)(?P<m>\d+)\.png$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# -- the measure ------------------------------------------------------------------------
def shape_bias(shape: np.ndarray, texture: np.ndarray, decision: np.ndarray, *, bootstrap: int = 1000,
               confidence: float = 0.95, seed: int = 0) -> dict:
    """Shape bias of ``decision`` over conflict images with classes ``shape`` and ``texture`` (all (n,) ints).

    Returns ``{"images", "shape", "texture", "other", "shape_bias", "ci", "confidence", "bootstrap"}``;
    ``shape_bias`` is None (and ``ci`` too) when no decision matched either cue. Images with
    ``shape == texture`` are left out.
    """
    shape, texture, decision = (np.asarray(a, dtype=np.int64).ravel() for a in (shape, texture, decision))
    if not len(shape) == len(texture) == len(decision):
        raise ValueError(f"shape, texture and decision need one entry per image, got {len(shape)}, {len(texture)}, "
                         f"{len(decision)}")
    keep = shape != texture
    is_shape = (decision == shape)[keep]
    is_texture = (decision == texture)[keep]
    s, t, n = int(is_shape.sum()), int(is_texture.sum()), int(keep.sum())
    out = {"images": n, "shape": s, "texture": t, "other": n - s - t,
           "shape_bias": s / (s + t) if s + t else None, "ci": None, "confidence": confidence,
           "bootstrap": bootstrap}
    if bootstrap and n and s + t:
        rng = np.random.default_rng(seed)
        index = rng.integers(0, n, size=(bootstrap, n))
        s_b, t_b = is_shape[index].sum(1), is_texture[index].sum(1)
        ok = (s_b + t_b) > 0
        ratios = s_b[ok] / (s_b[ok] + t_b[ok])
        alpha = (1.0 - confidence) / 2.0
        out["ci"] = [float(np.quantile(ratios, alpha)), float(np.quantile(ratios, 1.0 - alpha))]
    return out


def imagenet_to_16(probabilities: np.ndarray) -> np.ndarray:
    """(n, 1000) ImageNet softmax probabilities → (n, 16) category scores (mean over each category's classes),
    columns in :data:`GEIRHOS_CATEGORIES` order."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != 1000:
        raise ValueError(f"expected (n, 1000) ImageNet probabilities, got shape {probabilities.shape}")
    return np.stack([probabilities[:, IMAGENET_16[c]].mean(1) for c in GEIRHOS_CATEGORIES], axis=1)


# -- the standard cue-conflict set ------------------------------------------------------
def cue_conflict_folder(root: str | Path) -> list[tuple[Path, int, int]]:
    """(path, shape category, texture category) of every image of the standard set at ``root``
    (categories as indices into :data:`GEIRHOS_CATEGORIES`); :class:`SpecError` naming what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise ObjectNotFoundError(f"cue-conflict set: {root} is not a folder (expected <root>/<category>/<shape>N-<texture>M.png)")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    unknown = [p.name for p in folders if p.name not in GEIRHOS_CATEGORIES]
    if unknown or len(folders) != 16:
        raise SpecError(f"cue-conflict set {root}: expected the 16 category folders {', '.join(GEIRHOS_CATEGORIES)}; "
                        f"found {[p.name for p in folders][:20]}" + (f" (unknown: {unknown[:5]})" if unknown else ""))
    items = []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            match = CONFLICT_NAME.match(path.name)
            if match is None or match["shape"] not in GEIRHOS_CATEGORIES or match["texture"] not in GEIRHOS_CATEGORIES:
                raise SpecError(f"cue-conflict set: {path} is not named <shape>N-<texture>M.png with two of the 16 categories")
            if match["shape"] != folder.name:
                raise SpecError(f"cue-conflict set: {path} has shape '{match['shape']}' but lies in folder '{folder.name}'")
            items.append((path, GEIRHOS_CATEGORIES.index(match["shape"]), GEIRHOS_CATEGORIES.index(match["texture"])))
    if not items:
        raise SpecError(f"cue-conflict set {root}: no images")
    return items


def load_image(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the shorter side resized to ``size`` (bilinear), then the centre crop."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = size / min(image.size)
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                             Image.BILINEAR)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def image_folder(root: str | Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(path, class index) of ``root/<class>/<image>`` for the named classes (each must be there)."""
    root = Path(root)
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing:
        raise ObjectNotFoundError(f"probe images {root}: no folder for {', '.join(missing)} "
                                  f"(expected {root}/<category>/<image> for each of the {len(classes)} categories)")
    return [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES]


# -- decisions ---------------------------------------------------------------------------
def _features(net: Network, images: Iterable[np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features, logits) of a stream of same-sized images, a batch at a time (never all in memory)."""
    feats, logits, batch = [], [], []

    def flush():
        f, z = net.penultimate_and_logits(stack_images(batch))
        feats.append(f.numpy())
        logits.append(z.numpy())
        batch.clear()

    for image in images:
        batch.append(image)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not feats:
        raise SpecError(f"shape bias: run '{net.run}' got no images to decide on")
    return np.concatenate(feats), np.concatenate(logits)


def fit_probe(features: np.ndarray, labels: np.ndarray, seed: int = 0):
    """Multinomial logistic regression on standardised features (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(labels)) < 2:
        raise SpecError("linear probe: the probe images hold fewer than 2 classes")
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed)).fit(features, labels)


def _even_subset(labels: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``limit`` items, as evenly over the classes as they allow."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    order = rng.permutation(len(labels))
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = order[labels[order] == c]
        rank[members] = np.arange(len(members))
    chosen = np.lexsort((order.argsort(), rank))[:limit]
    return np.sort(chosen)


def head_applies(spec: ExperimentSpec, net: Network, entry: ShapeBiasSpec) -> bool:
    """Whether the run's own classifier decides among the conflict images' classes."""
    if not net.classification:
        return False
    if entry.kind == "cue_conflict_folder":
        return net.kind == "torchvision_pretrained" and net.num_classes == 1000
    run = next(p for p in spec.pretrain if p.name == net.run)
    conflict = spec.dataset(entry.conflict)
    return (run.kind == "synthetic" and len(run.datasets) == 1 and run.class_budget in (None, conflict.classes)
            and net.num_classes == conflict.classes
            and spec.mesh_dataset_id(run.datasets[0]) == spec.mesh_dataset_id(conflict.name))


def evaluate_shape_bias(spec: ExperimentSpec, entry: ShapeBiasSpec, store: Store, run: str) -> dict:
    """The shape bias of run ``run`` under ``entry`` (a JSON-able result; see docs/evaluation.md)."""
    net = load_network(spec, store, run, input_size=entry.input_size)
    own = head_applies(spec, net, entry)
    if entry.classifier == "head" and not own:
        raise SpecError(f"evaluation '{entry.name}': run '{run}' was not pre-trained on the conflict images' classes; "
                        "use classifier: probe or auto")
    use_head = own and entry.classifier != "probe"
    rng = np.random.default_rng(entry.seed)
    probe_info = None
    if entry.kind == "renders":
        dataset_id = spec.dataset_id(entry.conflict)
        shapes, textures = [], []

        def conflict_images():  # one size per dataset; Network.inputs resizes each batch
            for split in (rendered_samples(store, dataset_id, "train"), _val_samples(store, dataset_id)):
                for sample in split:
                    if "shape_class" not in sample["record"]:
                        raise SpecError(f"shape bias: {dataset_id} holds a sample without shape_class / texture_class "
                                        "(not rendered with render.cue_conflict)")
                    shapes.append(sample["record"]["shape_class"])
                    textures.append(sample["record"]["texture_class"])
                    yield sample["rgb"]

        images = conflict_images()
        labels = list(range(spec.dataset(entry.conflict).classes))
    else:
        items = cue_conflict_folder(entry.path)
        shapes, textures = [i[1] for i in items], [i[2] for i in items]
        images = (load_image(i[0], net.input_size) for i in items)
        labels = list(GEIRHOS_CATEGORIES)
    features, logits = _features(net, images, entry.batch_size)
    shape, texture = np.array(shapes), np.array(textures)
    if use_head:
        if entry.kind == "renders":
            decision = logits.argmax(1)
        else:
            decision = imagenet_to_16(torch.softmax(torch.from_numpy(logits), 1).numpy()).argmax(1)
    else:
        probe, probe_info = _train_probe(spec, entry, store, net, rng)
        decision = probe.predict(features)
    result = shape_bias(shape, texture, decision, bootstrap=entry.bootstrap, confidence=entry.confidence,
                        seed=entry.seed)
    per_class = {}
    for c, label in enumerate(labels):
        here = shape == c
        if here.any():
            sub = shape_bias(shape[here], texture[here], decision[here], bootstrap=0)
            per_class[str(label)] = {k: sub[k] for k in ("images", "shape", "texture", "shape_bias")}
    result.update(kind=entry.kind, classifier="head" if use_head else "probe", model=net.model_name,
                  input_size=net.input_size, classes=labels, per_shape_class=per_class, probe=probe_info)
    return result


def _val_samples(store: Store, dataset_id: str):
    from services.train.data import EmptySplitError

    try:
        yield from rendered_samples(store, dataset_id, "val")
    except EmptySplitError:
        return


def _train_probe(spec: ExperimentSpec, entry: ShapeBiasSpec, store: Store, net: Network, rng: np.random.Generator):
    if entry.kind == "renders":
        if entry.probe is None:
            raise SpecError(f"evaluation '{entry.name}': run '{net.run}' needs a linear probe (it was not pre-trained "
                            "on the conflict classes), but the evaluation names no `probe` dataset")
        dataset_id = spec.dataset_id(entry.probe)
        quota = -(-entry.probe_max_images // spec.dataset(entry.probe).classes)  # per class: evenly over classes
        taken: dict[int, int] = {}
        labels: list[int] = []

        def probe_images():
            for sample in rendered_samples(store, dataset_id, "train"):
                if taken.get(sample["cls"], 0) < quota and len(labels) < entry.probe_max_images:
                    taken[sample["cls"]] = taken.get(sample["cls"], 0) + 1
                    labels.append(sample["cls"])
                    yield sample["rgb"]

        features, _ = _features(net, probe_images(), entry.batch_size)
        probe = fit_probe(features, np.array(labels), entry.seed)
        val_labels: list[int] = []

        def val_images():
            for sample in _val_samples(store, dataset_id):
                val_labels.append(sample["cls"])
                yield sample["rgb"]

        val_top1 = None
        try:
            val_features, _ = _features(net, val_images(), entry.batch_size)
            val_top1 = float((probe.predict(val_features) == np.array(val_labels)).mean())
        except SpecError:  # no val split
            pass
        return probe, {"dataset": entry.probe, "train_images": len(labels), "val_images": len(val_labels),
                       "val_top1": val_top1}
    if not entry.probe_path:
        raise SpecError(f"evaluation '{entry.name}': run '{net.run}' is not an ImageNet classifier, so its decisions "
                        "come from a linear probe on 16 categories; set probe_path to an image folder "
                        "(<root>/<category>/<image>) of the 16 categories")
    items = image_folder(entry.probe_path, GEIRHOS_CATEGORIES)
    labels = np.array([c for _, c in items])
    keep = _even_subset(labels, entry.probe_max_images, rng)
    features, _ = _features(net, (load_image(items[i][0], net.input_size) for i in keep), entry.batch_size)
    probe = fit_probe(features, labels[keep], entry.seed)
    train_top1 = float((probe.predict(features) == labels[keep]).mean())
    return probe, {"path": entry.probe_path, "train_images": int(len(keep)), "train_top1": train_top1}
