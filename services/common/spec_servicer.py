"""The ``flatland.v1.Spec`` service every server carries: validate a spec, fetch the schema."""

from __future__ import annotations

import json

import grpc

from flatland.v1 import common_pb2, common_pb2_grpc
from services.common.errors import SpecError
from services.common.spec import DatasetSpec, ExperimentSpec, content_hash, json_schema, parse_spec
from services.common.spec.experiment import preview
from services.common.spec.loading import parse_document
from services.common.store import Store


def spec_from_text(spec_text: common_pb2.SpecText) -> ExperimentSpec:
    """Parse and validate a SpecText message (YAML by default, or JSON)."""
    fmt = (spec_text.format or "yaml").lower()
    if fmt not in ("yaml", "json"):
        raise SpecError(f"spec.format: must be 'yaml' or 'json', got {preview(spec_text.format)}")
    data = parse_document(spec_text.text, fmt, "spec.text")  # bounded: no alias bombs, no deep nesting
    return parse_spec(data, "spec")


class SpecServicer(common_pb2_grpc.SpecServicer):
    def Validate(self, request, context):
        spec = spec_from_text(request)  # SpecError -> INVALID_ARGUMENT via the interceptor
        return common_pb2.SpecSummary(
            name=spec.name,
            canonical_json=spec.model_dump_json(),
            spec_hash=content_hash(spec),
            dataset_ids={d.name: spec.dataset_id(d.name) for d in spec.datasets},
            run_ids={r.name: spec.run_id(r.name) for r in spec.pretrain},
        )

    def Schema(self, request, context):
        return common_pb2.SchemaText(json_schema=json.dumps(json_schema()))


def register(server: grpc.Server, store: Store) -> list[str]:
    common_pb2_grpc.add_SpecServicer_to_server(SpecServicer(), server)
    return ["flatland.v1.Spec"]


def dataset_from_item(item: common_pb2.ExperimentItem) -> tuple[ExperimentSpec, DatasetSpec]:
    """The validated spec of an ExperimentItem and the dataset its ``name`` picks."""
    spec = spec_from_text(item.spec)
    if not item.name:
        raise SpecError("dataset.name: required (the name of one of the spec's datasets)")
    try:
        return spec, spec.dataset(item.name)
    except KeyError:
        raise SpecError(f"dataset.name: no dataset named {item.name!r} in the spec") from None
