"""Transfer to offline targets: fine-tune and probe from a checkpoint and from scratch, CV search."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from services.common.errors import FlatlandError, IntegrityError, ObjectNotFoundError
from services.common.spec.experiment import parse_spec
from services.common.spec.train import TargetSpec
from services.train.loop import DivergedError, pretrain
from services.train.transfer import Source, load_target, prepare_model, run_transfer, sources_for, transfer_id
from tests.train.synthetic_shards import write_dataset


def spec_with(transfer: dict, targets=None, pretrain_runs=True):
    data = {
        "name": "t",
        "datasets": [{"name": "shapes", "family": {"family": "procsynth"}, "classes": 4}],
        "pretrain": [{"name": "r", "datasets": ["shapes"], "model": "resnet18", "input_size": 16, "epochs": 2,
                      "batch_size": 16, "workers": 0, "optim": {"lr": 0.05, "warmup_epochs": 0}}] if pretrain_runs else [],
        "targets": targets or [{"name": "digits", "kind": "digits", "test_fraction": 0.3, "train_per_class": 10}],
        "transfer": [{"name": "x", "targets": ["digits"], "model": "resnet18", "input_size": 16, "batch_size": 25,
                      "optim": {"lr": 0.01, "warmup_epochs": 0, "weight_decay": 5e-4}, **transfer}],
    }
    if not pretrain_runs:
        data.pop("datasets")
    return parse_spec(data)


@pytest.mark.slow
def test_finetune_from_checkpoint_and_from_scratch_on_digits(local_store):
    # Few-shot (10 per class) and few steps keep this fast on a busy 2-core machine; the
    # probe mode is exercised in the search test below.
    spec = spec_with({"pretrained": ["r"], "epochs": 5, "modes": ["finetune"]})
    with pytest.raises(ObjectNotFoundError, match=r"pre-training run 'r'.*done.json"):
        run_transfer(spec, "x", local_store)
    write_dataset(local_store, spec.dataset_id("shapes"), classes=4, views={"train": 12, "val": 2}, size=24)
    pretrain(spec, "r", local_store)
    summary = run_transfer(spec, "x", local_store)
    results = {(r["source"], r["mode"]): r for r in summary["results"]}
    assert set(results) == {("r", "finetune"), ("scratch", "finetune")}
    for result in results.values():
        assert result["test_samples"] == 540 and result["train_samples"] == 100  # 30 % of 1797 held out; 10 per class kept
        assert result["metric"] == "top1" and result["test_score"] == result["test_top1"]
        assert result["test_top1"] > 0.15 and result["test_loss"] < np.log(10)  # both starts beat chance (10 %)
    assert results[("r", "finetune")]["source_run_id"] == spec.run_id("r")
    assert results[("scratch", "finetune")]["source_run_id"] is None
    # 20 steps from scratch already beat chance (10 %) on held-out digits (deterministic on the CPU).
    assert results[("scratch", "finetune")]["test_top1"] > 0.2
    # The two starts are different models, not one result written twice.
    assert results[("r", "finetune")]["test_loss"] != results[("scratch", "finetune")]["test_loss"]
    tid = transfer_id(spec, spec.transfer[0])
    assert local_store.get_json(f"runs/{tid}/transfer.json") == summary
    assert local_store.exists(f"runs/{tid}/done.json")
    assert run_transfer(spec, "x", local_store) == summary  # done: nothing recomputed


def test_linear_probe_trains_only_the_head():
    state = {k: v + 1.0 if v.is_floating_point() else v
             for k, v in prepare_model(Source("s", None, "resnet18", 16, (0,) * 3, (1,) * 3, None), 4, "finetune").state_dict().items()}
    source = Source("s", "run", "resnet18", 16, (0.5,) * 3, (0.25,) * 3, state)
    model = prepare_model(source, 10, "linear_probe")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])  # backbone copied
    assert model.fc.out_features == 10


def test_cross_validated_search_records_every_fold(local_store):
    spec = spec_with({"pretrained": [], "modes": ["linear_probe"], "epochs": 2,
                      "search": {"folds": 2, "lr": [0.001, 0.2], "weight_decay": [0.0]}}, pretrain_runs=False)
    result = run_transfer(spec, "x", local_store)["results"][0]
    search = result["search"]
    assert search["folds"] == 2 and len(search["grid"]) == 2
    assert all(len(g["fold_top1"]) == 2 and g["mean_top1"] == pytest.approx(np.mean(g["fold_top1"])) for g in search["grid"])
    best = max(search["grid"], key=lambda g: g["mean_top1"])
    assert result["lr"] == best["lr"] == search["best"]["lr"]
    assert result["source"] == "scratch" and result["model"] == "resnet18"


def test_image_folder_targets_split_by_seed_and_missing_data_is_named(tmp_path):
    rng = np.random.default_rng(0)
    for c, colour in enumerate(((255, 0, 0), (0, 0, 255))):
        (tmp_path / "folder" / f"class{c}").mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "folder" / f"class{c}" / f"{i}.png")
    target = TargetSpec(name="f", kind="imagefolder", path=str(tmp_path / "folder"), test_fraction=0.2)
    data = load_target(target, 16, seed=3)
    assert data.num_classes == 2 and len(data.train) == 16 and len(data.test) == 4
    image, label = data.test[0]
    assert image.shape == (16, 16, 3) and image.dtype == torch.uint8
    again = load_target(target, 16, seed=3)
    assert list(again.test.indices) == list(data.test.indices)
    assert sorted(np.bincount(data.train_labels)) == [8, 8]  # stratified
    with pytest.raises(ObjectNotFoundError, match="no cifar10 data under"):
        load_target(TargetSpec(name="c", kind="cifar10", path=str(tmp_path / "nothing")), 32, seed=0)
    with pytest.raises(ObjectNotFoundError, match="does not exist"):
        load_target(TargetSpec(name="g", kind="imagefolder", path=str(tmp_path / "nope")), 32, seed=0)


def test_transfer_runs_on_an_image_folder(tmp_path, local_store):
    rng = np.random.default_rng(1)
    for c, colour in enumerate(((230, 30, 30), (30, 30, 230))):
        (tmp_path / "folder" / f"class{c}").mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(np.array(colour) + rng.integers(-40, 40, (10, 10, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "folder" / f"class{c}" / f"{i}.png")
    # Batches of 9 (two per epoch): with batches of 6 a 16-px ResNet-18's BatchNorm running statistics
    # could end far from the training ones, so eval-mode top-1 depended on the thread count (0.5 vs 1.0).
    spec = spec_with({"pretrained": [], "targets": ["f"], "modes": ["finetune"], "epochs": 10, "batch_size": 9},
                     targets=[{"name": "f", "kind": "imagefolder", "path": str(tmp_path / "folder"), "test_fraction": 0.25}],
                     pretrain_runs=False)
    result = run_transfer(spec, "x", local_store)["results"][0]
    assert result["target"] == "f" and result["test_samples"] == 6 and result["train_samples"] == 18
    assert result["train_top1"] > 0.5  # two noisy colours: learnable in a few steps
    # A learning rate far too large blows the loss up; that is an error naming the cure, not a result.
    spec = spec_with({"pretrained": [], "targets": ["f"], "modes": ["finetune"], "epochs": 3, "batch_size": 6,
                      "optim": {"lr": 1e12, "warmup_epochs": 0}},
                     targets=[{"name": "f", "kind": "imagefolder", "path": str(tmp_path / "folder")}], pretrain_runs=False)
    with pytest.raises(DivergedError, match="lower the learning rate"):
        run_transfer(spec, "x", local_store)


def test_cached_feature_probe_matches_the_full_model_probe():
    from services.common.spec.train import OptimSpec
    from services.train.data import IMAGENET_MEAN, IMAGENET_STD
    from services.train.transfer import fit, fit_head, probe_features

    data = load_target(TargetSpec(name="d", kind="digits", train_per_class=4), 16, seed=0)
    torch.manual_seed(5)
    state = prepare_model(Source("s", None, "resnet18", 16, (0,) * 3, (1,) * 3, None), 3, "finetune").state_dict()
    source = Source("s", "run", "resnet18", 16, IMAGENET_MEAN, IMAGENET_STD, state)
    features = probe_features(source, data, 16, "cpu")
    assert features is not None and features.head == "fc" and features.train.tensors[0].shape == (40, 512)
    options = {"lr": 0.05, "weight_decay": 1e-4, "optim": OptimSpec(lr=0.05, warmup_epochs=0), "epochs": 2,
               "batch_size": 8, "seed": 11, "device": torch.device("cpu")}
    head = fit_head(source, features, features.train, 10, **options)
    model = fit(source, "linear_probe", data.train, 10, **options)
    assert torch.allclose(head.weight, model.fc.weight, atol=1e-4) and torch.allclose(head.bias, model.fc.bias, atol=1e-4)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])  # the backbone did not move
    squeeze = Source("q", None, "squeezenet1_1", 64, IMAGENET_MEAN, IMAGENET_STD, None)
    assert probe_features(squeeze, load_target(TargetSpec(name="d", kind="digits", train_per_class=1), 64, 0), 8, "cpu") is None


def test_a_damaged_pretrained_checkpoint_is_refused_naming_its_key(local_store):
    spec = spec_with({"pretrained": ["r"], "epochs": 1, "modes": ["finetune"]})
    write_dataset(local_store, spec.dataset_id("shapes"), classes=4, views={"train": 8, "val": 2}, size=24)
    pretrain(spec, "r", local_store)
    key = f"runs/{spec.run_id('r')}/checkpoints/final.pt"
    assert [s.name for s in sources_for(spec, spec.transfer[0], local_store)] == ["r", "scratch"]
    data = bytearray(local_store.get_bytes(key))
    data[len(data) // 3] ^= 0x40
    local_store.put_bytes(key, bytes(data))
    with pytest.raises(IntegrityError, match=re.escape(key) + ".*re-run train"):
        sources_for(spec, spec.transfer[0], local_store)
    with pytest.raises(IntegrityError, match=re.escape(key)):
        run_transfer(spec, "x", local_store)


def test_an_interrupted_fine_tune_resumes_to_the_same_result(local_store):
    # FractalDB-style crops and flips (resize 20, crop 16): augmentation must replay identically on resume.
    options = {"pretrained": [], "modes": ["finetune"], "epochs": 3, "batch_size": 20,
               "augment": {"resize": 20, "random_crop": True, "horizontal_flip": True}}
    spec = spec_with(options, targets=[{"name": "digits", "kind": "digits", "train_per_class": 4}], pretrain_runs=False)
    tid = transfer_id(spec, spec.transfer[0])
    with pytest.raises(FlatlandError, match="stopped after epoch 0"):
        run_transfer(spec, "x", local_store, stop_after_epoch=0)
    ckpt = f"runs/{tid}/checkpoints/scratch--digits--finetune.pt"
    assert local_store.exists(ckpt) and not local_store.exists(f"runs/{tid}/done.json")
    resumed = run_transfer(spec, "x", local_store)["results"][0]
    assert not local_store.exists(ckpt)  # a finished combination drops its checkpoint
    fresh_store = type(local_store)(str(local_store.root) + "-fresh")
    uninterrupted = run_transfer(spec, "x", fresh_store)["results"][0]
    assert resumed["test_loss"] == uninterrupted["test_loss"] and resumed["test_top1"] == uninterrupted["test_top1"]
    # The crops are random: without them the same fit ends elsewhere.
    plain = spec_with({**options, "augment": {"resize": 20}}, targets=[{"name": "digits", "kind": "digits", "train_per_class": 4}],
                      pretrain_runs=False)
    assert run_transfer(plain, "x", fresh_store)["results"][0]["test_loss"] != uninterrupted["test_loss"]
