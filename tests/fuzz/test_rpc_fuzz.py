"""Fuzz every RPC of a full server (``flatland serve all``) with malformed requests.

A seeded generator (reproducible: ``FLATLAND_FUZZ_SEED``) fills each request message from
its descriptor with hostile values: broken, deep, huge or aliased JSON/YAML, specs with one
field mutated, edge-case integers, random bytes, raw bytes that are not a protobuf at all.
No answer may be INTERNAL or UNKNOWN (a bad request is the client's error, named as such).
After every batch the server answers Health within a second, stays under a memory bound,
and still answers valid requests correctly. The inputs of issue 19 run as fixed cases.

Bounded for ``make test`` (about a minute on two loaded cores); ``FLATLAND_FUZZ_BATCHES``
and ``FLATLAND_FUZZ_CALLS`` run more.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # the render stage, before OpenGL is imported

import grpc
import pytest
import trimesh
import yaml
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flatland.v1 import common_pb2, common_pb2_grpc, meshgen_pb2, meshgen_pb2_grpc, neuro_pb2, render_pb2, render_pb2_grpc, train_pb2
from services.common.server import start_server
from services.common.spec import content_hash, load_spec
from services.common.store import LocalStore

pytestmark = pytest.mark.fuzz

REPO = Path(__file__).resolve().parents[2]
QUICKSTART_PATH = REPO / "experiments" / "quickstart.yaml"
QUICKSTART = yaml.safe_load(QUICKSTART_PATH.read_text())
NAMES = ["procsynth", "flatworld", "morphsynth", "fractals", "net3d", "net2d", "digits-transfer", "quick-scores", "planted-it"]
SEED = int(os.environ.get("FLATLAND_FUZZ_SEED", "19"))
BATCHES = int(os.environ.get("FLATLAND_FUZZ_BATCHES", "4"))
CALLS_PER_METHOD = int(os.environ.get("FLATLAND_FUZZ_CALLS", "8"))
CALL_TIMEOUT_S = 5.0
RSS_GROWTH_LIMIT_MB = 400  # after the first batch (imports and GL contexts warm up in it)
# gRPC's own answer to bytes that are not the request message; it comes before any handler runs.
GRPC_DESERIALIZE = "Exception deserializing request!"

ALIAS_BOMB = "\n".join(
    ['name: bomb', 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{b}: &{b} [{','.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    + ["description: *i"]
)
DEEP = "[" * 10_000 + "]" * 10_000
BIG_INT = "7" * 5000


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _box_glb(faces=None) -> bytes:
    box = trimesh.creation.box()
    return trimesh.Trimesh(vertices=box.vertices, faces=box.faces if faces is None else faces, process=False).export(file_type="glb")


BOX_GLB = _box_glb()
RECORDS: list[dict] = []  # valid render records, filled by the server fixture, mutated by the generator
RECORD_PNGS: list[bytes] = []  # what they render to


# -- the generator ---------------------------------------------------------------------------------


class Hostile:
    """Seeded hostile values; every method draws from one ``random.Random``."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def leaf(self):
        r = self.rng
        return r.choice([
            -1, 0, 1, -(2**31), 2**31 - 1, 2**63, 2**64, 10**30, 1e308, -1e-308, float("nan"), float("inf"),
            "", "x" * r.randint(1, 5000), "🙂\u202e\x00", "../../etc/passwd", None, True, [], {},
            [r.random() for _ in range(r.randint(0, 50))], {"family": r.choice(["procsynth", "fractal2d", "nope"])},
        ])

    def nested(self, depth: int = 0):
        r = self.rng
        if depth > 6 or r.random() < 0.3:
            return self.leaf()
        if r.random() < 0.5:
            return [self.nested(depth + 1) for _ in range(r.randint(0, 4))]
        return {self.text(short=True): self.nested(depth + 1) for _ in range(r.randint(0, 4))}

    def mutated_spec(self) -> dict:
        return self.mutated(QUICKSTART)

    def mutated(self, document):
        """``document`` with one to three leaves or sections replaced by hostile values."""
        document = json.loads(json.dumps(document))
        for _ in range(self.rng.randint(1, 3)):
            target, key = document, None
            while True:
                keys = list(target) if isinstance(target, dict) else list(range(len(target)))
                if not keys:
                    key = None
                    break
                key = self.rng.choice(keys)
                if not isinstance(target[key], (dict, list)) or self.rng.random() < 0.25:
                    break
                target = target[key]
            if key is not None:
                target[key] = self.nested(4)
        return document

    def json_text(self) -> str:
        r = self.rng
        choice = r.randrange(8)
        if choice == 0:
            return DEEP
        if choice == 1:
            return "{" + r.choice(['"a": ', '"family": "procsynth", "v": ', ""]) + BIG_INT + "}"
        if choice == 2:
            return bytes(r.randrange(256) for _ in range(r.randint(1, 200))).decode("latin-1")
        if choice == 3:
            return json.dumps(self.nested())  # NaN and Infinity included
        if choice == 4:
            return json.dumps({"family": r.choice(["procsynth", "fractal2d", "morphsynth"]), **{
                k: self.leaf() for k in r.sample(["v", "w", "max_rejections", "max_attempts", "coefficient_range",
                                                  "search_points", "filling_rate", "image_size", "material"], 2)}})
        if choice == 5:
            return json.dumps(self.nested())[: r.randint(0, 40)]  # truncated
        if choice == 6:
            return ""
        return "[" * r.randint(50, 2000)

    def spec_text(self) -> tuple[str, str]:
        r = self.rng
        choice = r.randrange(8)
        if choice == 0:
            return ALIAS_BOMB, "yaml"
        if choice == 7:
            return QUICKSTART_PATH.read_text(), "yaml"  # valid: the request's other fields are the hostile ones
        if choice == 1:
            return "name: x\ndescription: " + DEEP, r.choice(["yaml", "json"])
        if choice == 2:
            return f"name: x\nseed: {BIG_INT}\n", "yaml"
        if choice == 3:
            return yaml.safe_dump(self.mutated_spec()), "yaml"
        if choice == 4:
            return json.dumps(self.mutated_spec()), "json"
        if choice == 5:
            return self.json_text(), r.choice(["yaml", "json", "toml", ""])
        return "name: x\n" + "".join(f"k{i}: &a{i} [1]\n" for i in range(200)), "yaml"

    def text(self, short: bool = False) -> str:
        r = self.rng
        if short:
            return r.choice(["", "a", "name", "family", "run-x", "x" * 300, "\x00", "🙂"])
        return r.choice([self.json_text(), r.choice(NAMES), "meshes/" + "a" * 300 + "/0.glb", "../x", "/abs",
                         "a//b", "runs/nope-0000000000", "x" * r.randint(0, 3000)])

    def fill(self, message) -> None:
        """Fill the fields of ``message`` with hostile values (recursively): all of them, or
        (half the time) one or two, the rest left at their defaults and any mesh valid, so
        that requests get past the first check and into the code behind it."""
        r = self.rng
        fields = list(message.DESCRIPTOR.fields)
        focus = r.random() < 0.5 and len(fields) > 1
        chosen = set(f.name for f in r.sample(fields, r.randint(1, 2))) if focus else {f.name for f in fields}
        for field in fields:
            if focus and field.type == FieldDescriptor.TYPE_BYTES and field.name not in chosen:
                setattr(message, field.name, BOX_GLB)
                continue
            if field.name not in chosen or (not focus and r.random() < 0.2):
                continue  # leave it unset
            repeated = field.label == FieldDescriptor.LABEL_REPEATED if hasattr(field, "label") else field.is_repeated
            count = r.choice([0, 1, 2, 5, 70]) if repeated else 1
            for _ in range(count):
                value = self.value_for(field, message)
                if value is None:
                    continue
                if repeated:
                    getattr(message, field.name).append(value)
                else:
                    setattr(message, field.name, value)

    def value_for(self, field, message):
        r = self.rng
        t = field.type
        if t == FieldDescriptor.TYPE_MESSAGE:
            sub = getattr(message, field.name)
            if field.message_type.name == "SpecText":
                sub.text, sub.format = self.spec_text()
            elif field.message_type.name == "ExperimentItem":
                sub.spec.text, sub.spec.format = self.spec_text()
                sub.name = r.choice(NAMES + ["", "nope", "x" * 300])
            else:
                self.fill(sub)
            return None
        if t == FieldDescriptor.TYPE_STRING:
            if field.name == "records_json" and RECORDS and r.random() < 0.5:
                return json.dumps(self.mutated(r.choice(RECORDS)))
            return self.text()
        if t == FieldDescriptor.TYPE_BYTES:
            return r.choice([b"", b"glTF" + bytes(r.randrange(256) for _ in range(100)), os.urandom(r.randint(1, 2000)),
                             BOX_GLB])  # a valid mesh, so the other fields are what is hostile
        if t == FieldDescriptor.TYPE_BOOL:
            return r.random() < 0.5
        if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_UINT32):
            return r.choice([0, 1, 2**32 - 1, 2**64 - 1 if t == FieldDescriptor.TYPE_UINT64 else 7])
        return r.choice([0, 1, -1, 63, 64, 65, 10_000, 2**31 - 1, -(2**31)])


# -- the server and the calls ------------------------------------------------------------------------

METHODS = {  # full method name -> (request class, response class, server-streaming)
    "/flatland.v1.Spec/Validate": (common_pb2.SpecText, common_pb2.SpecSummary, False),
    "/flatland.v1.Spec/Schema": (common_pb2.SchemaRequest, common_pb2.SchemaText, False),
    "/flatland.v1.Meshgen/GenerateMesh": (meshgen_pb2.GenerateMeshRequest, meshgen_pb2.GenerateMeshResponse, False),
    "/flatland.v1.Meshgen/GenerateDataset": (meshgen_pb2.GenerateDatasetRequest, meshgen_pb2.GenerateDatasetEvent, True),
    "/flatland.v1.Render/RenderImages": (render_pb2.RenderImagesRequest, render_pb2.RenderImagesResponse, False),
    "/flatland.v1.Render/RenderDataset": (render_pb2.RenderDatasetRequest, render_pb2.RenderDatasetEvent, True),
    "/flatland.v1.Train/StartRun": (common_pb2.ExperimentItem, train_pb2.RunRef, False),
    "/flatland.v1.Train/WatchRun": (train_pb2.RunRef, train_pb2.RunEvent, True),
    "/flatland.v1.Train/GetRun": (train_pb2.RunRef, train_pb2.RunStatus, False),
    "/flatland.v1.Train/CancelRun": (train_pb2.RunRef, train_pb2.RunStatus, False),
    "/flatland.v1.Neuro/Score": (neuro_pb2.ScoreRequest, neuro_pb2.ScoreResponse, True),
    "/flatland.v1.Neuro/CompareModels": (neuro_pb2.CompareModelsRequest, neuro_pb2.CompareModelsResponse, False),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = start_server("all", LocalStore(tmp_path_factory.mktemp("fuzz-store")), metrics_port=None)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    reply = render_pb2_grpc.RenderStub(channel).RenderImages(
        render_pb2.RenderImagesRequest(glb=BOX_GLB, count=2, settings_json='{"image_size": 32}'), timeout=120)
    RECORDS[:] = [json.loads(i.record_json) for i in reply.images]
    RECORD_PNGS[:] = [i.rgb_png for i in reply.images]
    yield running, channel
    channel.close()
    running.stop(grace=1.0)


def call(channel, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    """Send raw request bytes; read a stream's first event only (valid work is then cancelled)."""
    _, response_cls, streaming = METHODS[method]
    try:
        if streaming:
            stream = channel.unary_stream(method, request_serializer=None, response_deserializer=response_cls.FromString)(
                payload, timeout=CALL_TIMEOUT_S)
            try:
                next(iter(stream), None)
            finally:
                stream.cancel()
            return grpc.StatusCode.OK, ""
        channel.unary_unary(method, request_serializer=None, response_deserializer=response_cls.FromString)(
            payload, timeout=CALL_TIMEOUT_S)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def assert_not_internal(method: str, payload: bytes, code: grpc.StatusCode, details: str) -> None:
    if code == grpc.StatusCode.INTERNAL and details == GRPC_DESERIALIZE:
        return
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
        f"{method} answered {code.name}: {details[:500]} for request {payload[:300]!r}"
    )


def check_server_healthy(channel, rss_after_warmup: float | None) -> float:
    started = time.monotonic()
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=3.0)
    assert status.status == health_pb2.HealthCheckResponse.SERVING and time.monotonic() - started < 3.0
    # Valid requests still get the right answers.
    summary = common_pb2_grpc.SpecStub(channel).Validate(common_pb2.SpecText(text=QUICKSTART_PATH.read_text()), timeout=30)
    assert summary.spec_hash == content_hash(load_spec(QUICKSTART_PATH))
    request = meshgen_pb2.GenerateMeshRequest(family="procsynth", params_json='{"w": 1, "segments_range": {"low": 8, "high": 8}}',
                                              seed=7, class_index=1)
    reply = meshgen_pb2_grpc.MeshgenStub(channel).GenerateMesh(request, timeout=60)
    mesh = trimesh.load(__import__("io").BytesIO(reply.data), file_type="glb", force="mesh")
    assert len(mesh.faces) == json.loads(reply.stats_json)["faces"] > 0
    again = render_pb2_grpc.RenderStub(channel).RenderImages(
        render_pb2.RenderImagesRequest(glb=BOX_GLB, records_json=[json.dumps(RECORDS[0])]), timeout=60)
    assert again.images[0].rgb_png == RECORD_PNGS[0]  # the shared renderer was not poisoned
    rss = _rss_mb()
    if rss_after_warmup is not None:
        assert rss - rss_after_warmup < RSS_GROWTH_LIMIT_MB, f"RSS grew {rss - rss_after_warmup:.0f} MB"
    return rss




# The inputs of issue 19, with the answer each must get.
FIXED_CASES = [
    ("/flatland.v1.Spec/Validate", common_pb2.SpecText(text=ALIAS_BOMB), grpc.StatusCode.INVALID_ARGUMENT, "aliases"),
    ("/flatland.v1.Spec/Validate", common_pb2.SpecText(text="name: x\ndescription: " + DEEP), grpc.StatusCode.INVALID_ARGUMENT, "nest"),
    ("/flatland.v1.Spec/Validate", common_pb2.SpecText(text='{"name": ' + DEEP + "}", format="json"), grpc.StatusCode.INVALID_ARGUMENT, "nested"),
    ("/flatland.v1.Spec/Validate", common_pb2.SpecText(text=f"name: x\nseed: {BIG_INT}\n"), grpc.StatusCode.INVALID_ARGUMENT, "digits"),
    ("/flatland.v1.Meshgen/GenerateMesh", meshgen_pb2.GenerateMeshRequest(params_json=DEEP), grpc.StatusCode.INVALID_ARGUMENT, "params_json"),
    ("/flatland.v1.Meshgen/GenerateMesh", meshgen_pb2.GenerateMeshRequest(
        params_json='{"family": "fractal2d", "coefficient_range": {"low": NaN, "high": Infinity}}'),
     grpc.StatusCode.INVALID_ARGUMENT, "coefficient_range"),
    ("/flatland.v1.Meshgen/GenerateMesh", meshgen_pb2.GenerateMeshRequest(
        params_json='{"family": "procsynth", "max_rejections": 1000000000000}'), grpc.StatusCode.INVALID_ARGUMENT, "max_rejections"),
    ("/flatland.v1.Meshgen/GenerateMesh", meshgen_pb2.GenerateMeshRequest(
        params_json='{"family": "fractal2d", "max_attempts": 1000000000000}'), grpc.StatusCode.INVALID_ARGUMENT, "max_attempts"),
    ("/flatland.v1.Render/RenderImages", render_pb2.RenderImagesRequest(glb=_box_glb(), records_json=["[1]"]),
     grpc.StatusCode.INVALID_ARGUMENT, "records_json[0]"),
    ("/flatland.v1.Render/RenderImages", render_pb2.RenderImagesRequest(glb=_box_glb([[0, 1, 2], [0, 1, 99]]), count=1),
     grpc.StatusCode.INVALID_ARGUMENT, "face indices"),
    ("/flatland.v1.Render/RenderImages", render_pb2.RenderImagesRequest(mesh_key="meshes/" + "a" * 300 + "/0.glb", count=1),
     grpc.StatusCode.INVALID_ARGUMENT, "longer than"),
    ("/flatland.v1.Render/RenderImages", render_pb2.RenderImagesRequest(glb=_box_glb(), settings_json=DEEP, count=1),
     grpc.StatusCode.INVALID_ARGUMENT, "settings_json"),
    ("/flatland.v1.Train/GetRun", train_pb2.RunRef(run_id="a" * 300), grpc.StatusCode.INVALID_ARGUMENT, "longer than"),
    # Found by this suite: a 20 KB field echoed into the status message overflowed gRPC's
    # 16 KiB header limit, and the client saw an unrelated RESOURCE_EXHAUSTED.
    ("/flatland.v1.Spec/Validate", common_pb2.SpecText(text="name: x", format="[" * 20_000), grpc.StatusCode.INVALID_ARGUMENT, "spec.format"),
    ("/flatland.v1.Train/GetRun", train_pb2.RunRef(run_id="é" * 20_000), grpc.StatusCode.INVALID_ARGUMENT, "run_id"),
]


@pytest.mark.parametrize("method, request_message, code, words", FIXED_CASES,
                         ids=[f"{m.rsplit('/', 1)[1]}-{i}" for i, (m, *_rest) in enumerate(FIXED_CASES)])
def test_fixed_cases(server, method, request_message, code, words):
    _, channel = server
    got, details = call(channel, method, request_message.SerializeToString())
    assert got == code and words in details, (got, details)


def test_every_rpc_survives_generated_malformed_requests(server):
    running, channel = server
    hostile = Hostile(SEED)
    rss_after_warmup = None
    answered: dict[str, set] = {m: set() for m in METHODS}
    for batch in range(BATCHES):
        for method, (request_cls, _, _) in METHODS.items():
            for _ in range(CALLS_PER_METHOD):
                message = request_cls()
                hostile.fill(message)
                payload = message.SerializeToString()
                code, details = call(channel, method, payload)
                assert_not_internal(method, payload, code, details)
                answered[method].add(code.name)
            # Bytes that are not this message at all.
            payload = bytes(hostile.rng.randrange(256) for _ in range(hostile.rng.randint(1, 64)))
            code, details = call(channel, method, payload)
            assert_not_internal(method, payload, code, details)
        rss = check_server_healthy(channel, rss_after_warmup)
        if batch == 0:
            rss_after_warmup = rss
    print({m.rsplit("/", 1)[1]: sorted(c) for m, c in answered.items()})
    assert all(answered.values())
    # Nothing was left running: handlers stopped once their callers left.
    deadline = time.monotonic() + 30
    while True:
        busy = {m.name: s.value for m in running.registry.collect() if m.name == "flatland_rpc_in_flight"
                for s in m.samples if s.value > 0}
        if not busy:
            break
        assert time.monotonic() < deadline, f"still in flight: {busy}"
        time.sleep(0.1)
    assert not math.isnan(_rss_mb())
