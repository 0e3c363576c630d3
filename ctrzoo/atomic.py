"""Directories and JSON files that readers never see half-written.

A directory artifact (prepared dataset, model bundle, retrieval bundle) is built beside its target and
swapped in by renames once complete; its marker file (``dataset.json``, ``bundle.json``) is written last,
so a directory without it never loads, and an existing artifact stays intact until the swap.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ctrzoo.errors import CtrzooError


@contextmanager
def building(out: str | Path, marker: str, what: str, error: type[CtrzooError] = CtrzooError) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``out``; on success it replaces ``out``, on error vanishes.

    Only an earlier artifact of the same kind (one with ``marker``), an empty directory or nothing may be
    replaced: never a user's other files.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).exists())):
        raise error(f"{out} exists and is not a {what}: refusing to replace it")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Replace a JSON file in one rename (readers see the old or the new content, never a mix)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_json(path: Path, error: type[CtrzooError], what: str) -> Any:
    """Parse JSON or raise ``error`` naming the file (and line) and what it should have been."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: missing {what}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
