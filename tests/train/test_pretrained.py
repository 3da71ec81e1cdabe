"""ImageNet baselines (kind torchvision_pretrained): weights read from TORCH_HOME or a path, never downloaded."""

from __future__ import annotations

import pytest
import torch
import torchvision

from services.common.errors import ObjectNotFoundError, SpecError
from services.common.spec.experiment import parse_spec
from services.train.loop import PretrainRun, pretrain
from services.train.models import load_checkpoint, model_from_checkpoint
from services.train.pretrained import weights_file
from services.train.transfer import run_transfer


def spec_for(run: dict, **extra):
    return parse_spec({"name": "t", "pretrain": [{"name": "base", "kind": "torchvision_pretrained", **run}], **extra})


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    # torch.hub reads TORCH_HOME at each call unless a directory was set explicitly
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "torch-home"


def saved_weights(path, model="resnet18"):
    torch.manual_seed(3)
    net = torchvision.models.get_model(model, weights=None)  # random, saved under torchvision's file name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net.state_dict()


def test_weights_from_the_torch_hub_cache_become_a_contract_checkpoint(torch_home, local_store):
    spec = spec_for({"model": "resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1"})
    run = spec.pretrain[0]
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert weights_file(run) == expected
    with pytest.raises(ObjectNotFoundError, match="resnet18-f37072fd.pth"):
        pretrain(spec, "base", local_store)  # named, not downloaded
    assert not expected.exists()
    state = saved_weights(expected)
    summary = pretrain(spec, "base", local_store)
    rid = spec.run_id("base")
    assert summary["weights"] == "ResNet18_Weights.IMAGENET1K_V1" and local_store.exists(f"runs/{rid}/done.json")
    ckpt = load_checkpoint(local_store, f"runs/{rid}/checkpoints/final.pt")
    assert (ckpt["model"], ckpt["num_classes"], ckpt["input_size"]) == ("resnet18", 1000, 224)
    assert ckpt["mean"] == pytest.approx([0.485, 0.456, 0.406]) and ckpt["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert torch.equal(ckpt["state_dict"]["conv1.weight"], state["conv1.weight"])
    rebuilt = model_from_checkpoint(ckpt)  # what neuro's loader does: the contract rebuilds the model
    assert torch.equal(rebuilt.fc.weight, state["fc.weight"])
    assert local_store.get_bytes(f"runs/{rid}/filters.png").startswith(b"\x89PNG")
    # The neuro stage reads it like any trained run's checkpoint.
    from services.neuro.features import load_checkpoint as neuro_load

    loaded = neuro_load(local_store, f"runs/{rid}/checkpoints/final.pt")
    assert loaded.model_name == "resnet18" and torch.equal(loaded.build().conv1.weight, state["conv1.weight"])


def test_a_spec_path_wrong_weights_and_bad_fields_are_named(tmp_path, torch_home, local_store):
    state = saved_weights(tmp_path / "mine.pth", "alexnet")
    spec = spec_for({"model": "alexnet", "weights": "AlexNet_Weights.IMAGENET1K_V1", "weights_path": str(tmp_path / "mine.pth")})
    pretrain(spec, "base", local_store)
    ckpt = load_checkpoint(local_store, f"runs/{spec.run_id('base')}/checkpoints/final.pt")
    assert torch.equal(ckpt["state_dict"]["features.0.weight"], state["features.0.weight"])
    assert torch.hub.get_dir() == str(torch_home / "hub")  # the temporary cache is gone again
    wrong = spec_for({"model": "resnet50", "weights": "ResNet18_Weights.IMAGENET1K_V1"})
    with pytest.raises(SpecError, match="not resnet50's.*ResNet50_Weights.IMAGENET1K_V1"):
        PretrainRun(wrong, "base", local_store).execute()
    with pytest.raises(SpecError, match="weights"):
        spec_for({"model": "resnet18"})
    with pytest.raises(SpecError, match="trains on nothing"):
        spec_for({"model": "resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1", "datasets": ["x"]})


@pytest.mark.slow
def test_a_torchvision_baseline_transfers(torch_home, local_store):
    saved_weights(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    spec = spec_for({"model": "resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1"},
                    targets=[{"name": "digits", "kind": "digits", "train_per_class": 5}],
                    transfer=[{"name": "x", "pretrained": ["base"], "targets": ["digits"], "modes": ["linear_probe"],
                               "input_size": 32, "epochs": 2, "batch_size": 25}])
    pretrain(spec, "base", local_store)
    results = {r["source"]: r for r in run_transfer(spec, "x", local_store)["results"]}
    assert set(results) == {"base", "scratch"} and results["base"]["source_run_id"] == spec.run_id("base")
    assert results["base"]["cached_features"] and results["base"]["test_loss"] != results["scratch"]["test_loss"]
