"""Vector indexes over item vectors, by inner product, saved in FAISS's own format.

Kinds:

* ``flat-ip``: exact inner product, the ground truth every other kind is measured against;
* ``hnsw-ip``: HNSW built and searched with the inner-product metric;
* ``mobius-hnsw``: the Möbius-transformation graph (Zhou et al., NeurIPS'19). The HNSW graph is built with
  the L2 metric on ``y = x / ||x||^2``; then its storage is swapped for the original vectors and the same
  graph is searched by inner product. Under the transform, a query's best inner products are the L2
  Delaunay neighbours of the origin's side of the data, so the graph links exactly the items that can be
  top-scored; searching the transformed vectors by L2 and re-ranking does not work (the L2 neighbours of a
  query among ``y`` are not its best inner products), which is why the storage swap is needed. faiss then
  needs ``metric_type = METRIC_INNER_PRODUCT`` and ``hnsw.is_similarity = True``, else every result is -1.
* ``ivfpq-ip``: inverted lists with product-quantized codes (``pq_m`` bytes per vector), for catalogues
  that do not fit in memory as floats.

Index ids are catalogue positions. Searching takes per-call parameters (``efSearch``, ``nprobe``), so
concurrent requests never share mutable search state.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctrzoo.retrieval.errors import RetrievalError

KINDS = ("flat-ip", "hnsw-ip", "mobius-hnsw", "ivfpq-ip")
INDEX_FILE = "index.faiss"
META_FILE = "index.json"
INDEX_FORMAT_VERSION = 1
SMALL_BUILD = 100_000  # vectors below which indexes build on one thread


def faiss_module():
    """``faiss``, or a clear message naming the extra that installs it."""
    try:
        import faiss
    except ImportError:
        raise RetrievalError("retrieval needs FAISS: pip install 'ctrzoo[retrieval]' (faiss-cpu)") from None
    return faiss


@dataclass
class IndexParams:
    """Build parameters (``m``/``ef_construction`` for the graphs, ``nlist``/``pq_m``/``nbits`` for IVF-PQ)
    and the default search parameter (``ef_search`` or ``nprobe``). ``None`` means: chosen from the size."""

    m: int = 32
    ef_construction: int = 200
    ef_search: int = 64
    nlist: int | None = None
    pq_m: int | None = None
    nbits: int | None = None
    nprobe: int = 16
    threads: int | None = None

    def resolved(self, n: int, d: int) -> IndexParams:
        nlist = self.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))
        pq_m = self.pq_m or next(m for m in (d // 2, d // 4, d // 8, 1) if m >= 1 and d % m == 0)
        if d % pq_m:
            raise RetrievalError(f"pq_m={pq_m} must divide the vector dimension {d}")
        # a sub-quantizer of 2**nbits centroids wants ~39 training points per centroid
        nbits = self.nbits or int(min(8, max(4, math.floor(math.log2(max(n, 16) / 39)))))
        return IndexParams(self.m, self.ef_construction, self.ef_search, nlist, pq_m, nbits,
                           min(self.nprobe, nlist), self.threads)


def check_vectors(x: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    """2-d, finite float32 (C order): the only thing FAISS accepts without surprises."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise RetrievalError(f"{what}: expected a 2-d array [n, d], got shape {x.shape}")
    if x.shape[0] == 0:
        raise RetrievalError(f"{what}: empty (0 vectors)")
    if dim is not None and x.shape[1] != dim:
        raise RetrievalError(f"{what}: dimension {x.shape[1]} does not match the index's dimension {dim}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise RetrievalError(f"{what}: NaN or infinite values")
    return x


@dataclass
class VectorIndex:
    """A built (or loaded) index: ``search(queries, k) -> (scores [q, k], positions [q, k])``."""

    kind: str
    index: Any  # faiss.Index
    dim: int
    params: IndexParams
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def search_param(self) -> str | None:
        return {"hnsw-ip": "ef_search", "mobius-hnsw": "ef_search", "ivfpq-ip": "nprobe"}.get(self.kind)

    def default_search_value(self) -> int | None:
        name = self.search_param
        return None if name is None else int(getattr(self.params, name))

    def search(self, queries: np.ndarray, k: int, value: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product; ``value`` overrides efSearch / nprobe for this call only.

        Positions are -1 (score -inf) where fewer than ``k`` items are found (``k`` above the catalogue
        size, or a graph search that ran out of candidates).
        """
        faiss = faiss_module()
        q = check_vectors(queries, "queries", self.dim)
        if k < 1:
            raise RetrievalError(f"k must be >= 1, got {k}")
        kk = min(k, self.ntotal)
        value = self.default_search_value() if value is None else int(value)
        params = None
        if self.kind in ("hnsw-ip", "mobius-hnsw"):
            params = faiss.SearchParametersHNSW(efSearch=max(value, kk))
        elif self.kind == "ivfpq-ip":
            params = faiss.SearchParametersIVF(nprobe=value)
        scores, pos = self.index.search(q, kk, params=params)
        if kk < k:
            pad = k - kk
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            pos = np.pad(pos, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.where(pos < 0, -np.inf, scores).astype(np.float32)
        return scores, pos.astype(np.int64)

    # -- persistence ---------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"format_version": INDEX_FORMAT_VERSION, "kind": self.kind, "dim": self.dim, "ntotal": self.ntotal,
                "params": asdict(self.params), "file": INDEX_FILE, **self.info}

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None,
             write_more: Callable[[Path], None] | None = None) -> Path:
        """``index.faiss`` (faiss.write_index) + ``index.json`` (+ what ``write_more`` adds, e.g. the
        catalogue), written beside ``directory`` and swapped in by rename: a reader never sees half."""
        faiss = faiss_module()
        directory = Path(directory)
        tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            if write_more is not None:
                write_more(tmp)
            (tmp / META_FILE).write_text(json.dumps({**self.meta(), **(extra or {})}, indent=1, default=str))
            _publish(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        if not (out / META_FILE).exists() and any(out.iterdir()):
            raise RetrievalError(f"{out} exists and is not an index directory: refusing to replace it")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, out)


def read_index_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not Path(directory).is_dir():
        raise RetrievalError(f"{directory}: no such index directory (build one with `ctrzoo index`)")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise RetrievalError(f"{path}: missing ({directory} is not an index directory)") from None
    except json.JSONDecodeError as exc:
        raise RetrievalError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if meta.get("format_version") != INDEX_FORMAT_VERSION:
        raise RetrievalError(f"{path}: index format version {meta.get('format_version')!r}, this ctrzoo reads "
                             f"{INDEX_FORMAT_VERSION}: build the index again")
    if meta.get("kind") not in KINDS:
        raise RetrievalError(f"{path}: unknown index kind {meta.get('kind')!r}; known: {list(KINDS)}")
    return meta


def load_index(directory: str | Path) -> VectorIndex:
    """Read an index directory; checks that the FAISS file matches its JSON (kind, dimension, size)."""
    faiss = faiss_module()
    directory = Path(directory)
    meta = read_index_meta(directory)
    path = directory / meta.get("file", INDEX_FILE)
    if not path.is_file():
        raise RetrievalError(f"{path}: missing index file")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise RetrievalError(f"{path}: cannot read the FAISS index ({str(exc).splitlines()[0]})") from None
    if index.d != meta["dim"] or index.ntotal != meta["ntotal"]:
        raise RetrievalError(f"{path}: holds {index.ntotal} vectors of dimension {index.d}, {META_FILE} says "
                             f"{meta['ntotal']} of dimension {meta['dim']}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise RetrievalError(f"{path}: not an inner-product index (metric {index.metric_type})")
    params = IndexParams(**meta["params"])
    info = {k: v for k, v in meta.items() if k not in ("format_version", "kind", "dim", "ntotal", "params", "file")}
    return VectorIndex(meta["kind"], index, int(meta["dim"]), params, info)


# -- building ------------------------------------------------------------------------------------------


def build_index(vectors: np.ndarray, kind: str, params: IndexParams | None = None) -> VectorIndex:
    """Build an index of ``kind`` over ``vectors [n, d]`` (index id = row)."""
    if kind not in KINDS:
        raise RetrievalError(f"unknown index kind {kind!r}; known: {list(KINDS)} (or 'auto')")
    faiss = faiss_module()
    x = check_vectors(vectors, "item vectors")
    n, d = x.shape
    p = (params or IndexParams()).resolved(n, d)
    threads = faiss.omp_get_max_threads()
    # small builds on one thread: OpenMP's fork/join on a busy machine costs more than it saves (an IVF-PQ
    # of 4k vectors took 45 s on 2 busy cores, 1.3 s on one)
    faiss.omp_set_num_threads(p.threads or (threads if n >= SMALL_BUILD else 1))
    try:
        if kind == "flat-ip":
            index = faiss.IndexFlatIP(d)
            index.add(x)
        elif kind == "hnsw-ip":
            index = faiss.IndexHNSWFlat(d, p.m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = p.ef_construction
            index.add(x)
        elif kind == "mobius-hnsw":
            index = _mobius_hnsw(faiss, x, p)
        else:
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFPQ(quantizer, d, p.nlist, p.pq_m, p.nbits, faiss.METRIC_INNER_PRODUCT)
            index.own_fields = True
            quantizer.this.disown()
            rng = np.random.default_rng(0)
            sample = x if n <= 200_000 else x[rng.choice(n, 200_000, replace=False)]
            index.train(sample)
            index.add(x)
    finally:
        faiss.omp_set_num_threads(threads)
    return VectorIndex(kind, index, d, p)


def mobius_transform(x: np.ndarray) -> np.ndarray:
    """``y = x / ||x||^2``. Zero vectors (inner product 0 with every query) go far from everything in ``y``
    space instead of to the origin, where they would become the graph's hub of best items."""
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)[:, None]
    zero = sq[:, 0] <= 0
    y = x / np.where(zero[:, None], 1.0, sq)
    if zero.any():
        far = 1e3 / np.sqrt(sq[~zero].min()) if (~zero).any() else 1e3
        rng = np.random.default_rng(0)
        r = rng.normal(size=(int(zero.sum()), x.shape[1]))
        y[zero] = far * r / np.linalg.norm(r, axis=1, keepdims=True)
    return np.ascontiguousarray(y, dtype=np.float32)


def _mobius_hnsw(faiss, x: np.ndarray, p: IndexParams):
    d = x.shape[1]
    index = faiss.IndexHNSWFlat(d, p.m)  # L2 on the transformed vectors: builds the graph
    index.hnsw.efConstruction = p.ef_construction
    index.add(mobius_transform(x))
    storage = faiss.IndexFlatIP(d)  # the original vectors, searched by inner product over the same graph
    storage.add(x)
    old = index.storage
    index.storage = storage
    storage.this.disown()  # owned by the index from now on (own_fields stays True) ...
    old.this.acquire()  # ... and the transformed vectors are freed by Python
    del old
    index.metric_type = faiss.METRIC_INNER_PRODUCT
    index.hnsw.is_similarity = True  # without it the search keeps the worst candidates and returns -1
    return index
