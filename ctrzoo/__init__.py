"""ctrzoo: CTR prediction from raw logs to a live ranking service, with one feature contract."""

__version__ = "0.1.0"
