"""Model bundles: the one artifact training writes and every consumer (evaluate, export, serve) reads.

    BUNDLE/bundle.json   format version, model name + hyper-parameters, data fingerprint, metrics, version
    BUNDLE/spec.json, vocab/   the fitted feature spec (so raw rows can be encoded without the dataset)
    BUNDLE/weights.pt    a state dict, loaded with ``weights_only=True`` (no pickle)

Loading checks the format version and every file, and fails with a message that names what is wrong.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

import ctrzoo
from ctrzoo.atomic import building, read_json, write_json
from ctrzoo.errors import BundleError, CtrzooError
from ctrzoo.features import FeatureSpec

BUNDLE_FORMAT_VERSION = 1
META_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"


@dataclass
class Bundle:
    path: Path
    meta: dict[str, Any]
    spec: FeatureSpec

    @property
    def model_name(self) -> str:
        return self.meta["model"]["name"]

    @property
    def hparams(self) -> dict[str, Any]:
        return self.meta["model"]["hparams"]

    @property
    def version(self) -> str:
        return self.meta.get("version", "0")

    def build_model(self) -> nn.Module:
        """The model with its trained weights, in eval mode."""
        from ctrzoo.models import build_model

        model = build_model(self.model_name, self.spec.layout(), **self.hparams)
        path = self.path / WEIGHTS_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise BundleError(f"{path}: missing weights file") from None
        except Exception as exc:  # corrupt or not a torch file
            raise BundleError(f"{path}: cannot read weights ({exc.__class__.__name__}: {exc})") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise BundleError(f"{path}: weights do not fit model {self.model_name!r}: {exc}") from None
        return model.eval()


def save_bundle(out: str | Path, model: nn.Module, model_name: str, spec: FeatureSpec, meta: dict[str, Any]) -> Path:
    """Write a bundle directory atomically (built beside ``out``, swapped in by rename)."""
    with building(out, META_FILE, "model bundle", BundleError) as tmp:
        spec.save(tmp)
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, tmp / WEIGHTS_FILE)
        digest = hashlib.sha256((tmp / WEIGHTS_FILE).read_bytes()).hexdigest()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        full = {
            "version": f"{stamp}-{digest[:8]}",  # time + weights: two bundles never share a version
            "format_version": BUNDLE_FORMAT_VERSION,
            "ctrzoo_version": ctrzoo.__version__,
            "model": {"name": model_name, "hparams": getattr(model, "hparams", {})},
            **meta,
        }
        write_json(tmp / META_FILE, full)
    return Path(out)


def load_bundle(path: str | Path) -> Bundle:
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle directory")
    if not meta_path.exists():
        raise BundleError(f"{path}: not a model bundle ({META_FILE} missing)")
    meta = read_json(meta_path, BundleError, "bundle metadata")
    if meta.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{meta_path}: bundle format version {meta.get('format_version')!r}, this ctrzoo reads "
            f"{BUNDLE_FORMAT_VERSION}"
        )
    if not (path / WEIGHTS_FILE).exists():
        raise BundleError(f"{path / WEIGHTS_FILE}: missing weights file")
    try:
        spec = FeatureSpec.load(path)
    except CtrzooError as exc:
        raise BundleError(f"{path}: bad feature spec: {exc}") from None
    return Bundle(path, meta, spec)
