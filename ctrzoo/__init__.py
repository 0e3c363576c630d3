"""ctrzoo: CTR prediction from raw logs to a live ranking service, with one feature contract."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``ctrzoo.load`` / ``ctrzoo.Model`` (``ctrzoo/api.py``), imported on first use: ``import ctrzoo`` and the
    CLI's help stay free of torch."""
    if name in ("load", "Model"):
        from ctrzoo import api

        return getattr(api, name)
    raise AttributeError(f"module 'ctrzoo' has no attribute {name!r}")
