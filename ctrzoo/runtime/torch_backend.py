"""``torch``: the reference every other backend is checked against; ``fused``: inference-only rewrites.

``fused`` follows LightSeq's inference ideas on a CPU. DIN runs ``FusedDIN`` (``fused_din``): history
padding removed and the activation unit's first layer split algebraically, which measured faster than
compiling the padded graph (its shapes depend on the data, so it runs eagerly). BST runs ``FusedBST``
(``fused_bst``): the transformer layer on the real history tokens only, attention by
``scaled_dot_product_attention`` in a reused workspace, eagerly for the same reason. DIEN runs eagerly on
the sequences cut to the batch's longest history (``HistoryTrimmed``): compiling its unrolled recurrences
took minutes. The other models go through TorchInductor: elementwise chains (FM's sums, cross layers,
sigmoid) are fused into generated C++ loops and intermediate buffers are planned and reused, instead of one
eager kernel and one allocation per op.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ctrzoo.bundle import Bundle
from ctrzoo.models.probability import ProbabilityModel
from ctrzoo.runtime.base import Predictor, require_single_task


class TorchPredictor(Predictor):
    backend = "torch"

    def __init__(self, bundle: Bundle, threads: int | None = None):
        super().__init__(bundle)
        if threads:
            torch.set_num_threads(threads)
        self.module = ProbabilityModel(bundle.build_model()).eval()

    @torch.inference_mode()
    def _predict(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        out = self.module(*(torch.from_numpy(arrays[k]) for k in ("sparse", "dense", "seq")))
        return out.numpy().astype(np.float32, copy=False)


class FusedPredictor(TorchPredictor):
    backend = "fused"

    def __init__(self, bundle: Bundle, threads: int | None = None):
        require_single_task(bundle, "fused")  # FusedDIN/FusedBST and the compiled graph end in one score per row
        super().__init__(bundle, threads)
        from ctrzoo.models.bst import BST
        from ctrzoo.models.dien import DIEN
        from ctrzoo.models.din import DIN

        model = self.module.model
        if isinstance(model, DIN):
            from ctrzoo.runtime.fused_din import FusedDIN

            self.module = ProbabilityModel(FusedDIN(model)).eval()
        elif isinstance(model, BST):
            from ctrzoo.runtime.fused_bst import FusedBST

            self.module = ProbabilityModel(FusedBST(model)).eval()
        elif isinstance(model, DIEN):  # its unrolled GRUs take minutes to compile: eager, on the real columns
            self.module = ProbabilityModel(HistoryTrimmed(model)).eval()
        else:  # one graph for every batch size (dynamic=True) so serving never recompiles on a new size
            self.module = torch.compile(self.module, dynamic=True, fullgraph=True)
        self.warm_up()


class HistoryTrimmed(nn.Module):
    """``model`` on ``seq`` cut to the batch's longest slot: exact for a model whose scores do not depend on
    trailing padding (DIEN: the AUGRU keeps its state through padding), and its recurrences then run
    ``max length`` steps instead of ``L`` (on synthetic taobao ~25 of 50 at batch 100)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        if seq.numel():
            seq = seq[..., : max(int((seq != 0).sum(-1).max()), 1)]
        return self.model(sparse, dense, seq)
