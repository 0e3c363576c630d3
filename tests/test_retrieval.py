"""Retrieval: indexes against brute force, save/load, catalogue checks, auto, training, /recommend."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import warnings

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

faiss = pytest.importorskip("faiss")

from ctrzoo.cli import main  # noqa: E402
from ctrzoo.data.prepare import prepare  # noqa: E402
from ctrzoo.retrieval import KINDS, IndexParams, RetrievalError, build_index, load_index  # noqa: E402
from ctrzoo.retrieval.auto import select_index  # noqa: E402
from ctrzoo.retrieval.bundle import load_retrieval_bundle  # noqa: E402
from ctrzoo.retrieval.catalogue import Catalogue, item_columns  # noqa: E402
from ctrzoo.retrieval.evaluate import exact_top, overlap_recall  # noqa: E402
from ctrzoo.retrieval.index import mobius_transform  # noqa: E402
from ctrzoo.retrieval.retriever import Retriever, index_catalogue  # noqa: E402
from ctrzoo.retrieval.synth import lognormal_clustered, zipf_factorized  # noqa: E402
from ctrzoo.retrieval.train import RetrievalConfig, train_retrieval  # noqa: E402
from ctrzoo.synth import generate  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
from fastapi.testclient import TestClient  # noqa: E402

from serving.app import create_app  # noqa: E402

# a small shop: few items and categories, many clicks, so a short training run learns the categories
SHOP = {"target_ctr": 0.15, "fields": {"userid": {"card": 3000}, "adgroup_id": {"card": 4000}, "cate_id": {"card": 40},
                                       "campaign_id": {"card": 3000}, "customer": {"card": 2000},
                                       "brand": {"card": 1000}}}
FAST = {"epochs": 6, "batch_size": 256, "recall_k": [10, 50, 100]}


def skewed(n: int = 3000, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors whose norms vary over two orders of magnitude, and queries."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.exp(rng.normal(0, 1.0, (n, 1)))
    return x.astype(np.float32), rng.normal(size=(200, d)).astype(np.float32)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    raw = root / "shop.csv"
    generate("taobao", 30_000, 5, raw, config=SHOP)
    prepare("taobao", [raw], root / "data")
    return root


@pytest.fixture(scope="module")
def rbundle(shop):
    out = shop / "retrieval"
    meta = train_retrieval(shop / "data", out, config=RetrievalConfig(**FAST), progress=False, verbose=False)
    return out, meta


@pytest.fixture(scope="module")
def ranker(shop):
    from ctrzoo.train.run import train_bundle

    out = shop / "din"
    train_bundle("din", shop / "data", out, overrides={"epochs": 1, "max_steps": 40, "seed": 1, "threads": 1,
                                                        "hparams": {"emb_dim": 8, "mlp": [32, 16]}},
                 progress=False, verbose=False)
    return out  # served with the torch backend: no ONNX export needed here (tests/test_serving.py covers it)


# -- indexes -------------------------------------------------------------------------------------------


def test_flat_ip_equals_numpy_brute_force():
    x, q = skewed()
    scores, pos = build_index(x, "flat-ip").search(q, 10)
    full = q @ x.T
    expect = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(pos, expect)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expect, axis=1), rtol=1e-5, atol=1e-4)
    # k above the catalogue size: every item, then -1 / -inf
    s, p = build_index(x[:5], "flat-ip").search(q[:2], 8)
    assert (p[:, :5] >= 0).all() and (p[:, 5:] == -1).all() and np.isneginf(s[:, 5:]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_round_trips_through_save_and_load(kind, tmp_path):
    x, q = skewed()
    index = build_index(x, kind, IndexParams(ef_search=48, nprobe=8))
    scores, pos = index.search(q, 10)
    index.save(tmp_path / kind)
    loaded = load_index(tmp_path / kind)
    assert (loaded.kind, loaded.dim, loaded.ntotal) == (kind, 16, len(x))
    assert loaded.params.ef_search == 48 and loaded.params.nprobe == min(8, loaded.params.nlist)
    s2, p2 = loaded.search(q, 10)
    np.testing.assert_array_equal(p2, pos)
    np.testing.assert_array_equal(s2, scores)
    for value in (16, 128):  # per-call search parameters too
        np.testing.assert_array_equal(loaded.search(q, 10, value)[1], index.search(q, 10, value)[1])
    _, truth = exact_top(x, q, 10)
    floor = {"flat-ip": 1.0, "hnsw-ip": 0.9, "mobius-hnsw": 0.9, "ivfpq-ip": 0.3}[kind]
    assert overlap_recall(pos, truth) >= floor


def test_mobius_graph_is_searched_by_inner_product():
    items, users = zipf_factorized(n_items=4000, n_users=3000, dim=16, clicks=60_000, topics=40, seed=1)
    users = users[np.linalg.norm(users, axis=1) > 0][:300]
    assert (np.linalg.norm(items, axis=1) == 0).any()  # never-clicked items: zero vectors must not break it
    index = build_index(items, "mobius-hnsw")
    assert index.index.metric_type == faiss.METRIC_INNER_PRODUCT and index.index.hnsw.is_similarity
    scores, pos = index.search(users, 10, 128)
    assert (pos >= 0).all()  # the storage swap without is_similarity returns -1 everywhere
    _, truth = exact_top(items, users, 10)
    assert overlap_recall(pos, truth) >= 0.95
    np.testing.assert_allclose(scores[:, 0], np.einsum("ij,ij->i", users, items[pos[:, 0]]), rtol=1e-4, atol=1e-5)
    y = mobius_transform(items)
    nz = np.linalg.norm(items, axis=1) > 0
    np.testing.assert_allclose(np.linalg.norm(y[nz], axis=1) * np.linalg.norm(items[nz], axis=1), 1.0, rtol=1e-4)
    assert np.isfinite(y).all()


def test_dimension_mismatch_and_empty_inputs_are_clear_errors(tmp_path):
    x, q = skewed()
    index = build_index(x, "hnsw-ip")
    with pytest.raises(RetrievalError, match="dimension 8 does not match the index's dimension 16"):
        index.search(q[:, :8], 10)
    with pytest.raises(RetrievalError, match="empty"):
        build_index(np.zeros((0, 16), np.float32), "flat-ip")
    with pytest.raises(RetrievalError, match="NaN"):
        build_index(np.full((3, 4), np.nan, np.float32), "flat-ip")
    with pytest.raises(RetrievalError, match="unknown index kind"):
        build_index(x, "lsh")
    with pytest.raises(RetrievalError, match="dimension"):
        select_index(x, q[:, :4], k=10)
    index.save(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    meta["dim"] = 32
    (tmp_path / "ix" / "index.json").write_text(json.dumps(meta))
    with pytest.raises(RetrievalError, match="dimension"):
        load_index(tmp_path / "ix")


def test_auto_picks_the_fastest_kind_meeting_the_target_and_says_why(tmp_path):
    x, q = skewed(4000)
    index, report = select_index(x, q, k=10, target=0.95, kinds=["hnsw-ip", "mobius-hnsw"], repeats=1)
    chosen = report["chosen"]
    assert chosen["recall"] >= 0.95 and index.kind == chosen["kind"]
    first_ok = {}
    for m in report["measurements"]:
        if m["meets_target"]:
            first_ok.setdefault(m["kind"], m)
    assert chosen["qps"] * (1 + report["margin"]) >= max(m["qps"] for m in first_ok.values())
    assert {m["kind"] for m in report["measurements"]} == {"hnsw-ip", "mobius-hnsw", "flat-ip"}
    assert chosen["kind"] in report["why"] and "fastest" in report["why"]
    if index.search_param:
        assert getattr(index.params, index.search_param) == chosen["value"]
    index.save(tmp_path / "auto")
    assert load_index(tmp_path / "auto").info["auto"]["chosen"] == chosen
    with pytest.raises(RetrievalError, match="target"):
        select_index(x, q, target=1.5)


def test_lognormal_vectors_have_norms_independent_of_direction():
    items, queries = lognormal_clustered(n_items=500, n_users=50, dim=8, clusters=5)
    assert items.shape == (500, 8) and queries.shape == (50, 8)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, rtol=1e-5)


# -- catalogue -----------------------------------------------------------------------------------------


def _catalogue_file(rbundle, tmp_path, mutate) -> str:
    bundle = load_retrieval_bundle(rbundle[0])
    table = bundle.catalogue().table.slice(0, 50)
    path = tmp_path / "items.parquet"
    pq.write_table(mutate(table), path)
    return str(path)


def test_catalogue_with_duplicate_unknown_or_no_items_is_refused(rbundle, tmp_path):
    out = rbundle[0]
    dup = _catalogue_file(rbundle, tmp_path, lambda t: pa.concat_tables([t, t.slice(0, 2)]))
    with pytest.raises(RetrievalError, match=r"2 duplicate item id\(s\) in column 'adgroup_id'"):
        index_catalogue(out, "flat-ip", items=dup, out=tmp_path / "ix", log=None)

    def unknown(t):
        ids = t.column("adgroup_id").to_pylist()
        ids[3] = "never-seen-item"
        return t.set_column(0, "adgroup_id", pa.array(ids))

    unk = _catalogue_file(rbundle, tmp_path, unknown)
    with pytest.raises(RetrievalError, match=r"1 of 50 item id\(s\).*unknown.*never-seen-item"):
        index_catalogue(out, "flat-ip", items=unk, out=tmp_path / "ix", log=None)
    meta = index_catalogue(out, "flat-ip", items=unk, out=tmp_path / "ix", allow_unknown=True, log=None)
    assert meta["catalogue"]["unknown_ids"] == 1 and meta["ntotal"] == 50

    empty = _catalogue_file(rbundle, tmp_path, lambda t: t.slice(0, 0))
    with pytest.raises(RetrievalError, match="empty"):
        index_catalogue(out, "flat-ip", items=empty, out=tmp_path / "ix", log=None)
    no_col = _catalogue_file(rbundle, tmp_path, lambda t: t.drop(["cate_id"]))
    with pytest.raises(RetrievalError, match=r"lacks column\(s\) \['cate_id'\]"):
        index_catalogue(out, "flat-ip", items=no_col, out=tmp_path / "ix", log=None)
    with pytest.raises(RetrievalError, match="no such catalogue file"):
        index_catalogue(out, "flat-ip", items=tmp_path / "nope.parquet", out=tmp_path / "ix", log=None)
    # the CLI names the problem and exits 2
    assert main(["index", "--bundle", str(out), "--items", dup, "--kind", "flat-ip", "--out", str(tmp_path / "c")]) == 2


def test_catalogue_from_rows_keeps_the_last_row_of_each_item():
    t = pa.table({"item": [1, 2, 1, None], "cat": ["a", "b", "c", "d"]})
    cat = Catalogue.from_rows(t, "item", ["cat"])
    assert cat.ids.to_pylist() == ["2", "1"] and cat.table.column("cat").to_pylist() == ["b", "c"]


# -- training and bundles ------------------------------------------------------------------------------


def test_trained_bundle_has_towers_spec_catalogue_and_recall(rbundle):
    out, meta = rbundle
    for name in ("bundle.json", "spec.json", "weights.pt", "catalogue.parquet"):
        assert (out / name).exists()
    bundle = load_retrieval_bundle(out)
    assert bundle.meta.kind == "retrieval" and bundle.split.item_id == "adgroup_id"
    assert "click_sequence" in bundle.split.user and "price" in bundle.split.item
    test = meta.metrics.test
    assert set(test) == {"recall@10", "recall@50", "recall@100"}
    assert 0 <= test["recall@10"] <= test["recall@50"] <= test["recall@100"] <= 1
    # better than recommending the most clicked items to everyone
    assert test["recall@100"] > meta.metrics.test_popularity_baseline["recall@100"]
    cat = bundle.catalogue()
    id_col, cols = item_columns(bundle.spec, bundle.split)
    assert cat.table.column_names == [id_col, *cols]
    model = bundle.build_model()
    assert int((model.history_attrs != 0).any(dim=1).sum()) == len(cat)  # each item's category, saved


def test_bundle_written_before_the_towers_used_feature_embedding_still_loads(rbundle, tmp_path):
    """weights.pt of earlier versions names the shared table ``table.weight``; loading maps it. (Those
    bundles had no integrity manifest either: they load without one.)"""
    out, _ = rbundle
    old = tmp_path / "old"
    shutil.copytree(out, old)
    state = torch.load(old / "weights.pt", weights_only=True)
    state = {("table.weight" if k == "embedding.table.weight" else k): v for k, v in state.items()}
    torch.save(state, old / "weights.pt")
    meta = json.loads((old / "bundle.json").read_text())
    del meta["files"]
    (old / "bundle.json").write_text(json.dumps(meta))
    new_model, old_model = load_retrieval_bundle(out).build_model(), load_retrieval_bundle(old).build_model()
    assert torch.equal(old_model.embedding.weight, new_model.embedding.weight)


def test_negatives_and_no_logq_options_train(shop, tmp_path):
    cfg = RetrievalConfig(epochs=2, batch_size=128, random_negatives=32, hard_negatives=2, hard_from_epoch=1,
                          hard_ranks=[5, 30], logq=False, hidden=[16], normalize="user", max_steps=6)
    meta = train_retrieval(shop / "data", tmp_path / "r", config=cfg, progress=False, verbose=False)
    assert all(np.isfinite(h["train_loss"]) for h in meta.history)
    assert meta.train["hard_negatives"] == 2 and not meta.train["logq"]
    with pytest.raises(RetrievalError, match="hard_ranks"):
        RetrievalConfig(hard_ranks=[10, 5])


def test_a_model_bundle_is_not_a_retrieval_bundle(ranker):
    with pytest.raises(RetrievalError, match="not a retrieval bundle"):
        load_retrieval_bundle(ranker)


def test_a_retrieval_bundle_is_not_a_model_bundle(rbundle, capsys, monkeypatch):
    from ctrzoo.bundle import load_bundle
    from ctrzoo.errors import BundleError

    with pytest.raises(BundleError, match="a retrieval bundle, not a ranking model bundle"):
        load_bundle(rbundle[0])
    for name in ("CTRZOO_RETRIEVAL", "CTRZOO_BUNDLE", "CTRZOO_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "--bundle", str(rbundle[0])]) == 2
    assert "not a ranking model bundle" in capsys.readouterr().err


def test_serve_refuses_a_missing_retrieval_bundle_before_starting(ranker, tmp_path, capsys, monkeypatch):
    for name in ("CTRZOO_RETRIEVAL", "CTRZOO_BUNDLE", "CTRZOO_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "--bundle", str(ranker), "--retrieval", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "error" in err
    import os

    assert not {"CTRZOO_RETRIEVAL", "CTRZOO_BUNDLE", "CTRZOO_BACKEND"} & set(os.environ)  # nothing half-set


def test_saving_replaces_a_retrieval_bundle_but_never_a_model_bundle_or_other_files(rbundle, ranker, tmp_path):
    import shutil

    from ctrzoo.errors import CtrzooError
    from ctrzoo.retrieval.bundle import save_retrieval_bundle

    rb = load_retrieval_bundle(rbundle[0])
    model, spec, catalogue = rb.build_model(), rb.spec, rb.catalogue()

    def save(out):
        return save_retrieval_bundle(out, model, spec, catalogue, extra={"note": "resaved"})

    copy = tmp_path / "copy"
    shutil.copytree(rbundle[0], copy)
    save(copy)  # an earlier retrieval bundle is replaced
    assert json.loads((copy / "bundle.json").read_text())["note"] == "resaved"
    assert load_retrieval_bundle(copy).catalogue().ids.to_pylist() == catalogue.ids.to_pylist()
    before = sorted(p.name for p in ranker.iterdir())
    with pytest.raises(CtrzooError, match="model bundle, not a retrieval bundle"):
        save(ranker)
    assert sorted(p.name for p in ranker.iterdir()) == before  # untouched
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(CtrzooError, match="not a retrieval bundle"):
        save(other)
    assert (other / "notes.txt").read_text() == "keep me"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary directories left


def test_a_model_bundle_never_replaces_a_retrieval_bundle(rbundle, ranker, tmp_path, capsys):
    from ctrzoo.bundle import load_bundle, save_bundle
    from ctrzoo.errors import BundleError

    copy = tmp_path / "r"
    shutil.copytree(rbundle[0], copy)
    before = sorted(p.name for p in copy.iterdir())
    b = load_bundle(ranker)
    with pytest.raises(BundleError, match=rf"{copy} is a retrieval bundle, not a model bundle: refusing to replace"):
        save_bundle(copy, b.build_model(), b.spec, b.meta)
    # and `ctrzoo train` refuses before training, not after
    assert main(["train", "--model", "din", "--data", str(rbundle[0].parent / "data"), "--out", str(copy),
                 "--epochs", "1", "--max-steps", "1"]) == 2
    assert "is a retrieval bundle, not a model bundle" in capsys.readouterr().err
    assert sorted(p.name for p in copy.iterdir()) == before and not (tmp_path / "r.work").exists()


def test_retrieval_bundles_are_checked_against_their_manifest(rbundle, tmp_path, caplog):
    import logging

    meta = json.loads((rbundle[0] / "bundle.json").read_text())
    assert {"weights.pt", "spec.json", "catalogue.parquet"} <= set(meta["files"])
    assert not any(f.startswith("index/") for f in meta["files"])  # built later, checked by bundle version
    damaged = tmp_path / "damaged"
    shutil.copytree(rbundle[0], damaged)
    table = pq.read_table(damaged / "catalogue.parquet")
    pq.write_table(table.slice(0, len(table) - 1), damaged / "catalogue.parquet")
    with pytest.raises(RetrievalError, match=r"catalogue.parquet: checksum differs from the one recorded"):
        load_retrieval_bundle(damaged)
    old = tmp_path / "old"  # as bundles were written before they had a manifest: loaded, with a warning
    shutil.copytree(rbundle[0], old)
    del meta["files"]
    (old / "bundle.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="ctrzoo.bundle"):
        assert load_retrieval_bundle(old).version == meta["version"]
    assert "retrieval bundle without an integrity manifest" in caplog.text


def test_the_towers_train_in_the_shared_loop_with_row_sparse_adam(shop):
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.nn import RowSparseAdam
    from ctrzoo.retrieval.catalogue import catalogue_from_dataset
    from ctrzoo.retrieval.towers import default_split
    from ctrzoo.retrieval.train import RetrievalTrainer

    ds = PreparedDataset.open(shop / "data")
    split = default_split(ds.spec, ds.meta.kind)
    catalogue, _ = catalogue_from_dataset(ds, split)
    trainer = RetrievalTrainer(RetrievalConfig(epochs=3, batch_size=256, max_steps=5), ds, split, catalogue,
                               progress=False)
    assert [type(o) for o in trainer.optimizers] == [torch.optim.Adam, RowSparseAdam]
    assert trainer.optimizers[1].param_groups[0]["params"] == [trainer.model.embedding.weight]
    best = trainer.fit()
    assert trainer.global_step == 5 and len(trainer.history) == 1 and best == trainer.history[0]
    assert not trainer.model.training and set(best) >= {"epoch", "train_loss", "valid_recall@100", "clicks_per_s"}


def test_cli_train_index_and_bench(shop, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train-retrieval", "--data", str(shop / "data"), "--out", str(out), "--epochs", "1",
                 "--batch-size", "256", "--max-steps", "5"]) == 0
    assert "held-out clicks" in capsys.readouterr().out
    assert main(["index", "--bundle", str(out), "--kind", "auto", "--target", "0.9"]) == 0
    text = capsys.readouterr().out
    assert "auto: chose" in text and "indexed" in text
    meta = json.loads((out / "index" / "index.json").read_text())
    assert meta["auto"]["chosen"]["recall"] >= 0.9 and meta["bundle_version"] == load_retrieval_bundle(out).version
    assert main(["bench", "retrieval", "--synthetic", "3000", "--queries-n", "200", "--out", str(tmp_path / "b"),
                 "--targets", "0.9"]) == 0
    assert (tmp_path / "b" / "retrieval.png").stat().st_size > 1000
    result = json.loads((tmp_path / "b" / "retrieval.json").read_text())
    assert {r["kind"] for r in result["rows"]} == set(KINDS) and len(result["auto"]) == 1
    assert main(["bench", "inference"]) == 2  # still needs its bundle


# -- /recommend ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed(rbundle):
    index_catalogue(rbundle[0], "hnsw-ip", log=None)
    return rbundle[0]


def _category_history(retriever: Retriever, shop) -> tuple[str, list[str]]:
    """The most clicked category of the training data, and a history of ten of its items."""
    table = pq.read_table(shop / "data" / "raw" / "test.parquet").to_pandas()
    cate = table[table.clk == 1].cate_id.astype(str).value_counts().index[0]
    cat = retriever.catalogue.table.to_pandas()
    items = cat[cat.cate_id.astype(str) == cate].adgroup_id.tolist()
    assert len(items) >= 20
    return cate, items[:10]


def test_recommend_returns_mostly_the_history_category(indexed, ranker, shop):
    with TestClient(create_app(str(ranker), retrieval=str(indexed), backend="torch")) as client:
        retriever = client.app.state.retriever
        cate, history = _category_history(retriever, shop)
        r = client.post("/recommend", json={"context": {"click_sequence": history, "pid": "430548_1007"},
                                            "top_k": 10, "candidates": 50, "request_id": "u1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["request_id"] == "u1" and body["model"]["name"] == "din" and body["candidates"] == 50
        assert body["retrieval"]["index"] == "hnsw-ip" and len(body["items"]) == 10
        scores = [i["score"] for i in body["items"]]
        assert scores == sorted(scores, reverse=True)
        cat = retriever.catalogue.table.to_pandas().set_index("adgroup_id")
        in_cate = sum(str(cat.loc[i["item_id"], "cate_id"]) == cate for i in body["items"])
        print(f"\n/recommend: {in_cate}/10 top items in the history's category {cate}")
        assert in_cate >= 6, body["items"]
        # exclusions, limits and item features in the context
        banned = [i["item_id"] for i in body["items"][:3]]
        r = client.post("/recommend", json={"context": {"click_sequence": history}, "exclude": banned})
        assert r.status_code == 200 and not set(banned) & {i["item_id"] for i in r.json()["items"]}
        r = client.post("/recommend", json={"context": {"cate_id": "1"}})
        assert r.status_code == 422 and r.json()["field"] == "cate_id"
        r = client.post("/recommend", json={"context": {}, "candidates": 5000})
        assert r.status_code == 422 and r.json()["field"] == "candidates"
        r = client.post("/recommend", json={"context": {"click_sequence": [1, [2]]}})
        assert r.status_code == 422
        r = client.post("/recommend", json={"context": {}, "top_k": 3})  # no history at all: still served
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        # /rank is unchanged
        r = client.post("/rank", json={"context": {"click_sequence": history},
                                       "candidates": [{"adgroup_id": history[0]}]})
        assert r.status_code == 200 and len(r.json()["scores"]) == 1


def test_service_refuses_an_index_of_other_towers(rbundle, shop, tmp_path):
    other = tmp_path / "other"
    train_retrieval(shop / "data", other, config=RetrievalConfig(epochs=1, max_steps=2, out_dim=32), progress=False,
                    verbose=False)
    index_catalogue(other, "flat-ip", log=None)
    with pytest.raises(RetrievalError, match="dimension 32"):
        Retriever.load(rbundle[0], other / "index")
    with pytest.raises(RetrievalError, match="no index"):
        Retriever.load(other, tmp_path / "missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_recommend_under_concurrency_8_reports_p99(indexed, ranker, shop):
    import uvicorn

    app = create_app(str(ranker), retrieval=str(indexed), backend="torch")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    _, history = _category_history(app.state.retriever, shop)
    latencies: list[float] = []
    failures: list[str] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            for j in range(12):
                body = {"context": {"click_sequence": history[: 1 + (i + j) % 10]}, "top_k": 10}
                t0 = time.perf_counter()
                r = c.post("/recommend", json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    failures.append(r.text)

    try:
        workers = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert failures == []
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    print(f"\n/recommend at concurrency 8 ({len(latencies)} requests, 200 candidates): "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    assert len(latencies) == 96
