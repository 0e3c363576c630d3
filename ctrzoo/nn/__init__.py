"""Composable layers for CTR models; every model in ``ctrzoo.models`` is built from these."""

from ctrzoo.nn.attention import FieldSelfAttention
from ctrzoo.nn.embedding import DenseEmbedding, FeatureEmbedding, split_sparse_params
from ctrzoo.nn.gating import FeatureGate, InstanceMask, MaskBlock, SENet
from ctrzoo.nn.interaction import (
    CIN,
    BilinearFusion,
    BilinearInteraction,
    CrossNetwork,
    CrossNetworkMix,
    DotInteraction,
    FactorizationMachine,
)
from ctrzoo.nn.linear import LinearLogit
from ctrzoo.nn.mlp import MLP, Dice, LastDim, make_activation
from ctrzoo.nn.optim import RowSparseAdam
from ctrzoo.nn.sequence import SequencePooling, TargetAttention, padding_mask

__all__ = [
    "CIN",
    "MLP",
    "BilinearFusion",
    "BilinearInteraction",
    "CrossNetwork",
    "CrossNetworkMix",
    "DenseEmbedding",
    "Dice",
    "DotInteraction",
    "FactorizationMachine",
    "FeatureEmbedding",
    "FeatureGate",
    "FieldSelfAttention",
    "InstanceMask",
    "LastDim",
    "LinearLogit",
    "MaskBlock",
    "RowSparseAdam",
    "SENet",
    "SequencePooling",
    "TargetAttention",
    "make_activation",
    "padding_mask",
    "split_sparse_params",
]
