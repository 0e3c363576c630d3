"""The two-tower model: a user/context tower and an item tower over one shared embedding table.

Which feature feeds which tower is configuration (``TowerSplit``), not code: both towers read the same
fitted ``FeatureSpec`` and the fixed tensor layout, so a prepared dataset trains them as it is and the
service encodes requests with the same encoder as ``/rank``.

The table is shared because the behaviour sequence and the candidate item id live in one row space (the
spec's ``shares``): a clicked item's history embedding is its item embedding, which is what lets a short
training run place a user near the items of the categories it clicked. ``history_attributes`` adds, per
history item, the embeddings of some of its item features (its category, say) looked up from the
catalogue, so users with unseen history items still land near the right categories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctrzoo.features import Categorical, FeatureSpec, SequenceFeature
from ctrzoo.features.layout import PADDING_ID
from ctrzoo.nn.embedding import FeatureEmbedding
from ctrzoo.nn.mlp import MLP
from ctrzoo.retrieval.errors import RetrievalError

NORMALIZE = ("both", "user", "none")


@dataclass
class TowerSplit:
    """Which features feed which tower.

    ``item_id`` names the catalogue key (a categorical feature of the item tower); ``item`` and ``user``
    list categorical, numeric and (user side only) sequence features; features in neither are unused.
    ``history_attributes``: item-tower categoricals also looked up for every item of the user's sequences.
    """

    item_id: str
    item: list[str]
    user: list[str]
    history_attributes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TowerSplit:
        try:
            return cls(**d)
        except TypeError as exc:
            raise RetrievalError(f"bad tower split {d!r}: {exc}") from None

    def validate(self, spec: FeatureSpec) -> None:
        names = {f.name for f in spec.features}
        for side, feats in (("item", self.item), ("user", self.user), ("history_attributes", self.history_attributes)):
            unknown = [n for n in feats if n not in names]
            if unknown:
                raise RetrievalError(f"{side} tower: unknown features {unknown}; the spec has {sorted(names)}")
        both = set(self.item) & set(self.user)
        if both:
            raise RetrievalError(f"features in both towers: {sorted(both)} (each feature feeds one tower)")
        if self.item_id not in self.item or not isinstance(spec[self.item_id], Categorical):
            raise RetrievalError(f"item_id {self.item_id!r} must be a categorical feature of the item tower")
        for n in self.item:
            if isinstance(spec[n], SequenceFeature):
                raise RetrievalError(f"item tower: sequence feature {n!r} belongs to the user tower")
        for n in self.history_attributes:
            if n not in self.item or not isinstance(spec[n], Categorical):
                raise RetrievalError(f"history_attributes: {n!r} must be a categorical feature of the item tower")
        if self.history_attributes and not any(
            isinstance(spec[n], SequenceFeature) and spec[n].shares == self.item_id for n in self.user
        ):
            raise RetrievalError(f"history_attributes need a user-tower sequence that shares {self.item_id!r}")
        if not self.user:
            raise RetrievalError("the user tower has no features")


def default_split(spec: FeatureSpec, kind: str | None) -> TowerSplit:
    """The default split of a dataset kind: for taobao, the ad's own fields are the item, the rest the user."""
    if kind == "taobao":
        item = ["adgroup_id", "cate_id", "brand", "campaign_id", "customer", "price"]
        item = [n for n in item if any(f.name == n for f in spec.features)]
        user = [f.name for f in spec.features if f.name not in item]
        attrs = ["cate_id"] if "cate_id" in item and "click_sequence" in user else []
        return TowerSplit("adgroup_id", item, user, attrs)
    raise RetrievalError(
        f"no default tower split for dataset kind {kind!r}: give --item-id and --item-features "
        "(the remaining features form the user tower)"
    )


class Tower(nn.Module):
    """Concatenated field embeddings (+ pooled sequences, + dense values) -> MLP -> ``out_dim``."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, hidden, dropout=dropout)
        self.out = nn.Linear(self.mlp.out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.mlp(x))


class TwoTower(nn.Module):
    """``user_vectors(sparse, dense, seq) -> [B, d]`` and ``item_vectors(item_sparse, item_dense) -> [N, d]``.

    The relevance score is the inner product; ``normalize`` chooses what is L2-normalized: ``both``
    (cosine, every item vector of norm 1), ``user`` (item norms stay free, so popularity can live in them,
    which is where the Möbius index helps) or ``none``. ``temperature`` divides the training logits only;
    it never changes a ranking.

    Args:
        spec: the fitted feature spec; split: which features feed which tower.
        emb_dim: embedding size of the shared table; hidden: MLP sizes of each tower; out_dim: vector size.
    """

    def __init__(self, spec: FeatureSpec, split: TowerSplit, emb_dim: int = 32, hidden: Sequence[int] = (),
                 out_dim: int = 64, normalize: str = "both", temperature: float = 0.1, dropout: float = 0.0,
                 sparse_grad: bool = True) -> None:
        super().__init__()
        split.validate(spec)
        if normalize not in NORMALIZE:
            raise RetrievalError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        if temperature <= 0:
            raise RetrievalError(f"temperature must be > 0, got {temperature}")
        self.split = split
        self.hparams = {"emb_dim": emb_dim, "hidden": list(hidden), "out_dim": out_dim, "normalize": normalize,
                        "temperature": temperature, "dropout": dropout}
        self.normalize, self.temperature, self.out_dim = normalize, temperature, out_dim
        layout = spec.compile().layout
        cats = [f.name for f in layout.sparse]  # columns of sparse (categorical and bucketized numbers)
        nums = list(layout.dense)
        seqs = [s.name for s in layout.seq]

        def idx(names: list[str], pool: list[str]) -> Tensor:
            return torch.tensor([pool.index(n) for n in names if n in pool], dtype=torch.long)

        self.register_buffer("user_sparse", idx(split.user, cats), persistent=False)
        self.register_buffer("user_dense", idx(split.user, nums), persistent=False)
        self.register_buffer("user_seq", idx(split.user, seqs), persistent=False)
        self.register_buffer("item_sparse", idx(split.item, cats), persistent=False)
        self.register_buffer("item_dense", idx(split.item, nums), persistent=False)
        self.item_id_col = [n for n in split.item if n in cats].index(split.item_id)  # within item_sparse
        self.item_field = layout.sparse[cats.index(split.item_id)]
        self.attr_cols = [[n for n in split.item if n in cats].index(a) for a in split.history_attributes]
        # history item (local row in the item-id field) -> global ids of its attributes; 0 = unknown.
        # Filled from the catalogue before training (set_history_attributes) and saved with the weights.
        self.register_buffer("history_attrs", torch.zeros(self.item_field.size, len(self.attr_cols), dtype=torch.long))

        # the ranking models' shared table, without their first-order term; the same random stream as a plain
        # nn.Embedding followed by normal_(std=0.05), so seeded runs reproduce earlier ones
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, init_std=0.05, first_order=False)
        n_user_seq = len(self.user_seq) * (1 + len(self.attr_cols))
        user_in = emb_dim * (len(self.user_sparse) + n_user_seq) + len(self.user_dense)
        item_in = emb_dim * len(self.item_sparse) + len(self.item_dense)
        self.user_tower = Tower(user_in, hidden, out_dim, dropout)
        self.item_tower = Tower(item_in, hidden, out_dim, dropout)

    # -- inputs --------------------------------------------------------------------------------------
    def item_inputs(self, sparse: Tensor, dense: Tensor) -> tuple[Tensor, Tensor]:
        """Full-layout ``sparse [B, F]``, ``dense [B, D]`` -> the item tower's columns."""
        return sparse[:, self.item_sparse], dense[:, self.item_dense]

    def set_history_attributes(self, item_sparse: Tensor) -> None:
        """Record each catalogue item's attribute ids (``item_sparse`` rows of the item tower's columns)."""
        if not self.attr_cols:
            return
        local = item_sparse[:, self.item_id_col] - self.item_field.offset
        ok = (local >= 2) & (local < self.item_field.size)  # 0 missing, 1 out of vocabulary: no single item
        self.history_attrs.zero_()
        self.history_attrs[local[ok]] = item_sparse[ok][:, self.attr_cols]

    # -- towers ----------------------------------------------------------------------------------------
    def user_vectors(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        """``sparse [B, F]``, ``dense [B, D]``, ``seq [B, S, L]`` (full layout) -> ``[B, out_dim]``."""
        parts = [self.embedding(sparse[:, self.user_sparse]).flatten(1)]
        if len(self.user_seq):
            ids = seq[:, self.user_seq]  # [B, S_u, L]
            mask = (ids != PADDING_ID).unsqueeze(-1).float()
            count = mask.sum(-2).clamp(min=1.0)
            parts.append(((self.embedding(ids) * mask).sum(-2) / count).flatten(1))
            if self.attr_cols:
                local = ids - self.item_field.offset
                inside = (local >= 0) & (local < self.item_field.size)
                attrs = self.history_attrs[local.clamp(0, self.item_field.size - 1)]  # [B, S_u, L, A]
                attrs = torch.where(inside.unsqueeze(-1), attrs, 0)
                amask = (attrs != PADDING_ID).unsqueeze(-1).float()
                pooled = (self.embedding(attrs) * amask).sum(2) / amask.sum(2).clamp(min=1.0)  # [B, S_u, A, E]
                parts.append(pooled.flatten(1))
        if len(self.user_dense):
            parts.append(dense[:, self.user_dense])
        u = self.user_tower(torch.cat(parts, dim=1))
        return F.normalize(u, dim=-1) if self.normalize in ("both", "user") else u

    def item_vectors(self, item_sparse: Tensor, item_dense: Tensor) -> Tensor:
        """The item tower's columns ``[N, F_i]``, ``[N, D_i]`` -> ``[N, out_dim]``."""
        parts = [self.embedding(item_sparse).flatten(1)]
        if item_dense.shape[1]:
            parts.append(item_dense)
        v = self.item_tower(torch.cat(parts, dim=1))
        return F.normalize(v, dim=-1) if self.normalize == "both" else v


def build_two_tower(spec: FeatureSpec, split: TowerSplit, **hparams: Any) -> TwoTower:
    """Construct the model from a spec, a split and JSON hyper-parameters (how a bundle rebuilds it)."""
    try:
        return TwoTower(spec, split, **hparams)
    except TypeError as exc:
        raise RetrievalError(f"bad two-tower hyper-parameters {hparams}: {exc}") from None


@torch.inference_mode()
def encode_items(model: TwoTower, item_sparse: Tensor, item_dense: Tensor, block: int = 65536) -> np.ndarray:
    """Item vectors of a whole catalogue, float32 ``[N, d]``, in blocks (bounded memory)."""
    model.eval()
    out = [model.item_vectors(item_sparse[i : i + block], item_dense[i : i + block])
           for i in range(0, len(item_sparse), block)]
    if not out:
        return np.zeros((0, model.out_dim), np.float32)
    return torch.cat(out).cpu().numpy().astype(np.float32, copy=False)  # from the model's device (a GPU)


@torch.inference_mode()
def encode_users(model: TwoTower, sparse: Tensor, dense: Tensor, seq: Tensor, block: int = 65536) -> np.ndarray:
    """User vectors ``[B, d]`` float32 for full-layout encoded rows."""
    model.eval()
    out = [model.user_vectors(sparse[i : i + block], dense[i : i + block], seq[i : i + block])
           for i in range(0, len(sparse), block)]
    if not out:
        return np.zeros((0, model.out_dim), np.float32)
    return torch.cat(out).cpu().numpy().astype(np.float32, copy=False)  # from the model's device (a GPU)

