"""A feature spec a user writes by hand (YAML or JSON, unfitted) and the overrides ``ctrzoo prepare`` takes.

A hand-written spec may leave out ``format_version`` (it is 1); a fitted spec is read with
``FeatureSpec.load`` instead, which also reads the vocabularies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from ctrzoo.errors import CtrzooError, SpecError
from ctrzoo.features.spec import FeatureSpec


def load_spec_file(path: str | Path) -> FeatureSpec:
    """The spec in a YAML or JSON file (JSON is YAML); errors name the file."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise CtrzooError(f"{p}: no such spec file") from None
    except yaml.YAMLError as exc:
        raise CtrzooError(f"{p}: not valid YAML/JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CtrzooError(f"{p}: a feature spec is a mapping with 'features:', not {type(data).__name__}")
    data.setdefault("format_version", 1)
    return FeatureSpec.from_dict(data)


def with_overrides(spec: FeatureSpec, drop: Iterable[str] | None = None, min_count: int | None = None,
                   max_vocab: int | None = None, hash_overflow: bool = False) -> FeatureSpec:
    """The spec without the ``drop`` features, every categorical feature's ``min_count`` / ``max_vocab``
    replaced where given (past ``max_vocab``: hash when ``hash_overflow``, else truncate). A new spec."""
    if drop:
        drop = list(drop)
        names = [f.name for f in spec.features]
        for name in drop:
            if name not in names:
                raise SpecError(f"cannot drop it: no such feature (the spec has {', '.join(names)})", field=name)
        spec = spec.without(drop)
    changes: dict = {}
    if min_count is not None:
        changes["min_count"] = min_count
    if max_vocab is not None:
        changes.update(max_vocab=max_vocab, overflow="hash" if hash_overflow else "truncate")
    if not changes:
        return spec
    return spec.replace_features({c.name: replace(c, **changes) for c in spec.categorical})
