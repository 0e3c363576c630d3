"""Shared machinery of the synthetic click logs: seeding, Zipf fields, the click model, writing, metrics.

Every random quantity comes from a generator seeded by ``(seed, purpose, name)``, so per-value parameters
(biases, latent vectors, tokens) are fixed functions of the seed and the value id, and each block of rows
draws from its own stream: blocks are independent and the output is byte-identical for a given seed.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ctrzoo.errors import CtrzooError

DEFAULTS_DIR = Path(__file__).resolve().parents[2] / "data" / "synth"
CALIBRATION_ROWS = 1 << 16
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_SHIFTS = np.arange(28, -1, -4, dtype=np.uint32)


# ----------------------------------------------------------------------------------------- config


def load_defaults(kind: str) -> dict:
    """Read ``data/synth/<kind>.yaml``: the defaults live in data files so they can be tuned without code."""
    path = DEFAULTS_DIR / f"{kind}.yaml"
    if not path.is_file():
        raise CtrzooError(f"synthetic-data defaults not found: {path} (expected the repo's data/synth directory)")
    with path.open(encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    if not isinstance(cfg, dict):
        raise CtrzooError(f"{path}: expected a mapping of generator settings")
    return cfg


def merge_config(defaults: dict, overrides: Mapping | None, where: str = "") -> dict:
    """Deep-merge ``overrides`` into a copy of ``defaults``; an unknown key is an error, so typos never pass
    silently."""
    out = copy.deepcopy(defaults)
    for key, value in (overrides or {}).items():
        name = f"{where}{key}"
        if key not in out:
            raise CtrzooError(f"unknown config key {name!r}; known keys here: {', '.join(map(str, out))}")
        if isinstance(out[key], dict) and isinstance(value, Mapping):
            out[key] = merge_config(out[key], value, f"{name}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------------- seeding


def stable_int(*parts: object) -> int:
    """A 64-bit digest of ``parts`` that, unlike ``hash()``, is the same in every process."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    """An independent random stream per (seed, purpose, name): adding a field never shifts another's values."""
    return np.random.default_rng([seed, stable_int(*parts)])


def mix32(x: np.ndarray, key: int) -> np.ndarray:
    """Bijective 32-bit hash (lowbias32): distinct value ids give distinct hex tokens within a field."""
    x = x.astype(np.uint32) ^ np.uint32(key & 0xFFFFFFFF)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def hex8(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """Format uint32 values as 8 lowercase hex chars straight into an Arrow buffer (no Python strings)."""
    n = len(values)
    data = _HEX[(values.astype(np.uint32)[:, None] >> _SHIFTS) & np.uint32(15)]
    offsets = np.arange(0, 8 * n + 1, 8, dtype=np.int32)
    bitmap, nulls = None, 0
    if valid is not None and not valid.all():
        bitmap, nulls = pa.py_buffer(np.packbits(valid, bitorder="little")), int(n - valid.sum())
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data), bitmap, nulls)


def zipf_cdf(card: int, exponent: float) -> np.ndarray:
    """Cumulative Zipf weights ``(rank + 1) ** -exponent``: value id 0 is the most frequent."""
    cdf = np.cumsum(np.arange(1, card + 1, dtype=np.float64) ** -float(exponent))
    return cdf / cdf[-1]


def zipf_sample(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    """Exact inverse-CDF draw of ``n`` Zipf ranks."""
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)


# ----------------------------------------------------------------------------------------- fields


class Field:
    """One categorical field: Zipf value ids ``0..card-1``, id ``card`` meaning missing, and their raw tokens.

    Config keys: ``card``, ``zipf`` (exponent), ``missing`` (rate), and the token style: ``values`` (an
    explicit list, most frequent first), ``range: [lo, hi]`` (distinct random integers), ``start`` (integers
    ``start, start + 1, ...`` in frequency order) or hex (default);
    ``missing_token`` writes a placeholder instead of an empty cell (Avazu's "no site" ids, C20's -1).
    """

    def __init__(self, name: str, spec: Mapping, seed: int):
        self.name, self.spec = name, spec
        values = spec.get("values")
        self.card = len(values) if values else int(spec["card"])
        self.missing = float(spec.get("missing", 0.0))
        self.cdf = zipf_cdf(self.card, spec.get("zipf", 1.0))
        miss_tok = spec.get("missing_token")
        self.nullable = miss_tok is None
        rng = rng_for(seed, "tokens", name)
        if values and not all(isinstance(v, int) for v in values):
            self.style, self.table = "str", pa.array([*map(str, values), miss_tok], pa.string())
            return
        if values:
            table = np.array(values, dtype=np.int64)
            self.style = "int"
        elif "start" in spec:
            table, self.style = int(spec["start"]) + np.arange(self.card, dtype=np.int64), "int"
        elif "range" in spec:
            lo, hi = (int(v) for v in spec["range"])
            if hi - lo + 1 < self.card:
                raise CtrzooError(f"field {name!r}: range {lo}..{hi} is smaller than card {self.card}")
            table, self.style = lo + rng.choice(hi - lo + 1, self.card, replace=False).astype(np.int64), "int"
        else:
            table, self.style = mix32(np.arange(self.card), stable_int(seed, name)), "hex"
        fill = 0 if miss_tok is None else int(str(miss_tok), 16 if self.style == "hex" else 10)
        self.table = np.append(table, np.array([fill], dtype=table.dtype))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw ``n`` value ids; missing ones (at the configured rate) get id ``card``."""
        ids = zipf_sample(rng, self.cdf, n)
        if self.missing > 0:
            ids[rng.random(n) < self.missing] = self.card
        return ids

    def derive(self, seed: int, parent: Field) -> np.ndarray:
        """A fixed map parent id -> own id (a site's domain, a creative's banner size); missing stays missing."""
        child = zipf_sample(rng_for(seed, "derive", self.name, parent.name), self.cdf, parent.card)
        return np.append(child, self.card)

    def format(self, ids: np.ndarray) -> pa.Array:
        """Raw tokens of ``ids`` as an Arrow array; missing ids become nulls (empty cells) or the placeholder."""
        if self.style == "str":
            return self.table.take(pa.array(ids))
        valid = (ids != self.card) if self.nullable else None
        if self.style == "hex":
            return hex8(self.table[ids], valid)
        return pa.array(self.table[ids], mask=None if valid is None else ~valid)


def make_fields(specs: Mapping, seed: int) -> dict[str, Field]:
    """Build every categorical field of a config's ``fields`` mapping."""
    return {name: Field(name, spec, seed) for name, spec in specs.items()}


def log_bucket(x: np.ndarray, shift: int = 0, buckets: int = 32) -> np.ndarray:
    """Coarse id of a count (two buckets per e-fold) so numeric features can join latent interactions."""
    return np.minimum((2.0 * np.log1p(np.maximum(x - shift, 0))).astype(np.int64), buckets - 1)


# ------------------------------------------------------------------------------------ click model


class ClickModel:
    """logit = bias + per-value biases + FM pairs + 3-way crosses + smooth numeric effects (+ a kind's extra).

    Config (``model``): ``latent_dim``, ``bias: {field: std}``, ``pairs: [[a, b], ...]``, ``pair_scale``,
    ``triples: [[a, b, c], ...]``, ``triple_scale``, ``smooth: {field: [weight, center, width]}``.
    Per-value tables have ``card + 1`` rows, the last one being the missing value's own parameter.
    """

    def __init__(self, cfg: Mapping, cards: Mapping[str, int], seed: int):
        self.cfg = cfg
        k = int(cfg["latent_dim"])
        used = [f for group in (cfg.get("pairs") or []) + (cfg.get("triples") or []) for f in group]
        for f in [*used, *(cfg.get("bias") or {})]:
            if f not in cards:
                raise CtrzooError(f"click model refers to unknown field {f!r}; fields: {', '.join(cards)}")
        self.bias = {
            f: rng_for(seed, "bias", f).normal(0.0, float(std), cards[f] + 1)
            for f, std in (cfg.get("bias") or {}).items()
        }
        # entries ~ N(0, k**-0.5) make a pair's dot product have unit variance whatever the latent dim.
        self.latent = {
            f: rng_for(seed, "latent", f).standard_normal((cards[f] + 1, k), dtype=np.float32) * np.float32(k**-0.25)
            for f in dict.fromkeys(used)
        }
        self.triple_norm = k**0.25  # a 3-way CP product has variance k**-0.5; rescale to one

    def logit(self, ids: Mapping[str, np.ndarray], num: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Logit without the global bias; ``num`` holds raw numeric values (NaN when missing)."""
        n = len(next(iter(ids.values())))
        z = np.zeros(n)
        for f, table in self.bias.items():
            z += table[ids[f]]

        def vec(f: str) -> np.ndarray:
            return self.latent[f][ids[f]]

        for a, b in self.cfg.get("pairs") or []:
            z += float(self.cfg["pair_scale"]) * np.einsum("ij,ij->i", vec(a), vec(b))
        for a, b, c in self.cfg.get("triples") or []:
            z += float(self.cfg["triple_scale"]) * self.triple_norm * (vec(a) * vec(b) * vec(c)).sum(axis=1)
        for f, (weight, center, width) in (self.cfg.get("smooth") or {}).items():
            x = np.log1p(np.maximum(np.nan_to_num(num[f], nan=0.0), 0.0))
            z += np.where(np.isnan(num[f]), 0.0, weight * np.tanh((x - center) / width))
        return z


# --------------------------------------------------------------------------------------- base kind


class Synth:
    """One dataset kind: draws a block of features, scores it, and renders it as the raw file's columns.

    Subclasses set ``header`` (None for no header line) and ``delimiter`` and implement ``features``
    (given each row's position in time, 0 <= t < 1) and ``table``; ``extra_logit`` adds kind-specific terms.
    """

    header: str | None = None
    delimiter = ","

    def __init__(self, cfg: dict, seed: int):
        self.cfg, self.seed = cfg, seed
        self.fields = make_fields(cfg["fields"], seed)

    def cards(self) -> dict[str, int]:
        """Cardinality of every id the click model may use (subclasses add derived ids such as hour of day)."""
        return {name: f.card for name, f in self.fields.items()}

    def features(self, t: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def extra_logit(self, feats: dict[str, Any]) -> np.ndarray | float:
        return 0.0

    def table(self, feats: dict[str, Any], label: np.ndarray) -> pa.Table:
        raise NotImplementedError

    def build_model(self) -> None:
        """Build the click model once the subclass has set up every field."""
        self.model = ClickModel(self.cfg["model"], self.cards(), self.seed)

    def logit(self, feats: dict[str, Any]) -> np.ndarray:
        return self.model.logit(feats["ids"], feats.get("num")) + self.extra_logit(feats)

    def calibration_sample(self) -> tuple[dict[str, Any], np.ndarray]:
        """The fixed sample the biases are solved on: its features and click logits (no global bias), (R,)."""
        rng = rng_for(self.seed, "calibration")
        feats = self.features(np.sort(rng.random(CALIBRATION_ROWS)), rng)
        return feats, self.logit(feats)

    def calibrate(self, z: np.ndarray | None = None) -> float:
        """Global bias putting the mean click probability at ``target_ctr``, solved on a fixed sample (its
        logits ``z`` when already computed)."""
        if z is None:
            z = self.calibration_sample()[1]
        return solve_bias(lambda b: float(sigmoid(b + z).mean()), float(self.cfg["target_ctr"]))


def solve_bias(mean_at: Callable[[float], float], target: float) -> float:
    """The bias ``b`` in [-30, 30] where the increasing ``mean_at(b)`` reaches ``target``, by 60 bisections."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_at(mid) < target else (lo, mid)
    return round(0.5 * (lo + hi), 12)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


# ------------------------------------------------------------------------------------------ writing


# ------------------------------------------------------------------------------------------ metrics


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC by ranks, tied scores counting one half; NaN when only one class is present."""
    order = np.argsort(score, kind="stable")
    s, y = score[order], label[order].astype(np.int64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(y, starts)
    neg = np.diff(np.r_[starts, len(s)]) - pos
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def oracle_auc(truth_path: str | Path, score: str = "p_click", label: str = "label") -> float:
    """AUC of the true probabilities: the ceiling any model can reach on these labels (9 bytes/row reloaded)."""
    t = pq.read_table(truth_path, columns=[score, label])
    return auc(t[score].to_numpy(), t[label].to_numpy())
