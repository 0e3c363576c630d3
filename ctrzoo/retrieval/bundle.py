"""Retrieval bundles: the towers, the feature spec and the item catalogue in one directory.

    R/bundle.json        format version, kind "retrieval", tower split, hyper-parameters, metrics, data
    R/spec.json, vocab/  the fitted feature spec (requests are encoded with it, as by /rank)
    R/weights.pt         the two-tower state dict, loaded with ``weights_only=True`` (no pickle)
    R/catalogue.parquet  item id -> raw item features: what the index's positions refer to
    R/index/             written by ``ctrzoo index`` (index.faiss, index.json, its own catalogue.parquet)

Written beside the target and swapped in by rename, like model bundles; loading checks the kind, the
format version and every file, and names what is wrong.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

import ctrzoo
from ctrzoo.atomic import building, read_json
from ctrzoo.errors import CtrzooError
from ctrzoo.features import FeatureSpec
from ctrzoo.retrieval.catalogue import CATALOGUE_FILE, Catalogue
from ctrzoo.retrieval.errors import RetrievalError
from ctrzoo.retrieval.towers import TowerSplit, TwoTower, build_two_tower

RETRIEVAL_FORMAT_VERSION = 1
META_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"
TABLE_KEY, LEGACY_TABLE_KEY = "embedding.table.weight", "table.weight"  # the shared table in weights.pt
INDEX_DIR = "index"


@dataclass
class RetrievalBundle:
    path: Path
    meta: dict[str, Any]
    spec: FeatureSpec

    @property
    def split(self) -> TowerSplit:
        return TowerSplit.from_dict(self.meta["towers"])

    @property
    def version(self) -> str:
        return self.meta.get("version", "0")

    @property
    def out_dim(self) -> int:
        return int(self.meta["model"]["hparams"]["out_dim"])

    @property
    def index_dir(self) -> Path:
        return self.path / INDEX_DIR

    def build_model(self) -> TwoTower:
        """The towers with their trained weights, in eval mode."""
        model = build_two_tower(self.spec, self.split, **self.meta["model"]["hparams"])
        path = self.path / WEIGHTS_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise RetrievalError(f"{path}: missing weights file") from None
        except Exception as exc:  # corrupt or not a torch file
            raise RetrievalError(f"{path}: cannot read weights ({exc.__class__.__name__}: {exc})") from None
        if isinstance(state, dict) and LEGACY_TABLE_KEY in state:  # written before the towers used FeatureEmbedding
            state = {(TABLE_KEY if k == LEGACY_TABLE_KEY else k): v for k, v in state.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise RetrievalError(f"{path}: weights do not fit the two-tower model: {exc}") from None
        return model.eval()

    def catalogue(self) -> Catalogue:
        return Catalogue.load(self.path / CATALOGUE_FILE, self.meta["catalogue"]["id_column"])


def save_retrieval_bundle(out: str | Path, model: TwoTower, spec: FeatureSpec, catalogue: Catalogue,
                          meta: dict[str, Any]) -> Path:
    """Write a retrieval bundle atomically; an existing one is replaced, any other directory is refused."""
    out = Path(out)
    if ((out / META_FILE).exists()
            and read_json(out / META_FILE, CtrzooError, "bundle metadata").get("kind") != "retrieval"):
        raise CtrzooError(f"{out} is a model bundle, not a retrieval bundle: refusing to replace it")
    with building(out, META_FILE, "retrieval bundle") as tmp:
        spec.save(tmp)
        with open(tmp / WEIGHTS_FILE, "wb") as fh:  # a file object: torch keeps the OS error (ENOSPC) then
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, fh)
        catalogue.save(tmp / CATALOGUE_FILE)
        digest = hashlib.sha256((tmp / WEIGHTS_FILE).read_bytes()).hexdigest()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        full = {
            "format_version": RETRIEVAL_FORMAT_VERSION,
            "kind": "retrieval",
            "version": f"{stamp}-{digest[:8]}",
            "ctrzoo_version": ctrzoo.__version__,
            "model": {"name": "two_tower", "hparams": model.hparams},
            "towers": model.split.to_dict(),
            "catalogue": {"file": CATALOGUE_FILE, "id_column": catalogue.id_column, "items": len(catalogue),
                          "columns": catalogue.feature_columns},
            **meta,
        }
        (tmp / META_FILE).write_text(json.dumps(full, indent=1, default=str))  # the marker, written last
    return out


def load_retrieval_bundle(path: str | Path) -> RetrievalBundle:
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise RetrievalError(f"{path}: no such retrieval bundle directory")
    if not meta_path.exists():
        raise RetrievalError(f"{path}: not a retrieval bundle ({META_FILE} missing)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise RetrievalError(f"{meta_path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if meta.get("kind") != "retrieval":
        raise RetrievalError(f"{path}: a model bundle ({meta.get('model', {}).get('name')!r}), not a retrieval "
                             "bundle: train one with `ctrzoo train-retrieval`")
    if meta.get("format_version") != RETRIEVAL_FORMAT_VERSION:
        raise RetrievalError(f"{meta_path}: retrieval bundle format version {meta.get('format_version')!r}, "
                             f"this ctrzoo reads {RETRIEVAL_FORMAT_VERSION}")
    for name in (WEIGHTS_FILE, CATALOGUE_FILE):
        if not (path / name).exists():
            raise RetrievalError(f"{path / name}: missing")
    try:
        spec = FeatureSpec.load(path)
    except CtrzooError as exc:
        raise RetrievalError(f"{path}: bad feature spec: {exc}") from None
    bundle = RetrievalBundle(path, meta, spec)
    bundle.split.validate(spec)
    return bundle
