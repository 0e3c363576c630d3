"""The ranking service: offline/online parity, bad input (4xx, never 5xx), fuzzing, hot reload."""

from __future__ import annotations

import json
import threading
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctrzoo.bundle import load_bundle
from ctrzoo.data.dataset import PreparedDataset
from ctrzoo.evaluate import score_split

warnings.filterwarnings("ignore", category=DeprecationWarning)
from fastapi.testclient import TestClient  # noqa: E402

from serving.app import create_app  # noqa: E402

SMALL = {"emb_dim": 8, "mlp": [32, 16]}
USER_FIELDS = ["userid", "pid", "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
               "shopping_level", "occupation", "new_user_class_level", "click_sequence"]


@pytest.fixture(scope="module")
def bundles(serving_bundles):
    return serving_bundles  # tests/conftest.py: shared with tests/test_reload.py and tests/test_bundle.py


@pytest.fixture(scope="module")
def din_client(bundles):
    with TestClient(create_app(str(bundles["din"]), admin_token="secret")) as client:
        yield client


def _offline_scores(bundle_dir, data_dir):
    _, probs, _ = score_split(load_bundle(bundle_dir), PreparedDataset.open(data_dir), "test")
    raw = pq.read_table(PreparedDataset.open(data_dir).raw_path("test")).to_pylist()
    return raw, probs


@pytest.mark.parametrize("rank_lane", [True, False], ids=["plain-asgi-lane", "fastapi-route"])
def test_deepfm_rank_equals_offline_scores(bundles, synth_prepared, rank_lane):
    raw, offline = _offline_scores(bundles["deepfm"], synth_prepared["criteo"])
    rows = [{k: v for k, v in r.items() if k != "label"} for r in raw[:300]]
    with TestClient(create_app(str(bundles["deepfm"]), rank_lane=rank_lane)) as client:
        for start in range(0, 300, 100):
            r = client.post("/rank", json={"candidates": rows[start:start + 100]})
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(r.json()["scores"], offline[start:start + 100], rtol=0, atol=1e-6)
        bad = client.post("/rank", content=b'{"candidates": [{"I1": "many"}]}',
                          headers={"content-type": "application/json"})
        assert bad.status_code == 422 and bad.json()["field"] == "I1"
        schema = client.get("/openapi.json").json()["paths"]["/rank"]["post"]["requestBody"]
        assert "candidates" in schema["content"]["application/json"]["schema"]["properties"]


def test_din_rank_with_sequence_in_context_equals_offline_scores(bundles, synth_prepared, din_client):
    raw, offline = _offline_scores(bundles["din"], synth_prepared["taobao"])
    by_context: dict[str, list[int]] = {}
    for i, r in enumerate(raw[:400]):
        key = json.dumps({k: r[k] for k in USER_FIELDS}, sort_keys=True, default=str)
        by_context.setdefault(key, []).append(i)
    assert any(r["click_sequence"] for r in raw[:400])
    for key, idx in list(by_context.items())[:60]:
        context = json.loads(key)
        cands = [{k: v for k, v in raw[i].items() if k not in USER_FIELDS and k not in ("clk", "time_stamp")}
                 for i in idx]
        r = din_client.post("/rank", json={"context": context, "candidates": cands, "request_id": "p"})
        assert r.status_code == 200, r.text
        body = r.json()
        np.testing.assert_allclose(body["scores"], offline[idx], rtol=0, atol=1e-6)
        assert body["ranking"] == sorted(range(len(idx)), key=lambda j: -body["scores"][j])
        assert body["request_id"] == "p" and body["model"]["name"] == "din"


def test_top_k_missing_and_unknown_values(din_client):
    r = din_client.post("/rank", json={"candidates": [{"adgroup_id": 1}, {"adgroup_id": "never-seen"}, {}],
                                       "top_k": 2, "context": {"typo_feature": 3}})
    assert r.status_code == 200  # unknown feature names are ignored (documented default)
    assert len(r.json()["ranking"]) == 2 and len(r.json()["scores"]) == 3


def test_sequence_longer_than_max_len_is_truncated_to_the_most_recent(din_client, bundles):
    max_len = load_bundle(bundles["din"]).spec["click_sequence"].max_len
    recent = [str(i) for i in range(1000, 1000 + max_len)]
    long = ["1", "2", "3", *recent]
    a = din_client.post("/rank", json={"context": {"click_sequence": long}, "candidates": [{"adgroup_id": 5}]})
    b = din_client.post("/rank", json={"context": {"click_sequence": recent}, "candidates": [{"adgroup_id": 5}]})
    assert a.status_code == b.status_code == 200
    assert a.json()["scores"] == b.json()["scores"]


BAD_BODIES = [
    ("{not json", "json"),
    ('{"candidates": 3}', "candidates"),
    ('{"candidates": [{"price": NaN}]}', "price"),
    ('{"candidates": [{"price": Infinity}]}', "price"),
    ('{"candidates": [{"price": "cheap"}]}', "price"),
    ('{"candidates": [{"userid": {"nested": 1}}]}', "userid"),
    ('{"candidates": [{"click_sequence": [1, [2]]}]}', "click_sequence"),
    ('{"candidates": [{"adgroup_id": [1, 2]}]}', "adgroup_id"),
    ('{"candidates": [1, 2]}', "candidates.0"),
    ('{"candidates": [], "top_k": -1}', "top_k"),
    ('{"candidates": [{}], "surprise": 1}', "surprise"),
    ('{"context": {"pid": "a"}, "candidates": [{"pid": "b"}]}', "pid"),
    ("[]", None),
]


@pytest.mark.parametrize("body,field", BAD_BODIES)
def test_bad_input_is_a_4xx_json_error_naming_the_field(din_client, body, field):
    r = din_client.post("/rank", content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    payload = r.json()
    assert payload["error"]
    if field is not None:
        assert field in (payload["field"] or "") or field in json.dumps(payload["detail"]), payload


def test_limits_too_many_candidates_and_oversized_body(bundles):
    with TestClient(create_app(str(bundles["din"]), max_candidates=10, max_body_bytes=2000)) as client:
        r = client.post("/rank", json={"candidates": [{}] * 11})
        assert r.status_code == 422 and r.json()["field"] == "candidates"
        r = client.post("/rank", content=json.dumps({"candidates": [{"brand": "x" * 3000}]}),
                        headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["field"] == "body"


def test_unknown_features_rejected_when_configured(bundles):
    with TestClient(create_app(str(bundles["din"]), unknown_features="reject")) as client:
        r = client.post("/rank", json={"candidates": [{"adgroup_idd": 1}]})
        assert r.status_code == 422 and r.json()["field"] == "adgroup_idd"


def test_health_ready_metrics_model(din_client):
    assert din_client.get("/healthz").json() == {"status": "ok"}
    ready = din_client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "din"
    assert din_client.post("/rank", json={"candidates": [{"adgroup_id": 1}, {}]}).status_code == 200
    text = din_client.get("/metrics").text
    assert 'ctrzoo_requests_total{endpoint="/rank",status="200"}' in text
    assert "ctrzoo_request_seconds_bucket" in text and "ctrzoo_candidates_scored_total" in text
    assert f'version="{ready["version"]}"' in text
    model = din_client.get("/model").json()
    kinds = {f["name"]: f["kind"] for f in model["features"]}
    assert kinds["click_sequence"] == "sequence" and kinds["price"] == "numeric"


def test_admin_reload_needs_the_token(bundles):
    with TestClient(create_app(str(bundles["deepfm"]))) as client:
        assert client.post("/admin/reload").status_code == 403
    with TestClient(create_app(str(bundles["deepfm"]), admin_token="t")) as client:
        assert client.post("/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 401
        r = client.post("/admin/reload", headers={"Authorization": "Bearer t"},
                        json={"bundle": str(bundles["deepfm2"])})
        assert r.status_code == 200 and r.json()["version"] == load_bundle(bundles["deepfm2"]).version


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
feature_names = st.sampled_from(["userid", "adgroup_id", "price", "click_sequence", "pid", "brand", "x"])
candidate = st.dictionaries(feature_names, json_values, max_size=5)
request_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"candidates": st.lists(candidate, max_size=5)},
                          optional={"context": candidate, "top_k": json_values, "request_id": json_values}),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)  # the same examples every run: a failure reproduces, CI does not flake
@given(body=request_bodies)
def test_fuzzed_requests_never_cause_a_server_error(din_client, body):
    text = json.dumps(body, allow_nan=True)
    r = din_client.post("/rank", content=text, headers={"content-type": "application/json"})
    assert r.status_code < 500, (text, r.text)
    if r.status_code != 200:
        assert "error" in r.json()


class _CountingPredictor:
    """Records the batch sizes it is called with; a batch with a negative id raises."""

    def __init__(self):

        self.calls: list[int] = []
        self.gate = threading.Event()  # held closed until every request is queued

    def predict(self, batch):
        self.gate.wait(10)
        self.calls.append(len(batch))
        if (batch.sparse < 0).any():
            raise ValueError("bad batch")
        return batch.sparse[:, 0].astype(np.float32)


def test_coalescer_merges_queued_requests_up_to_max_rows_and_delivers_slices():
    import asyncio
    from types import SimpleNamespace

    from ctrzoo.features import EncodedBatch
    from serving.batcher import Coalescer

    def batch(first_id, rows):
        return EncodedBatch(np.arange(first_id, first_id + rows, dtype=np.int64)[:, None],
                            np.zeros((rows, 0), np.float32), np.zeros((rows, 0, 0), np.int64))

    predictor = _CountingPredictor()
    model = SimpleNamespace(predictor=predictor)

    async def main():
        c = Coalescer(max_rows=100)
        try:
            sizes = [40, 40, 40, 30, 90, 5]
            starts = np.cumsum([0, *sizes[:-1]]) * 10
            tasks = [asyncio.create_task(c.predict(model, batch(int(s), n))) for s, n in zip(starts, sizes)]
            await asyncio.sleep(0.05)  # all queued; the predict thread holds at most the first
            predictor.gate.set()
            results = await asyncio.gather(*tasks)
            for s, n, r in zip(starts, sizes, results):
                np.testing.assert_array_equal(r, np.arange(s, s + n, dtype=np.float32))
            bad = await asyncio.gather(c.predict(model, batch(-5, 3)), return_exceptions=True)
            assert isinstance(bad[0], ValueError)
        finally:
            c.close()

    asyncio.run(main())
    assert sum(predictor.calls[:-1]) == 245 and max(predictor.calls[:-1]) <= 100
    assert len(predictor.calls[:-1]) < 6, predictor.calls  # queued requests were merged
