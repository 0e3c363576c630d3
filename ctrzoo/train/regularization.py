"""Weight penalties added to the training loss; kept out of the models so they stay pure scoring graphs.

Why a mini-batch-aware L2 (the DIN paper, Zhou et al. 2018, "Mini-batch Aware Regularization"): with
sparse inputs each SGD step only changes the embedding rows of the ids present in the mini-batch, but a
plain L2 penalty needs the norm of the *whole* table at every step (hundreds of millions of parameters in
the paper), which costs far more than the step itself and shrinks rows whose ids were not even seen. The
paper rewrites the full L2 as a sum over training examples, ``||w_j||^2 = sum_{examples with id j}
||w_j||^2 / n_j``, and approximates it per mini-batch by penalizing only the ids present in the batch,
each once with weight ``1 / n_j`` (``n_j`` = occurrences of id ``j`` in the training data). Over an epoch
each row then receives roughly one full L2 penalty in total (at most one: an id repeated inside a batch
counts once), computed only where gradients flow anyway; per step, rare ids are penalized more strongly
than frequent ones, which curbs overfitting to ids seen only a few times.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ctrzoo.nn.embedding import FeatureEmbedding


def plain_l2(params: Iterable[Tensor], lam: float) -> Tensor:
    """``lam * sum_p ||p||^2`` over all given parameters (touches every element: dense layers only)."""
    total: Tensor | None = None
    for p in params:
        term = p.pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return lam * total


def mba_l2(
    weight: Tensor,
    ids: Tensor | Sequence[Tensor],
    id_frequency: Tensor,
    lam: float,
    sparse: bool = False,
) -> Tensor:
    """DIN's mini-batch-aware L2: ``sum_j (lam / n_j) * ||weight[j]||^2`` over ids ``j`` in the batch.

    Args:
        weight: embedding table ``[num_embeddings, D]`` (``model.embedding.weight``).
        ids: the batch's global ids, any shape (e.g. ``sparse [B, F]``), or several tensors (sparse and
            ``seq``); each distinct id counts once, padding id 0 is excluded.
        id_frequency: float ``[num_embeddings]``, occurrences of each id in the training data; clamped to
            at least 1 so unseen ids get the full ``lam``.
        lam: regularization strength.
        sparse: gather rows with a sparse gradient; set it when the table itself has ``sparse=True`` so
            the penalty's gradient stays sparse for ``SparseAdam``.

    Returns:
        Scalar penalty; its gradient is zero on every row not present in ``ids``.
    """
    # training-only code: a data-dependent shape is fine here
    unique = FeatureEmbedding.touched_rows(*([ids] if isinstance(ids, Tensor) else ids))
    rows = F.embedding(unique, weight, sparse=sparse)  # [U, D]
    scale = lam / id_frequency[unique].to(rows.dtype).clamp(min=1.0)  # [U]
    return (scale * rows.pow(2).sum(dim=-1)).sum()
