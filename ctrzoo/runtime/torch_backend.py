"""``torch``: the reference every other backend is checked against; ``fused``: inference-only rewrites.

``fused`` follows LightSeq's inference ideas on a CPU. DIN runs ``FusedDIN`` (``fused_din``): history
padding removed and the activation unit's first layer split algebraically, which measured faster than
compiling the padded graph (its shapes depend on the data, so it runs eagerly). The other models go
through TorchInductor: elementwise chains (FM's sums, cross layers, sigmoid) are fused into generated C++
loops and intermediate buffers are planned and reused, instead of one eager kernel and one allocation per op.
"""

from __future__ import annotations

import numpy as np
import torch

from ctrzoo.bundle import Bundle
from ctrzoo.models.probability import ProbabilityModel
from ctrzoo.runtime.base import Predictor


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
        super().__init__(bundle, threads)
        from ctrzoo.models.din import DIN

        if isinstance(self.module.model, DIN):
            from ctrzoo.runtime.fused_din import FusedDIN

            self.module = ProbabilityModel(FusedDIN(self.module.model)).eval()
        else:  # one graph for every batch size (dynamic=True) so serving never recompiles on a new size
            self.module = torch.compile(self.module, dynamic=True, fullgraph=True)
        self.warm_up()
