"""``ctrzoo demo``: the main job end to end on built-in synthetic data (no downloads)."""

from __future__ import annotations

import time
from pathlib import Path


def run_demo(out: Path, rows: int = 200_000, seed: int = 0) -> None:
    from ctrzoo.cli import format_summary
    from ctrzoo.data.prepare import prepare
    from ctrzoo.synth import generate

    out.mkdir(parents=True, exist_ok=True)
    for kind in ("criteo", "taobao"):
        raw = out / f"{kind}.raw"
        t0 = time.perf_counter()
        summary = generate(kind, rows, seed, raw)
        print(f"[{kind}] synthesized {rows:,d} rows in {time.perf_counter() - t0:.1f}s "
              f"(base CTR {summary['base_ctr']:.3f}, oracle AUC {summary['oracle_auc']:.4f})")
        t0 = time.perf_counter()
        prepare(kind, [raw], out / f"{kind}_data")
        print(f"[{kind}] prepared in {time.perf_counter() - t0:.1f}s")
        print(format_summary(out / f"{kind}_data"))
