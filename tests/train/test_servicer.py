"""The Train gRPC service on a real server on loopback: start, watch, get, cancel, bad requests."""

from __future__ import annotations

import json
from concurrent import futures

import grpc
import pytest

from flatland.v1 import common_pb2, train_pb2, train_pb2_grpc
from services.common.spec import parse_spec
from services.train.servicer import register
from tests.train.synthetic_shards import write_dataset
from tests.train.test_pretrain import make_spec


@pytest.fixture
def client(local_store, serve_stage):
    return train_pb2_grpc.TrainStub(serve_stage("train", local_store)), local_store


def item(spec, name="r"):
    return common_pb2.ExperimentItem(spec=common_pb2.SpecText(text=spec.model_dump_json(), format="json"), name=name)


def test_start_watch_and_get_a_run(client, local_store):
    stub, store = client
    assert register(grpc.server(futures.ThreadPoolExecutor(max_workers=1)), store) == ["flatland.v1.Train"]
    spec = make_spec(epochs=2, batch_size=8, input_size=16)
    write_dataset(local_store, spec.dataset_id("shapes"), classes=6, views={"train": 4, "val": 1}, size=16)
    ref = stub.StartRun(item(spec), timeout=30)
    assert ref.run_id == spec.run_id("r")
    assert stub.StartRun(item(spec), timeout=30).run_id == ref.run_id  # idempotent while running
    events = list(stub.WatchRun(ref, timeout=120))
    epochs = [e.metrics.epoch for e in events if e.HasField("metrics")]
    assert epochs == [0, 1]
    assert events[-1].state == train_pb2.RUN_STATE_SUCCEEDED and events[-1].progress.finished
    status = stub.GetRun(ref, timeout=10)
    assert status.state == train_pb2.RUN_STATE_SUCCEEDED and status.kind == "pretrain"
    assert [m.epoch for m in status.metrics] == [0, 1]
    written = [json.loads(line) for line in local_store.get_bytes(f"runs/{ref.run_id}/metrics.jsonl").decode().splitlines()]
    # What the service reports is what the run measured and wrote, epoch by epoch (val top-1 is a count / 6 samples).
    assert [m.val_top1 for m in status.metrics] == pytest.approx([r["val_top1"] for r in written])
    assert [round(r["val_top1"] * r["val_samples"], 6) % 1 for r in written] == [0, 0]
    assert status.result.key == f"runs/{ref.run_id}/done.json" and local_store.exists(status.result.key)


def test_bad_requests_get_status_codes_and_the_server_survives(client, local_store):
    stub, _ = client
    spec = make_spec()
    with pytest.raises(grpc.RpcError) as err:
        stub.StartRun(common_pb2.ExperimentItem(spec=common_pb2.SpecText(text="name: [unclosed"), name="r"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "spec.text" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.StartRun(item(make_spec(model="resnet5")), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "resnet50" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.StartRun(item(spec), timeout=10)  # not rendered yet
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "manifest.json" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.StartRun(item(spec, name="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.StartRun(item(spec, name="evaluation"), timeout=10)  # the spec evaluates nothing
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no evaluation section" in err.value.details()
    evaluating = parse_spec({**json.loads(spec.model_dump_json()), "evaluation": {
        "depth_probe": [{"name": "dp", "runs": ["r"], "dataset": "shapes"}]}})
    with pytest.raises(grpc.RpcError) as err:
        stub.StartRun(item(evaluating, name="evaluation"), timeout=10)  # run r has not been trained
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "['r'] have not finished" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.GetRun(train_pb2.RunRef(run_id="never-ran"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        stub.GetRun(train_pb2.RunRef(run_id="../escape"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cancel_stops_a_run_and_leaves_it_resumable(client, local_store):
    stub, _ = client
    spec = make_spec(epochs=50, batch_size=4, input_size=16)
    write_dataset(local_store, spec.dataset_id("shapes"), classes=6, views={"train": 2, "val": 1}, size=16)
    ref = stub.StartRun(item(spec), timeout=30)
    watch = stub.WatchRun(ref, timeout=120)
    first = next(e for e in watch if e.HasField("metrics"))  # let one epoch finish
    assert first.metrics.epoch == 0
    status = stub.CancelRun(ref, timeout=10)
    assert status.run_id == ref.run_id
    final = [e for e in watch][-1]
    assert final.state == train_pb2.RUN_STATE_CANCELLED and final.error.code == "CANCELLED"
    assert stub.GetRun(ref, timeout=10).state == train_pb2.RUN_STATE_CANCELLED
    assert local_store.exists(f"runs/{ref.run_id}/checkpoints/epoch-0.pt")
    assert not local_store.exists(f"runs/{ref.run_id}/done.json")


def test_transfer_results_carry_their_metric(client, local_store):
    stub, _ = client
    results = [{"source": "scratch", "target": "voc", "mode": "finetune", "metric": "map", "test_score": 0.62,
                "test_map": 0.62, "lr": 0.01, "weight_decay": 1e-4},
               {"source": "scratch", "target": "digits", "mode": "finetune", "metric": "top1", "test_score": 0.9,
                "test_top1": 0.9, "lr": 0.01, "weight_decay": 1e-4}]
    local_store.put_json("runs/x-1/transfer.json", {"transfer_id": "x-1", "results": results})
    local_store.put_json("runs/x-1/done.json", {"transfer_id": "x-1"})
    status = stub.GetRun(train_pb2.RunRef(run_id="x-1"), timeout=10)
    got = [(r.target, r.metric, round(r.test_score, 6), round(r.test_top1, 6)) for r in status.transfer_results]
    assert got == [("voc", "map", 0.62, 0.0), ("digits", "top1", 0.9, 0.9)]


def test_the_server_metrics_port_exports_its_runs_loss_and_top1(local_store):
    """The service path: what a run measured shows on the server's own metrics port (not a registry nobody serves)."""
    import re
    import urllib.request

    from services.common.server import start_server

    running = start_server("train", local_store, port=0, metrics_port=0)
    try:
        stub = train_pb2_grpc.TrainStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
        spec = make_spec(epochs=1, batch_size=8, input_size=16)
        write_dataset(local_store, spec.dataset_id("shapes"), classes=6, views={"train": 4, "val": 1}, size=16)
        ref = stub.StartRun(item(spec), timeout=30)
        assert list(stub.WatchRun(ref, timeout=120))[-1].state == train_pb2.RUN_STATE_SUCCEEDED
        (record,) = [json.loads(line) for line in local_store.get_bytes(f"runs/{ref.run_id}/metrics.jsonl").decode().splitlines()]
        text = urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=10).read().decode()
    finally:
        running.stop(grace=1.0)

    def sample(name, split):
        match = re.search(rf'^{name}{{experiment="{spec.name}",run="{ref.run_id}",split="{split}"}} (\S+)$', text, re.M)
        assert match, f"{name} split={split} not exported:\n" + "\n".join(l for l in text.splitlines() if "train" in l)
        return float(match.group(1))

    assert sample("flatland_train_loss", "train") == pytest.approx(record["train_loss"])
    assert sample("flatland_train_top1", "val") == pytest.approx(record["val_top1"])
    assert "flatland_rpc_requests_total" in text  # the same registry as the server's own metrics


def test_a_segmentation_run_goes_through_start_and_watch(client, local_store):
    """task: segmentation uses the same StartRun / WatchRun / GetRun; its metrics arrive by name in `values`."""
    from tests.train.test_segmentation import make_spec as segmentation_spec

    stub, _ = client
    spec = segmentation_spec(epochs=2, input_size=16, batch_size=4, model="lraspp_mobilenet_v3_large")
    write_dataset(local_store, spec.dataset_id("shapes"), classes=3, views={"train": 2, "val": 1}, size=16)
    ref = stub.StartRun(item(spec, name="s"), timeout=30)
    assert ref.run_id == spec.run_id("s")
    events = list(stub.WatchRun(ref, timeout=180))
    metrics = [e.metrics for e in events if e.HasField("metrics")]
    assert [m.epoch for m in metrics] == [0, 1]
    assert events[-1].state == train_pb2.RUN_STATE_SUCCEEDED
    written = [json.loads(line) for line in local_store.get_bytes(f"runs/{ref.run_id}/metrics.jsonl").decode().splitlines()]
    for message, record in zip(metrics, written):
        for name in ("val_iou_macro", "val_iou_micro", "val_pixel_accuracy", "val_f1_macro", "train_iou_macro"):
            assert message.values[name] == pytest.approx(record[name])
        assert message.val_loss == pytest.approx(record["val_loss"]) and message.val_top1 == 0
    status = stub.GetRun(ref, timeout=10)
    assert status.state == train_pb2.RUN_STATE_SUCCEEDED and status.metrics[-1].values["val_iou_macro"] == pytest.approx(
        written[-1]["val_iou_macro"])
    assert local_store.exists(f"runs/{ref.run_id}/examples.png")
