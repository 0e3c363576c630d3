"""Service settings: limits and switches, from arguments or ``CTRZOO_*`` environment variables.

pydantic-settings reads and types the environment (``CTRZOO_MAX_CANDIDATES=500`` is an int, ``CTRZOO_COALESCE=0``
a bool, an empty variable is unset) and refuses a value of the wrong type or outside its choices when the
settings are built, i.e. at startup, not on the first request that reads it. The object is frozen: a reload
swaps in a copy (``model_copy(update=...)``), so a request keeps the settings it started with.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from ctrzoo.errors import CtrzooError


class SettingsError(CtrzooError):
    """A setting of the wrong type or outside its choices: names the field and its ``CTRZOO_*`` variable."""

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(message)


StrictWeight = Annotated[float, Field(strict=True)]  # a JSON number: true or "1" is refused, 1 is 1.0


class ServeSettings(BaseSettings):
    """Every field is also ``CTRZOO_<FIELD>`` (case-insensitive); arguments win over the environment."""

    model_config = SettingsConfigDict(env_prefix="CTRZOO_", env_ignore_empty=True, frozen=True, extra="forbid")

    bundle: str = ""
    backend: str = "onnxruntime"
    threads: int | None = None
    max_candidates: int = 1000
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 2.0
    # "ignore": unknown feature names in a request are skipped (clients may send extra fields);
    # "reject": they are a 422 naming them (catches misspelled feature names early).
    unknown_features: Literal["ignore", "reject"] = "ignore"
    coalesce: bool = True  # batch concurrent requests into one predict call
    # Small requests are merged up to this many rows. Larger batches gained nothing per row (onnxruntime's
    # cost per row is flat past ~100 rows) and, measured with 100-candidate requests at concurrency 8,
    # merging up to 4096 rows lowered throughput 25% (a long batch leaves the event loop idle, then busy).
    coalesce_max_rows: int = 128
    admin_token: str | None = Field(default=None, repr=False)  # never in a log line
    # /admin/reload only loads bundles under this directory (symlinks resolved); unset: any directory
    bundle_root: str | None = None
    # A request's body must arrive within this many seconds of its headers (else 408, connection closed), and
    # under ``serving.server``'s protocols a connection must send complete headers this soon after it opens or
    # after its last response: a client trickling bytes or holding an idle socket does not hold a slot forever.
    read_timeout_s: float = 10.0
    # POST /rank answered before Starlette's middleware stack (serving.app.RankingApp): same answers, less work
    rank_lane: bool = True
    # after a model is loaded: gc.freeze(), and this generation-0 threshold if > 0 (else Python's); app._settle_gc
    gc_gen0_threshold: int = 0
    # Multi-task bundles only (serving.tasks; checked against the bundle's tasks at every load): the task /rank
    # orders by (default: the model's first task), or task -> weight for ranking by sum_t w_t * p_t
    # (CTRZOO_TASK_WEIGHTS='{"click": 1, "converted": 4}'); not both. Set for a single-task bundle: refused.
    rank_by: str | None = None
    task_weights: dict[str, StrictWeight] | None = None

    @classmethod
    def from_env(cls, **overrides) -> ServeSettings:
        """``CTRZOO_<FIELD>`` variables, then explicit overrides (None means: keep the environment's or default).

        Raises ``SettingsError`` (one line naming the field and its variable) for a value that does not fit."""
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first.get("loc") else None
            if first["type"] == "extra_forbidden":
                raise SettingsError(f"unknown setting {field!r}", field) from None
            where = f"{field} (CTRZOO_{field.upper()})" if field else "settings"
            raise SettingsError(f"{where}: {first['msg']}, got {first.get('input')!r}", field) from None
