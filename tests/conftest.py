from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample rows beside the checkout (never copied into the repo)."""
    if not (SHARED_DATA / "criteo_sample.tsv").exists():
        pytest.skip(f"real sample rows not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_prepared(tmp_path_factory):
    """Small prepared synthetic datasets (criteo, taobao), made once per test session."""
    from ctrzoo.data.prepare import prepare
    from ctrzoo.synth import generate

    root = tmp_path_factory.mktemp("synth")
    out = {}
    for kind, rows in (("criteo", 20_000), ("taobao", 20_000)):
        raw = root / f"{kind}.raw"
        generate(kind, rows, 3, raw)
        prepare(kind, [raw], root / kind)
        out[kind] = root / kind
    return out


SERVING_HPARAMS = {"emb_dim": 8, "mlp": [32, 16]}


@pytest.fixture(scope="session")
def serving_bundles(synth_prepared, tmp_path_factory):
    """Exported bundles for the service tests: two deepfm versions (same features) and a din."""
    from ctrzoo.export import export_onnx
    from ctrzoo.train.run import train_bundle

    root = tmp_path_factory.mktemp("srv")
    out = {}
    for name, model, kind, seed in (("deepfm", "deepfm", "criteo", 1), ("deepfm2", "deepfm", "criteo", 2),
                                    ("din", "din", "taobao", 1)):
        train_bundle(model, synth_prepared[kind], root / name,
                     overrides={"epochs": 1, "max_steps": 15, "seed": seed, "hparams": SERVING_HPARAMS},
                     progress=False, verbose=False)
        export_onnx(root / name)
        out[name] = root / name
    return out
