"""The service's input contract (issue 14, items 4-6): no silent constant scores, every 4xx a JSON body
``{"error", "field", "detail"}`` naming its field, Content-Type, strict integers, slow clients, admin paths."""

# ruff: noqa: UP031 (request bodies with NaN and other non-JSON literals are spliced with %, braces and all)
from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings

import httpx
import numpy as np
import pandas as pd
import pytest

from ctrzoo.bundle import load_bundle
from ctrzoo.errors import SpecError
from ctrzoo.export import export_onnx
from ctrzoo.train.run import train_bundle

warnings.filterwarnings("ignore", category=DeprecationWarning)
from fastapi.testclient import TestClient  # noqa: E402

from serving.app import create_app  # noqa: E402

JSON = {"content-type": "application/json"}
SMALL = {"emb_dim": 8, "mlp": [16]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A DIN ranking bundle (ONNX) and a retrieval bundle with a flat index, on a few thousand synthetic rows."""
    pytest.importorskip("faiss")
    from ctrzoo.data.prepare import prepare
    from ctrzoo.retrieval.retriever import index_catalogue
    from ctrzoo.retrieval.train import RetrievalConfig, train_retrieval
    from ctrzoo.synth import generate

    root = tmp_path_factory.mktemp("contract")
    generate("taobao", 4000, 7, root / "raw.csv")
    prepare("taobao", [root / "raw.csv"], root / "data")
    train_bundle("din", root / "data", root / "bundles" / "din", progress=False, verbose=False,
                 overrides={"epochs": 1, "max_steps": 5, "seed": 1, "threads": 1, "hparams": SMALL})
    export_onnx(root / "bundles" / "din")
    train_retrieval(root / "data", root / "retrieval", progress=False, verbose=False,
                    config=RetrievalConfig(epochs=1, max_steps=5, batch_size=256, recall_k=[10]))
    index_catalogue(root / "retrieval", "flat-ip", log=None)
    return root


@pytest.fixture(scope="module")
def client(stack):
    app = create_app(str(stack / "bundles" / "din"), retrieval=str(stack / "retrieval"), admin_token="secret",
                     bundle_root=str(stack / "bundles"))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def route_client(stack):
    """/rank through FastAPI's route instead of the plain-ASGI lane."""
    with TestClient(create_app(str(stack / "bundles" / "din"), rank_lane=False)) as c:
        yield c


def _raw_columns(stack) -> list[str]:
    return load_bundle(stack / "bundles" / "din").spec.raw_columns()


def _error(r, status: int, field: str | None) -> dict:
    """The documented error shape, with this status and field."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error", "field", "detail"} and body["error"], body
    assert body["field"] == field, body
    return body


def _metric(text: str, name: str, endpoint: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{endpoint="{endpoint}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(params=["lane", "route"])
def rank_client(request, client, route_client):
    return client if request.param == "lane" else route_client


# -- item 4: no silent constant scores --------------------------------------------------------------------


def test_rank_response_names_absent_and_unknown_features_and_metrics_count_them(client, stack):
    columns = _raw_columns(stack)
    before = client.get("/metrics").text
    r = client.post("/rank", json={"context": {"userid": 1, "typo_feature": 3},
                                   "candidates": [{"adgroup_id": 1, "pricee": 2}, {"adgroup_id": 2}]})
    assert r.status_code == 200, r.text
    features = r.json()["features"]
    assert features["unknown"] == ["pricee", "typo_feature"]
    assert features["absent"] == sorted(set(columns) - {"userid", "adgroup_id"})
    after = client.get("/metrics").text
    assert _metric(after, "ctrzoo_unknown_feature_names_total", "/rank") == \
        _metric(before, "ctrzoo_unknown_feature_names_total", "/rank") + 2
    assert _metric(after, "ctrzoo_requests_with_absent_features_total", "/rank") == \
        _metric(before, "ctrzoo_requests_with_absent_features_total", "/rank") + 1
    full = client.post("/rank", json={"candidates": [dict.fromkeys(columns, None) | {"price": 1.0}]})
    assert full.status_code == 200 and full.json()["features"] == {"absent": [], "unknown": []}
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "features" in schema["RankResponse"]["required"] and "absent" in schema["FeatureReport"]["properties"]


def test_rank_naming_no_model_feature_is_a_422_listing_the_expected_ones(rank_client, stack):
    r = rank_client.post("/rank", json={"context": {"user": 1}, "candidates": [{"item": 1}, {"item": 2}]})
    body = _error(r, 422, "candidates")
    assert body["detail"][0]["expected"] == sorted(_raw_columns(stack))
    assert body["detail"][0]["unknown"] == ["item", "user"] and "adgroup_id" in body["error"]
    r = rank_client.post("/rank", json={"candidates": [{}, {}]})
    _error(r, 422, "candidates")


def test_recommend_reports_context_names(client):
    r = client.post("/recommend", json={"context": {"click_sequence": [], "typo": 1}, "top_k": 2})
    assert r.status_code == 200, r.text
    features = r.json()["features"]
    assert features["unknown"] == ["typo"]
    assert "userid" in features["absent"] and "adgroup_id" not in features["absent"]  # items: from the catalogue
    assert "click_sequence" not in features["absent"]


def test_encode_refuses_a_table_with_renamed_or_missing_columns(stack):
    spec = load_bundle(stack / "bundles" / "din").spec
    enc = spec.compile()
    columns = spec.raw_columns()
    frame = pd.DataFrame({c: ["1", "2"] for c in columns}).assign(price=[1.0, 2.0], click_sequence=["1", "2"])
    assert len(enc.encode(frame)) == 2
    with pytest.raises(SpecError, match="none of the columns") as exc:
        enc.encode(frame.rename(columns=lambda c: c.upper()))
    assert exc.value.field == columns[0] and all(c in str(exc.value) for c in columns)
    with pytest.raises(SpecError, match="missing from the data") as exc:
        enc.encode(frame.drop(columns=["price", "brand"]))
    assert exc.value.field == "brand"  # the spec's order
    partial = enc.encode(frame.drop(columns=["price", "brand"]), allow_missing=True)
    assert len(partial) == 2
    rows = enc.encode([{"adgroup_id": "1"}])  # rows of dicts: an absent key is a missing value, as before
    assert len(rows) == 1


# -- item 5: errors inside the contract ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e19", "1e300", "-1e300", '"\\ud800"', "NaN", "Infinity"])
def test_recommend_refuses_unusable_context_values_naming_the_field(client, value):
    r = client.post("/recommend", content=f'{{"context": {{"pid": {value}}}}}', headers=JSON)
    _error(r, 422, "pid")


def test_recommend_refuses_a_lone_surrogate_anywhere(client):
    _error(client.post("/recommend", content='{"context": {"pid": "1"}, "request_id": "\\udfff"}', headers=JSON),
           422, "request_id")
    _error(client.post("/recommend", content='{"context": {"\\ud800": 1}}', headers=JSON), 422, "context")
    _error(client.post("/recommend", content='{"context": {"click_sequence": ["1", "\\ud800"]}}', headers=JSON),
           422, "click_sequence")


@pytest.mark.parametrize("value,field_in", [("1e300", "candidates"), ("1e19", "context")])
def test_rank_refuses_a_huge_float_category_naming_the_field(rank_client, value, field_in):
    body = ('{"context": {"pid": %s}, "candidates": [{"adgroup_id": 1}]}' % value if field_in == "context"
            else '{"candidates": [{"adgroup_id": %s}]}' % value)
    _error(rank_client.post("/rank", content=body, headers=JSON), 422, "pid" if field_in == "context" else "adgroup_id")


@pytest.mark.parametrize("native", [True, False], ids=["c-gathers", "python-steps"])
@pytest.mark.parametrize("column", ["[NaN]", '[NaN, "x"]', '["x", NaN]', '[1, NaN, "x"]', '[Infinity, "x"]'])
def test_nan_category_is_refused_alone_or_beside_strings(client, column, native):
    encoder = client.app.state.service.model.codec.request_encoder
    encoder.use_native = native
    try:
        candidates = ", ".join('{"adgroup_id": %s}' % v for v in column.strip("[]").split(", "))
        r = client.post("/rank", content='{"candidates": [%s]}' % candidates, headers=JSON)
        _error(r, 422, "adgroup_id")
    finally:
        encoder.use_native = True
    enc = client.app.state.service.model.bundle.spec.compile()
    with pytest.raises(SpecError) as exc:  # offline: the same rule for rows of dicts
        enc.encode([{"adgroup_id": float("nan")}, {"adgroup_id": "x"}])
    assert exc.value.field == "adgroup_id"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=latin-1", "application/jsonx"])
def test_rank_needs_a_json_content_type(rank_client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = rank_client.post("/rank", content=b'{"candidates": [{"adgroup_id": 1}]}', headers=headers)
    _error(r, 415, "content-type")


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8"])
def test_rank_accepts_json_with_or_without_charset(rank_client, content_type):
    r = rank_client.post("/rank", content=b'{"candidates": [{"adgroup_id": 1}]}',
                         headers={"content-type": content_type})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("top_k", ['"3"', "true", "3.0", "false"])
def test_top_k_must_be_an_integer(rank_client, client, top_k):
    r = rank_client.post("/rank", content='{"candidates": [{"adgroup_id": 1}], "top_k": %s}' % top_k, headers=JSON)
    _error(r, 422, "top_k")  # orjson's fast path refuses it, and so does pydantic's model behind it
    r = rank_client.post("/rank", content='{"candidates": [{"adgroup_id": 1}], "top_k": %s, "request_id": 5}' % top_k,
                         headers=JSON)
    body = _error(r, 422, r.json()["field"])  # pydantic's path (request_id is wrong too): top_k among the errors
    assert "top_k" in [".".join(map(str, d["loc"])) for d in body["detail"]], body
    _error(client.post("/recommend", content='{"context": {}, "top_k": %s}' % top_k, headers=JSON), 422, "top_k")


@pytest.mark.parametrize("path", ["/recommend", "/admin/reload"])
def test_bad_utf8_bodies_are_json_errors(client, path):
    headers = {**JSON, "authorization": "Bearer secret"}
    r = client.post(path, content=b'{"context": {"pid": "\xff\xfe"}}', headers=headers)
    body = _error(r, 400, "body")
    assert "UnicodeDecodeError" in body["error"]


def test_starlette_and_fastapi_errors_have_the_documented_shape(client):
    _error(client.get("/nowhere"), 404, None)
    r = client.get("/rank")
    _error(r, 405, None)
    assert "POST" in r.headers["allow"]
    _error(client.put("/admin/reload"), 405, None)
    r = client.post("/admin/reload", json={"bundle": 3}, headers={"authorization": "Bearer secret"})
    _error(r, 422, "bundle")
    _error(client.post("/recommend", json={"context": {}, "candidates": 0}), 422, "candidates")
    _error(client.post("/recommend", content=b"{", headers=JSON), 422, "body")
    _error(client.post("/rank", content=b"{", headers=JSON), 422, "body")


# -- admin ---------------------------------------------------------------------------------------------------


def test_admin_token_checked_before_anything_else(client):
    _error(client.post("/admin/reload"), 401, "authorization")
    _error(client.post("/admin/reload", headers={"authorization": "Bearer secreT"}), 401, "authorization")
    _error(client.post("/admin/reload", headers={"authorization": "Bearer secreté".encode()}), 401, "authorization")
    with TestClient(create_app(str(client.app.state.service.settings.bundle))) as no_token:
        _error(no_token.post("/admin/reload"), 403, None)


def test_reload_paths_outside_the_bundle_root_or_unusable_are_4xx_naming_bundle(client, stack, tmp_path):
    auth = {"authorization": "Bearer secret"}
    din = stack / "bundles" / "din"
    ok = client.post("/admin/reload", json={"bundle": str(din)}, headers=auth)
    assert ok.status_code == 200, ok.text
    _error(client.post("/admin/reload", json={"bundle": str(stack / "data")}, headers=auth), 403, "bundle")
    _error(client.post("/admin/reload", json={"bundle": str(din / ".." / ".." / "data")}, headers=auth), 403, "bundle")
    link = stack / "bundles" / "escape"
    if not link.exists():
        os.symlink(stack / "data", link)
    _error(client.post("/admin/reload", json={"bundle": str(link)}, headers=auth), 403, "bundle")
    _error(client.post("/admin/reload", json={"bundle": str(stack / "bundles" / ("x" * 5000))}, headers=auth),
           422, "bundle")
    _error(client.post("/admin/reload", json={"bundle": str(stack / "bundles" / "a\x00b")}, headers=auth),
           422, "bundle")
    missing = client.post("/admin/reload", json={"bundle": str(stack / "bundles" / "missing")}, headers=auth)
    assert 400 <= missing.status_code < 500 and missing.json()["field"] == "bundle"
    assert client.post("/rank", json={"candidates": [{"adgroup_id": 1}]}).status_code == 200  # still serving


# -- slow clients --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recv_all(sock: socket.socket, limit_s: float) -> bytes:
    sock.settimeout(limit_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data + b"<timeout>"
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize("protocol", ["TimedHttpToolsProtocol", "TimedH11Protocol"])
def test_slow_and_idle_clients_are_timed_out(stack, monkeypatch, protocol):
    import uvicorn

    from serving import server as protocols

    http = getattr(protocols, protocol)
    if http is None:
        pytest.skip("httptools is not installed")
    monkeypatch.setattr(http, "read_timeout_s", 1.0)
    app = create_app(str(stack / "bundles" / "din"), read_timeout_s=1.0, admin_token="t")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=http))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        for path in ("/rank", "/admin/reload"):  # the lane and a FastAPI route: a body trickling too slowly
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                          f"authorization: Bearer t\r\ncontent-length: 100\r\n\r\n{{\"cand".encode())
                t0 = time.perf_counter()
                reply = _recv_all(s, 5)
                waited = time.perf_counter() - t0
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), reply
            assert json.loads(body)["field"] == "body" and 0.8 < waited < 3, (waited, reply)
        with socket.create_connection(("127.0.0.1", port)) as s:  # an idle socket is closed
            t0 = time.perf_counter()
            assert _recv_all(s, 5) == b""
            assert time.perf_counter() - t0 < 3
        with socket.create_connection(("127.0.0.1", port)) as s:  # headers trickling: closed as well
            s.sendall(b"GET /healthz HTTP/1.1\r\nhost")
            time.sleep(0.5)
            s.sendall(b": x\r\n")
            t0 = time.perf_counter()
            assert _recv_all(s, 5) == b""
            assert time.perf_counter() - t0 < 3
        ok = httpx.post(f"http://127.0.0.1:{port}/rank", json={"candidates": [{"adgroup_id": 1}]})
        assert ok.status_code == 200  # a normal client is unaffected
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_read_timeout_setting_from_env(monkeypatch):
    from serving.settings import ServeSettings

    monkeypatch.setenv("CTRZOO_READ_TIMEOUT_S", "2.5")
    monkeypatch.setenv("CTRZOO_BUNDLE_ROOT", "/srv/bundles")
    s = ServeSettings.from_env()
    assert s.read_timeout_s == 2.5 and s.bundle_root == "/srv/bundles"


def test_unknown_values_stay_scored_and_flagged_not_refused(client):
    r = client.post("/rank", json={"candidates": [{"adgroup_id": "never-seen"}, {"adgroup_id": 1}]})
    assert r.status_code == 200 and r.json()["features"]["unknown"] == []
    assert np.isfinite(r.json()["scores"]).all()



@pytest.mark.parametrize("body", [b'{"candidates": [{"pid": "\xff\xfe"}]}', b'{"candidates": [{"pid": "\\ud800"}]}',
                                  b'{"candidates": [{"pid": 1}], "request_id": "\\udfff"}'])
def test_rank_refuses_invalid_unicode_as_invalid_json(rank_client, body):
    body = _error(rank_client.post("/rank", content=body, headers=JSON), 422, "body")
    assert body["detail"][0]["type"] == "json_invalid"
