"""The feature contract: spec, fitting, and the one encoder from raw values to tensors."""

from ctrzoo.features.encoder import EncodedBatch, FeatureEncoder, SpecFitter
from ctrzoo.features.layout import PADDING_ID, FieldLayout, SequenceLayout, TableLayout
from ctrzoo.features.spec import Categorical, FeatureSpec, Numeric, SequenceFeature
from ctrzoo.features.vocab import MISSING_ID, OOV_ID, Vocabulary

__all__ = [
    "MISSING_ID",
    "OOV_ID",
    "PADDING_ID",
    "Categorical",
    "EncodedBatch",
    "FeatureEncoder",
    "FeatureSpec",
    "FieldLayout",
    "Numeric",
    "SequenceFeature",
    "SequenceLayout",
    "SpecFitter",
    "TableLayout",
    "Vocabulary",
]
