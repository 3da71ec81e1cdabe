"""Shape bias (cue conflict) and the linear depth probe, on cases whose answer is known."""

from __future__ import annotations

import colorsys
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from services.common.errors import SpecError
from services.common.spec.experiment import parse_spec
from services.common.store import LocalStore
from services.train import shapebias
from services.train.depthprobe import fit_depth_probe, folder_pairs, nyu_pairs, sample_features
from services.train.evaluation import Network
from services.train.shapebias import (
    GEIRHOS_CATEGORIES, IMAGENET_16, cue_conflict_folder, evaluate_shape_bias, fit_probe, imagenet_to_16, shape_bias,
)


# -- the measure -------------------------------------------------------------------------
def test_shape_bias_matches_a_hand_computed_case():
    shape = [0, 1, 2, 0, 1, 2, 1]
    texture = [1, 2, 0, 2, 0, 1, 1]  # the last image agrees on both cues: left out
    decision = [0, 1, 0, 2, 2, 0, 1]  # shape, shape, texture, texture, other, other, (excluded)
    out = shape_bias(shape, texture, decision, bootstrap=2000, seed=1)
    assert (out["images"], out["shape"], out["texture"], out["other"]) == (6, 2, 2, 2)
    assert out["shape_bias"] == pytest.approx(0.5)
    low, high = out["ci"]
    assert 0.0 <= low < 0.5 < high <= 1.0
    # all shape decisions: bias 1 and a degenerate interval; none matching either cue: undefined
    assert shape_bias([0, 1], [1, 0], [0, 1], bootstrap=100)["ci"] == [1.0, 1.0]
    none = shape_bias([0, 1], [1, 0], [2, 2])
    assert none["shape_bias"] is None and none["ci"] is None
    assert shape_bias([0, 1], [1, 0], [0, 1], bootstrap=0)["ci"] is None
    with pytest.raises(ValueError, match="one entry per image"):
        shape_bias([0, 1], [1], [0, 1])


def test_bootstrap_interval_narrows_with_more_images():
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 400):
        shape = rng.integers(0, 4, n)
        texture = (shape + 1 + rng.integers(0, 3, n)) % 4
        decision = np.where(rng.random(n) < 0.7, shape, texture)  # 70 % shape decisions
        out = shape_bias(shape, texture, decision, bootstrap=1000)
        assert out["ci"][0] < out["shape_bias"] < out["ci"][1]
        widths.append(out["ci"][1] - out["ci"][0])
    assert widths[1] < widths[0] / 2


# -- networks with known behaviour ---------------------------------------------------------
def draw(shape_class: int, colour_class: int, classes: int, size: int, rng) -> np.ndarray:
    """A disc, square or triangle (by ``shape_class``) in the hue of ``colour_class``, jittered in place and size."""
    colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(colour_class / classes, 0.9, 0.9))
    image = Image.new("RGB", (size, size), (40, 40, 40))
    r = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    canvas = ImageDraw.Draw(image)
    if shape_class == 0:
        canvas.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape_class == 1:
        canvas.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        canvas.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return np.asarray(image)


class ColourOnly(nn.Module):
    """Sees nothing but the mean colour: features = per-channel means (the head reads them)."""

    def __init__(self, classes: int):
        super().__init__()
        self.fc = nn.Linear(3, classes)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


class ShapeOnly(nn.Module):
    """Sees nothing but the silhouette's outline: features = a histogram of the foreground's horizontal extent by row."""

    def __init__(self, classes: int):
        super().__init__()
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        fg = (x.std(1) > 0.05) | (x.mean(1) > x.mean((1, 2, 3))[:, None, None])  # any colour, not the grey ground
        widths = fg.float().sum(2)  # (N, H): width per row
        rows = widths > 0
        # the profile of width over the object's own height, resampled to 8 bins (position- and size-free)
        feats = []
        for w, r in zip(widths, rows):
            w = w[r]
            idx = torch.linspace(0, len(w) - 1, 8).round().long()
            feats.append(w[idx] / w.max())
        return self.fc(torch.stack(feats))


def network(module: nn.Module, kind: str = "synthetic", classes: int = 3) -> Network:
    return Network(run="toy", run_id="toy-0", kind=kind, model_name="toy", num_classes=classes, input_size=48,
                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), module=module.eval(), head="fc",
                   classification=True, device=torch.device("cpu"))


def _bias(net: Network, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    train = [(draw(c, c, 3, 48, rng), c) for c in range(3) for _ in range(30)]  # non-conflict: shape c in colour c
    feats, _ = shapebias._features(net, [im for im, _ in train], 32)
    probe = fit_probe(feats, np.array([c for _, c in train]))
    shape = np.array([a for a in range(3) for b in range(3) if a != b for _ in range(10)])
    texture = np.array([b for a in range(3) for b in range(3) if a != b for _ in range(10)])
    images = [draw(a, b, 3, 48, rng) for a, b in zip(shape, texture)]
    feats, _ = shapebias._features(net, images, 32)
    return shape_bias(shape, texture, probe.predict(feats), bootstrap=500)


def test_a_colour_only_network_has_shape_bias_near_zero_and_a_shape_only_one_near_one():
    colour = _bias(network(ColourOnly(3)))
    assert colour["shape_bias"] < 0.1 and colour["ci"][1] < 0.2, colour
    outline = _bias(network(ShapeOnly(3)))
    assert outline["shape_bias"] > 0.9 and outline["ci"][0] > 0.8, outline


# -- the standard cue-conflict set -----------------------------------------------------------
def test_imagenet_probabilities_map_to_16_categories_by_their_mean():
    p = np.full((2, 1000), 1e-4)
    p[0, 281] = 0.5  # tabby cat
    p[1, IMAGENET_16["bird"]] = 0.01  # 49 bird classes at 0.01 (sum 0.49) ...
    p[1, 499] = 0.2  # ... lose to one knife class at 0.2: the mapping averages within a category
    scores = imagenet_to_16(p / p.sum(1, keepdims=True))
    assert [GEIRHOS_CATEGORIES[i] for i in scores.argmax(1)] == ["cat", "knife"]
    assert sum(len(v) for v in IMAGENET_16.values()) == 207 and len(GEIRHOS_CATEGORIES) == 16
    assert len({i for v in IMAGENET_16.values() for i in v}) == 207  # no class in two categories
    with pytest.raises(ValueError, match="1000"):
        imagenet_to_16(np.ones((1, 10)))


def _hue_of(category: str) -> tuple[int, int, int]:
    i = GEIRHOS_CATEGORIES.index(category)
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / 16, 1.0, 1.0))


def fake_cue_conflict_set(root, per_class: int = 2):
    """16 category folders; <shape>N-<texture>M.png images coloured by the *texture* category."""
    rng = np.random.default_rng(0)
    for k, shape in enumerate(GEIRHOS_CATEGORIES):
        (root / shape).mkdir(parents=True)
        for n in range(per_class):
            texture = GEIRHOS_CATEGORIES[(k + 1 + n * 5) % 16]
            image = np.zeros((32, 32, 3), np.uint8) + np.array(_hue_of(texture), np.uint8)
            image[rng.integers(0, 32, 20), rng.integers(0, 32, 20)] = 0
            Image.fromarray(image).save(root / shape / f"{shape}{n + 1}-{texture}{n + 3}.png")
        # one image whose shape and texture agree (left out of the measure)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8) + np.array(_hue_of(shape), np.uint8)).save(
            root / shape / f"{shape}9-{shape}9.png")


class ImageNetByColour(nn.Module):
    """An 'ImageNet classifier' that answers, among 1000 classes, the first ImageNet class of the category whose
    hue the image has: a pure texture decider."""

    def __init__(self):
        super().__init__()
        hues = torch.tensor([_hue_of(c) for c in GEIRHOS_CATEGORIES], dtype=torch.float32) / 255
        self.register_buffer("hues", hues)
        self.fc = nn.Identity()

    def forward(self, x):
        rgb = (x * 0.25 + 0.5).amax((2, 3))  # undo the toy normalisation; brightest colour
        nearest = torch.cdist(rgb, self.hues).argmin(1)
        logits = torch.full((len(x), 1000), -10.0)
        logits[torch.arange(len(x)), torch.tensor([IMAGENET_16[c][0] for c in GEIRHOS_CATEGORIES])[nearest]] = 10.0
        return self.fc(logits)


def test_cue_conflict_folder_is_read_and_decided_through_the_16_class_mapping(tmp_path, monkeypatch):
    fake_cue_conflict_set(tmp_path / "cc")
    items = cue_conflict_folder(tmp_path / "cc")
    assert len(items) == 16 * 3
    path, s, t = items[0]
    assert path.name == "airplane1-bear3.png" and (GEIRHOS_CATEGORIES[s], GEIRHOS_CATEGORIES[t]) == ("airplane", "bear")
    spec = parse_spec({"name": "sb", "pretrain": [{"name": "inet", "kind": "torchvision_pretrained", "model": "resnet18",
                                                   "weights": "ResNet18_Weights.IMAGENET1K_V1"}],
                       "evaluation": {"shape_bias": [{"name": "geirhos", "runs": ["inet"], "kind": "cue_conflict_folder",
                                                      "path": str(tmp_path / "cc"), "bootstrap": 200}]}})
    monkeypatch.setattr(shapebias, "load_network",
                        lambda *a, **k: network(ImageNetByColour(), kind="torchvision_pretrained", classes=1000))
    out = evaluate_shape_bias(spec, spec.evaluation.shape_bias[0], LocalStore(tmp_path / "store"), "inet")
    assert out["classifier"] == "head" and out["images"] == 32  # the 16 agreeing images are left out
    assert (out["shape"], out["texture"], out["shape_bias"]) == (0, 32, 0.0)
    assert out["per_shape_class"]["cat"]["texture"] == 2


def test_other_networks_decide_the_standard_set_through_a_16_class_probe(tmp_path, monkeypatch):
    fake_cue_conflict_set(tmp_path / "cc")
    for category in GEIRHOS_CATEGORIES:  # natural images of the 16 categories: here, their hue
        (tmp_path / "probe" / category).mkdir(parents=True)
        for n in range(3):
            Image.fromarray(np.zeros((40, 50, 3), np.uint8) + np.array(_hue_of(category), np.uint8)).save(
                tmp_path / "probe" / category / f"{n}.jpg")
    entry = {"name": "geirhos", "runs": ["net"], "kind": "cue_conflict_folder", "path": str(tmp_path / "cc"),
             "bootstrap": 100}
    spec = parse_spec({"name": "sb", "datasets": [{"name": "d", "family": {"family": "procsynth"}, "classes": 16}],
                       "pretrain": [{"name": "net", "datasets": ["d"], "model": "resnet18"}],
                       "evaluation": {"shape_bias": [entry]}})
    monkeypatch.setattr(shapebias, "load_network", lambda *a, **k: network(ColourOnly(16), classes=16))
    store = LocalStore(tmp_path / "store")
    with pytest.raises(SpecError, match="set probe_path"):
        evaluate_shape_bias(spec, spec.evaluation.shape_bias[0], store, "net")
    spec.evaluation.shape_bias[0].probe_path = str(tmp_path / "probe")
    out = evaluate_shape_bias(spec, spec.evaluation.shape_bias[0], store, "net")
    assert out["classifier"] == "probe" and out["probe"]["train_images"] == 48 and out["probe"]["train_top1"] == 1.0
    assert out["images"] == 32 and out["texture"] == 32 and out["shape_bias"] == 0.0  # a colour-only network
    spec.evaluation.shape_bias[0].classifier = "head"
    with pytest.raises(SpecError, match="was not pre-trained on the conflict images' classes"):
        evaluate_shape_bias(spec, spec.evaluation.shape_bias[0], store, "net")


def test_cue_conflict_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(Exception, match="is not a folder"):
        cue_conflict_folder(tmp_path / "missing")
    fake_cue_conflict_set(tmp_path / "cc", per_class=1)
    (tmp_path / "cc" / "cat" / "cat1-dog.png").write_bytes(b"")
    with pytest.raises(SpecError, match="cat1-dog.png is not named"):
        cue_conflict_folder(tmp_path / "cc")
    (tmp_path / "cc" / "cat" / "cat1-dog.png").unlink()
    (tmp_path / "cc" / "cat" / "dog1-cat2.png").write_bytes(b"")
    with pytest.raises(SpecError, match="lies in folder 'cat'"):
        cue_conflict_folder(tmp_path / "cc")
    (tmp_path / "cc" / "cat").rename(tmp_path / "cc" / "kitten")
    with pytest.raises(SpecError, match="16 category folders"):
        cue_conflict_folder(tmp_path / "cc")


def test_spec_checks_evaluation_references():
    base = {"name": "e", "datasets": [
        {"name": "cues", "family": {"family": "procsynth"}, "classes": 3, "render": {"class_texture": {"enabled": True}}},
        {"name": "conflict", "family": {"family": "procsynth"}, "classes": 3, "meshes_from": "cues",
         "render": {"class_texture": {"enabled": True}, "cue_conflict": True}},
        {"name": "grey", "family": {"family": "procsynth"}, "classes": 3, "meshes_from": "cues"}],
        "pretrain": [{"name": "net", "datasets": ["cues"], "model": "resnet18"}]}
    ok = base | {"evaluation": {"shape_bias": [{"name": "sb", "runs": ["net"], "conflict": "conflict", "probe": "cues"}],
                                "depth_probe": [{"name": "dp", "runs": ["net"], "dataset": "cues"}]}}
    assert parse_spec(ok).evaluation.shape_bias[0].classifier == "auto"
    for evaluation, message in [
        ({"shape_bias": [{"name": "sb", "runs": ["nope"], "conflict": "conflict"}]}, "unknown pretrain run 'nope'"),
        ({"shape_bias": [{"name": "sb", "runs": ["net"], "conflict": "cues"}]}, "is not a cue-conflict dataset"),
        ({"shape_bias": [{"name": "sb", "runs": ["net"], "conflict": "conflict", "probe": "grey"}]}, "same class_texture"),
        ({"shape_bias": [{"name": "sb", "runs": ["net"]}]}, "names its cue-conflict dataset"),
        ({"shape_bias": [{"name": "sb", "runs": ["net"], "kind": "cue_conflict_folder"}]}, "path: kind cue_conflict_folder"),
        ({"depth_probe": [{"name": "dp", "runs": ["net"], "kind": "nyu_labeled_mat", "path": "x.mat"}]}, "splits_path"),
        ({"depth_probe": [{"name": "dp", "runs": ["net"], "dataset": "missing"}]}, "unknown dataset 'missing'"),
        ({"shape_bias": [{"name": "x", "runs": ["net"], "conflict": "conflict"}],
          "depth_probe": [{"name": "x", "runs": ["net"], "dataset": "cues"}]}, "evaluation names must be unique"),
    ]:
        with pytest.raises(SpecError, match=message):
            parse_spec(base | {"evaluation": evaluation})


# -- depth probe ---------------------------------------------------------------------------
def smooth_field(rng, size: int) -> np.ndarray:
    """A smooth random field in [0, 1] (a few low-frequency waves)."""
    y, x = np.mgrid[0:size, 0:size] / size
    field = sum(np.cos(2 * np.pi * (rng.uniform(0.3, 1.2) * x * np.cos(a) + rng.uniform(0.3, 1.2) * y * np.sin(a))
                       + rng.uniform(0, 6)) for a in rng.uniform(0, np.pi, 3))
    return (field - field.min()) / (field.max() - field.min() + 1e-9)


def depth_pairs(n: int, seed: int, size: int = 32):
    """Images whose red channel is a smooth field; depth = 1 + 2 x that field (metres), a quarter of it unknown."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        field = smooth_field(rng, size)
        image = rng.integers(0, 255, (size, size, 3)).astype(np.uint8)
        image[..., 0] = np.round(field * 255).astype(np.uint8)
        depth = (1.0 + 2.0 * field).astype(np.float32)
        depth[: size // 4] = np.inf  # background: masked out
        yield image, depth


def pooled_colour(images: torch.Tensor) -> torch.Tensor:
    """Features at stride 4: the average colour of each 4 x 4 block (a frozen 'backbone')."""
    return nn.functional.avg_pool2d(images.permute(0, 3, 1, 2).float() / 255, 4)


def test_depth_probe_beats_the_mean_on_a_learnable_case():
    out = fit_depth_probe(pooled_colour, depth_pairs(24, 0), depth_pairs(8, 1), pixels_per_image=64)
    assert out["rmse_m"] < 0.25 * out["baseline_rmse_m"], out
    assert out["baseline_rmse_m"] > 0.3 and out["test_pixels"] == 8 * 24 * 32 and out["feature_shape"] == [8, 8]
    # noise features cannot beat the mean by much
    noise = fit_depth_probe(lambda x: torch.rand(len(x), 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                            depth_pairs(24, 0), depth_pairs(8, 1), pixels_per_image=64)
    assert noise["rmse_m"] > 0.9 * noise["baseline_rmse_m"]


def test_sampled_features_equal_the_upsampled_map():
    feature = torch.randn(5, 3, 4)
    up = nn.functional.interpolate(feature[None], size=(12, 16), mode="bilinear", align_corners=False)[0]
    rows, cols = np.array([0, 5, 11, 7]), np.array([0, 15, 3, 8])
    assert torch.allclose(sample_features(feature, rows, cols, 12, 16), up[:, rows, cols].T, atol=1e-5)


def test_nyu_labeled_mat_and_depth_folder_are_read_in_their_layouts(tmp_path):
    h5py = pytest.importorskip("h5py")
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 6, 5, 3), dtype=np.uint8)  # (N, H, W, 3)
    depths = rng.uniform(0.5, 9, (4, 6, 5)).astype(np.float32)
    with h5py.File(tmp_path / "nyu.mat", "w") as mat:  # MATLAB v7.3 stores them transposed
        mat["images"] = images.transpose(0, 3, 2, 1)
        mat["depths"] = depths.transpose(0, 2, 1)
    savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [3]]), "testNdxs": np.array([[2], [4]])})
    train = list(nyu_pairs(str(tmp_path / "nyu.mat"), str(tmp_path / "splits.mat"), "train", 10))
    test = list(nyu_pairs(str(tmp_path / "nyu.mat"), str(tmp_path / "splits.mat"), "test", 10))
    assert np.array_equal(train[1][0], images[2]) and np.array_equal(test[0][1], depths[1])
    for split in ("train", "test"):
        (tmp_path / "folder" / split).mkdir(parents=True)
        Image.fromarray(images[0]).save(tmp_path / "folder" / split / "a.png")
        np.save(tmp_path / "folder" / split / "a.depth.npy", depths[0])
    (image, depth), = folder_pairs(str(tmp_path / "folder"), "test", 10)
    assert np.array_equal(image, images[0]) and np.array_equal(depth, depths[0])
    np.save(tmp_path / "folder" / "test" / "a.depth.npy", depths[0][:3])
    with pytest.raises(SpecError, match="a.depth.npy is"):
        list(folder_pairs(str(tmp_path / "folder"), "test", 10))


# -- end to end: the train job evaluates a real checkpoint ------------------------------------
def write_conflict_dataset(store, dataset_id: str, classes: int, views: int, size: int = 16) -> None:
    """Cue-conflict samples in render's layout: class A's silhouette (synthetic_shards' shapes) in class B's hue."""
    import io

    from services.common.manifest import Manifest, put_with_entry, write_manifest
    from services.common.seeds import derive_rng
    from services.render.output import DeterministicTarWriter
    from tests.train.synthetic_shards import _png, draw_sample

    buffer = io.BytesIO()
    writer = DeterministicTarWriter(buffer)
    count = 0
    for a in range(classes):
        for v in range(views):
            b = (a + 1 + v % (classes - 1)) % classes
            rng = derive_rng(9, "conflict", a, v)
            shape_rgb, mask = draw_sample(a, classes, size, rng)
            colour_rgb, colour_mask = draw_sample(b, classes, size, derive_rng(9, "colour", a, v))
            colour = colour_rgb[colour_mask][0]  # class B's hue
            rgb = np.where(mask[..., None], colour, shape_rgb).astype(np.uint8)
            record = {"class_index": a, "shape_class": a, "texture_class": b, "cue_conflict": True}
            writer.write(f"{a:05d}_0_{v:05d}", {"rgb.png": _png(rgb), "json": json.dumps(record).encode(),
                                                "cls": str(a).encode()})
            count += 1
    writer.close()
    key = f"datasets/{dataset_id}/train-00000.tar"
    entry = put_with_entry(store, key, buffer.getvalue(), split="train", shard=0, samples=count)
    manifest = Manifest(kind="dataset", metadata={"classes": classes, "splits": {"train": count}})
    manifest.upsert(entry)
    write_manifest(store, f"datasets/{dataset_id}/manifest.json", manifest)


def test_train_job_evaluates_shape_bias_and_depth_of_a_trained_run(tmp_path):
    from services.train.api import evaluation_id, evaluation_key
    from services.train.job import run_job
    from tests.train.synthetic_shards import write_dataset

    texture = {"class_texture": {"enabled": True}}
    spec = parse_spec({
        "name": "ev",
        "datasets": [{"name": "shapes", "family": {"family": "procsynth"}, "classes": 3, "render": texture},
                     {"name": "conflict", "family": {"family": "procsynth"}, "classes": 3, "meshes_from": "shapes",
                      "render": texture | {"cue_conflict": True}},
                     {"name": "others", "family": {"family": "procsynth"}, "classes": 2}],
        "pretrain": [{"name": "own", "datasets": ["shapes"], "model": "resnet18", "input_size": 16, "epochs": 1,
                      "batch_size": 8, "workers": 0},
                     {"name": "other", "datasets": ["others"], "model": "resnet18", "input_size": 16, "epochs": 1,
                      "batch_size": 8, "workers": 0}],
        "evaluation": {"shape_bias": [{"name": "sb", "runs": ["own", "other"], "conflict": "conflict", "probe": "shapes",
                                       "bootstrap": 200}],
                       "depth_probe": [{"name": "dp", "runs": ["own"], "dataset": "shapes", "pixels_per_image": 16}]},
    })
    store = LocalStore(tmp_path / "store")
    write_dataset(store, spec.dataset_id("shapes"), classes=3, views={"train": 6, "val": 2}, size=16)
    write_dataset(store, spec.dataset_id("others"), classes=2, views={"train": 4, "val": 1}, size=16)
    write_conflict_dataset(store, spec.dataset_id("conflict"), classes=3, views=4)
    summary = run_job(spec, store)
    assert summary["evaluation"]["sb"] == {r: {"status": "done", "key": evaluation_key(evaluation_id(
        spec, spec.evaluation.shape_bias[0]), r)} for r in ("own", "other")}
    sb = evaluation_id(spec, spec.evaluation.shape_bias[0])
    own, other = (store.get_json(evaluation_key(sb, r)) for r in ("own", "other"))
    assert own["classifier"] == "head" and other["classifier"] == "probe"  # 'other' never saw these classes
    for result in (own, other):
        assert result["images"] == 12 and result["shape"] + result["texture"] + result["other"] == 12
        assert result["run_id"] == spec.run_id(result["run"]) and result["evaluation"] == "sb"
    assert other["probe"]["train_images"] == 18 and other["probe"]["val_images"] == 6
    depth = store.get_json(evaluation_key(evaluation_id(spec, spec.evaluation.depth_probe[0]), "own"))
    assert depth["layer"] == "layer4" and depth["test_images"] == 6 and depth["feature_channels"] == 512
    assert 0 < depth["rmse_m"] < 1 and depth["baseline_rmse_m"] > 0
    # a second run finds every result and recomputes nothing
    again = run_job(spec, store)
    assert {v["status"] for v in again["evaluation"]["sb"].values()} == {"skipped"}
    json.dumps(again)
