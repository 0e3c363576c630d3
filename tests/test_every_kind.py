"""Issue 16: every registered model trains, exports and serves on data with every feature kind.

Categorical, numeric (clipped), bucketized, a multi-value bag with its own vocabulary, one sharing the item
table, two behaviour sequences and a dense vector: fitted from raw rows, each model trained a few steps,
exported to ONNX (parity with torch) and, for a few of them, served by ``/rank`` with the same scores as
offline scoring of the same raw rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from ctrzoo.features import Categorical, FeatureSpec, Numeric, SequenceFeature, SpecFitter
from ctrzoo.features.spec import Bucketized, DenseVector, MultiValue
from ctrzoo.models import build_model, list_models, model_hparam_names
from ctrzoo.threads import torch_threads

SMALL = {"emb_dim": 4, "mlp": (16, 8), "mlp2": (8,), "cin": (4, 4), "attention_dim": 8, "attention_layers": 1,
         "block_dim": 8, "num_blocks": 1, "bottom_mlp": (8,), "fs_hidden": (8,), "att_hidden": (8,)}
ROWS = 256


def _raw(n: int = ROWS, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    items = [f"i{k}" for k in range(20)]
    tags = ["sport", "news", "tech", "food", "rare"]
    pick = lambda pool, k: "|".join(rng.choice(pool, size=k, replace=False))  # noqa: E731
    return pa.table({
        "label": rng.integers(0, 2, n),
        "user": [f"u{k}" for k in rng.integers(0, 30, n)],
        "item": rng.choice(items, n).tolist(),
        "price": rng.lognormal(size=n),
        "age": rng.integers(15, 80, n).astype(float),
        "tags": [pick(tags, int(k)) for k in rng.integers(0, 4, n)],
        "similar": [pick(items, int(k)) for k in rng.integers(1, 4, n)],
        "clicks": ["^".join(rng.choice(items, size=int(k))) for k in rng.integers(0, 6, n)],
        "views": ["^".join(rng.choice(items, size=int(k))) for k in rng.integers(0, 4, n)],
        "emb": [rng.normal(size=4).round(3).tolist() for _ in range(n)],
    })


def _spec() -> FeatureSpec:
    return FeatureSpec([
        Categorical("user"), Categorical("item"),
        Numeric("price", transform="log1p", clip=(0, 50), standardize=True),
        Bucketized("age", buckets=5),
        MultiValue("tags", max_len=3),
        MultiValue("similar", shares="item", max_len=3, pooling="max"),
        SequenceFeature("clicks", shares="item", max_len=5),
        SequenceFeature("views", shares="item", max_len=3, pooling="sum"),
        DenseVector("emb", dim=4),
    ], label="label")


@pytest.fixture(scope="module")
def fitted() -> FeatureSpec:
    fitter = SpecFitter(_spec())
    fitter.update(_raw())
    return fitter.finalize()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with torch_threads(1):
        yield


def _build(name: str, layout):
    accepted = set(model_hparam_names(name))
    torch.manual_seed(0)
    return build_model(name, layout, **{k: v for k, v in SMALL.items() if k in accepted})


def test_the_layout_holds_every_kind(fitted):
    lay = fitted.compile().layout
    assert [f.name for f in lay.sparse] == ["user", "item", "age"]
    assert [s.name for s in lay.seq] == ["tags", "similar", "clicks", "views"]
    assert [k for k, _ in lay.sequences] == [2, 3] and [k for k, _ in lay.bags] == [0, 1]
    assert lay.n_scalar_dense == 1 and lay.vectors[0].dim == 4 and lay.n_dense == 5


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_and_exports_with_every_feature_kind(name, fitted, tmp_path):
    from ctrzoo.export import PARITY_TOLERANCE, write_onnx

    codec = fitted.compile()
    batch = codec.encode(_raw())
    sparse, dense, seq = (torch.from_numpy(a) for a in (batch.sparse, batch.dense, batch.seq))
    label = torch.from_numpy(_raw().column("label").to_numpy().astype(np.float32))
    model = _build(name, codec.layout)
    if model.tasks:  # a multi-task model: the one label stands in for each task here
        label = label.unsqueeze(1).expand(-1, len(model.tasks))
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        optim.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(sparse, dense, seq), label)
        loss.backward()
        optim.step()
        assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():  # the bags, sequences and the vector all reach the scores
        base = model(sparse, dense, seq)
        for k in range(seq.shape[1]):
            emptied = seq.clone()
            emptied[:, k] = 0
            assert not torch.allclose(model(sparse, dense, emptied), base), (name, codec.layout.seq[k].name)
        moved = dense.clone()
        moved[:, 1:] += 1.0
        assert not torch.allclose(model(sparse, moved, seq), base)
    assert write_onnx(model, codec.layout, tmp_path / "m.onnx") <= PARITY_TOLERANCE


@pytest.mark.parametrize("name", list_models())
def test_a_bundle_with_every_kind_serves_what_it_scores_offline(name, fitted, tmp_path):
    """Every model: its bundle served by /rank scores what ``ctrzoo.load(...).predict`` scores offline (a
    multi-task bundle ranks by its first task: the one compared here; every task: tests/test_multitask_*)."""
    from fastapi.testclient import TestClient

    from ctrzoo.api import load
    from ctrzoo.bundle import save_bundle
    from ctrzoo.export import export_onnx
    from ctrzoo.metadata import ModelBundleMeta, ModelInfo
    from serving.app import create_app

    model = _build(name, fitted.compile().layout).eval()
    save_bundle(tmp_path / name, model, fitted, ModelBundleMeta(model=ModelInfo(name=name, hparams=model.hparams)))
    export_onnx(tmp_path / name)
    rows = [{k: v for k, v in r.items() if k != "label"} for r in _raw(40, seed=1).to_pylist()]
    rows[0]["tags"] = ["sport", "never-seen"]  # a list is a bag too; an unknown tag is out of vocabulary
    rows[1]["emb"] = "0.1, 0.2, 0.3, 0.4"  # a joined string is a vector too
    rows[1]["tags"] = None
    rows[2].pop("clicks")
    offline = load(tmp_path / name, backend="torch").predict([{**r, "user": rows[3]["user"]} for r in rows[3:]])
    with TestClient(create_app(bundle=str(tmp_path / name), backend="onnxruntime")) as client:
        candidates = [{k: v for k, v in r.items() if k != "user"} for r in rows[3:]]
        r = client.post("/rank", json={"context": {"user": rows[3]["user"]}, "candidates": candidates})
        assert r.status_code == 200, r.text
        served = np.array(r.json()["scores"])
        for odd in rows[:3]:  # each odd row scores without error
            assert client.post("/rank", json={"candidates": [odd]}).status_code == 200
        bad = client.post("/rank", json={"candidates": [{**rows[3], "emb": [1.0, 2.0]}]})
        assert bad.status_code == 422 and bad.json()["field"] == "emb"
    context_free = load(tmp_path / name, backend="onnxruntime").predict([{**r, "user": rows[3]["user"]}
                                                                           for r in rows[3:]])
    if model.tasks:  # one column per task offline; /rank's scores are the first task's (rank_by default)
        offline, context_free = (np.asarray(x[model.tasks[0]]) for x in (offline, context_free))
    np.testing.assert_allclose(served, context_free, atol=1e-6)
    np.testing.assert_allclose(offline, context_free, atol=1e-5)


def test_model_endpoint_says_how_to_send_every_kind(fitted, tmp_path):
    from fastapi.testclient import TestClient

    from ctrzoo.bundle import save_bundle
    from ctrzoo.metadata import ModelBundleMeta, ModelInfo
    from serving.app import create_app

    model = _build("deepfm", fitted.compile().layout).eval()
    save_bundle(tmp_path / "b", model, fitted, ModelBundleMeta(model=ModelInfo(name="deepfm", hparams=model.hparams)))
    with TestClient(create_app(bundle=str(tmp_path / "b"), backend="torch")) as client:
        docs = {d["name"]: d for d in client.get("/model").json()["features"]}
    assert [docs[n]["kind"] for n in ("user", "price", "age", "tags", "clicks", "emb")] == [
        "categorical", "numeric", "bucketized", "multi_value", "sequence", "dense_vector"]
    assert docs["emb"]["dim"] == 4 and "list of 4 numbers" in docs["emb"]["type"]
    assert "bag" in docs["tags"]["type"] and docs["clicks"]["max_len"] == 5
    assert "clipped to [0, 50]" in docs["price"]["type"]


@pytest.mark.parametrize("name", ["din", "deepfm"])
def test_fused_and_tvm_backends_score_every_kind_like_torch(name, fitted, tmp_path):
    """The fused path (DIN: padding removed, bags pooled as padded) and TVM take the new inputs too."""
    from ctrzoo import runtime
    from ctrzoo.bundle import save_bundle
    from ctrzoo.export import export_onnx
    from ctrzoo.features import random_batch
    from ctrzoo.metadata import ModelBundleMeta, ModelInfo

    model = _build(name, fitted.compile().layout).eval()
    save_bundle(tmp_path / name, model, fitted, ModelBundleMeta(model=ModelInfo(name=name, hparams=model.hparams)))
    ref = runtime.load(tmp_path / name, "torch", threads=1)
    backends = ["fused"]
    if name == "deepfm":
        export_onnx(tmp_path / name)
        try:
            import tvm  # noqa: F401

            backends.append("tvm")
        except ImportError:
            print("apache-tvm not installed: the tvm backend is not checked here")
    for backend in backends:
        options = {"buckets": (8, 64)} if backend == "tvm" else {}
        got = runtime.load(tmp_path / name, backend, threads=1, **options)
        for n in (1, 7, 40):
            x = random_batch(ref.layout, n, seed=n).as_dict()
            np.testing.assert_allclose(got.predict(x), ref.predict(x), rtol=0, atol=runtime.PARITY_TOLERANCE,
                                       err_msg=f"{name} {backend} batch {n}")
