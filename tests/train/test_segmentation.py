"""Segmentation pre-training: metrics against scikit-learn, label maps through the loader, a learning run, resume."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, jaccard_score

from services.common.errors import SpecError
from services.common.seeds import derive_rng
from services.common.spec.experiment import parse_spec
from services.common.spec.train import AugmentSpec
from services.render.keys import shard_index_key
from services.train.data import IGNORE_INDEX, ShardStream, dataset_shards, decode_pair, shard_index
from services.train.loop import pretrain
from services.train.models import load_checkpoint, model_from_checkpoint
from services.train.objectives import objective_for
from services.train.objectives.segmentation import bootstrap_intervals, confusion_matrices, scores
from tests.train.synthetic_shards import sample_members, write_dataset


def make_spec(**run):
    base = {"name": "s", "task": "segmentation", "datasets": ["shapes"], "input_size": 32,
            "batch_size": 8, "workers": 0, "optim": {"lr": 0.02, "warmup_epochs": 0.5}}
    base.update(run)
    return parse_spec({"name": "t", "datasets": [{"name": "shapes", "family": {"family": "procsynth"}, "classes": 3}],
                       "pretrain": [base]})


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # balanced accuracy: class 4
def test_metrics_agree_with_scikit_learn_on_fixed_inputs():
    rng = np.random.default_rng(3)
    classes = 5
    target = rng.integers(0, classes, size=(4, 9, 11))
    target[target == 4] = 3  # class 4 never in the targets ...
    prediction = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, classes, size=target.shape))
    prediction[prediction == 2] = 1  # ... class 2 never predicted
    target[0, :2] = IGNORE_INDEX  # ignored pixels count nowhere
    confusion = confusion_matrices(torch.from_numpy(prediction), torch.from_numpy(target), classes)
    assert confusion.shape == (4, classes, classes) and int(confusion.sum()) == target.size - 2 * 11
    got = scores(confusion.sum(0).numpy())
    keep = target.ravel() != IGNORE_INDEX
    t, p = target.ravel()[keep], prediction.ravel()[keep]
    present = np.union1d(t, p)  # macro averages over the classes in the targets or the predictions
    expected = {
        "pixel_accuracy": accuracy_score(t, p),
        "pixel_accuracy_macro": balanced_accuracy_score(t, p),
        "iou_micro": jaccard_score(t, p, labels=present, average="micro"),
        "iou_macro": jaccard_score(t, p, labels=present, average="macro"),
        "f1_micro": f1_score(t, p, labels=present, average="micro"),
        "f1_macro": f1_score(t, p, labels=present, average="macro"),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    assert got["iou_macro"] != pytest.approx(got["iou_micro"], abs=1e-3)  # the two averages differ here
    # Intervals over images contain the pooled value and are seeded.
    ci = bootstrap_intervals(confusion.numpy(), derive_rng(0, "b"), samples=400)
    assert ci == bootstrap_intervals(confusion.numpy(), derive_rng(0, "b"), samples=400)
    for name, (low, high) in ci.items():
        assert low <= got[name] + 1e-9 and got[name] - 1e-9 <= high and low < high, name


def test_label_map_follows_the_image_through_crop_resize_and_flip():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8)
    labels = np.zeros((40, 48), dtype=np.uint16)
    labels[10:30, 5:20] = 3
    image[labels == 3] = (255, 0, 0)  # the labelled object is pure red
    augment = AugmentSpec(crop_scale=(0.3, 0.6), horizontal_flip=True)
    for seed in range(6):
        out, seg = decode_pair(_png(image), _png(labels), 24, augment, np.random.default_rng(seed))
        assert out.shape == (24, 24, 3) and seg.shape == (24, 24) and seg.dtype == torch.int64
        assert set(seg.unique().tolist()) <= {0, 3}  # nearest neighbour: no blended labels
        red = (out[..., 0] > 200) & (out[..., 1] < 60) & (out[..., 2] < 60)
        inside = seg == 3
        if inside.sum() > 10:  # away from its edges, the object's pixels are red
            assert red[inside].float().mean() > 0.7 and red[~inside].float().mean() < 0.1
    # The same draws crop the image exactly as decoding without a label map does.
    alone = decode_pair(_png(image), None, 24, augment, np.random.default_rng(5))
    assert alone[1] is None and torch.equal(alone[0], decode_pair(_png(image), _png(labels), 24, augment,
                                                                  np.random.default_rng(5))[0])
    with pytest.raises(ValueError, match="label map is"):
        decode_pair(_png(image), _png(labels[:20]), 24, None, np.random.default_rng(0))


@pytest.mark.parametrize("indexed", [True, False])
def test_stream_yields_label_maps_renumbered_by_the_label_table(local_store, indexed):
    write_dataset(local_store, "d", classes=3, views={"train": 4}, size=20, samples_per_shard=5, index=indexed)
    shards = dataset_shards(local_store, "d", "train")
    table = np.array([-1, 0, 1])  # class 0 left out of the mix, 1 -> 0, 2 -> 1
    for augment in (AugmentSpec(random_resized_crop=False, horizontal_flip=False), None):
        stream = ShardStream(local_store.url, shards, [table], input_size=20, augment=augment, with_seg=True)
        samples = list(stream)
        assert len(samples) == 8  # class 0's samples dropped
        for sample in samples:
            original = int(sample["key"].rsplit("#", 1)[1][:5])
            raw = sample_members(original, 0, int(sample["key"][-5:]), 3, 20, 0)
            mask = np.asarray(Image.open(io.BytesIO(raw["seg.png"]))) > 0
            assert sample["label"] == table[original]
            assert torch.equal(sample["seg"], torch.from_numpy(np.where(mask, table[original] + 1, 0)))
    if indexed:  # render's index lists the label maps' offsets
        rows = local_store.get_json(shard_index_key(shards[0].key))["samples"]
        assert all(len(r) == 8 for r in rows)
        assert shard_index(local_store, shards[0], with_seg=True).seg_offsets is not None


def test_an_index_without_label_map_columns_falls_back_to_scanning(local_store):
    write_dataset(local_store, "d", classes=2, views={"train": 3}, size=16, samples_per_shard=6)
    shard = dataset_shards(local_store, "d", "train")[0]
    document = local_store.get_json(shard_index_key(shard.key))
    document["samples"] = [r[:5] for r in document["samples"]]  # as written before label maps were indexed
    local_store.put_json(shard_index_key(shard.key), document)
    old = shard_index(local_store, shard)
    assert old.seg_offsets is None and len(old.keys) == 6  # still read as before
    scanned = shard_index(local_store, shard, with_seg=True)
    assert scanned.seg_offsets is not None and np.array_equal(scanned.offsets, old.offsets)
    stream = ShardStream(local_store.url, [shard], [np.arange(2)], input_size=16, augment=AugmentSpec(), with_seg=True)
    assert sum(int((s["seg"] > 0).any()) for s in stream) == 6


def test_segmentation_spec_defaults_and_bad_models():
    run = make_spec().pretrain[0]
    assert run.model == "fcn_resnet50" and run.epochs == 10 and objective_for(run).name == "segmentation"
    assert make_spec(epochs=4).pretrain[0].epochs == 4
    assert make_spec(task="classification").pretrain[0].model == "resnet50"
    with pytest.raises(SpecError, match="unknown torchvision segmentation model 'resnet18'"):
        objective_for(make_spec(model="resnet18").pretrain[0])
    with pytest.raises(SpecError, match="task 'segmentation' needs kind: synthetic"):
        parse_spec({"name": "t", "pretrain": [{"name": "p", "kind": "torchvision_pretrained", "task": "segmentation",
                                               "weights": "FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1"}]})
    model = objective_for(make_spec(model="lraspp_mobilenet_v3_large").pretrain[0]).build_model(4)
    assert model(torch.zeros(1, 3, 32, 32))["out"].shape == (1, 4, 32, 32)


@pytest.mark.slow
def test_fcn_learns_label_maps_beyond_predicting_background(local_store):
    spec = make_spec(epochs=4)
    write_dataset(local_store, spec.dataset_id("shapes"), classes=3, views={"train": 32, "val": 4}, size=32,
                  samples_per_shard=24)
    summary = pretrain(spec, "s", local_store)
    run = f"runs/{spec.run_id('s')}"
    records = [json.loads(line) for line in local_store.get_bytes(f"{run}/metrics.jsonl").decode().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3] and records[-1]["val_samples"] == 12
    # Predicting background everywhere scores the background's share of the validation pixels (0.68 here).
    val = ShardStream(local_store.url, dataset_shards(local_store, spec.dataset_id("shapes"), "val"), [np.arange(3)],
                      input_size=32, augment=None, with_seg=True)
    background = float(np.mean([float((s["seg"] == 0).float().mean()) for s in val]))
    final = records[-1]
    assert final["val_pixel_accuracy"] > background + 0.08  # 0.86 on this CPU, one torch thread
    assert final["val_iou_macro"] > 0.4 and final["val_loss"] < records[0]["val_loss"]
    for name in ("iou_macro", "iou_micro", "pixel_accuracy", "pixel_accuracy_macro", "f1_macro", "f1_micro"):
        low, high = final[f"val_{name}_ci"]
        assert low <= final[f"val_{name}"] <= high and f"train_{name}" in final
    ckpt = load_checkpoint(local_store, f"{run}/checkpoints/final.pt")
    assert ckpt["model"] == "fcn_resnet50" and ckpt["num_classes"] == 4 == summary["num_classes"]
    model_from_checkpoint(ckpt)  # loads back strictly, no downloads


def test_segmentation_resumes_to_the_same_weights(tmp_path):
    from services.common.store import LocalStore

    spec = make_spec(epochs=2, input_size=16, batch_size=4)
    stores = [LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")]
    for store in stores:
        write_dataset(store, spec.dataset_id("shapes"), classes=3, views={"train": 4, "val": 1}, size=16)
    pretrain(spec, "s", stores[0])
    assert not pretrain(spec, "s", stores[1], stop_after_epoch=0)["finished"]
    pretrain(spec, "s", stores[1])
    run = f"runs/{spec.run_id('s')}"
    final = [load_checkpoint(s, f"{run}/checkpoints/final.pt")["state_dict"] for s in stores]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    metrics = [[{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
                for line in s.get_bytes(f"{run}/metrics.jsonl").decode().splitlines()] for s in stores]
    assert metrics[0] == metrics[1] and "val_iou_macro_ci" in metrics[0][-1]


def test_segmentation_metrics_reach_prometheus():
    from prometheus_client import CollectorRegistry

    from services.train import metrics as prom

    registry = CollectorRegistry()
    gauges = prom._metrics(registry, ("run",))
    gauges["flatland_train_iou_macro"].labels("r", "val").set(0.42)
    assert registry.get_sample_value("flatland_train_iou_macro", {"run": "r", "split": "val"}) == 0.42
    record = {"epoch": 0, "val_iou_macro": 0.5, "train_pixel_accuracy": 0.9}
    run = prom.RunGauges("t", "seg-run")
    run.observe(record)
    assert run.push_registry.get_sample_value("flatland_train_iou_macro", {"run": "seg-run", "split": "val"}) == 0.5
    assert run.push_registry.get_sample_value("flatland_train_pixel_accuracy",
                                              {"run": "seg-run", "split": "train"}) == 0.9


def test_noise_scenes_render_and_train_a_segmentation_run(local_store):
    from services.render.output import render_dataset
    from services.render.renderers.scenes import draw_scene, sample_scene

    spec = parse_spec({"name": "t", "datasets": [
        {"name": "noise", "family": {"family": "noisescenes", "scenes": 24, "image_size": 32, "val_fraction": 0.25},
         "classes": 3}],
        "pretrain": [{"name": "s", "task": "segmentation", "datasets": ["noise"], "input_size": 32, "epochs": 1,
                      "batch_size": 6, "workers": 0, "optim": {"lr": 0.01, "warmup_epochs": 0}}]})
    render_dataset(spec, local_store, "noise", contact_sheet=False)
    dataset_id = spec.dataset_id("noise")
    # the loader hands over each scene's label map as drawn (no augmentation at evaluation)
    val = list(ShardStream(local_store.url, dataset_shards(local_store, dataset_id, "val"), [np.arange(3)],
                           input_size=32, augment=None, with_seg=True))
    assert len(val) == 6
    scenes = {int(s["key"].rsplit("_", 1)[1]) for s in val}
    redrawn = {}
    for scene in scenes:
        record = sample_scene(spec.datasets[0].family, 3, root_seed=spec.seed, dataset_id=dataset_id, scene=scene)
        redrawn[scene] = torch.from_numpy(draw_scene(record)[1].astype(np.int64))
    for sample in val:
        assert torch.equal(sample["seg"], redrawn[int(sample["key"].rsplit("_", 1)[1])])
    summary = pretrain(spec, "s", local_store)
    assert summary["finished"] and summary["num_classes"] == 4 and summary["model"] == "fcn_resnet50"
    assert summary["final"]["val_samples"] == 6 and 0 <= summary["final"]["val_iou_macro"] <= 1
