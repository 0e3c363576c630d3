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
from ctrzoo.nn.multitask import CustomizedGateControl, MixtureOfExperts, TaskTowers, product_logit
from ctrzoo.nn.optim import RowSparseAdam
from ctrzoo.nn.recurrent import GRU, next_item_loss, sample_other_rows
from ctrzoo.nn.sequence import BagPooling, BilinearTargetAttention, SequencePooling, TargetAttention, padding_mask
from ctrzoo.nn.transformer import TransformerLayer

__all__ = [
    "CIN",
    "GRU",
    "MLP",
    "BagPooling",
    "BilinearFusion",
    "BilinearInteraction",
    "BilinearTargetAttention",
    "CrossNetwork",
    "CrossNetworkMix",
    "CustomizedGateControl",
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
    "MixtureOfExperts",
    "RowSparseAdam",
    "SENet",
    "SequencePooling",
    "TargetAttention",
    "TaskTowers",
    "TransformerLayer",
    "make_activation",
    "next_item_loss",
    "padding_mask",
    "product_logit",
    "sample_other_rows",
    "split_sparse_params",
]
