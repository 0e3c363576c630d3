"""Multi-task bundles for the export, runtime, API and service tests, made without training.

A small fitted spec (categorical, numeric, a bag and a behaviour sequence), raw rows for it, and
``write_bundles``: one exported bundle per multi-task model (``mmoe``, ``ple``, ``esmm``, tasks ``click`` and
``converted``), a ``ple`` with other task names, and a single-task ``deepfm`` beside them. Weights are the
seeded initialisation scaled up, so the candidates' probabilities spread and no two tie.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ctrzoo.features import Categorical, FeatureSpec, Numeric, SequenceFeature, SpecFitter
from ctrzoo.features.spec import MultiValue

TASKS = ("click", "converted")
MULTITASK_MODELS = ("mmoe", "ple", "esmm")
SMALL = {"mmoe": {"emb_dim": 4, "num_experts": 2, "expert_mlp": [16], "tower_mlp": [8]},
         "ple": {"emb_dim": 4, "expert_mlp": [16], "tower_mlp": [8]},
         "esmm": {"emb_dim": 4, "tower_mlp": [16, 8]},
         "deepfm": {"emb_dim": 4, "mlp": [16, 8]}}
ITEMS = [f"i{k}" for k in range(20)]


def raw_rows(n: int = 256, seed: int = 0, label: bool = True) -> list[dict]:
    """Raw rows (dicts) with every feature of ``spec()``; ``label=False`` for requests."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        row = {"user": f"u{rng.integers(0, 30)}", "item": str(rng.choice(ITEMS)),
               "price": float(rng.lognormal()), "tags": "|".join(rng.choice(["a", "b", "c", "d"], 2, replace=False)),
               "clicks": "^".join(rng.choice(ITEMS, size=int(rng.integers(0, 6))))}
        if label:
            row["label"] = int(rng.integers(0, 2))
        rows.append(row)
    return rows


def fitted_spec() -> FeatureSpec:
    spec = FeatureSpec([Categorical("user"), Categorical("item"), Numeric("price", transform="log1p"),
                        MultiValue("tags", max_len=2), SequenceFeature("clicks", shares="item", max_len=5)],
                       label="label")
    fitter = SpecFitter(spec)
    fitter.update(pa.Table.from_pylist(raw_rows()))
    return fitter.finalize()


def write_bundle(out: Path, name: str, spec: FeatureSpec, tasks: tuple[str, ...] | None = TASKS, seed: int = 0,
                 export: bool = True) -> Path:
    """A saved (and exported) bundle of an untrained ``name``; ``tasks=None`` for a single-task model."""
    from ctrzoo.bundle import save_bundle
    from ctrzoo.export import export_onnx
    from ctrzoo.metadata import ModelBundleMeta, ModelInfo
    from ctrzoo.models import build_model

    torch.manual_seed(seed)
    hparams = dict(SMALL[name], **({"tasks": list(tasks)} if tasks else {}))
    model = build_model(name, spec.compile().layout, **hparams).eval()
    with torch.no_grad():  # spread the initial probabilities: candidates then never tie
        for p in model.parameters():
            p.mul_(3.0)
    save_bundle(out, model, spec, ModelBundleMeta(model=ModelInfo(name=name, hparams=model.hparams)))
    if export:
        export_onnx(out)
    return out


def write_bundles(root: Path) -> dict[str, Path]:
    spec = fitted_spec()
    out = {name: write_bundle(root / name, name, spec) for name in MULTITASK_MODELS}
    out["ple_other_tasks"] = write_bundle(root / "ple_other_tasks", "ple", spec, ("click", "purchase"), seed=1)
    out["deepfm"] = write_bundle(root / "deepfm", "deepfm", spec, None)
    return out
