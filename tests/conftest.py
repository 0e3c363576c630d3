from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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


TWO_LABEL_SCHEMA = """
name: shop2
input: {format: text, delimiter: ",", header: true}
labels: [click, converted]
user_id: user
features:
  - {name: user, kind: categorical}
  - {name: item, kind: categorical}
  - {name: cat, kind: categorical}
  - {name: price, kind: numeric, transform: log1p, standardize: true}
  - {name: hist, kind: sequence, shares: item, max_len: 5, sep: "^"}
"""


def write_two_label_log(path: Path, rows: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A click log whose conversions happen only after a click (``converted`` = click AND convert), with a
    learnable signal in both; returns the true (p_click, p_conversion) per row. Vectorized NumPy + Arrow."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, 60, rows), rng.zipf(1.3, rows) % 90
    cat = item % 12
    price = np.round(rng.lognormal(3.0, 1.0, rows), 2)
    bu, bi, bc = rng.normal(0, 1, 60), rng.normal(0, 1, 90), rng.normal(0, 1, 12)
    p_click = 1 / (1 + np.exp(-(bu[user] + bi[item] - 1.0)))
    p_cvr = 1 / (1 + np.exp(-(0.5 * bi[item] + 1.5 * bc[cat] - 1.0)))
    click = rng.random(rows) < p_click
    converted = click & (rng.random(rows) < p_cvr)
    hist_len = rng.integers(0, 6, rows)
    hist_items = rng.integers(0, 90, (rows, 5))
    tokens = np.char.add("i", hist_items.astype(str))
    hist = ["^".join(t[:k]) for t, k in zip(tokens, hist_len)]  # test data only: 6,000 short strings
    table = pa.table({"click": click.astype(np.int8), "converted": converted.astype(np.int8),
                      "user": np.char.add("u", user.astype(str)), "item": np.char.add("i", item.astype(str)),
                      "cat": np.char.add("c", cat.astype(str)), "price": price, "hist": hist})
    with open(path, "wb") as fh:  # Arrow quotes header names; the schema test readers take plain ones
        fh.write((",".join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return p_click, p_click * p_cvr


@pytest.fixture(scope="session")
def two_label_prepared(tmp_path_factory):
    """A prepared dataset with two labels, click and converted (conversion only after a click)."""
    from ctrzoo.data.prepare import prepare
    from ctrzoo.data.schema import load_schema

    root = tmp_path_factory.mktemp("two_label")
    write_two_label_log(root / "log.csv")
    (root / "schema.yaml").write_text(TWO_LABEL_SCHEMA)
    prepare(load_schema(root / "schema.yaml"), [root / "log.csv"], root / "ds")
    return root / "ds"


@pytest.fixture(scope="session")
def multitask_bundles(tmp_path_factory):
    """Exported untrained bundles: mmoe, ple, esmm (tasks click, converted), ple_other_tasks, a single-task
    deepfm (tests/multitask_rows.py)."""
    from multitask_rows import write_bundles

    return write_bundles(tmp_path_factory.mktemp("multitask"))
