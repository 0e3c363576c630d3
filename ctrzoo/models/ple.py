"""PLE (Tang et al., RecSys 2020, "Progressive Layered Extraction"): levels of task-owned and shared
experts (CGC), so tasks that conflict do not have to share every expert."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import FeatureEmbedding
from ctrzoo.nn.multitask import CustomizedGateControl, TaskTowers, check_tasks


@register_model("ple")
class PLE(CTRModel):
    """``x = [flatten(fields), dense]``; ``num_levels`` CGC levels, each ``[B, T + 1, D] -> [B, T + 1, H]``
    (the last drops the shared slot); ``logit_t = tower_t(level_out[:, t])``, ``[B, T]``. ``num_levels=1``
    is CGC alone."""

    def __init__(
        self,
        layout: TableLayout,
        tasks: Sequence[str] = ("click", "conversion"),
        emb_dim: int = 16,
        num_levels: int = 2,
        shared_experts: int = 2,
        task_experts: int = 2,
        expert_mlp: Sequence[int] = (256, 128),
        tower_mlp: Sequence[int] = (64,),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        sparse_grad: bool = False,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        if num_levels < 1:
            raise CtrzooError(f"ple: num_levels must be >= 1, got {num_levels}")
        self.hparams = hparams
        self.tasks = check_tasks(tasks, "ple")
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, first_order=False)
        dim = self.embedding.flat_width(layout.n_dense)
        levels = []
        for level in range(num_levels):
            levels.append(CustomizedGateControl(dim, len(self.tasks), shared_experts, task_experts, expert_mlp,
                                                dropout, activation, batch_norm,
                                                shared_gate=level < num_levels - 1))
            dim = levels[-1].out_dim
        self.levels = nn.ModuleList(levels)
        self.towers = TaskTowers(dim, len(self.tasks), tower_mlp, dropout, activation, batch_norm)

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        x = self.embedding.flat_with_dense(sparse, dense, seq)
        h = x.unsqueeze(1).expand(-1, len(self.tasks) + 1, -1)
        for level in self.levels:
            h = level(h)
        return self.towers(h)
