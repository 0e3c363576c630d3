"""The built-in dataset formats (Criteo, Avazu, Taobao): schemas like any other, in ``ctrzoo/presets/*.yaml``."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from pathlib import Path

from ctrzoo.data.schema import DatasetSchema, load_schema
from ctrzoo.errors import DataError

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"


def preset_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))


@functools.cache
def load_preset(name: str) -> DatasetSchema:
    """The schema of a built-in format (read once per process)."""
    if name not in preset_names():
        raise DataError(f"unknown dataset kind {name!r}; known: {list(preset_names())} (or give a schema file)")
    return load_schema(PRESET_DIR / f"{name}.yaml")


def resolve_schema(source: str | DatasetSchema) -> DatasetSchema:
    """A schema given as itself or as a built-in format's name."""
    return source if isinstance(source, DatasetSchema) else load_preset(source)


class Presets(Mapping[str, DatasetSchema]):
    """name -> schema of the built-in formats, each loaded on first use (listing them reads no file)."""

    def __getitem__(self, name: str) -> DatasetSchema:
        if name not in preset_names():
            raise KeyError(name)
        return load_preset(name)

    def __iter__(self) -> Iterator[str]:
        return iter(preset_names())

    def __len__(self) -> int:
        return len(preset_names())

    def __contains__(self, name: object) -> bool:
        return name in preset_names()


PRESETS = Presets()
