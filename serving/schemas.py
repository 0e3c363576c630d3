"""Request and response models of the ranking API (typed, so /openapi.json documents them)."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema


def _raw_value(v: Any) -> Any:
    """One clear message per bad value (a union type would report one error per member)."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError("NaN and Infinity are not allowed")
        return v
    if isinstance(v, list):
        for i, item in enumerate(v):
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"item {i}: NaN and Infinity are not allowed")
            if not isinstance(item, str | int | float) or isinstance(item, bool):
                raise ValueError(f"item {i}: expected a string or a number, got {type(item).__name__}")
        return v
    raise ValueError(f"expected a string, a number, null or a list of them, got {type(v).__name__}")


_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"},
                     {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "number"}]}}]}
RawValue = Annotated[Any, PlainValidator(_raw_value), WithJsonSchema(_SCHEMA)]
Features = dict[str, RawValue]


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(default=None, max_length=200)
    context: Features = Field(default_factory=dict, description="features shared by every candidate (user, "
                              "device, time, behaviour sequence), sent once")
    candidates: list[Features] = Field(description="one dict of raw feature values per candidate item")
    top_k: int | None = Field(default=None, ge=1, description="cut the ranking to the best top_k")


class ModelInfo(BaseModel):
    name: str
    version: str


class Timing(BaseModel):
    encode_ms: float
    predict_ms: float
    total_ms: float


class RankResponse(BaseModel):
    request_id: str | None
    model: ModelInfo
    scores: list[float] = Field(description="click probability per candidate, in request order")
    ranking: list[int] = Field(description="candidate indices, best first, cut at top_k")
    timing: Timing


class ErrorResponse(BaseModel):
    error: str
    field: str | None = None
    detail: list | None = None


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str | None = Field(default=None, description="bundle directory; default: the one being served")
