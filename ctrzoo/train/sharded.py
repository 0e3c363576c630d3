"""``--shard-embeddings``: ``FeatureEmbedding``'s ``[num_embeddings, dim]`` table split row-wise over the ranks
with TorchRec, so that a table larger than one process fits (each rank holds ``num_embeddings / world`` rows).

How it fits the data-parallel trainer (``ctrzoo.train.distributed``):

* ``model.embedding.table`` (an ``nn.Embedding``) is replaced by :class:`ShardedTable`, the same call (ids of
  any shape -> ``[..., dim]``, padding id 0 -> zeros, never trained) over a TorchRec ``EmbeddingCollection`` of
  one table. ``DistributedModelParallel`` shards it ROW_WISE: ids go all-to-all to the rank owning their row,
  embeddings come back all-to-all (gloo has all-to-all, so row-wise works on CPU; the pooled
  ``EmbeddingBagCollection`` would need reduce-scatter, which gloo lacks). Every model reaches the table
  through ``FeatureEmbedding`` only, so no model changes.
* The table trains with fbgemm's fused row-wise Adagrad, applied inside the backward pass: fbgemm-gpu-cpu's CPU
  kernels have SGD, Adagrad and row-wise Adagrad, not Adam. Everything else keeps its optimizer: dense layers
  (Adam, DDP through DMP's data-parallel wrapper), and the 1-wide first-order table (1/dim of the big one;
  fbgemm's tables need a width divisible by 4), which stays replicated with its touched rows averaged
  (``DistContext.average_row_grads``) and ``RowSparseAdam``.
* Every forward of the sharded table is a collective: all ranks must call it equally often. Training steps are
  already equal (``steps_per_epoch``); scoring a split pads the ranks with fewer batches with a one-row
  all-padding batch whose scores are dropped (:func:`in_lockstep`).
* The bundle is the unsharded format: the table is gathered on rank 0 into a plain ``nn.Embedding``
  (:func:`gather_table`) before it is saved.

Install (torchrec's wheel requires the CUDA ``fbgemm-gpu``; on CPU it runs on ``fbgemm-gpu-cpu``):
:data:`INSTALL`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import PADDING_ID, TableLayout
from ctrzoo.nn import split_sparse_params
from ctrzoo.train.distributed import DistContext

INSTALL = ("pip install 'ctrzoo[torchrec]' && pip install fbgemm-gpu-cpu==1.8.0 "
           "&& pip install --no-deps torchrec==1.8.0")
# row-wise Adagrad's default learning rate (``shard_lr``): its first step moves a row by about lr, like Adam's,
# but later ones shrink with the row's accumulated squared gradients, so it needs a larger rate than Adam's 1e-3
ADAGRAD_LR = 0.01
TABLE = "table"  # the one table's (and feature's) name in the EmbeddingCollection


def torchrec_missing() -> str | None:
    """Why TorchRec cannot be used here (None when it imports with its CPU kernels)."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec.distributed  # noqa: F401
    except Exception as exc:  # ImportError, or fbgemm's own load errors (a CUDA build on a CPU machine)
        return f"{type(exc).__name__}: {exc}"
    return None


def require_torchrec() -> None:
    reason = torchrec_missing()
    if reason:
        raise CtrzooError(f"--shard-embeddings needs TorchRec, which does not import here ({reason}); "
                          f"install it with: {INSTALL}")


class ShardedTable(nn.Module):
    """``nn.Embedding(num_embeddings, dim, padding_idx=0)``'s forward over a TorchRec ``EmbeddingCollection``:
    ``ids`` (any shape, global rows) -> ``[*ids.shape, dim]``; padding ids are never looked up (their rows are
    zeros and get no gradient). All ids of a call go as one jagged bag (stride 1 on every rank, whatever the
    batch size), so ranks with other batch sizes exchange them fine."""

    sparse = False  # FeatureEmbedding.lookup: no deduplication pass, the collection handles repeated ids
    padding_idx = PADDING_ID

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        from torchrec import EmbeddingCollection, EmbeddingConfig

        self.num_embeddings, self.embedding_dim = num_embeddings, dim
        # on the meta device: DistributedModelParallel allocates only this rank's shard
        self.collection = EmbeddingCollection(
            tables=[EmbeddingConfig(name=TABLE, embedding_dim=dim, num_embeddings=num_embeddings,
                                    feature_names=[TABLE])], device=torch.device("meta"))

    def forward(self, ids: Tensor) -> Tensor:
        if torch.is_inference_mode_enabled():  # fbgemm's lookup has no inference-mode kernel on CPU
            with torch.inference_mode(False), torch.no_grad():
                return self._lookup(ids.clone())
        return self._lookup(ids)

    def _lookup(self, ids: Tensor) -> Tensor:
        from torchrec import KeyedJaggedTensor

        flat = ids.reshape(-1)
        keep = flat != PADDING_ID
        values = flat[keep]
        kjt = KeyedJaggedTensor(keys=[TABLE], values=values,
                                lengths=torch.tensor([values.numel()], dtype=torch.int64, device=ids.device))
        rows = self.collection(kjt)[TABLE].values()  # [U, dim]
        out = rows.new_zeros(flat.numel(), self.embedding_dim)
        out[keep] = rows
        return out.view(*ids.shape, self.embedding_dim)


def shard_embedding(model: nn.Module, ctx: DistContext, lr: float, device: torch.device) -> nn.Module:
    """Replace ``model.embedding.table`` by a row-wise sharded :class:`ShardedTable` starting from rank 0's
    rows, and wrap ``model`` in ``DistributedModelParallel`` (DDP over the dense parameters, the replicated
    sparse tables left to ``average_row_grads`` and broadcast from rank 0 here). Returns the wrapped model
    (the forward to train through); ``model`` itself holds the sharded modules afterwards."""
    require_torchrec()
    if not ctx.enabled:
        raise CtrzooError("--shard-embeddings splits the table over several processes: run with --nproc N (N >= 2)")
    if device.type != "cpu":
        raise CtrzooError(f"--shard-embeddings runs on CPU (gloo) here, not on {device}; use --device cpu")
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingType

    emb = model.embedding
    initial = emb.table.weight.detach().clone()
    dist.broadcast(initial, src=0)
    emb.table = ShardedTable(initial.shape[0], initial.shape[1])
    sharder = EmbeddingCollectionSharder(fused_params={"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
                                                       "learning_rate": lr})
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=ctx.world_size, compute_device="cpu"),
        constraints={TABLE: ParameterConstraints(sharding_types=[ShardingType.ROW_WISE.value])})
    plan = planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)
    replicated = {id(p) for p in split_sparse_params(model)[0]}
    ignored = [name for name, p in model.named_parameters() if id(p) in replicated]
    wrapped = DistributedModelParallel(
        model, device=device, plan=plan, sharders=[sharder],
        data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False, params_to_ignore=ignored))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ignored:
                dist.broadcast(p.data, src=0)
        for offsets, shard in local_shards(model):
            shard.copy_(initial[offsets[0]:offsets[0] + shard.shape[0], offsets[1]:offsets[1] + shard.shape[1]])
    return wrapped


def _sharded_state(model: nn.Module) -> dict:
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    return {k: v for k, v in model.state_dict().items() if isinstance(v, ShardedTensor)}


def local_shards(model: nn.Module) -> list[tuple[list[int], Tensor]]:
    """This rank's ``(offsets [row, col], rows [n, d])`` of the sharded table: views of the trained weights."""
    return [(s.metadata.shard_offsets, s.tensor) for st in _sharded_state(model).values() for s in st.local_shards()]


def sharded_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters that live in :class:`ShardedTable` modules (a shard each: differ per rank)."""
    return {id(p) for m in model.modules() if isinstance(m, ShardedTable) for p in m.parameters()}


def snapshot(model: nn.Module) -> dict:
    """A copy of the weights to come back to (early stopping's best epoch): the replicated state as usual,
    the sharded table as copies of this rank's shards."""
    sharded = _sharded_state(model)
    plain = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in sharded}
    return {"plain": plain, "shards": [t.detach().clone() for _, t in local_shards(model)]}


def restore(model: nn.Module, state: dict) -> None:
    # TorchRec's load hook wants the sharded key present: it gets the table's current shards, then the copies
    model.load_state_dict({**state["plain"], **_sharded_state(model)})
    with torch.no_grad():
        for (_, shard), saved in zip(local_shards(model), state["shards"], strict=True):
            shard.copy_(saved)


def gather_table(model: nn.Module, ctx: DistContext) -> None:
    """Gather the sharded table (a collective: every rank calls it) into a plain ``nn.Embedding`` on rank 0, so
    that rank 0's ``model`` has the unsharded layout the bundle stores; the other ranks keep their shards."""
    emb = model.embedding
    table = emb.table
    if not isinstance(table, ShardedTable):
        return
    (sharded,) = _sharded_state(model).values()
    full = torch.zeros(table.num_embeddings, table.embedding_dim) if ctx.is_main else None
    sharded.gather(dst=0, out=full)
    if ctx.is_main:
        plain = nn.Embedding(table.num_embeddings, table.embedding_dim, padding_idx=PADDING_ID)
        with torch.no_grad():
            plain.weight.copy_(full)
            plain.weight[PADDING_ID].zero_()
        emb.table = plain


def in_lockstep(batches: Iterable, n_local: int, ctx: DistContext,
                layout: TableLayout) -> Iterator[tuple[object, bool]]:
    """``(batch, True)`` for this rank's batches, then ``(filler, False)`` until every rank has taken as many
    as the rank with the most (the sharded lookup is a collective). The filler is one all-padding row
    (``sparse [1, F]``, ``dense [1, n_dense]``, ``seq [1, S, L]``); its scores are to be dropped."""
    from ctrzoo.data.loader import Batch

    most = -ctx.all_reduce_min(-n_local)
    taken = 0
    for b in batches:
        taken += 1
        yield b, True
    filler = Batch(torch.zeros(1, layout.n_sparse, dtype=torch.int64), torch.zeros(1, layout.n_dense),
                   torch.zeros(1, layout.n_seq, layout.seq_len, dtype=torch.int64), torch.zeros(1))
    for _ in range(most - taken):
        yield filler, False


def note(model: nn.Module, ctx: DistContext, lr: float) -> None:
    """One line on rank 0 saying what sharding changed (the table's optimizer above all)."""
    rows = [t.shape[0] for _, t in local_shards(model)]
    if ctx.is_main:
        print(f"note: --shard-embeddings: the {model.embedding.table.num_embeddings:,d}-row table is split row-wise "
              f"over {ctx.world_size} ranks (rank 0 holds {sum(rows):,d} rows); it trains with TorchRec's fused "
              f"row-wise Adagrad (lr {lr:g}), the sparse optimizer fbgemm's CPU kernels have (not Adam)",
              file=sys.stderr)
