"""Retrieval upstream of ranking: two towers trained on clicks, item vectors indexed with FAISS.

The pieces (each a small module): ``towers`` (the model and which feature feeds which tower),
``train`` (in-batch softmax with log-Q correction, random and hard negatives), ``catalogue`` (item id ->
raw item features), ``index`` (flat-ip, hnsw-ip, mobius-hnsw, ivfpq-ip), ``auto`` (measure and pick),
``bundle`` (the retrieval bundle), ``retriever`` (``ctrzoo index`` and the service's retriever),
``evaluate`` (recall), ``bench`` and ``synth`` (benchmarks). FAISS (the ``retrieval`` extra) is imported
on first use, so importing this package never needs it; training does, for its recall report.
"""

from ctrzoo.retrieval.bundle import RetrievalBundle, load_retrieval_bundle
from ctrzoo.retrieval.catalogue import Catalogue
from ctrzoo.retrieval.errors import RetrievalError
from ctrzoo.retrieval.index import KINDS, IndexParams, VectorIndex, build_index, load_index
from ctrzoo.retrieval.towers import TowerSplit, TwoTower, default_split

__all__ = [
    "KINDS",
    "Catalogue",
    "IndexParams",
    "RetrievalBundle",
    "RetrievalError",
    "TowerSplit",
    "TwoTower",
    "VectorIndex",
    "build_index",
    "default_split",
    "load_index",
    "load_retrieval_bundle",
]
