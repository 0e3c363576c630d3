"""Training settings: package defaults per dataset kind, then a user YAML file, then command-line flags."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from ctrzoo.errors import CtrzooError
from ctrzoo.train.trainer import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise CtrzooError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise CtrzooError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict) or set(data) - {"train", "models"}:
        raise CtrzooError(f"{path}: expected top-level keys 'train' and 'models' only")
    return data


def resolve_config(model: str, kind: str | None, config_file: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Merge defaults < file < flags; unknown keys are errors that name the key and the file. ``model`` may
    be an alias: the config (and so the bundle) holds the registered name."""
    from ctrzoo.models import model_hparam_names, resolve_model_name

    model = resolve_model_name(model)
    train: dict[str, Any] = {}
    hparams: dict[str, Any] = {}
    sources = []
    if kind and (CONFIG_DIR / f"{kind}.yaml").exists():
        sources.append(CONFIG_DIR / f"{kind}.yaml")
    if config_file:
        sources.append(Path(config_file))
    allowed = {f.name for f in fields(TrainConfig)} - {"model", "hparams"}
    for src in sources:
        data = _read_yaml(src)
        unknown = set(data.get("train", {}) or {}) - allowed
        if unknown:
            raise CtrzooError(f"{src}: unknown train settings {sorted(unknown)}; known: {sorted(allowed)}")
        train.update(data.get("train", {}) or {})
        hparams.update((data.get("models", {}) or {}).get(model, {}) or {})
    hp_over = overrides.pop("hparams", {}) or {}
    hparams.update(hp_over)
    train.update({k: v for k, v in overrides.items() if v is not None})
    known_hp = set(model_hparam_names(model))
    bad = set(hparams) - known_hp
    if bad:
        raise CtrzooError(f"model {model!r} has no hyper-parameters {sorted(bad)}; known: {sorted(known_hp)}")
    return TrainConfig(model=model, hparams=hparams, **train)
