"""Hot reload: memory stays bounded, old models are released, bad or foreign bundles are a 409, no request is
lost under load, and SIGHUP reloads a real ``ctrzoo serve`` process."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path

import httpx
import psutil

from ctrzoo.bundle import load_bundle, sha256_file
from serving.app import ServiceState, _settle_gc, create_app
from serving.model_state import load_model
from serving.settings import ServeSettings

warnings.filterwarnings("ignore", category=DeprecationWarning)
from fastapi.testclient import TestClient  # noqa: E402

AUTH = {"Authorization": "Bearer t"}
DEEPFM_ROWS = [{"C1": "a"}, {"C2": "b"}, {}]


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def test_thirty_din_reloads_keep_memory_bounded_and_release_every_old_model(serving_bundles):
    """The reload path froze the GC over the old model's leftovers (its encoder <-> request-encoder cycle),
    so each reload kept a whole model: RSS grew ~linearly with reloads."""
    bundle = str(serving_bundles["din"])
    state = ServiceState(ServeSettings(bundle=bundle, backend="onnxruntime"))
    rss: dict[int, float] = {}
    alive: list[int] = []

    async def run() -> None:
        state.install(await asyncio.to_thread(load_model, bundle, "onnxruntime"))
        _settle_gc(0)
        for i in range(1, 31):
            old = weakref.ref(state.model)
            await state.reload(None)
            if old() is not None:
                alive.append(i)
            if i in (5, 30):
                rss[i] = _rss_mb()

    try:
        asyncio.run(run())
    finally:
        gc.unfreeze()  # leave the test process as it was
    print(f"RSS after 5 reloads {rss[5]:.0f} MB, after 30 {rss[30]:.0f} MB")
    assert rss[30] - rss[5] < 100, rss
    assert alive == [], f"the replaced model was still alive after reloads {alive[:5]}..."


def test_old_model_is_released_after_requests_through_the_coalescer(serving_bundles):
    with TestClient(create_app(str(serving_bundles["deepfm"]), admin_token="t")) as client:
        state = client.app.state.service
        for _ in range(3):
            assert client.post("/rank", json={"candidates": DEEPFM_ROWS}).status_code == 200
        old = weakref.ref(state.model)
        r = client.post("/admin/reload", json={"bundle": str(serving_bundles["deepfm2"])}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert old() is None, gc.get_referrers(old())
    gc.unfreeze()


def _rewrite_manifest(bundle: Path) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    for name in ("model.onnx", "weights.pt", "golden.json", "spec.json"):
        meta["files"][name] = sha256_file(bundle / name)
    meta.get("artifacts", {}).get("onnx", {})["sha256"] = meta["files"]["model.onnx"]
    (bundle / "bundle.json").write_text(json.dumps(meta))


def test_reload_of_a_foreign_or_broken_bundle_is_a_409_and_the_old_model_keeps_serving(serving_bundles, tmp_path,
                                                                                        monkeypatch):
    b = serving_bundles
    foreign_onnx = tmp_path / "foreign_onnx"  # model.onnx of din in a deepfm bundle, manifest made to agree
    shutil.copytree(b["deepfm2"], foreign_onnx)
    shutil.copy(b["din"] / "model.onnx", foreign_onnx / "model.onnx")
    _rewrite_manifest(foreign_onnx)
    other_weights = tmp_path / "other_onnx"  # same layout, another training run's model.onnx
    shutil.copytree(b["deepfm2"], other_weights)
    shutil.copy(b["deepfm"] / "model.onnx", other_weights / "model.onnx")
    _rewrite_manifest(other_weights)
    unlisted = tmp_path / "unlisted"  # model.onnx replaced, manifest untouched
    shutil.copytree(b["deepfm2"], unlisted)
    shutil.copy(b["deepfm"] / "model.onnx", unlisted / "model.onnx")
    truncated = tmp_path / "truncated"
    shutil.copytree(b["deepfm2"], truncated)
    weights = (truncated / "weights.pt").read_bytes()
    (truncated / "weights.pt").write_bytes(weights[: len(weights) // 2])

    with TestClient(create_app(str(b["deepfm"]), admin_token="t")) as client:
        v1 = client.get("/model").json()["version"]
        cases = [
            (foreign_onnx, "smoke prediction failed"),
            (other_weights, "does not reproduce its golden rows with the onnxruntime backend: max |diff|"),
            (unlisted, "model.onnx: checksum differs from the one recorded in the bundle's manifest"),
            (truncated, "weights.pt: checksum differs"),
        ]
        for path, message in cases:
            r = client.post("/admin/reload", json={"bundle": str(path)}, headers=AUTH)
            assert r.status_code == 409, (path.name[:20], r.text)
            body = r.json()
            assert body["field"] == "bundle" and message in body["error"], body
            assert f"still serving version {v1}" in body["error"]
            assert client.get("/model").json()["version"] == v1
            assert client.post("/rank", json={"candidates": DEEPFM_ROWS}).status_code == 200

        def boom(*args, **kwargs):
            raise RuntimeError("unexpected")

        monkeypatch.setattr("serving.app.load_model", boom)
        r = client.post("/admin/reload", json={"bundle": str(b["deepfm2"])}, headers=AUTH)
        assert r.status_code == 409 and "RuntimeError: unexpected" in r.json()["error"], r.text
        assert client.get("/model").json()["version"] == v1
        assert 'ctrzoo_reloads_total{outcome="refused"} 5.0' in client.get("/metrics").text
    gc.unfreeze()


def test_reload_that_changes_model_kind_or_features_needs_allow_model_change(serving_bundles):
    with TestClient(create_app(str(serving_bundles["deepfm"]), admin_token="t")) as client:
        r = client.post("/admin/reload", json={"bundle": str(serving_bundles["din"])}, headers=AUTH)
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert "model 'deepfm' -> 'din'" in error and "features added: " in error and "adgroup_id" in error
        assert "features removed: C1, C10" in error and "allow_model_change" in error
        assert client.get("/model").json()["name"] == "deepfm"
        r = client.post("/admin/reload", json={"bundle": str(serving_bundles["din"]), "allow_model_change": True},
                        headers=AUTH)
        assert r.status_code == 200 and r.json()["model"] == "din", r.text
        assert client.get("/model").json()["name"] == "din"
        for loose in ("yes", 1, "true"):
            r = client.post("/admin/reload", json={"bundle": str(serving_bundles["din"]), "allow_model_change": loose},
                            headers=AUTH)
            assert r.status_code == 422 and "allow_model_change" in r.text, r.text
    gc.unfreeze()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Clients:
    """Threads that post /rank in a loop, recording every request: its phase, its answer or its exception.
    A thread that dies is recorded too, so nothing fails unseen."""

    def __init__(self, base: str, n: int, body: dict):
        self.base, self.body = base, body
        self.phase = 0
        self.records: list[list[tuple[int, str, str | None]]] = [[] for _ in range(n)]  # (phase, outcome, version)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)
        return False

    def _run(self, i: int) -> None:
        mine = self.records[i]
        try:
            with httpx.Client(base_url=self.base, timeout=10) as c:
                while not self.stop.is_set():
                    phase = self.phase
                    try:
                        r = c.post("/rank", json=self.body)
                    except Exception as exc:  # reset, timeout, refused: a failed request
                        mine.append((phase, f"exception {exc.__class__.__name__}: {exc}", None))
                        continue
                    if r.status_code == 200:
                        mine.append((phase, "ok", r.json()["model"]["version"]))
                    else:
                        mine.append((phase, f"status {r.status_code}: {r.text[:200]}", None))
        except BaseException as exc:
            mine.append((self.phase, f"client thread died: {exc!r}", None))

    def wait_for_requests(self, at_least: int = 3, timeout: float = 20) -> None:
        """Until every client has completed ``at_least`` requests in the current phase."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(sum(1 for p, _, _ in mine if p == self.phase) >= at_least for mine in self.records):
                return
            time.sleep(0.05)

    def next_phase(self) -> None:
        self.wait_for_requests()
        self.phase += 1

    def check(self, phases: int) -> None:
        failures = [(i, rec) for i, mine in enumerate(self.records) for rec in mine if rec[1] != "ok"]
        counts = [[sum(1 for p, _, _ in mine if p == ph) for ph in range(phases)] for mine in self.records]
        print(f"requests per client and phase: {counts}")
        assert failures == [], failures[:5]
        assert all(t.is_alive() is False for t in self.threads)
        for i, c in enumerate(counts):
            assert all(n >= 1 for n in c), f"client {i} made no request in some phase: {c}"


def _wait_ready(base: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            r = httpx.get(f"{base}/readyz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server not ready in time")


def test_hot_reload_under_load_loses_no_request(serving_bundles, tmp_path):
    import uvicorn

    bundles = serving_bundles
    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundles["deepfm2"], corrupt)
    (corrupt / "model.onnx").write_bytes(b"\x08\x01garbage")
    app = create_app(str(bundles["deepfm"]), admin_token="t")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    _wait_ready(base)
    v1, v2 = load_bundle(bundles["deepfm"]).version, load_bundle(bundles["deepfm2"]).version
    clients = _Clients(base, 4, {"candidates": DEEPFM_ROWS})
    try:
        with clients:
            clients.next_phase()  # phase 0: before any reload
            good = httpx.post(f"{base}/admin/reload", json={"bundle": str(bundles["deepfm2"])}, headers=AUTH,
                              timeout=60)
            clients.next_phase()  # phase 1: after the good reload
            bad = httpx.post(f"{base}/admin/reload", json={"bundle": str(corrupt)}, headers=AUTH, timeout=60)
            clients.next_phase()  # phase 2: after the refused reload
            clients.wait_for_requests()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        gc.unfreeze()
    assert good.status_code == 200 and bad.status_code == 409, (good.text, bad.text)
    assert "still serving version" in bad.json()["error"]
    clients.check(phases=4)
    for mine in clients.records:  # each client saw the old version, then the new one, and never went back
        versions = [v for _, _, v in mine]
        switches = sum(1 for a, b in itertools.pairwise(versions) if a != b)
        assert versions[0] == v1 and versions[-1] == v2 and switches == 1, (versions[:3], versions[-3:], switches)
        assert all(v == v2 for p, _, v in mine if p >= 2)


def _swap_in(src: Path, dst: Path) -> None:
    """Replace the bundle at ``dst`` with a copy of ``src`` by renames (as a deploy would)."""
    staged = dst.with_name(f".{dst.name}.new")
    shutil.copytree(src, staged)
    old = dst.with_name(f".{dst.name}.old")
    os.rename(dst, old)
    os.rename(staged, dst)
    shutil.rmtree(old)


def test_sighup_reloads_a_real_ctrzoo_serve_process(serving_bundles, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(serving_bundles["deepfm"], served)
    v1, v2 = load_bundle(serving_bundles["deepfm"]).version, load_bundle(serving_bundles["deepfm2"]).version
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "ctrzoo", "serve", "--bundle", str(served), "--port", str(port),
                             "--log-level", "info"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        assert _wait_ready(base, proc)["version"] == v1
        clients = _Clients(base, 2, {"candidates": DEEPFM_ROWS})
        with clients:
            clients.next_phase()
            _swap_in(serving_bundles["deepfm2"], served)
            proc.send_signal(signal.SIGHUP)
            deadline = time.time() + 20
            while httpx.get(f"{base}/readyz").json()["version"] != v2 and time.time() < deadline:
                time.sleep(0.1)
            assert httpx.get(f"{base}/model").json()["version"] == v2
            clients.next_phase()
            _swap_in(serving_bundles["din"], served)  # SIGHUP never changes the model kind
            proc.send_signal(signal.SIGHUP)
            deadline = time.time() + 10
            metrics = ""
            while 'outcome="refused"' not in metrics and time.time() < deadline:
                time.sleep(0.1)
                metrics = httpx.get(f"{base}/metrics").text
            assert 'ctrzoo_reloads_total{outcome="refused"} 1.0' in metrics
            assert httpx.get(f"{base}/model").json()["version"] == v2
            clients.next_phase()
            clients.wait_for_requests()
        clients.check(phases=4)
        assert all(v == v2 for mine in clients.records for p, _, v in mine if p >= 2)
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    log = err.decode()
    assert "SIGHUP reload refused" in log and "model 'deepfm' -> 'din'" in log, log[-3000:]
