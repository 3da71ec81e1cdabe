"""The Neuro gRPC service on a real server on a free loopback port."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import yaml

from scipy.stats import spearmanr

from flatland.v1 import common_pb2, neuro_pb2, neuro_pb2_grpc
from services.common.server import start_server
from services.common.spec.experiment import parse_spec
from services.neuro.dataformat import read_neural_data
from services.neuro.features import extract_features, load_checkpoint
from services.neuro.planted import planted_key
from services.neuro.rsa import rdm
from services.neuro.scoring import checkpoint_key
from tests.neuro.conftest import TINY


@pytest.fixture
def neuro_client(finished_store, serve_stage):
    return neuro_pb2_grpc.NeuroStub(serve_stage("neuro", finished_store)), finished_store


def _item(spec=TINY, name="main"):
    return common_pb2.ExperimentItem(spec=common_pb2.SpecText(text=yaml.safe_dump(spec)), name=name)


def test_score_streams_progress_then_result(neuro_client):
    stub, store = neuro_client
    responses = list(stub.Score(neuro_pb2.ScoreRequest(scoring=_item(), runs=["run-a"]), timeout=120))
    kinds = [r.WhichOneof("kind") for r in responses]
    assert kinds[-1] == "result" and kinds.count("result") == 1 and kinds.count("progress") >= 3
    assert responses[-2].progress.finished
    (score,) = responses[-1].result.scores
    assert score.run == "run-a" and score.benchmark == "planted" and score.synthetic and not score.skipped
    assert {layer.layer for layer in score.layers} == {"layer1", "layer2", "layer4"}
    assert store.checksum(score.score_json.key) == (score.score_json.size, score.score_json.sha256)
    stored = store.get_json(score.score_json.key)
    for layer in score.layers:  # the reply carries the stored numbers
        s = stored["predictivity"][layer.region][layer.layer]
        assert (layer.raw, layer.ceiling, layer.r_over_ceiling, layer.r2_over_ceiling, layer.split_std, layer.rsa) == (
            s["raw"], s["ceiling"], s["r_over_ceiling"], s["r2_over_ceiling"], s["split_std"], stored["rsa"][layer.region][layer.layer])
        assert (layer.raw_ci_low, layer.raw_ci_high) == tuple(s["raw_ci"]) and layer.raw_ci_low < layer.raw < layer.raw_ci_high
        # Brain-Score's block, as the JSON has it: every number, and the JSON's nulls as unset fields
        block = s["brainscore"]
        assert layer.HasField("brainscore")
        assert (layer.brainscore.raw, layer.brainscore.error) == (block["raw"], block["error"])
        assert block["ceiling"] is not None and layer.brainscore.HasField("ceiling")
        assert (layer.brainscore.ceiling, layer.brainscore.score) == (block["ceiling"], block["score"])
        assert layer.brainscore.score == pytest.approx(block["raw"] ** 2 / block["ceiling"], rel=1e-12)
        assert layer.brainscore.raw == pytest.approx(float(np.mean(s["split_scores"])), rel=1e-12)
    assert len(score.figures) == 2
    # Second call: found in the store.
    again = list(stub.Score(neuro_pb2.ScoreRequest(scoring=_item(), runs=["run-a"]), timeout=60))
    assert again[-1].result.scores[0].skipped


def test_compare_models(neuro_client):
    stub, store = neuro_client
    reply = stub.CompareModels(neuro_pb2.CompareModelsRequest(
        scoring=_item(), run_a="run-a", run_b="run-b", benchmark="planted", layers_a=["layer1"], layers_b=["layer1", "layer4"]))
    assert list(reply.layers_b) == ["layer1", "layer4"] and reply.method == "spearman"
    # Against a reference: scipy's Spearman between RDMs of each run's features, extracted here.
    spec = parse_spec(TINY)
    data = read_neural_data(store.get_bytes(planted_key(spec.neural_data[0])))
    features = {}
    for run in ("run-a", "run-b"):
        checkpoint = load_checkpoint(store, checkpoint_key(spec.run_id(run)))
        features[run] = extract_features(checkpoint.build(), data.images, ["layer1", "layer4"], input_size=checkpoint.input_size,
                                         mean=checkpoint.mean, std=checkpoint.std)
    expected = [spearmanr(rdm(features["run-a"]["layer1"]), rdm(features["run-b"][b])).statistic for b in ("layer1", "layer4")]
    np.testing.assert_allclose(list(reply.similarity), expected, atol=1e-6)


def test_bad_requests_get_status_codes_and_server_survives(neuro_client):
    stub, _ = neuro_client
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Score(neuro_pb2.ScoreRequest(scoring=_item(name="nope"))))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no scoring named 'nope'" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Score(neuro_pb2.ScoreRequest(scoring=_item(), runs=["run-z"])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "run-z" in err.value.details()
    bad = {**TINY, "scoring": [{**TINY["scoring"][0], "layers": ["layer9"]}]}
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Score(neuro_pb2.ScoreRequest(scoring=_item(bad), runs=["run-a"])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "layer9" in err.value.details()
    bad_spec = {**TINY, "scoring": [{**TINY["scoring"][0], "mapping": "lasso"}]}
    with pytest.raises(grpc.RpcError) as err:
        stub.CompareModels(neuro_pb2.CompareModelsRequest(scoring=_item(bad_spec), run_a="run-a", run_b="run-b", benchmark="planted"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "mapping" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.CompareModels(neuro_pb2.CompareModelsRequest(scoring=_item(), run_a="run-a", run_b="run-a", benchmark="missing"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "missing" in err.value.details()
    reply = stub.CompareModels(neuro_pb2.CompareModelsRequest(
        scoring=_item(), run_a="run-a", run_b="run-b", benchmark="planted", layers_a=["layer4"], layers_b=["layer4"]))
    assert len(reply.similarity) == 1  # still serving


@pytest.mark.parametrize("layers_a, layers_b, words", [
    (["layer1"] * 1000, ["layer1"], "layers_a: 1000 layers listed, at most 64"),
    (["layer1"], ["layer1", "layer4", "layer1"], "layers_b[2]: layer 'layer1' is listed twice"),
    ([f"layer{i}" for i in range(65)], ["layer1"], "layers_a: 65 layers listed"),
])
def test_compare_models_refuses_long_or_repeated_layer_lists_quickly(neuro_client, layers_a, layers_b, words):
    stub, _ = neuro_client
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.CompareModels(neuro_pb2.CompareModelsRequest(scoring=_item(), run_a="run-a", run_b="run-b",
                                                          benchmark="planted", layers_a=layers_a, layers_b=layers_b),
                           timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.value.details()
    assert time.monotonic() - start < 5  # refused before any checkpoint or feature is loaded
    bad = {**TINY, "scoring": [{**TINY["scoring"][0], "layers": ["layer1", "layer1"]}]}
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Score(neuro_pb2.ScoreRequest(scoring=_item(bad), runs=["run-a"]), timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "layer 'layer1' is listed twice" in err.value.details()


def test_unfinished_run_is_not_found(store):
    running = start_server("neuro", store, port=0, metrics_port=None)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                list(neuro_pb2_grpc.NeuroStub(channel).Score(neuro_pb2.ScoreRequest(scoring=_item())))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "run 'run-a'" in err.value.details()
    finally:
        running.stop(grace=1)


def test_brainscore_block_without_ceiling_leaves_ceiling_and_score_unset():
    from services.neuro.servicer import _brainscore_message

    message = _brainscore_message({"raw": 0.25, "error": 0.01, "ceiling": None, "score": None})
    assert (message.raw, message.error) == (0.25, 0.01)
    assert not message.HasField("ceiling") and not message.HasField("score")


@pytest.mark.slow
def test_score_split_over_two_worker_processes_writes_what_one_process_writes(finished_store, serve_stage, tmp_path):
    from services.common.store import LocalStore
    from tests.neuro.conftest import finish_run

    light = {**TINY, "scoring": [{**TINY["scoring"][0], "layers": ["layer1", "layer2"], "bootstrap": 0,
                                  "compare_models": False}]}
    spec = parse_spec(light)
    single = LocalStore(tmp_path / "single")
    finish_run(single, spec, "run-a", 0)
    finish_run(single, spec, "run-b", 1)
    replies = {}
    for workers, store in ((2, finished_store), (1, single)):
        stub = neuro_pb2_grpc.NeuroStub(serve_stage("neuro", store, workers=workers))
        responses = list(stub.Score(neuro_pb2.ScoreRequest(scoring=_item(light)), timeout=300))
        assert responses[-2].progress.finished and responses[-1].WhichOneof("kind") == "result"
        replies[workers] = responses[-1].result
        assert [(s.run, s.benchmark) for s in replies[workers].scores] == [("run-a", "planted"), ("run-b", "planted")]

    def stored(store, score):
        record = store.get_json(score.score_json.key)
        return {k: v for k, v in record.items() if k not in ("seconds", "created")}

    for two, one in zip(replies[2].scores, replies[1].scores):
        assert stored(finished_store, two) == stored(single, one)
        assert [layer.raw for layer in two.layers] == [layer.raw for layer in one.layers]
