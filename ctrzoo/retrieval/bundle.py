"""Retrieval bundles: a bundle (``ctrzoo.bundle.BaseBundle``) of kind ``retrieval``.

    R/bundle.json        ``RetrievalBundleMeta``: the shared metadata and manifest, plus the tower split, the
                         catalogue's id column and size, click counts
    R/spec.json, vocab/  the fitted feature spec (requests are encoded with it, as by /rank)
    R/weights.pt         the two-tower state dict, loaded with ``weights_only=True`` (no pickle)
    R/catalogue.parquet  item id -> raw item features: what the index's positions refer to
    R/index/             written by ``ctrzoo index`` (index.faiss, index.json, its own catalogue.parquet); left out
                         of the manifest: it is checked against the bundle version it was built from

Writing, loading and their checks are the shared ones; this module adds what differs: the towers, the
catalogue and the index directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrzoo.bundle import META_FILE as META_FILE  # the shared marker file, named here too
from ctrzoo.bundle import SPEC_FILE, WEIGHTS_FILE, BaseBundle
from ctrzoo.errors import CtrzooError
from ctrzoo.features import FeatureSpec
from ctrzoo.metadata import BUNDLE_META_TYPES, CatalogueInfo, ModelInfo, RetrievalBundleMeta, bundle_kind
from ctrzoo.retrieval.catalogue import CATALOGUE_FILE, Catalogue
from ctrzoo.retrieval.towers import TowerSplit, TwoTower, build_two_tower

RETRIEVAL_FORMAT_VERSION = RetrievalBundleMeta.FORMATS[-1]
TABLE_KEY, LEGACY_TABLE_KEY = "embedding.table.weight", "table.weight"  # the shared table in weights.pt
INDEX_DIR = "index"


@dataclass
class RetrievalBundle(BaseBundle):
    meta: RetrievalBundleMeta

    META_TYPE = RetrievalBundleMeta
    WHAT = "retrieval bundle"
    REQUIRED = (WEIGHTS_FILE, SPEC_FILE, CATALOGUE_FILE)
    MUST_EXIST = (WEIGHTS_FILE, CATALOGUE_FILE)
    UNLISTED = (INDEX_DIR,)
    LEGACY_FORMATS = (1,)  # written before retrieval bundles had a manifest

    @property
    def split(self) -> TowerSplit:
        return TowerSplit.from_dict(self.meta.towers)

    @property
    def out_dim(self) -> int:
        return int(self.meta.model.hparams["out_dim"])

    @property
    def index_dir(self) -> Path:
        return self.path / INDEX_DIR

    def build_model(self) -> TwoTower:
        """The towers with their trained weights, in eval mode."""
        model = build_two_tower(self.spec, self.split, **self.meta.model.hparams)
        return self.load_weights(model, "the two-tower model")

    def upgrade_state(self, state: dict[str, Any]) -> dict[str, Any]:
        if isinstance(state, dict) and LEGACY_TABLE_KEY in state:  # written before the towers used FeatureEmbedding
            state = {(TABLE_KEY if k == LEGACY_TABLE_KEY else k): v for k, v in state.items()}
        return state

    def catalogue(self) -> Catalogue:
        return Catalogue.load(self.path / CATALOGUE_FILE, self.meta.catalogue.id_column)

    def check(self) -> None:
        self.split.validate(self.spec)

    @classmethod
    def wrong_kind(cls, path: Path, raw: dict[str, Any]) -> str:
        try:
            name = BUNDLE_META_TYPES[bundle_kind(raw)].from_json(raw, path / META_FILE).model.name
        except (CtrzooError, KeyError):  # another kind, and damaged or unknown: the kind says enough
            name = None
        return f"{path}: a model bundle ({name!r}), not a retrieval bundle: train one with `ctrzoo train-retrieval`"

    @classmethod
    def legacy_note(cls, path: Path) -> str:
        return (f"{path}: retrieval bundle without an integrity manifest (written by an earlier ctrzoo), so its "
                "files are not checked; `ctrzoo train-retrieval` writes one with it")


def save_retrieval_bundle(out: str | Path, model: TwoTower, spec: FeatureSpec, catalogue: Catalogue,
                          **fields: Any) -> RetrievalBundle:
    """Write a retrieval bundle atomically; an existing one is replaced, any other directory is refused.

    ``fields``: the rest of ``RetrievalBundleMeta`` (data, train, clicks, metrics, history...); the model, the
    tower split and the catalogue's description come from ``model`` and ``catalogue``.
    """
    meta = RetrievalBundleMeta(
        model=ModelInfo(name="two_tower", hparams=model.hparams), towers=model.split.to_dict(),
        catalogue=CatalogueInfo(file=CATALOGUE_FILE, id_column=catalogue.id_column, items=len(catalogue),
                                columns=catalogue.feature_columns), **fields)
    return RetrievalBundle.write(out, model, spec, meta, add=lambda b: catalogue.save(b.path / CATALOGUE_FILE))


def load_retrieval_bundle(path: str | Path) -> RetrievalBundle:
    """Open and check a retrieval bundle (``BaseBundle.open``); a ``RetrievalError`` names what is wrong."""
    return RetrievalBundle.open(path)
