"""Indexing a bundle's catalogue (``ctrzoo index``) and the loaded retriever the service uses.

An index directory holds ``index.faiss`` + ``index.json`` and the ``catalogue.parquet`` it was built
from (index ids are positions in it), and records the bundle version whose item tower made the vectors:
a retriever refuses an index built by other towers, since its vectors would live in another space.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ctrzoo.features import FeatureCodec
from ctrzoo.retrieval.auto import AUTO_KINDS, select_index
from ctrzoo.retrieval.bundle import RetrievalBundle, load_retrieval_bundle
from ctrzoo.retrieval.catalogue import CATALOGUE_FILE, Catalogue, item_columns
from ctrzoo.retrieval.errors import RetrievalError
from ctrzoo.retrieval.index import KINDS, IndexParams, VectorIndex, build_index, load_index
from ctrzoo.retrieval.towers import TwoTower, encode_items, encode_users


def catalogue_vectors(bundle: RetrievalBundle, model: TwoTower, catalogue: Catalogue,
                      allow_unknown: bool = False) -> tuple[np.ndarray, int]:
    """Item vectors of a catalogue and how many of its ids are unknown to the model."""
    s, d, known = catalogue.encode(bundle.spec, model, allow_unknown)
    return encode_items(model, s, d), int((~known).sum())


def held_out_queries(bundle: RetrievalBundle, model: TwoTower, source: str | Path | None = None,
                     limit: int = 2000, seed: int = 0) -> np.ndarray:
    """User vectors to tune an index on: a ``.npy`` of vectors, or the test split of a prepared dataset
    (default: the one the bundle was trained on); distinct rows, at most ``limit``, sampled."""
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.data.loader import BatchLoader

    source = source or bundle.meta.data.path
    if not source:
        raise RetrievalError("held-out queries needed (auto): pass --queries DATASET_DIR or a .npy of user vectors")
    path = Path(source)
    if path.suffix == ".npy":
        try:
            q = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise RetrievalError(f"{path}: cannot read query vectors ({exc})") from None
    else:
        if not path.is_dir():
            raise RetrievalError(f"{path}: no such dataset for held-out queries (pass --queries)")
        ds = PreparedDataset.open(path)
        split = "test" if ds.rows("test") else "valid"
        b = next(iter(BatchLoader(ds, split, batch_size=max(limit * 4, 1), shuffle=True, seed=seed, cache=False)))
        q = encode_users(model, b.sparse, b.dense, b.seq)
    q = np.unique(np.asarray(q, dtype=np.float32), axis=0)
    if len(q) > limit:
        q = q[np.random.default_rng(seed).choice(len(q), limit, replace=False)]
    return q


def index_catalogue(bundle_path: str | Path, kind: str = "auto", items: str | Path | None = None,
                    out: str | Path | None = None, queries: str | Path | np.ndarray | None = None,
                    params: IndexParams | None = None, target: float = 0.95, k: int = 10,
                    allow_unknown: bool = False, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Embed a catalogue with the bundle's item tower, build an index of ``kind`` and save it.

    ``items``: a catalogue file (Parquet/CSV: the item id column and the item tower's raw columns); default
    the bundle's own catalogue. ``out`` defaults to ``BUNDLE/index``. Returns the index metadata.
    """
    if kind != "auto" and kind not in KINDS:
        raise RetrievalError(f"unknown index kind {kind!r}; known: {[*KINDS, 'auto']}")
    bundle = load_retrieval_bundle(bundle_path)
    model = bundle.build_model()
    if items is not None:
        id_col, cols = item_columns(bundle.spec, bundle.split)
        catalogue = Catalogue.read(items, id_col, cols)
    else:
        catalogue = bundle.catalogue()
    t0 = time.perf_counter()
    vectors, unknown = catalogue_vectors(bundle, model, catalogue, allow_unknown)
    if kind == "auto":
        q = queries if isinstance(queries, np.ndarray) else held_out_queries(bundle, model, queries)
        index, report = select_index(vectors, q, k=k, target=target, kinds=AUTO_KINDS, params=params, log=log)
        if log:
            log(f"auto: chose {report['why']}")
    else:
        index = build_index(vectors, kind, params)
    seconds = time.perf_counter() - t0
    out = Path(out) if out is not None else bundle.index_dir
    norms = np.linalg.norm(vectors, axis=1)
    extra = {"bundle_version": bundle.version, "bundle": str(Path(bundle_path).resolve()),
             "catalogue": {"file": CATALOGUE_FILE, "id_column": catalogue.id_column, "items": len(catalogue),
                           "source": catalogue.source, "unknown_ids": unknown},
             "vector_norms": {"min": float(norms.min()), "median": float(np.median(norms)), "max": float(norms.max())},
             "build_seconds": round(seconds, 2)}
    index.save(out, extra, write_more=lambda tmp: catalogue.save(tmp / CATALOGUE_FILE))
    if log:
        setting = f", {index.search_param}={index.default_search_value()}" if index.search_param else ""
        log(f"indexed {len(catalogue):,d} items ({index.dim}-d) as {index.kind}{setting} -> {out} in {seconds:.1f}s")
    return {**index.meta(), **extra}


@dataclass
class Retriever:
    """A retrieval bundle, its towers and one index: raw user/context features -> top-N catalogue items."""

    bundle: RetrievalBundle
    model: TwoTower
    codec: FeatureCodec
    index: VectorIndex
    catalogue: Catalogue
    index_dir: Path

    @classmethod
    def load(cls, bundle_path: str | Path, index_dir: str | Path | None = None) -> Retriever:
        bundle = load_retrieval_bundle(bundle_path)
        index_dir = Path(index_dir) if index_dir is not None else bundle.index_dir
        if not index_dir.exists():
            raise RetrievalError(f"{index_dir}: no index; build one with `ctrzoo index --bundle {bundle_path} "
                                 "--kind auto`")
        index = load_index(index_dir)
        if index.dim != bundle.out_dim:
            raise RetrievalError(f"{index_dir}: index of dimension {index.dim}, the bundle's towers make "
                                 f"{bundle.out_dim}-d vectors")
        built_by = index.info.get("bundle_version")
        if built_by != bundle.version:
            raise RetrievalError(f"{index_dir}: built from bundle version {built_by}, not {bundle.version}: "
                                 "its vectors come from other towers; rebuild it with `ctrzoo index`")
        catalogue = Catalogue.load(index_dir / CATALOGUE_FILE, bundle.meta.catalogue.id_column)
        if len(catalogue) != index.ntotal:
            raise RetrievalError(f"{index_dir}: {CATALOGUE_FILE} has {len(catalogue)} items, the index "
                                 f"{index.ntotal} vectors")
        model = bundle.build_model()
        codec = bundle.spec.compile().warm()  # every lookup table built now, not on the first request
        return cls(bundle, model, codec, index, catalogue, index_dir)

    @property
    def item_columns(self) -> list[str]:
        return self.catalogue.table.column_names

    def user_vectors(self, contexts: list[Mapping[str, Any]] | pa.Table) -> np.ndarray:
        batch = self.codec.encode(contexts, allow_missing=True)  # user columns only: items come from the catalogue
        with torch.inference_mode():
            return encode_users(self.model, torch.from_numpy(batch.sparse), torch.from_numpy(batch.dense),
                                torch.from_numpy(batch.seq))

    def retrieve(self, context: Mapping[str, Any], n: int, search_value: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue positions and inner-product scores of the top ``n`` items for one user/context."""
        scores, pos = self.index.search(self.user_vectors([context]), n, search_value)
        keep = pos[0] >= 0
        return pos[0][keep], scores[0][keep]


def read_catalogue_ids(index_dir: str | Path) -> list[str]:
    """Item ids of an index, in index order (tests and tools)."""
    meta_id = load_index(index_dir).info["catalogue"]["id_column"]
    return pq.read_table(Path(index_dir) / CATALOGUE_FILE, columns=[meta_id]).column(0).to_pylist()
