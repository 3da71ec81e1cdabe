"""The experiment spec (pydantic v2 models). See :mod:`.experiment` for the top level."""

from services.common.spec.experiment import (
    DatasetSpec,
    ExperimentSpec,
    content_hash,
    format_validation_error,
    json_schema,
    load_spec,
    parse_spec,
    spec_to_yaml,
)

__all__ = [
    "DatasetSpec",
    "ExperimentSpec",
    "content_hash",
    "format_validation_error",
    "json_schema",
    "load_spec",
    "parse_spec",
    "spec_to_yaml",
]
