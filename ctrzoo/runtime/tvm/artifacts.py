"""What the tvm backend keeps in a bundle, and when a kept library is still current.

    BUNDLE/tvm/model.so                       the compiled Relax VM executable (native code, no weights)
    BUNDLE/tvm/database_workload.json         MetaSchedule's JSON database: the tuned schedules, keyed by
    BUNDLE/tvm/database_tuning_record.json    the kernels' shapes (not the weights)
    BUNDLE/tvm/manifest.json                  what model.so was built from and how: ``TvmManifest``
                                              (``ctrzoo.metadata``), its ``build_key`` + details
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ctrzoo.atomic import write_json
from ctrzoo.bundle import Bundle, sha256_file  # re-exported: the backend and tuning use it
from ctrzoo.errors import BundleError, CtrzooError
from ctrzoo.metadata import TvmBuildKey, TvmLibrary, TvmManifest
from ctrzoo.runtime.tvm.compiler import build, import_onnx, prepare
from ctrzoo.runtime.tvm.env import require_tvm

log = logging.getLogger("ctrzoo.runtime.tvm")

ARTIFACT_DIR = "tvm"
LIBRARY = "model.so"
MANIFEST = "manifest.json"
DB_WORKLOAD = "database_workload.json"
DB_RECORDS = "database_tuning_record.json"
MANIFEST_VERSION = TvmManifest.FORMATS[-1]


def artifact_dir(bundle: Bundle) -> Path:
    return bundle.path / ARTIFACT_DIR


def read_manifest(art: Path) -> TvmManifest | None:
    """The library's manifest; None when there is none or it is unreadable (then the library is rebuilt)."""
    path = art / MANIFEST
    if not path.exists():
        return None
    try:
        return TvmManifest.from_json(json.loads(path.read_text()), path)
    except (ValueError, OSError, CtrzooError) as exc:
        log.warning("tvm: %s is unreadable (%s); the library will be rebuilt", path, exc)
        return None


def manifest_buckets(bundle: Bundle) -> tuple[int, ...] | None:
    manifest = read_manifest(artifact_dir(bundle))
    return tuple(manifest.buckets) if manifest and manifest.buckets else None


def open_database(art: Path):
    """The bundle's tuning database (None when it has none). A damaged one is refused, never silently dropped."""
    from tvm.s_tir import meta_schedule as ms

    workload, records = art / DB_WORKLOAD, art / DB_RECORDS
    if not workload.exists() and not records.exists():
        return None
    for path in (workload, records):
        if not path.exists():
            raise BundleError(f"{path}: missing (its companion {workload if path is records else records} exists); "
                              f"run `ctrzoo tune --bundle {art.parent}` again or delete {art}")
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            try:
                json.loads(line)
            except ValueError:
                raise BundleError(f"{path}:{lineno}: not a MetaSchedule record (corrupt tuning database); "
                                  f"run `ctrzoo tune --bundle {art.parent}` again or delete {art}") from None
    try:
        return ms.database.JSONDatabase(str(workload), str(records), allow_missing=False)
    except Exception as exc:
        raise BundleError(f"{records}: MetaSchedule cannot read the tuning database ({exc.__class__.__name__}: "
                          f"{str(exc)[:200]}); run `ctrzoo tune --bundle {art.parent}` again or delete {art}") from None


def database_digest(art: Path) -> str | None:
    records = art / DB_RECORDS
    return sha256_file(records) if records.exists() else None


def count_records(art: Path) -> int:
    records = art / DB_RECORDS
    return sum(1 for line in records.read_text().splitlines() if line.strip()) if records.exists() else 0


def build_key(onnx_sha: str, target: dict, buckets: tuple[int, ...], db_digest: str | None) -> TvmBuildKey:
    """What model.so depends on; a manifest with another key means the library is stale."""
    tvm = require_tvm()
    return TvmBuildKey(onnx_sha256=onnx_sha, tvm_version=tvm.__version__,
                       target={k: v for k, v in target.items() if k != "num-cores"},  # threads: a runtime setting
                       buckets=list(buckets), database_sha256=db_digest)


def build_library(bundle: Bundle, buckets: tuple[int, ...], target: dict, onnx_path: Path, onnx_sha: str,
                  tuning: dict | None = None) -> Path:
    """Compile every bucket into ``BUNDLE/tvm/model.so`` (from the database when there is one) + manifest."""
    art = artifact_dir(bundle)
    art.mkdir(exist_ok=True)
    database = open_database(art)
    t0 = time.perf_counter()
    mod, _, _ = import_onnx(onnx_path, bundle.codec.layout, buckets)
    ex = build(prepare(mod, target), target, database)
    tmp = art / f".{LIBRARY}.tmp-{os.getpid()}"
    try:
        ex.export_library(str(tmp))
        os.replace(tmp, art / LIBRARY)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    previous = read_manifest(art)
    manifest = TvmManifest.built(
        build_key(onnx_sha, target, buckets, database_digest(art)),
        num_cores=target.get("num-cores"),
        library=TvmLibrary(file=LIBRARY, sha256=sha256_file(art / LIBRARY), build_seconds=round(seconds, 2)),
        database_records=count_records(art),
        built_from="database" if database is not None else "untuned",
        tuning=tuning if tuning is not None else (previous.tuning if previous else None),
    )
    write_json(art / MANIFEST, manifest.to_json())
    log.info("tvm: built %s for buckets %s from %s in %.1fs", art / LIBRARY, ",".join(map(str, buckets)),
             f"the tuning database ({manifest.database_records} records)" if database is not None
             else "untuned kernels (no tuning database)", seconds)
    return art / LIBRARY
