"""Conversion after a click: a second label whose relation to the click is known, for multi-task models.

A row converts only if it was clicked: ``converted = click AND u < p_cvr`` with

    p_cvr = sigmoid(cvr_bias + rho * z_click + sqrt(1 - rho^2) * z_own)

``z_click`` (R,) is the row's click logit without the global bias (the signal both tasks share), ``z_own`` (R,)
the logit of a second ``ClickModel`` of the same shape (``model`` config) with its own seed stream. Its
per-value biases and latent vectors are independent of the click model's; its ``smooth`` numeric effects are
fixed by the config, hence the same as the click model's. ``cvr_bias`` puts the mean ``p_cvr`` among clicks (the
calibration rows weighted by their click probability) at ``target_cvr``. The oracle score of the conversion
label is ``p_conversion = p_click * p_cvr``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ctrzoo.errors import CtrzooError
from ctrzoo.synth.common import ClickModel, Synth, sigmoid, solve_bias, stable_int

COLUMN = "converted"


def conversion_config(cfg: Mapping) -> tuple[float, float]:
    """``(rho, target_cvr)`` of the config's ``conversion`` section, checked: rho in [-1, 1], target in (0, 1)."""
    section = cfg.get("conversion")
    if not isinstance(section, Mapping):
        raise CtrzooError(f"config key 'conversion' must be a mapping with rho and target_cvr, got {section!r}")
    rho = _number(section, "rho")
    target = _number(section, "target_cvr")
    if not -1.0 <= rho <= 1.0:
        raise CtrzooError(f"config key 'conversion.rho' must be in [-1, 1] (a share of the click logit), got {rho}")
    if not 0.0 < target < 1.0:
        raise CtrzooError(f"config key 'conversion.target_cvr' must be in (0, 1) (a rate among clicks), got {target}")
    return rho, target


def _number(section: Mapping, key: str) -> float:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise CtrzooError(f"config key 'conversion.{key}' must be a number, got {value!r}")
    return float(value)


class Conversion:
    """The conversion model of one ``Synth``: its own click-model-shaped logit, the mix ``rho`` and ``cvr_bias``.

    ``calibration`` is the synth's ``calibration_sample()`` (features, click logits without bias) and
    ``click_bias`` its solved global click bias, so the clicks the bias is weighted by are the generator's own.
    """

    def __init__(self, synth: Synth, calibration: tuple[dict[str, Any], np.ndarray], click_bias: float):
        self.rho, self.target_cvr = conversion_config(synth.cfg)
        self.own = ClickModel(synth.cfg["model"], synth.cards(), stable_int(synth.seed, "conversion"))
        feats, z_click = calibration
        weight = sigmoid(click_bias + z_click)  # p_click of each calibration row, (R,)
        shared = self.logit(feats, z_click)
        total = float(weight.sum())
        self.bias = solve_bias(lambda b: float((weight * sigmoid(b + shared)).sum()) / total, self.target_cvr)

    def logit(self, feats: dict[str, Any], z_click: np.ndarray) -> np.ndarray:
        """``rho * z_click + sqrt(1 - rho^2) * z_own``, (R,): the conversion logit without ``cvr_bias``."""
        z_own = self.own.logit(feats["ids"], feats.get("num"))
        return self.rho * z_click + math.sqrt(max(0.0, 1.0 - self.rho**2)) * z_own

    def p_cvr(self, feats: dict[str, Any], z_click: np.ndarray) -> np.ndarray:
        """P(converted | clicked) of each row, (R,)."""
        return sigmoid(self.bias + self.logit(feats, z_click))

    def summary(self) -> dict[str, float]:
        return {"rho": self.rho, "target_cvr": self.target_cvr, "cvr_bias": self.bias}


def write_schema(kind: str, path: str | Path) -> dict:
    """Write the kind's preset schema with ``converted`` appended to the columns and as the second label (the
    click label stays first; the name stays the kind's, so the kind's training config applies). Returns it."""
    import yaml

    from ctrzoo.data.presets import load_preset
    from ctrzoo.data.schema import DatasetSchema

    d = load_preset(kind).to_dict()
    d["input"]["columns"].append(COLUMN)
    d["labels"].append(COLUMN)
    DatasetSchema.from_dict(d, str(path))  # the file written is one prepare accepts
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    return d
