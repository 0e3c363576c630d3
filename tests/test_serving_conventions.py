"""The service's conventions without a model: typed settings, per-app state reached through a dependency,
one error shape, the shared predict-with-timeout. No bundle is loaded (the lifespan never runs), so these take
milliseconds."""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from ctrzoo.errors import CtrzooError
from serving.app import _replace_bundle, create_app
from serving.batcher import Coalescer
from serving.deps import get_state
from serving.errors import PredictionTimeout, error_body
from serving.rank import predict_scores
from serving.settings import ServeSettings, SettingsError

warnings.filterwarnings("ignore", category=DeprecationWarning)
from fastapi.testclient import TestClient  # noqa: E402

SERVING = Path(__file__).resolve().parents[1] / "serving"


def _clean_env(monkeypatch) -> None:
    for name in ServeSettings.model_fields:
        monkeypatch.delenv(f"CTRZOO_{name.upper()}", raising=False)


def test_settings_type_the_environment_and_arguments_win(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("CTRZOO_MAX_CANDIDATES", "500")
    monkeypatch.setenv("CTRZOO_COALESCE", "0")
    monkeypatch.setenv("CTRZOO_REQUEST_TIMEOUT_S", "0.5")
    monkeypatch.setenv("CTRZOO_UNKNOWN_FEATURES", "reject")
    monkeypatch.setenv("CTRZOO_THREADS", "")  # empty: unset, as before
    monkeypatch.setenv("CTRZOO_ADMIN_TOKEN", "")
    monkeypatch.setenv("CTRZOO_WORKERS", "4")  # the CLI's, not a setting: ignored
    s = ServeSettings.from_env(bundle="b", threads=None)
    assert (s.bundle, s.max_candidates, s.coalesce, s.request_timeout_s) == ("b", 500, False, 0.5)
    assert type(s.max_candidates) is int and s.threads is None and s.admin_token is None
    assert s.unknown_features == "reject"
    assert ServeSettings.from_env(max_candidates=7, coalesce=True).max_candidates == 7


@pytest.mark.parametrize(("variable", "value", "field"), [
    ("CTRZOO_UNKNOWN_FEATURES", "rejct", "unknown_features"),
    ("CTRZOO_MAX_CANDIDATES", "many", "max_candidates"),
    ("CTRZOO_RANK_LANE", "maybe", "rank_lane"),
])
def test_a_bad_setting_is_one_error_naming_its_variable(monkeypatch, variable, value, field):
    _clean_env(monkeypatch)
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        ServeSettings.from_env()
    assert isinstance(info.value, CtrzooError) and info.value.field == field
    assert variable in str(info.value) and repr(value) in str(info.value)
    monkeypatch.delenv(variable)
    with pytest.raises(SettingsError, match="unknown setting 'max_candidate'"):
        ServeSettings.from_env(max_candidate=3)


def test_settings_are_frozen_and_a_reload_swaps_a_copy(monkeypatch):
    _clean_env(monkeypatch)
    s = ServeSettings.from_env(bundle="/a", admin_token="secret", max_candidates=9)
    with pytest.raises(ValidationError, match="frozen"):
        s.bundle = "/b"
    t = _replace_bundle(s, "/b")
    assert (s.bundle, t.bundle) == ("/a", "/b")
    assert t.model_dump(exclude={"bundle"}) == s.model_dump(exclude={"bundle"})
    assert "secret" not in repr(s)


def test_each_app_has_its_own_state_reached_through_the_dependency(monkeypatch):
    """Routes read the app's state (get_state), not a closure or a module global: two apps in one process
    answer by their own settings; before the lifespan loads a model, /readyz and /rank are 503 in the one shape."""
    _clean_env(monkeypatch)
    guarded = create_app("/nowhere/b", admin_token="t")
    a, b = TestClient(create_app("/nowhere/a")), TestClient(guarded)  # not entered: no lifespan, no model
    r = a.post("/admin/reload")
    assert r.status_code == 403 and r.json() == {"error": "reload is disabled: set CTRZOO_ADMIN_TOKEN to enable it",
                                                 "field": None, "detail": None}
    r = b.post("/admin/reload", headers={"authorization": "Bearer x"})
    assert r.status_code == 401 and r.json()["field"] == "authorization"
    r = b.get("/readyz")
    assert r.status_code == 503 and r.json() == {"error": "model not loaded yet", "field": None, "detail": None}
    for lane in (True, False):
        r = TestClient(create_app("/nowhere/c", rank_lane=lane)).post("/rank", json={"candidates": [{}]})
        assert r.status_code == 503 and r.json()["error"] == "model not loaded yet", (lane, r.text)
    state = guarded.state.service
    assert asyncio.run(get_state(SimpleNamespace(app=guarded))) is state
    assert 'ctrzoo_requests_total{endpoint="/admin/reload",status="401"} 1.0' in state.metrics.render().decode()


class _SlowPredictor:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def predict(self, batch) -> np.ndarray:
        time.sleep(self.seconds)
        return np.zeros(len(batch), dtype=np.float32)


@pytest.mark.parametrize("coalesce", [False, True])
def test_predict_scores_times_out_as_a_prediction_timeout(coalesce):
    """/rank's and /recommend's one way to the model: asyncio.timeout (no extra task), a 503's message."""
    coalescer = Coalescer(8) if coalesce else None
    state = SimpleNamespace(settings=SimpleNamespace(request_timeout_s=0.05), coalescer=coalescer)
    batch = np.zeros((3, 1))

    async def run() -> float:
        assert (await predict_scores(state, SimpleNamespace(predictor=_SlowPredictor(0)), batch)).shape == (3,)
        t0 = time.perf_counter()
        with pytest.raises(PredictionTimeout, match=r"^prediction took longer than 0.05s$"):
            await predict_scores(state, SimpleNamespace(predictor=_SlowPredictor(0.5)), batch)
        return time.perf_counter() - t0

    try:
        assert asyncio.run(run()) < 0.4  # answered at the deadline, not when the model finishes
    finally:
        if coalescer is not None:
            coalescer.close()


def test_one_module_builds_error_bodies():
    """The body's shape is serving.errors' alone: no other serving module builds one itself."""
    assert orjson.loads(error_body("e", "f", [1])) == {"error": "e", "field": "f", "detail": [1]}
    for path in SERVING.glob("*.py"):
        if path.name in ("errors.py", "schemas.py"):
            continue
        text = path.read_text()
        for pattern in ("ErrorResponse(", "JSONResponse(status_code", '{"error":', "wait_for("):
            assert pattern not in text, f"{path.name} has {pattern!r}: use serving.errors"
