"""The batch entry point: runs split by index, missing inputs named, a second call skips everything."""

from __future__ import annotations

import pytest

from services.common.errors import ObjectNotFoundError
from services.common.spec.experiment import parse_spec
from services.train.job import run_job
from tests.train.synthetic_shards import write_dataset


def job_spec():
    return parse_spec({
        "name": "t",
        "datasets": [{"name": "shapes", "family": {"family": "procsynth"}, "classes": 3}],
        "pretrain": [{"name": n, "datasets": ["shapes"], "model": "resnet18", "input_size": 16, "epochs": 1,
                      "batch_size": 8, "workers": 0, "seed": i} for i, n in enumerate(("a", "b"))],
        "targets": [{"name": "digits", "kind": "digits", "train_per_class": 3}],
        "transfer": [{"name": "x", "pretrained": ["a"], "targets": ["digits"], "modes": ["linear_probe"],
                      "epochs": 1, "batch_size": 16}],
    })


def test_job_splits_runs_by_index_then_transfers_and_resumes(local_store):
    spec = job_spec()
    with pytest.raises(ObjectNotFoundError, match=f"datasets/{spec.dataset_id('shapes')}/manifest.json"):
        run_job(spec, local_store, index=1, count=2)
    write_dataset(local_store, spec.dataset_id("shapes"), classes=3, views={"train": 4, "val": 1}, size=16)
    second = run_job(spec, local_store, index=1, count=2)
    assert list(second["pretrain"]) == ["b"] and second["transfer"] == {}
    events = []
    first = run_job(spec, local_store, index=0, count=2, progress=lambda *e: events.append(e))
    assert first["pretrain"]["a"]["status"] == "done" and first["transfer"]["x"]["status"] == "done"
    assert {r["source"] for r in first["transfer"]["x"]["results"]} == {"a", "scratch"}
    assert ("train:a", 1, 1) in events and ("transfer:x", 2, 2) in events
    again = run_job(spec, local_store)
    assert {v["status"] for v in again["pretrain"].values()} == {"skipped"}
    assert again["transfer"]["x"]["status"] == "skipped"


def test_parts_split_pretraining_from_transfer_as_the_argo_steps_run_them(local_store):
    spec = job_spec()
    write_dataset(local_store, spec.dataset_id("shapes"), classes=3, views={"train": 4, "val": 1}, size=16)
    with pytest.raises(ValueError, match="part must be"):
        run_job(spec, local_store, part="everything")
    # a transfer step before its pre-training runs names the missing run
    with pytest.raises(ObjectNotFoundError, match=f"runs/{spec.run_id('a')}"):
        run_job(spec, local_store, part="transfer")
    steps = [run_job(spec, local_store, index=i, count=2, part="pretrain") for i in range(2)]
    assert [list(s["pretrain"]) for s in steps] == [["a"], ["b"]] and all(s["transfer"] == {} for s in steps)
    assert all(local_store.exists(f"runs/{spec.run_id(n)}/done.json") for n in ("a", "b"))
    transfer = run_job(spec, local_store, part="transfer")
    assert transfer["pretrain"] == {} and transfer["transfer"]["x"]["status"] == "done"
