"""Synthetic click logs in the real raw formats (Criteo, Avazu, Taobao) with a known click model.

Each row's true click probability goes to ``<out>.truth.parquet``, so a trained model's AUC can be
compared with the oracle AUC (``<out>.synth.json``): the gap says how much signal a model leaves behind.

With ``conversions=True`` (``ctrzoo synth KIND --conversions``) each row also gets ``converted``, a conversion
that can only follow a click (``ctrzoo.synth.conversion``): the raw file's last column, ``p_cvr``,
``p_conversion`` and ``converted`` in the truth, the conversion oracle in the summary, and
``<out>.schema.yaml``, the kind's schema with ``converted`` as a second label, for multi-task models
(``ctrzoo prepare --schema <out>.schema.yaml --input <out> --out DIR``). Without it the files are unchanged.
"""

from __future__ import annotations

from pathlib import Path

from ctrzoo.errors import CtrzooError
from ctrzoo.synth.common import load_defaults, merge_config
from ctrzoo.synth.conversion import conversion_config
from ctrzoo.synth.writer import run

KINDS = ("criteo", "avazu", "taobao")

__all__ = ["KINDS", "generate", "load_defaults"]


def _synth_class(kind: str) -> type:
    if kind == "criteo":
        from ctrzoo.synth.criteo import CriteoSynth

        return CriteoSynth
    if kind == "avazu":
        from ctrzoo.synth.avazu import AvazuSynth

        return AvazuSynth
    from ctrzoo.synth.taobao import TaobaoSynth

    return TaobaoSynth


def generate(
    kind: str,
    rows: int,
    seed: int,
    out: str | Path,
    config: dict | None = None,
    progress: bool = False,
    conversions: bool = False,
) -> dict:
    """Write ``rows`` synthetic rows of ``kind`` to ``out`` (gzipped if it ends in ``.gz``) plus truth and summary.

    ``config`` overrides keys of ``load_defaults(kind)`` (nested mappings merge; unknown keys are errors).
    The same ``seed`` gives byte-identical files. Returns the summary also written to ``<out>.synth.json``.
    ``conversions``: also write the ``converted`` label (conversion after a click) and ``<out>.schema.yaml``.
    """
    if kind not in KINDS:
        raise CtrzooError(f"unknown synthetic data kind {kind!r}; expected one of {', '.join(KINDS)}")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise CtrzooError(f"rows must be a positive integer, got {rows!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CtrzooError(f"seed must be a non-negative integer, got {seed!r}")
    if config is not None and not isinstance(config, dict):
        raise CtrzooError(f"config must be a mapping of overrides, got {type(config).__name__}")
    cfg = merge_config(load_defaults(kind), config)
    conversion_config(cfg)  # a bad conversion section fails even when unused, like any other bad key
    synth = _synth_class(kind)(cfg, seed)
    return run(synth, kind, rows, out, progress=progress, conversions=bool(conversions))
