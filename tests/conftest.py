from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_dir() -> Path:
    """Where the real sample rows are: ``$CTRZOO_SHARED_DATA`` (CI may hide or move them), else ``../shared/data``."""
    return Path(os.environ.get("CTRZOO_SHARED_DATA") or SHARED_DATA)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample rows beside the checkout (never copied into the repo)."""
    root = shared_data_dir()
    if not (root / "criteo_sample.tsv").exists():
        pytest.skip(f"real sample rows not found at {root}")
    return root


@pytest.fixture(scope="session", params=["real", "written"])
def sample_rows(request, tmp_path_factory) -> Path:
    """A directory holding ``criteo_sample.tsv``, ``criteo_sample.txt`` and ``taobao_ad_sample.csv``.

    ``real``: the shared sample rows (real-row fidelity; skipped where absent). ``written``: the same formats
    and edge cases written by the tests themselves, so a plain clone still tests every behaviour.
    """
    if request.param == "real":
        return request.getfixturevalue("shared_data")
    from sample_rows import write_sample_rows

    return write_sample_rows(tmp_path_factory.mktemp("sample_rows"))


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


@pytest.fixture(scope="session")
def multitask_bundles(tmp_path_factory):
    """Exported untrained bundles: mmoe, ple, esmm (tasks click, converted), ple_other_tasks, a single-task
    deepfm (tests/multitask_rows.py)."""
    from multitask_rows import write_bundles

    return write_bundles(tmp_path_factory.mktemp("multitask"))
