"""``flatland run --remote``: drive an experiment through the four gRPC services.

The client sends the spec text and the name of each part (dataset, run, scoring) to
the service that owns it and shows the streamed progress; the servers write to their
store, which the client must share (same directory or same bucket) to write the report.
Results are the same as embedded mode because the servers call the same library code
with the same seeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import grpc

from flatland.v1 import (
    common_pb2,
    meshgen_pb2,
    meshgen_pb2_grpc,
    neuro_pb2,
    neuro_pb2_grpc,
    render_pb2,
    render_pb2_grpc,
    train_pb2,
    train_pb2_grpc,
)
from services.common.errors import FlatlandError
from services.common.spec import ExperimentSpec
from services.common.stages import list_stages
from services.meshgen.api import MESH_FAMILIES
from services.train.api import EVALUATIONS_ITEM, has_evaluations

ProgressFn = Callable[[str, int, int], None]


class RemoteStageError(FlatlandError):
    """A stage's server answered with an error status."""


def parse_addresses(remote: str) -> dict[str, str]:
    """``HOST:PORT`` (one server for every stage, e.g. ``flatland serve all``) or
    ``meshgen=H:P,render=H:P,train=H:P,neuro=H:P``."""
    if "=" not in remote:
        return dict.fromkeys(list_stages(), remote)
    addresses = {}
    for part in remote.split(","):
        stage, _, address = part.partition("=")
        stage = stage.strip()
        if stage not in list_stages() or not address.strip():
            raise ValueError(f"--remote: {part!r} is not STAGE=HOST:PORT with STAGE one of {', '.join(list_stages())}")
        addresses[stage] = address.strip()
    return addresses


def _call(stage: str, fn, *args):
    try:
        return fn(*args)
    except grpc.RpcError as exc:
        raise RemoteStageError(f"{stage} server: {exc.code().name}: {exc.details()}") from None


def _follow(stage: str, stream, progress: ProgressFn) -> list:
    """Consume a server stream, forwarding ProgressEvents; return every message."""
    messages = []
    try:
        for message in stream:
            event = message.progress if message.HasField("progress") else None
            if event is not None and event.task:
                progress(event.task, event.done, event.total)
            messages.append(message)
    except grpc.RpcError as exc:
        raise RemoteStageError(f"{stage} server: {exc.code().name}: {exc.details()}") from None
    return messages


def run_remote(
    spec: ExperimentSpec, spec_text: str, addresses: Mapping[str, str], *, stages: list[str], progress: ProgressFn,
    timeout: float = 24 * 3600, connect_timeout: float = 30.0,
) -> dict[str, float]:
    """Run ``stages`` of the experiment on the servers; return seconds per stage."""
    item = lambda name: common_pb2.ExperimentItem(spec=common_pb2.SpecText(text=spec_text), name=name)  # noqa: E731
    timings: dict[str, float] = {}
    channels = {stage: grpc.insecure_channel(address) for stage, address in addresses.items()}
    try:
        for stage in list_stages():
            if stage not in stages:
                continue
            started = time.perf_counter()
            if stage not in channels:
                raise RemoteStageError(
                    f"--remote names no server for stage {stage}; give one HOST:PORT for all stages or STAGE=HOST:PORT for each"
                )
            channel = channels[stage]
            try:
                grpc.channel_ready_future(channel).result(timeout=connect_timeout)
            except grpc.FutureTimeoutError:
                raise RemoteStageError(
                    f"cannot reach the {stage} server at {addresses[stage]} within {connect_timeout:.0f} s "
                    f"(is `flatland serve {stage}` running there?)"
                ) from None
            if stage == "meshgen":
                stub = meshgen_pb2_grpc.MeshgenStub(channel)
                for d in spec.datasets:
                    if d.kind in MESH_FAMILIES and d.meshes_from is None:
                        _follow(stage, stub.GenerateDataset(meshgen_pb2.GenerateDatasetRequest(dataset=item(d.name))), progress)
            elif stage == "render":
                stub = render_pb2_grpc.RenderStub(channel)
                for d in spec.datasets:
                    _follow(stage, stub.RenderDataset(render_pb2.RenderDatasetRequest(dataset=item(d.name))), progress)
            elif stage == "train":
                stub = train_pb2_grpc.TrainStub(channel)
                names = [r.name for r in spec.pretrain] + [t.name for t in spec.transfer]
                if has_evaluations(spec):  # after every run: the evaluations read their checkpoints
                    names.append(EVALUATIONS_ITEM)
                for name in names:
                    ref = _call(stage, stub.StartRun, item(name))
                    events = _follow(stage, stub.WatchRun(ref, timeout=timeout), progress)
                    last = events[-1] if events else None
                    if last is None or last.state != train_pb2.RUN_STATE_SUCCEEDED:
                        why = last.error.message if last is not None and last.HasField("error") else "no final state"
                        raise RemoteStageError(f"train server: run {name} ({ref.run_id}) did not succeed: {why}")
            elif stage == "neuro":
                stub = neuro_pb2_grpc.NeuroStub(channel)
                for s in spec.scoring:
                    _follow(stage, stub.Score(neuro_pb2.ScoreRequest(scoring=item(s.name))), progress)
            timings[stage] = time.perf_counter() - started
    finally:
        for channel in channels.values():
            channel.close()
    return timings
