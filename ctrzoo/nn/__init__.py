"""Composable layers for CTR models; every model in ``ctrzoo.models`` is built from these."""

from ctrzoo.nn.embedding import DenseEmbedding, FeatureEmbedding, split_sparse_params
from ctrzoo.nn.interaction import CrossNetwork, FactorizationMachine
from ctrzoo.nn.mlp import MLP, Dice, LastDim, make_activation
from ctrzoo.nn.optim import RowSparseAdam
from ctrzoo.nn.sequence import SequencePooling, TargetAttention, padding_mask

__all__ = [
    "MLP",
    "CrossNetwork",
    "DenseEmbedding",
    "Dice",
    "FactorizationMachine",
    "FeatureEmbedding",
    "LastDim",
    "RowSparseAdam",
    "SequencePooling",
    "TargetAttention",
    "make_activation",
    "padding_mask",
    "split_sparse_params",
]
