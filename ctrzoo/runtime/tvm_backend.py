"""``tvm``: the bundle's ``model.onnx`` compiled by Apache TVM (Relax + MetaSchedule), one kernel set per batch
bucket; a batch is padded up to a bucket (or split into several) and exactly ``B`` scores come back.

    predictor = runtime.load(bundle, "tvm")                  # reuse BUNDLE/tvm/model.so, or build it
    predictor = runtime.load(bundle, "tvm", tune=True, trials=2000, max_minutes=10)   # tune first

Artefacts, the rebuild rules and tuning live in the ``ctrzoo.runtime.tvm`` package. A library that is missing,
corrupt (checksum) or built from another ``model.onnx``/TVM/CPU/bucket set is rebuilt (a warning says why);
a damaged tuning database is refused with a BundleError naming the file. Every load logs the number of
tuning trials it performed (logger ``ctrzoo.runtime.tvm``), zero unless ``tune=True``.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from ctrzoo.bundle import Bundle
from ctrzoo.errors import CtrzooError
from ctrzoo.features import random_batch
from ctrzoo.runtime.base import Predictor, require_single_task
from ctrzoo.runtime.onnxruntime_backend import checked_onnx_path
from ctrzoo.runtime.tvm import artifacts, compiler, env, policy
from ctrzoo.runtime.tvm.tuning import DEFAULT_MINUTES, DEFAULT_TRIALS, tune_tvm

log = logging.getLogger("ctrzoo.runtime.tvm")
CALL_OVERHEAD_MS = 0.02  # added per call when planning: timing noise should not favour many small calls


class TvmPredictor(Predictor):
    backend = "tvm"

    def __init__(self, bundle: Bundle, threads: int | None = None, buckets: tuple[int, ...] | None = None,
                 tune: bool = False, trials: int | None = None, max_minutes: float | None = None,
                 focus: tuple[int, ...] = ()):
        require_single_task(bundle, "tvm")  # its buckets' buffers and padding hold one score per row
        super().__init__(bundle)
        env.require_tvm()
        t0 = time.perf_counter()
        trials_done = 0
        if tune:
            summary = tune_tvm(bundle, trials or DEFAULT_TRIALS,
                               DEFAULT_MINUTES if max_minutes is None else max_minutes, buckets, focus=focus)
            trials_done = summary["trials"]
        onnx_path = checked_onnx_path(bundle)
        onnx_sha = artifacts.sha256_file(onnx_path)
        art = artifacts.artifact_dir(bundle)
        manifest = artifacts.read_manifest(art)
        self.buckets = policy.normalize_buckets(
            buckets or (manifest.buckets if manifest else None) or policy.DEFAULT_BUCKETS)
        target = env.host_target()
        self.vm, how = self._library(bundle, manifest, target, onnx_path, onnx_sha)
        self.threads = env.size_thread_pool(threads)
        self._setup(onnx_path)
        self.bucket_ms = self._measure_buckets()
        self._plan = policy.chunk_plan(self.bucket_ms)
        self.warm_up()
        self.load_seconds = time.perf_counter() - t0
        log.info("tvm: %s ready in %.2fs (%s; buckets %s); tuning trials performed: %d", bundle.path,
                 self.load_seconds, how, ",".join(map(str, self.buckets)), trials_done)

    # -- loading -------------------------------------------------------------------------------------------

    def _library(self, bundle, manifest, target, onnx_path, onnx_sha):
        """The VM from model.so when it is current, else rebuilt (from the database when there is one)."""
        art = artifacts.artifact_dir(bundle)
        lib = art / artifacts.LIBRARY
        want = artifacts.build_key(onnx_sha, target, self.buckets, artifacts.database_digest(art))
        why = None
        if manifest is None:
            why = "no manifest" if lib.exists() or art.exists() else None
        else:
            stale = want.differences(manifest.build_key)
            if stale:
                why = f"built for another {', '.join(stale)}"
            elif not lib.exists():
                why = f"{lib} is missing"
            elif artifacts.sha256_file(lib) != manifest.library.sha256:
                why = f"{lib} does not match its recorded checksum (corrupt)"
            else:
                try:
                    vm = compiler.load_library(lib)
                    return vm, f"library {lib.name} ({manifest.built_from})"
                except Exception as exc:
                    why = f"{lib} cannot be loaded ({exc.__class__.__name__}: {str(exc)[:200]})"
        if why:
            log.warning("tvm: rebuilding %s: %s", lib, why)
        try:
            path = artifacts.build_library(bundle, self.buckets, target, onnx_path, onnx_sha)
        except OSError as exc:  # a read-only bundle: build in memory instead of failing
            log.warning("tvm: cannot write %s (%s); compiling in memory for this process", art, exc)
            mod, _, _ = compiler.import_onnx(onnx_path, self.layout, self.buckets)
            database = artifacts.open_database(art) if art.exists() else None
            ex = compiler.build(compiler.prepare(mod, target), target, database)
            import tvm
            from tvm import relax

            return relax.VirtualMachine(ex, tvm.cpu()), "compiled in memory"
        built = artifacts.read_manifest(art)
        return compiler.load_library(path), f"rebuilt from {built.built_from if built else '?'}"

    def _setup(self, onnx_path) -> None:
        """Prepacked weights and preallocated input/output buffers per bucket."""
        import tvm

        _, params, self.input_names = compiler.import_onnx(onnx_path, self.layout, (1,))
        self._fn, self._weights, self._buffers, self._views = {}, {}, {}, {}
        shapes = {"sparse": (self.layout.n_sparse,), "dense": (self.layout.n_dense,),
                  "seq": (self.layout.n_seq, self.layout.seq_len)}
        for b in self.buckets:
            try:
                self._fn[b] = self.vm[f"b{b}"]
                prep = self.vm[f"b{b}_transform_params"]
            except Exception as exc:
                raise CtrzooError(f"{self.bundle.path}: the tvm library has no function for bucket {b}: "
                                  f"{exc}") from None
            self._weights[b] = list(prep(params))
            bufs = [tvm.runtime.empty((b, *shapes[n]), compiler.INPUT_DTYPES[n]) for n in self.input_names]
            self._buffers[b] = bufs
            self._views[b] = {n: np.from_dlpack(t) for n, t in zip(self.input_names, bufs)}
            for v in self._views[b].values():
                v[...] = 0
        self._lock = threading.Lock()  # the VM and the buffers are shared state
        self._n_rows = self.layout.num_embeddings

    def _measure_buckets(self) -> dict[int, float]:
        """Each bucket's latency here and now through the whole call path (copy in, run, copy out), so a
        batch is split into the cheapest set of calls: median of >= 5 runs or ~50 ms, whichever is more."""
        out = {}
        for b in self.buckets:
            x = random_batch(self.layout, b, seed=b).as_dict()
            res = np.empty(b, dtype=np.float32)
            self._run(b, x, 0, b, res)
            times: list[float] = []
            while len(times) < 5 or (sum(times) < 0.05 and len(times) < 200):
                t0 = time.perf_counter()
                self._run(b, x, 0, b, res)
                times.append(time.perf_counter() - t0)
            out[b] = float(np.median(times) * 1e3) + CALL_OVERHEAD_MS
        return out

    # -- predicting ----------------------------------------------------------------------------------------

    def _predict(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        n = arrays["sparse"].shape[0]
        self._check_ids(arrays)
        out = np.empty(n, dtype=np.float32)
        start = 0
        for b, rows in policy.chunks(n, self._plan):
            self._run(b, arrays, start, rows, out)
            start += rows
        return out

    def _run(self, b: int, arrays: dict[str, np.ndarray], start: int, rows: int, out: np.ndarray) -> None:
        """Rows ``start:start+rows`` through bucket ``b`` (zero-padded) into ``out[start:start+rows]``."""
        with self._lock:
            views = self._views[b]
            for name in self.input_names:
                views[name][:rows] = arrays[name][start:start + rows]
                if rows < b:
                    views[name][rows:] = 0  # id 0 is the padding row: always in range
            res = self._fn[b](*self._buffers[b], *self._weights[b])
            out[start:start + rows] = res.numpy().reshape(-1)[:rows]

    def _check_ids(self, arrays: dict[str, np.ndarray]) -> None:
        """TVM's gathers do not bound-check (an out-of-range id would crash the process): check here."""
        for name in ("sparse", "seq"):
            v = arrays[name]
            if v.size and (v.min() < 0 or v.max() >= self._n_rows):
                raise CtrzooError(f"predict(): input {name!r} has ids outside [0, {self._n_rows}) "
                                  f"(min {v.min()}, max {v.max()}); encode raw values with the bundle's spec")
