"""Building blocks of the experiment spec: strict models and declared distributions."""

from __future__ import annotations

from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
#: Largest seed (seeds are unsigned 64-bit integers in the gRPC API).
SEED_MAX = 2**64 - 1
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="Lower-case letters, digits and '-', 1-63 characters.")]


class StrictModel(BaseModel):
    """Unknown fields are errors (a typo in a spec must not be silently ignored)."""

    # NaN and infinities are refused everywhere: no spec field means them, and they would
    # surface later as an internal error (NaN IFS coefficients, an infinite light intensity).
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False, allow_inf_nan=False)


class Fixed(StrictModel):
    dist: Literal["fixed"] = "fixed"
    value: float = Field(description="The value every sample takes.")

    def sample(self, rng: np.random.Generator, size=None):
        return np.full(size, self.value) if size is not None else self.value

    def center(self) -> float:
        return self.value


class Uniform(StrictModel):
    dist: Literal["uniform"] = "uniform"
    low: float = Field(description="Lower bound (inclusive).")
    high: float = Field(description="Upper bound (exclusive).")

    @model_validator(mode="after")
    def _ordered(self):
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self

    def sample(self, rng: np.random.Generator, size=None):
        return rng.uniform(self.low, self.high, size)

    def center(self) -> float:
        return 0.5 * (self.low + self.high)


class Normal(StrictModel):
    dist: Literal["normal"] = "normal"
    mean: float = Field(description="Mean.")
    std: float = Field(ge=0, description="Standard deviation (>= 0).")
    low: float | None = Field(default=None, description="Optional clamp: smallest value.")
    high: float | None = Field(default=None, description="Optional clamp: largest value.")

    def sample(self, rng: np.random.Generator, size=None):
        x = rng.normal(self.mean, self.std, size)
        if self.low is not None or self.high is not None:
            x = np.clip(x, self.low, self.high)
        return x

    def center(self) -> float:
        return self.mean


class Choice(StrictModel):
    dist: Literal["choice"] = "choice"
    values: list[float] = Field(min_length=1, max_length=10_000, description="Values drawn with equal probability (or `weights`).")
    weights: list[float] | None = Field(default=None, description="Optional relative weights, one per value.")

    @model_validator(mode="after")
    def _weights(self):
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                raise ValueError("weights must have one entry per value")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be non-negative and not all zero")
        return self

    def sample(self, rng: np.random.Generator, size=None):
        p = None if self.weights is None else np.asarray(self.weights) / np.sum(self.weights)
        return rng.choice(np.asarray(self.values, dtype=float), size=size, p=p)

    def center(self) -> float:
        return self.values[0]


Distribution = Annotated[Union[Fixed, Uniform, Normal, Choice], Field(discriminator="dist")]


def fixed(value: float) -> Fixed:
    return Fixed(value=value)


def uniform(low: float, high: float) -> Uniform:
    return Uniform(low=low, high=high)
