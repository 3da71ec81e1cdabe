"""What a mesh-view record must hold before the GL renderer touches its scene.

A record comes from :func:`services.render.sampling.sample_view` or from a client
(``RenderImages.records_json``). :func:`validate_record` checks every field the renderer
reads, so a bad record fails with :class:`RecordError` naming the field (INVALID_ARGUMENT
over gRPC) and the shared scene is never left half-updated. Fields the renderer does not
read (seed, dataset_id, azimuth_deg, ...) are kept as they are.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, model_validator

from services.common.errors import FlatlandError
from services.common.spec.experiment import format_validation_error
from services.common.spec.render import MaterialSpec

MAX_LIGHTS = 64  # per record; pyrender compiles one shader per light count, so a cap also bounds the shader cache

Row4 = tuple[FiniteFloat, FiniteFloat, FiniteFloat, FiniteFloat]
Row3 = tuple[FiniteFloat, FiniteFloat, FiniteFloat]
Colour = tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)],
               Annotated[float, Field(ge=0, le=1)]]


class RecordError(FlatlandError, ValueError):
    """A render record that cannot be drawn; the message names each bad field (``record.<path>``)."""

    grpc_status = "INVALID_ARGUMENT"


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


def _pose(rows: tuple) -> tuple:
    if tuple(rows[3]) != (0.0, 0.0, 0.0, 1.0):
        raise ValueError(f"the last row of a pose must be [0, 0, 0, 1], got {list(rows[3])}")
    return rows


class Pose(_Loose):
    pose: tuple[Row4, Row4, Row4, Row4] = Field(description="4x4 affine matrix, finite, last row [0, 0, 0, 1].")

    @model_validator(mode="after")
    def _affine(self):
        _pose(self.pose)
        return self


class Intrinsics(_Loose):
    fx: FiniteFloat = Field(gt=0)
    fy: FiniteFloat = Field(gt=0)
    cx: FiniteFloat
    cy: FiniteFloat


class Camera(Pose):
    intrinsics: Intrinsics
    znear: FiniteFloat = Field(gt=0)
    zfar: FiniteFloat = Field(gt=0)

    @model_validator(mode="after")
    def _clip(self):
        if self.zfar <= self.znear:
            raise ValueError(f"zfar ({self.zfar}) must be greater than znear ({self.znear})")
        return self


class Light(Pose):
    kind: Literal["directional", "point", "spot"]
    intensity: FiniteFloat = Field(ge=0)
    color: Row3
    inner_cone: FiniteFloat = 0.0
    outer_cone: FiniteFloat = math.pi / 4

    @model_validator(mode="after")
    def _cones(self):
        if min(self.color) < 0:
            raise ValueError(f"color must be >= 0 in every channel, got {list(self.color)}")
        if self.kind == "spot" and not 0 <= self.inner_cone <= self.outer_cone <= math.pi / 2:
            raise ValueError(f"spot cones need 0 <= inner_cone <= outer_cone <= pi/2, "
                             f"got {self.inner_cone} and {self.outer_cone}")
        return self


class Background(_Loose):
    kind: Literal["plain", "noise"]
    color: Colour
    noise_scale: FiniteFloat = Field(default=8.0, gt=0)
    noise_seed: int = Field(default=0, ge=0, lt=2**32)


class Planar(_Loose):
    matrix: tuple[Row3, Row3]


class MeshRecord(_Loose):
    image_size: int = Field(ge=16, le=2048)
    backend: Literal["auto", "osmesa", "egl"] = "auto"
    camera: Camera
    lights: list[Light] = Field(max_length=MAX_LIGHTS)
    ambient: FiniteFloat = Field(ge=0, le=1)
    material: MaterialSpec
    object: Pose
    background: Background
    planar: Planar | None = None


def validate_record(record: object, name: str = "record") -> None:
    """Raise :class:`RecordError` unless ``record`` holds everything the GL renderer needs, in range.

    ``name`` starts each field path in the message (``records_json[2]`` for a request's third record).
    """
    if not isinstance(record, dict):
        raise RecordError(f"{name}: must be a JSON object, got {type(record).__name__}")
    try:
        MeshRecord.model_validate(record)
    except ValidationError as exc:
        raise RecordError(f"{name}." + format_validation_error(exc).replace("\n", f"; {name}.")) from None


def validate_material(material: object) -> dict:
    """``material`` as a plain dict with every field filled, or :class:`RecordError` naming the bad field."""
    if not isinstance(material, dict):
        raise RecordError(f"record.material: must be a JSON object, got {type(material).__name__}")
    try:
        return MaterialSpec.model_validate(material).model_dump(mode="json")
    except ValidationError as exc:
        raise RecordError("record.material." + format_validation_error(exc).replace("\n", "; record.material.")) from None
