"""MMoE (Ma et al., KDD 2018, "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts"): shared experts, one softmax gate and one tower per task."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import FeatureEmbedding
from ctrzoo.nn.multitask import MixtureOfExperts, TaskTowers, check_tasks


@register_model("mmoe")
class MMoE(CTRModel):
    """``x = [flatten(fields), dense]``; ``logit_t = tower_t(sum_e softmax(W_t x)_e expert_e(x))``, ``[B, T]``.

    ``tasks`` are the dataset labels learned, one logit column each (the trainer passes the dataset's labels
    when none are given); the loss is the sum of the tasks' cross-entropies.
    """

    def __init__(
        self,
        layout: TableLayout,
        tasks: Sequence[str] = ("click", "conversion"),
        emb_dim: int = 16,
        num_experts: int = 4,
        expert_mlp: Sequence[int] = (256, 128),
        tower_mlp: Sequence[int] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        sparse_grad: bool = False,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        self.hparams = hparams
        self.tasks = check_tasks(tasks, "mmoe")
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, first_order=False)
        in_dim = self.embedding.flat_width(layout.n_dense)
        self.experts = MixtureOfExperts(in_dim, len(self.tasks), num_experts, expert_mlp, dropout, activation,
                                        batch_norm)
        self.towers = TaskTowers(self.experts.out_dim, len(self.tasks), tower_mlp, dropout, activation, batch_norm)

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        x = self.embedding.flat_with_dense(sparse, dense, seq)
        return self.towers(self.experts(x))
