"""``/rank`` on multi-task bundles: ``task_scores`` equal to offline scoring, the order by ``rank_by`` or by
``task_weights`` (checked against scores computed offline), settings checked against the bundle's tasks at
startup and reload (a refused reload keeps the old model serving), and single-task answers unchanged."""

from __future__ import annotations

import asyncio
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from multitask_rows import TASKS, raw_rows

from ctrzoo import runtime
from ctrzoo.bundle import GOLDEN_TOLERANCE, load_bundle
from ctrzoo.errors import CtrzooError
from serving.app import create_app
from serving.batcher import Coalescer
from serving.model_state import load_model
from serving.settings import ServeSettings, SettingsError
from serving.tasks import task_ranking

warnings.filterwarnings("ignore", category=DeprecationWarning)
from fastapi.testclient import TestClient  # noqa: E402

AUTH = {"authorization": "Bearer t"}
ROWS = raw_rows(40, seed=11, label=False)
SINGLE_TASK_KEYS = {"request_id", "model", "scores", "ranking", "features", "timing"}


@pytest.fixture(scope="module")
def bundles(multitask_bundles):
    return multitask_bundles


def _offline(path) -> np.ndarray:
    """The bundle's torch probabilities of ROWS, ``[N, T]``: what the service must give."""
    b = load_bundle(path)
    return runtime.load(b, "torch").predict(b.codec.encode(ROWS))


def _order(scores: np.ndarray) -> list[int]:
    return np.argsort(-scores, kind="stable").tolist()


@pytest.mark.parametrize("rank_lane", [True, False], ids=["plain-asgi-lane", "fastapi-route"])
@pytest.mark.parametrize("name", ["mmoe", "ple", "esmm"])
def test_rank_gives_task_scores_equal_to_offline_and_orders_by_the_first_task(bundles, name, rank_lane):
    offline = _offline(bundles[name])
    with TestClient(create_app(str(bundles[name]), backend="onnxruntime", rank_lane=rank_lane)) as client:
        r = client.post("/rank", json={"candidates": ROWS, "request_id": "q"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == SINGLE_TASK_KEYS | {"task_scores", "ranked_by"}
        assert body["ranked_by"] == "click" and list(body["task_scores"]) == ["click", "converted"]
        for t, task in enumerate(TASKS):
            np.testing.assert_allclose(body["task_scores"][task], offline[:, t], rtol=0, atol=GOLDEN_TOLERANCE)
        assert body["scores"] == body["task_scores"]["click"]
        assert body["ranking"] == _order(np.asarray(body["scores"]))
        info = client.get("/model").json()
        assert info["tasks"] == ["click", "converted"] and info["ranked_by"] == "click"
        assert info["task_weights"] == {"click": 1.0, "converted": 0.0}


@pytest.mark.parametrize("rank_lane", [True, False], ids=["plain-asgi-lane", "fastapi-route"])
def test_rank_by_a_task_and_by_weights_orders_as_offline(bundles, rank_lane):
    offline = _offline(bundles["mmoe"]).astype(np.float64)
    by_click, by_converted = _order(offline[:, 0]), _order(offline[:, 1])
    assert by_click != by_converted  # else the settings below could not be told apart
    app = lambda **kw: create_app(str(bundles["mmoe"]), backend="torch", rank_lane=rank_lane, **kw)  # noqa: E731
    with TestClient(app(rank_by="converted")) as client:
        body = client.post("/rank", json={"candidates": ROWS}).json()
        assert body["ranked_by"] == "converted" and body["ranking"] == by_converted
        assert body["scores"] == offline[:, 1].tolist()
        top = client.post("/rank", json={"candidates": ROWS, "top_k": 5}).json()
        assert top["ranking"] == by_converted[:5] and len(top["task_scores"]["click"]) == len(ROWS)
    weights = {"click": 1.0, "converted": 3.5}
    weighted = offline[:, 0] * 1.0 + offline[:, 1] * 3.5
    assert _order(weighted) not in (by_click, by_converted)
    with TestClient(app(task_weights=weights)) as client:
        body = client.post("/rank", json={"candidates": ROWS}).json()
        assert body["ranked_by"] == "weighted" and body["ranking"] == _order(weighted)
        np.testing.assert_allclose(body["scores"], weighted, rtol=1e-12, atol=0)
        np.testing.assert_array_equal(body["task_scores"]["converted"], offline[:, 1])
        assert client.get("/model").json()["task_weights"] == weights
    with TestClient(app(task_weights={"converted": 2.0})) as client:  # a task left out weighs 0
        assert client.post("/rank", json={"candidates": ROWS}).json()["ranking"] == by_converted


def test_a_single_task_answer_has_no_task_fields(bundles):
    with TestClient(create_app(str(bundles["deepfm"]))) as client:
        body = client.post("/rank", json={"candidates": ROWS[:5]}).json()
        assert set(body) == SINGLE_TASK_KEYS
        assert "tasks" not in client.get("/model").json()
        schema = client.get("/openapi.json").json()["components"]["schemas"]["RankResponse"]
        assert {"task_scores", "ranked_by"} <= set(schema["properties"])
        assert not {"task_scores", "ranked_by"} & set(schema["required"])


@pytest.mark.parametrize(("settings", "field", "message"), [
    ({"rank_by": "convert"}, "rank_by", r"rank_by \(CTRZOO_RANK_BY\): unknown task 'convert'; .* learns click, "
                                        r"converted"),
    ({"task_weights": {"clicks": 1.0}}, "task_weights", r"task_weights \(CTRZOO_TASK_WEIGHTS\): unknown task "
                                                      r"'clicks'"),
    ({"task_weights": {"click": 1.0, "converted": -0.5}}, "task_weights", r"the weight of 'converted' must be a "
                                                                         r"finite number >= 0, got -0.5"),
    ({"task_weights": {"click": math.nan}}, "task_weights", r"the weight of 'click' must be a finite number >= 0, "
                                                           r"got nan"),
    ({"task_weights": {"click": math.inf}}, "task_weights", r"finite number >= 0, got inf"),
    ({"task_weights": {"click": 0.0}}, "task_weights", r"every weight is 0"),
    ({"rank_by": "click", "task_weights": {"click": 1.0}}, "task_weights", r"are both set: give one"),
])
def test_bad_ranking_settings_refuse_the_bundle(bundles, settings, field, message):
    with pytest.raises(SettingsError, match=message) as info:
        load_model(bundles["mmoe"], "torch", **settings)
    assert info.value.field == field and "\n" not in str(info.value)


@pytest.mark.parametrize("settings", [{"rank_by": "click"}, {"task_weights": {"click": 1.0}}])
def test_ranking_settings_for_a_single_task_bundle_are_refused(bundles, settings):
    (field,) = settings
    with pytest.raises(SettingsError, match=rf"^{field} \(CTRZOO_{field.upper()}\) is set .* but .*deepfm.* is a "
                                            r"single-task model: unset it") as info:
        load_model(bundles["deepfm"], "onnxruntime", **settings)
    assert info.value.field == field


def test_startup_refuses_bad_settings_and_a_backend_that_cannot_serve_the_bundle(bundles):
    refused = [({"bundle": str(bundles["mmoe"]), "rank_by": "purchase"}, SettingsError, "unknown task 'purchase'"),
               ({"bundle": str(bundles["deepfm"]), "task_weights": {"click": 1.0}}, SettingsError,
                "is a single-task model"),
               ({"bundle": str(bundles["esmm"]), "backend": "fused"}, CtrzooError,
                "the fused backend supports single-task models only; use onnxruntime")]
    for settings, error, message in refused:
        app = create_app(**settings)
        with pytest.raises(error, match=message), TestClient(app):  # the lifespan loads the bundle: startup fails
            pass
        assert app.state.service.model is None


def test_ranking_settings_from_the_environment(bundles, monkeypatch):
    monkeypatch.setenv("CTRZOO_TASK_WEIGHTS", '{"click": 2, "converted": 1}')
    s = ServeSettings.from_env(bundle=str(bundles["esmm"]))
    assert s.task_weights == {"click": 2.0, "converted": 1.0} and s.rank_by is None
    with TestClient(create_app(settings=s)) as client:
        assert client.post("/rank", json={"candidates": ROWS[:3]}).json()["ranked_by"] == "weighted"
    monkeypatch.setenv("CTRZOO_TASK_WEIGHTS", '{"click": true}')
    with pytest.raises(SettingsError, match=r"task_weights \(CTRZOO_TASK_WEIGHTS\): Input should be a valid number"):
        ServeSettings.from_env()
    monkeypatch.setenv("CTRZOO_TASK_WEIGHTS", '{"click": 1')
    with pytest.raises(SettingsError, match=r"task_weights \(CTRZOO_TASK_WEIGHTS\)"):
        ServeSettings.from_env()


def test_a_reload_checks_the_settings_against_the_new_bundle_and_keeps_the_old_one_when_refused(bundles):
    offline = _offline(bundles["mmoe"]).astype(np.float64)
    with TestClient(create_app(str(bundles["ple"]), backend="torch", rank_by="converted",
                               admin_token="t")) as client:
        v1 = client.get("/model").json()["version"]
        refusals = [
            ({"bundle": str(bundles["deepfm"]), "allow_model_change": True}, "is a single-task model"),
            ({"bundle": str(bundles["ple_other_tasks"])}, "tasks ['click', 'converted'] -> ['click', 'purchase']; "
                                                          "a reload keeps the model kind"),
            ({"bundle": str(bundles["ple_other_tasks"]), "allow_model_change": True}, "unknown task 'converted'"),
        ]
        for body, message in refusals:
            r = client.post("/admin/reload", json=body, headers=AUTH)
            assert r.status_code == 409 and message in r.json()["error"], r.text
            assert f"still serving version {v1}" in r.json()["error"]
            answer = client.post("/rank", json={"candidates": ROWS}).json()
            assert answer["model"] == {"name": "ple", "version": v1} and answer["ranked_by"] == "converted"
        r = client.post("/admin/reload", json={"bundle": str(bundles["mmoe"]), "allow_model_change": True},
                        headers=AUTH)
        assert r.status_code == 200, r.text
        answer = client.post("/rank", json={"candidates": ROWS}).json()
        assert answer["model"]["name"] == "mmoe" and answer["ranked_by"] == "converted"
        assert answer["ranking"] == _order(offline[:, 1])


def test_a_tasks_change_is_a_model_change(bundles):
    from serving.app import model_change

    ple, other = load_bundle(bundles["ple"]), load_bundle(bundles["ple_other_tasks"])
    assert model_change(ple, other) == "tasks ['click', 'converted'] -> ['click', 'purchase']"
    assert model_change(ple, load_bundle(bundles["ple"])) == ""


def test_coalesced_requests_each_get_their_own_task_rows():
    """The coalescer merges requests' rows and hands each its slice: rows of [B, T] stay whole."""

    class Rows:
        def predict(self, batch):
            n = len(batch.sparse)
            return np.stack([np.arange(n), 100 + np.arange(n)], axis=1).astype(np.float32)

    from ctrzoo.features import EncodedBatch

    def batch(n):
        return EncodedBatch(np.zeros((n, 1), np.int64), np.zeros((n, 0), np.float32), np.zeros((n, 0, 0), np.int64))

    coalescer = Coalescer(64)
    model = SimpleNamespace(predictor=Rows())

    async def run():
        return await asyncio.gather(*(coalescer.predict(model, batch(n)) for n in (2, 3)))

    try:
        first, second = asyncio.run(run())
    finally:
        coalescer.close()
    assert first.shape == (2, 2) and second.shape == (3, 2)
    assert first[:, 1].tolist() == [100, 101] and second[:, 0].tolist() in ([2, 3, 4], [0, 1, 2])
    assert (second[:, 1] - second[:, 0]).tolist() == [100, 100, 100]


def test_task_ranking_scores():
    probs = np.array([[0.1, 0.9], [0.5, 0.2]], dtype=np.float32)
    assert task_ranking((), None, None) is None
    by = task_ranking(TASKS, None, None)
    assert by.ranked_by == "click" and by.score(probs).tolist() == probs[:, 0].astype(np.float64).tolist()
    weighted = task_ranking(TASKS, None, {"converted": 2.0, "click": 1.0})
    np.testing.assert_allclose(weighted.score(probs), [0.1 + 1.8, 0.5 + 0.4], rtol=1e-7)
    scores = weighted.task_scores(probs)
    assert list(scores) == ["click", "converted"] and scores["converted"].flags.c_contiguous


class _Catalogue:
    """The part of a retrieval catalogue /recommend reads: ids and the items' raw features."""

    def __init__(self, items: list[dict]):
        import pyarrow as pa

        self.items, self.ids = items, pa.array([f"it{k}" for k in range(len(items))])

    def rows(self, pos) -> list[dict]:
        return [self.items[i] for i in pos]

    def __len__(self) -> int:
        return len(self.items)


class _Retriever:
    """Retrieval stand-in: every catalogue item, in catalogue order (the ranking model reorders them)."""

    def __init__(self, items: list[dict]):
        self.catalogue = _Catalogue(items)

    def retrieve(self, context, n):
        pos = np.arange(min(n, len(self.catalogue)))
        return pos, np.linspace(1.0, 0.0, len(pos))


ITEM_COLUMNS = ("item", "price", "tags")


def _recommend_client(bundle, **settings) -> TestClient:
    from serving import recommend

    items = [{k: r[k] for k in ITEM_COLUMNS} for r in ROWS]
    app = create_app(str(bundle), backend="torch", **settings)
    app.state.recommender = recommend.Recommender(_Retriever(items), frozenset(ITEM_COLUMNS), frozenset(),
                                                  recommend.RetrievalInfo(version="v", index="all",
                                                                          catalogue_items=len(items)))
    app.include_router(recommend.router)
    return TestClient(app)


def test_recommend_orders_by_the_ranking_score_and_gives_each_item_its_task_scores(bundles):
    context = {"user": "u3", "clicks": "i1^i2"}
    rows = [{**r, **context} for r in ROWS]
    b = load_bundle(bundles["esmm"])
    offline = runtime.load(b, "torch").predict(b.codec.encode(rows)).astype(np.float64)
    weighted = offline @ np.array([0.5, 2.0])
    with _recommend_client(bundles["esmm"], task_weights={"click": 0.5, "converted": 2.0}) as client:
        r = client.post("/recommend", json={"context": context, "top_k": 7, "candidates": len(ROWS)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ranked_by"] == "weighted" and body["candidates"] == len(ROWS)
        order = _order(weighted)[:7]
        assert [i["item_id"] for i in body["items"]] == [f"it{k}" for k in order]
        for item, k in zip(body["items"], order):
            assert item["score"] == pytest.approx(weighted[k], rel=1e-12)
            assert item["task_scores"] == {"click": offline[k, 0], "converted": offline[k, 1]}
    with _recommend_client(bundles["deepfm"]) as client:  # single-task: the answer as before
        body = client.post("/recommend", json={"context": context, "top_k": 3}).json()
        assert set(body) == {"request_id", "model", "retrieval", "candidates", "items", "features", "timing"}
        assert body["request_id"] is None and len(body["items"]) == 3
        assert set(body["items"][0]) == {"item_id", "score", "retrieval_score"}


def test_ctrzoo_serve_checks_the_ranking_settings_before_starting(bundles, monkeypatch, capsys):
    import os

    from ctrzoo.cli import main

    monkeypatch.setattr(os, "environ", dict(os.environ))  # serve sets CTRZOO_* for its workers: not for later tests
    started = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: started.append(kw))
    mmoe = str(bundles["mmoe"])
    for args, message in [(["--rank-by", "clicks"], "rank_by (CTRZOO_RANK_BY): unknown task 'clicks'"),
                          (["--task-weights", '{"click": 1'], "--task-weights: not valid JSON"),
                          (["--task-weights", '{"click": -1}'], "the weight of 'click' must be a finite number"),
                          (["--backend", "tvm"], "the tvm backend supports single-task models only")]:
        assert main(["serve", "--bundle", mmoe, *args]) == 2
        assert message in capsys.readouterr().err
    assert main(["serve", "--bundle", str(bundles["deepfm"]), "--rank-by", "click"]) == 2
    assert "is a single-task model" in capsys.readouterr().err
    assert not started
    assert main(["serve", "--bundle", mmoe, "--task-weights", '{"converted": 2}']) == 0
    assert len(started) == 1 and os.environ["CTRZOO_TASK_WEIGHTS"] == '{"converted": 2}'
    assert ServeSettings.from_env().task_weights == {"converted": 2.0}  # what the workers will read
