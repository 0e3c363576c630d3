"""Request and response models of the ranking API (typed, so /openapi.json documents them)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"},
                     {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "number"}]}}]}
# Values are type-checked by the encoder, column by column, only for the features the model reads (a
# per-value Python validator here cost more than the whole encoding of a 100-candidate request); a bad
# value is a 422 naming its feature, unknown features are ignored or refused (settings.unknown_features).
RawValue = Annotated[Any, WithJsonSchema(_SCHEMA)]
Features = dict[str, RawValue]


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(default=None, max_length=200)
    context: Features = Field(default_factory=dict, description="features shared by every candidate (user, "
                              "device, time, behaviour sequence), sent once")
    candidates: list[Features] = Field(description="one dict of raw feature values per candidate item")
    top_k: int | None = Field(default=None, ge=1, strict=True,
                              description="cut the ranking to the best top_k (an integer: \"3\" and true are refused)")


class ModelInfo(BaseModel):
    name: str
    version: str


class Timing(BaseModel):
    encode_ms: float
    predict_ms: float
    total_ms: float


class FeatureReport(BaseModel):
    """Which names of the request the model read: a score computed with features absent is a score of
    less information (with all of them absent every candidate scores the same, which is refused)."""

    absent: list[str] = Field(description="raw features the model reads that the request did not name "
                              "(in no candidate and not in the context): encoded as missing")
    unknown: list[str] = Field(description="names in the request the model does not read: ignored, or a "
                               "422 when the service is configured with unknown_features=reject")


class RankResponse(BaseModel):
    request_id: str | None
    model: ModelInfo
    scores: list[float] = Field(description="click probability per candidate, in request order; for a multi-task "
                                "model the score the ranking uses (see ranked_by)")
    ranking: list[int] = Field(description="candidate indices, best first, cut at top_k")
    features: FeatureReport
    timing: Timing
    task_scores: dict[str, list[float]] | None = Field(
        default=None, description="multi-task models only (absent otherwise): task -> each candidate's probability "
        "of it, in request order")
    ranked_by: str | None = Field(
        default=None, description="multi-task models only (absent otherwise): the task whose probability is the "
        "score (setting rank_by, default the first task), or \"weighted\": sum over tasks of task_weights[task] "
        "times its probability (setting task_weights)")


class ErrorResponse(BaseModel):
    error: str
    field: str | None = None
    detail: list | None = None


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str | None = Field(default=None, description="bundle directory; default: the one being served")
    allow_model_change: bool = Field(default=False, strict=True, description="accept a bundle of another model "
                                     "kind or feature set (refused with 409 otherwise); JSON true or false only")


_RANK_KEYS = frozenset(RankRequest.model_fields)


def parse_rank_request(body: bytes) -> RankRequest:
    """The /rank body as a ``RankRequest``; raises pydantic's ``ValidationError`` (with its messages) when invalid.

    The well-formed common case is parsed by orjson and checked structurally (values are checked by the
    encoder, column by column), which costs half of pydantic-core's parse-and-validate of 100 candidate
    dicts; anything else goes through pydantic, so errors read the same either way. (orjson refuses the
    NaN and Infinity that pydantic reads: those then reach the encoder, which refuses them naming the field.)
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return RankRequest.model_validate_json(body)
    if _well_formed(data):  # every field given: model_construct then skips its default-factory introspection
        return RankRequest.model_construct(request_id=data.get("request_id"), context=data.get("context", {}),
                                           candidates=data["candidates"], top_k=data.get("top_k"))
    return RankRequest.model_validate(data)


def _well_formed(data: Any) -> bool:
    if type(data) is not dict or "candidates" not in data or not _RANK_KEYS.issuperset(data):
        return False
    candidates, context = data["candidates"], data.get("context", {})
    request_id, top_k = data.get("request_id"), data.get("top_k")
    return (type(candidates) is list and all(type(c) is dict for c in candidates) and type(context) is dict
            and (request_id is None or (type(request_id) is str and len(request_id) <= 200))
            and (top_k is None or (type(top_k) is int and top_k >= 1)))  # type(True) is bool: refused
