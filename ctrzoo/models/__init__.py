"""The model zoo: each CTR model is one module over ``ctrzoo.nn`` layers, registered by name.

``build_model(name, layout, **hparams)`` constructs any registered model (``name`` may be an alias such as
``wdl``); the protocol every model follows is ``CTRModel`` (``ctrzoo.models.registry``). A new model is one
file plus one import line below.
"""

from __future__ import annotations

from ctrzoo.models.autoint import AutoInt
from ctrzoo.models.bst import BST
from ctrzoo.models.dcn import DCN
from ctrzoo.models.dcnv2 import DCNv2
from ctrzoo.models.deepfm import DeepFM
from ctrzoo.models.dien import DIEN
from ctrzoo.models.din import DIN
from ctrzoo.models.dlrm import DLRM
from ctrzoo.models.esmm import ESMM
from ctrzoo.models.fibinet import FiBiNET
from ctrzoo.models.finalmlp import FinalMLP
from ctrzoo.models.fm import FM
from ctrzoo.models.lr import LogisticRegression
from ctrzoo.models.masknet import MaskNet
from ctrzoo.models.mmoe import MMoE
from ctrzoo.models.ple import PLE
from ctrzoo.models.registry import (
    CTRModel,
    build_model,
    constructor_hparams,
    list_aliases,
    list_models,
    model_hparam_names,
    register_model,
    resolve_model_name,
)
from ctrzoo.models.wide_deep import WideDeep
from ctrzoo.models.xdeepfm import XDeepFM

__all__ = [
    "BST",
    "DCN",
    "DIEN",
    "DIN",
    "DLRM",
    "ESMM",
    "FM",
    "PLE",
    "AutoInt",
    "CTRModel",
    "DCNv2",
    "DeepFM",
    "FiBiNET",
    "FinalMLP",
    "LogisticRegression",
    "MMoE",
    "MaskNet",
    "WideDeep",
    "XDeepFM",
    "build_model",
    "constructor_hparams",
    "list_aliases",
    "list_models",
    "model_hparam_names",
    "register_model",
    "resolve_model_name",
]
