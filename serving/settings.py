"""Service settings: limits and switches, from arguments or ``CTRZOO_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ServeSettings:
    bundle: str = ""
    backend: str = "onnxruntime"
    threads: int | None = None
    max_candidates: int = 1000
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 2.0
    # "ignore": unknown feature names in a request are skipped (clients may send extra fields);
    # "reject": they are a 422 naming them (catches misspelled feature names early).
    unknown_features: str = "ignore"
    coalesce: bool = True  # batch concurrent requests into one predict call
    # Small requests are merged up to this many rows. Larger batches gained nothing per row (onnxruntime's
    # cost per row is flat past ~100 rows) and, measured with 100-candidate requests at concurrency 8,
    # merging up to 4096 rows lowered throughput 25% (a long batch leaves the event loop idle, then busy).
    coalesce_max_rows: int = 128
    admin_token: str | None = None
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

    @classmethod
    def from_env(cls, **overrides) -> ServeSettings:
        """``CTRZOO_<FIELD>`` variables, then explicit overrides (None means: keep)."""
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"CTRZOO_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(raw, f.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _parse(raw: str, kind) -> object:
    kind = str(kind)
    if "bool" in kind:
        return raw.lower() in ("1", "true", "yes", "on")
    if kind.startswith("int"):
        return int(raw)
    if kind.startswith("float"):
        return float(raw)
    if "int |" in kind:
        return int(raw)
    return raw
