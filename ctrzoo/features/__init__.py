"""The feature contract: a frozen spec, fitted once, compiled into the one codec from raw values to tensors."""

from ctrzoo.features.batch import INPUT_DTYPES, INPUT_NAMES, EncodedBatch, random_batch
from ctrzoo.features.codec import FeatureCodec
from ctrzoo.features.fitter import SpecFitter
from ctrzoo.features.layout import PADDING_ID, FieldLayout, SequenceLayout, TableLayout
from ctrzoo.features.spec import Categorical, FeatureSpec, Numeric, SequenceFeature
from ctrzoo.features.vocab import MISSING_ID, OOV_ID, Vocabulary

__all__ = [
    "INPUT_DTYPES",
    "INPUT_NAMES",
    "MISSING_ID",
    "OOV_ID",
    "PADDING_ID",
    "Categorical",
    "EncodedBatch",
    "FeatureCodec",
    "FeatureSpec",
    "FieldLayout",
    "Numeric",
    "SequenceFeature",
    "SequenceLayout",
    "SpecFitter",
    "TableLayout",
    "Vocabulary",
    "random_batch",
]
