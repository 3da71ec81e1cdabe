"""Pre-training: learns held-out views, resumes bit-identically, mixes, checkpoints, bad input."""

from __future__ import annotations

import hashlib
import io
import json
import re

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from services.common.errors import FlatlandError, IntegrityError, ObjectNotFoundError, SpecError
from services.common.spec.experiment import parse_spec
from services.train.loop import lr_factor, pretrain
from services.train.mixes import mix_for_run, split_budget
from services.train.models import build_model, load_checkpoint, load_verified_checkpoint
from tests.train.synthetic_shards import write_dataset


def make_spec(**run):
    datasets = run.pop("dataset_names", ["shapes"])
    base = {"name": "r", "datasets": datasets, "model": "resnet18", "input_size": 32, "epochs": 5, "batch_size": 32,
            "workers": 0, "shuffle_buffer": 64, "optim": {"lr": 0.03, "warmup_epochs": 1}}
    base.update(run)
    return parse_spec({
        "name": "t",
        "datasets": [{"name": n, "family": {"family": "procsynth"}, "classes": 6} for n in ("shapes", "more", "third")],
        "pretrain": [base],
    })


def render(store, spec, name="shapes", classes=6, train=40, val=10, seed=0):
    write_dataset(store, spec.dataset_id(name), classes=classes, views={"train": train, "val": val}, size=40,
                  samples_per_shard=60, seed=seed)


@pytest.mark.slow
def test_pretraining_beats_chance_on_held_out_views_and_writes_the_run(local_store):
    spec = make_spec(workers=2, batch_size=16, epochs=6)
    render(local_store, spec, train=24)
    events = []
    summary = pretrain(spec, "r", local_store, progress=lambda *e: events.append(e))
    run = f"runs/{spec.run_id('r')}"
    records = [json.loads(line) for line in local_store.get_bytes(f"{run}/metrics.jsonl").decode().splitlines()]
    assert [r["epoch"] for r in records] == list(range(6))
    assert records[-1]["val_samples"] == 60  # every held-out view evaluated once
    assert records[-1]["val_top1"] >= 0.6  # chance is 1/6; 0.93 here (one torch thread, this CPU)
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    assert events[0] == ("train:r", 0, 6) and events[-1] == ("train:r", 6, 6)
    assert summary["finished"] and local_store.get_json(f"{run}/done.json") == summary
    # The checkpoint loads straight into the torchvision model.
    ckpt = load_checkpoint(local_store, f"{run}/checkpoints/final.pt")
    model = torchvision.models.get_model(ckpt["model"], num_classes=ckpt["num_classes"])
    model.load_state_dict(ckpt["state_dict"])
    assert ckpt["num_classes"] == 6 and ckpt["input_size"] == 32 and len(ckpt["mean"]) == 3
    for name in ("filters.png", "curves.png"):
        image = Image.open(io.BytesIO(local_store.get_bytes(f"{run}/{name}")))
        assert image.width > 300 and len(np.unique(np.asarray(image.convert("L")))) > 20  # a real picture, not blank
    # A second call finds the run done and returns at once.
    assert pretrain(spec, "r", local_store) == summary


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    from services.common.store import LocalStore

    spec = make_spec(epochs=3, batch_size=16, input_size=16, optim={"lr": 0.05, "warmup_epochs": 1, "label_smoothing": 0.1,
                                                     "grad_clip_norm": 1.0}, workers=1)
    stores = [LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")]
    for store in stores:
        render(store, spec, train=8, val=2)
    pretrain(spec, "r", stores[0])
    partial = pretrain(spec, "r", stores[1], stop_after_epoch=0)
    assert not partial["finished"]
    assert not stores[1].exists(f"runs/{spec.run_id('r')}/done.json")
    pretrain(spec, "r", stores[1])
    final = [load_checkpoint(s, f"runs/{spec.run_id('r')}/checkpoints/final.pt")["state_dict"] for s in stores]
    assert final[0].keys() == final[1].keys()
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    initial = build_model("resnet18", 6, 16).state_dict()
    assert not torch.equal(initial["conv1.weight"], final[0]["conv1.weight"])  # it did train
    metrics = [s.get_bytes(f"runs/{spec.run_id('r')}/metrics.jsonl") for s in stores]
    strip = [[{k: v for k, v in json.loads(l).items() if k not in ("seconds", "images_per_s")} for l in m.splitlines()]
             for m in metrics]
    assert strip[0] == strip[1]


def test_mix_splits_the_budget_evenly_with_declared_class_counts(local_store):
    assert split_budget(1000, 1) == [1000] and split_budget(1000, 2) == [500, 500]
    assert split_budget(1000, 3) == [333, 333, 333]
    spec = make_spec(dataset_names=["shapes", "more", "third"], class_budget=12)
    for i, name in enumerate(("shapes", "more", "third")):
        render(local_store, spec, name=name, classes=9, train=2, val=1, seed=i)
    label_map = mix_for_run(spec, spec.pretrain[0], local_store)
    assert label_map.num_classes == 12
    assert [len(p.classes) for p in label_map.parts] == [4, 4, 4]
    assert sorted(sum((p.labels for p in label_map.parts), [])) == list(range(12))
    assert all(len(set(p.classes)) == 4 and max(p.classes) < 9 for p in label_map.parts)
    assert len({p.classes for p in label_map.parts}) > 1  # each dataset draws its own classes
    assert mix_for_run(spec, spec.pretrain[0], local_store) == label_map  # seeded
    # A one-epoch run streams only the chosen classes and saves the mapping.
    spec = make_spec(dataset_names=["shapes", "more", "third"], class_budget=12, epochs=1, batch_size=4)
    summary = pretrain(spec, "r", local_store)
    saved = local_store.get_json(f"runs/{spec.run_id('r')}/label_map.json")
    assert saved["num_classes"] == 12 == summary["num_classes"]
    assert summary["final"]["val_samples"] == 12  # 1 held-out view x 12 chosen classes


def test_bad_input_is_named(local_store):
    with pytest.raises(SpecError, match="resnet5.*did you mean resnet50"):
        build_model("resnet5", 10)
    spec = make_spec(class_budget=30, dataset_names=["shapes", "more"])
    with pytest.raises(ObjectNotFoundError, match=f"datasets/{spec.dataset_id('shapes')}/manifest.json"):
        pretrain(spec, "r", local_store)
    render(local_store, spec, name="shapes", train=1, val=1)
    render(local_store, spec, name="more", train=1, val=1)
    with pytest.raises(FlatlandError, match="class_budget 30 asks for 15 classes from dataset 'shapes', which has only 6"):
        pretrain(spec, "r", local_store)
    with pytest.raises(SpecError, match="datasets"):
        parse_spec({"name": "t", "datasets": [{"name": "a", "family": {"family": "procsynth"}}],
                    "pretrain": [{"name": "r", "datasets": ["a", "a"]}]})


def test_schedule_warms_up_then_decays():
    from services.common.spec.train import OptimSpec

    cosine = OptimSpec(warmup_epochs=2, schedule="cosine")
    values = [lr_factor(e / 10, cosine, 10) for e in range(0, 101)]
    assert values[0] < 0.01 and abs(max(values) - 1) < 0.01 and values[-1] < 1e-6
    assert all(a <= b for a, b in zip(values[:20], values[1:20]))  # warm-up rises
    assert all(a >= b for a, b in zip(values[21:], values[22:]))  # cosine falls
    step = OptimSpec(warmup_epochs=0, schedule="step", step_size=3, step_gamma=0.5)
    assert [lr_factor(e, step, 9) for e in (0, 2.9, 3, 6.5)] == [1, 1, 0.5, 0.25]


def test_a_dataset_without_val_split_trains_without_validation(local_store):
    spec = make_spec(epochs=1, batch_size=8, input_size=16)
    write_dataset(local_store, spec.dataset_id("shapes"), classes=6, views={"train": 2}, size=16)
    summary = pretrain(spec, "r", local_store)
    assert summary["finished"] and "val_top1" not in summary["final"]
    assert summary["final"]["train_samples"] == 8  # 12 samples, one full batch of 8


def test_a_diverging_run_stops_with_a_named_cause(local_store):
    from services.train.loop import DivergedError

    spec = make_spec(epochs=2, batch_size=4, input_size=16, optim={"lr": 1e12, "warmup_epochs": 0})
    write_dataset(local_store, spec.dataset_id("shapes"), classes=6, views={"train": 3, "val": 1}, size=16)
    with pytest.raises(DivergedError, match="loss became .* in epoch 0; lower optim.lr"):
        pretrain(spec, "r", local_store)
    assert not local_store.exists(f"runs/{spec.run_id('r')}/done.json")


def test_cross_validated_search_picks_the_best_pair_and_trains_the_run_with_it(local_store):
    spec = make_spec(epochs=1, batch_size=16, input_size=16, workers=0,
                     search={"folds": 2, "lr": [1e-7, 0.05], "weight_decay": [0.0], "epochs": 2})
    render(local_store, spec, train=16, val=4)
    events = []
    summary = pretrain(spec, "r", local_store, progress=lambda *e: events.append(e))
    run = f"runs/{spec.run_id('r')}"
    search = local_store.get_json(f"{run}/search.json")
    assert summary["search"] == search and search["folds"] == 2 and search["metric"] == "val_top1"
    assert [(g["lr"], g["weight_decay"]) for g in search["grid"]] == [(1e-7, 0.0), (0.05, 0.0)]
    for g in search["grid"]:
        assert len(g["fold_val_top1"]) == 2 and g["mean_val_top1"] == pytest.approx(np.mean(g["fold_val_top1"]))
    best = max(search["grid"], key=lambda g: g["mean_val_top1"])
    assert search["best"] == {"lr": best["lr"], "weight_decay": best["weight_decay"]}
    assert search["best"]["lr"] == 0.05  # a learning rate of 1e-7 learns nothing in two epochs
    # each trial trained on one fold and was scored on the other: half the 96 training views each
    for fold in range(2):
        trial = local_store.get_json(f"{run}/search/lr0.05-wd0-fold{fold}/done.json")
        assert trial["final"]["val_samples"] == 48 and trial["final"]["train_samples"] <= 48
    # the run itself trained with the chosen pair
    ckpt = load_checkpoint(local_store, f"{run}/checkpoints/final.pt")
    assert ckpt["spec"]["optim"]["lr"] == 0.05 and ckpt["spec"]["optim"]["weight_decay"] == 0.0
    assert ("search:r", 4, 4) in events
    assert pretrain(spec, "r", local_store) == summary  # finished: nothing runs again


def test_fractaldb_preset_fills_what_the_run_leaves_unset():
    spec = make_spec(preset="fractaldb", optim={"lr": 0.05}, epochs=3)
    run = spec.pretrain[0]
    assert (run.epochs, run.batch_size, run.input_size) == (3, 32, 32)  # set by the run: kept
    assert run.optim.lr == 0.05 and run.optim.schedule == "step" and run.optim.step_size == 30
    assert run.optim.warmup_epochs == 0 and run.optim.weight_decay == 1e-4
    assert run.augment.random_crop and not run.augment.random_resized_crop and not run.augment.horizontal_flip
    assert run.mean == (0.2, 0.2, 0.2) and run.std == (0.5, 0.5, 0.5)
    # FractalDB's schedule: x0.1 at epochs 30 and 60
    assert [lr_factor(e, run.optim, 90) for e in (0, 29.9, 30, 59.9, 60, 89)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


def test_a_run_normalises_with_its_own_statistics_and_records_them(local_store):
    spec = make_spec(epochs=1, batch_size=16, input_size=16, mean=[0.2, 0.2, 0.2], std=[0.5, 0.5, 0.5],
                     augment={"random_resized_crop": False, "random_crop": True, "horizontal_flip": False})
    render(local_store, spec, train=8, val=2)
    pretrain(spec, "r", local_store)
    ckpt = load_checkpoint(local_store, f"runs/{spec.run_id('r')}/checkpoints/final.pt")
    assert ckpt["mean"] == [0.2, 0.2, 0.2] and ckpt["std"] == [0.5, 0.5, 0.5]


def test_done_json_lists_the_final_checkpoint_and_a_rerun_remakes_a_damaged_one(local_store):
    spec = make_spec(epochs=2, batch_size=16, input_size=16, workers=0)
    render(local_store, spec, train=8, val=2)
    summary = pretrain(spec, "r", local_store)
    run = f"runs/{spec.run_id('r')}"
    key = f"{run}/checkpoints/final.pt"
    original = local_store.get_bytes(key)
    done = local_store.get_json(f"{run}/done.json")
    assert (done["checkpoint_size"], done["checkpoint_sha256"]) == (len(original), hashlib.sha256(original).hexdigest())
    assert done == summary
    for damage in (lambda b: b[:len(b) // 2], lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:]):
        local_store.put_bytes(key, damage(original))
        with pytest.raises(IntegrityError, match=re.escape(key)):
            load_verified_checkpoint(local_store, run)
        again = pretrain(spec, "r", local_store)  # finds final.pt damaged: makes it again from the last epoch
        assert local_store.get_bytes(key) == original
        assert again["checkpoint_sha256"] == done["checkpoint_sha256"]
        assert load_verified_checkpoint(local_store, run)["num_classes"] == 6
