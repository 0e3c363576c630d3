"""The model zoo: each CTR model is one module over ``ctrzoo.nn`` layers, registered by name.

``build_model(name, layout, **hparams)`` constructs any registered model; the protocol every model follows
is ``CTRModel`` (``ctrzoo.models.registry``). A new model is one file plus one import line below.
"""

from __future__ import annotations

from ctrzoo.models.dcn import DCN
from ctrzoo.models.deepfm import DeepFM
from ctrzoo.models.din import DIN
from ctrzoo.models.registry import (
    CTRModel,
    build_model,
    constructor_hparams,
    list_models,
    model_hparam_names,
    register_model,
)
from ctrzoo.models.wide_deep import WideDeep

__all__ = [
    "DCN",
    "DIN",
    "CTRModel",
    "DeepFM",
    "WideDeep",
    "build_model",
    "constructor_hparams",
    "list_models",
    "model_hparam_names",
    "register_model",
]
