"""``ctrzoo bench retrieval``: recall@k against exact search vs queries per second, per index kind.

Every kind is built once on the same vectors and swept over its search parameter (efSearch for the
graphs, nprobe for IVF-PQ) on evaluation queries; ``auto`` selects on a disjoint set of queries, at each
recall target, and is reported with the measurements of what it picked on the evaluation queries, so
its numbers are the ones a user would get. Ratios compare kinds at equal recall: the highest QPS among
settings that reach it.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctrzoo.errors import CtrzooError
from ctrzoo.retrieval.auto import AUTO_KINDS, candidate_kinds, choose, sweep_many, why
from ctrzoo.retrieval.evaluate import exact_top
from ctrzoo.retrieval.index import KINDS, IndexParams, build_index, check_vectors, faiss_module


def bench_vectors(items: np.ndarray, queries: np.ndarray, select_queries: np.ndarray, k: int = 10,
                  kinds: Sequence[str] = KINDS, params: IndexParams | None = None,
                  targets: Sequence[float] = (0.9, 0.95, 0.99), repeats: int = 3, margin: float = 0.05,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build each kind, sweep all of them on the evaluation queries, and run ``auto``'s choice at each
    target on the selection queries; auto is reported with the evaluation measurements of its pick."""
    faiss = faiss_module()
    x = check_vectors(items, "item vectors")
    q = check_vectors(queries, "queries", x.shape[1])
    s = check_vectors(select_queries, "selection queries", x.shape[1])
    built, builds = {}, {}
    for kind in kinds:
        t0 = time.perf_counter()
        built[kind] = build_index(x, kind, params)
        seconds = time.perf_counter() - t0
        size = len(faiss.serialize_index(built[kind].index))
        builds[kind] = {"seconds": round(seconds, 2), "bytes": size, "params": vars(built[kind].params)}
        if log:
            log(f"{kind}: built in {seconds:.1f}s ({size / 2**20:.1f} MiB)")
    _, truth = exact_top(x, q, k)
    rows = sweep_many([built[kd] for kd in kinds], q, truth, k, repeats=repeats)
    if log:
        for kind in kinds:
            log(f"{kind}: best recall@{k} {max(r['recall'] for r in rows if r['kind'] == kind):.4f}")
    auto_kinds, notes = candidate_kinds(x, [kd for kd in AUTO_KINDS if kd in kinds])
    for kind in auto_kinds:
        if kind not in built:
            built[kind] = build_index(x, kind, params)
    _, s_truth = exact_top(x, s, k)
    s_rows = sweep_many([built[kd] for kd in auto_kinds], s, s_truth, k, stop_at=max(targets), repeats=repeats)
    autos = []
    for target in targets:
        pick = choose(s_rows, target, auto_kinds, margin)
        row = next((r for r in rows if r["kind"] == pick["kind"] and r["value"] == pick["value"]), None)
        if row is None:  # flat-ip outside ``kinds``: measured now
            row = sweep_many([built[pick["kind"]]], q, truth, k, repeats=repeats)[0]
        autos.append({"target": target, "kind": pick["kind"], "param": pick["param"], "value": pick["value"],
                      "select_recall": pick["recall"], "recall": row["recall"], "qps": row["qps"],
                      "why": why(pick, s_rows, target, k, auto_kinds, notes)})
        if log:
            setting = f" {pick['param']}={pick['value']}" if pick["param"] else ""
            log(f"auto @ {target}: {pick['kind']}{setting}: recall@{k} {row['recall']:.4f}, "
                f"{row['qps']:,.0f} QPS on the evaluation queries")
    norms = np.linalg.norm(x, axis=1)
    return {"k": k, "items": len(x), "dim": x.shape[1], "queries": len(q), "select_queries": len(s),
            "rows": rows, "builds": builds, "auto": autos, "auto_notes": notes,
            "norms": {"min": float(norms.min()), "median": float(np.median(norms)), "max": float(norms.max())}}


def qps_at(rows: list[dict[str, Any]], kind: str, recall: float) -> float | None:
    """The highest QPS of ``kind`` among settings reaching ``recall`` (None if none does)."""
    ok = [r["qps"] for r in rows if r["kind"] == kind and r["recall"] >= recall - 1e-12]
    return max(ok) if ok else None


def goals(result: dict[str, Any], levels: Sequence[float] = (0.95, 0.99)) -> dict[str, Any]:
    """Möbius vs IP-HNSW at equal recall, and ``auto`` vs IP-HNSW at the recall ``auto`` reached."""
    rows = result["rows"]
    out: dict[str, Any] = {"mobius_vs_hnsw": {}, "auto_vs_hnsw": []}
    for level in levels:
        mob, hnsw = qps_at(rows, "mobius-hnsw", level), qps_at(rows, "hnsw-ip", level)
        out["mobius_vs_hnsw"][str(level)] = {"mobius_qps": mob, "hnsw_qps": hnsw,
                                             "ratio": (mob / hnsw) if mob and hnsw else None}
    for a in result["auto"]:
        hnsw = qps_at(rows, "hnsw-ip", a["recall"])
        out["auto_vs_hnsw"].append({"target": a["target"], "auto_kind": a["kind"], "auto_recall": a["recall"],
                                    "auto_qps": a["qps"], "hnsw_qps_at_that_recall": hnsw,
                                    "not_slower": hnsw is None or a["qps"] >= hnsw})
    return out


def format_table(result: dict[str, Any]) -> str:
    """Markdown: per kind, recall@k and QPS at each setting; then auto's picks."""
    k = result["k"]
    lines = [f"| kind | setting | recall@{k} | QPS (1 thread) | ms/query |", "| --- | --- | ---: | ---: | ---: |"]
    for r in result["rows"]:
        setting = f"{r['param']}={r['value']}" if r["param"] else "exact"
        lines.append(f"| {r['kind']} | {setting} | {r['recall']:.4f} | {r['qps']:,.0f} | {r['ms_per_query']:.3f} |")
    for a in result["auto"]:
        setting = f"{a['kind']} {a['param']}={a['value']}" if a["param"] else a["kind"]
        lines.append(f"| auto (target {a['target']}) | {setting} | {a['recall']:.4f} | {a['qps']:,.0f} | "
                     f"{1e3 / a['qps']:.3f} |")
    return "\n".join(lines)


def format_builds(result: dict[str, Any]) -> str:
    lines = ["| kind | build s | index MiB |", "| --- | ---: | ---: |"]
    for kind, b in result["builds"].items():
        lines.append(f"| {kind} | {b['seconds']:.1f} | {b['bytes'] / 2**20:.1f} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path, title: str) -> Path:
    """Recall@k (x) vs QPS (y, log scale) per kind, auto's picks as stars: the full range, and a zoom on
    recall >= 0.9 where the choice is made; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, lo in zip(axes, (0.0, 0.9)):
        for kind in dict.fromkeys(r["kind"] for r in result["rows"]):
            pts = [r for r in result["rows"] if r["kind"] == kind and r["recall"] >= lo]
            ax.plot([r["recall"] for r in pts], [r["qps"] for r in pts], marker="o", ms=3, label=kind)
        autos = [a for a in result["auto"] if a["recall"] >= lo]
        if autos:
            ax.scatter([a["recall"] for a in autos], [a["qps"] for a in autos], marker="*", s=160, c="k", zorder=5,
                       label="auto (targets " + ", ".join(str(a["target"]) for a in result["auto"]) + ")")
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{result['k']} vs exact inner product" + (f" (>= {lo})" if lo else ""))
        ax.set_ylabel("queries / s (one thread)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path.write_bytes(buf.getvalue())
    return path


def bench_inputs(bundle: str | Path | None = None, synthetic: int | None = None, queries: str | Path | None = None,
                 n_queries: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Item vectors, evaluation queries, as many disjoint selection queries (for ``auto``), and a title.

    Either a retrieval bundle's catalogue through its item tower (queries: ``queries`` or the test split of
    its dataset) or ``synthetic`` popularity-skewed vectors; the queries are shuffled with ``seed``.
    """
    if bool(bundle) == bool(synthetic):
        raise CtrzooError("bench retrieval: give either --bundle R (a retrieval bundle) or --synthetic N_ITEMS")
    if synthetic:
        from ctrzoo.retrieval.synth import zipf_factorized

        items, users = zipf_factorized(n_items=synthetic, n_users=max(synthetic // 2, 2 * n_queries), seed=seed)
        users = users[np.linalg.norm(users, axis=1) > 0]
        title = f"synthetic popularity-skewed vectors ({synthetic:,d} items)"
    else:
        from ctrzoo.retrieval.bundle import load_retrieval_bundle
        from ctrzoo.retrieval.retriever import catalogue_vectors, held_out_queries

        b = load_retrieval_bundle(bundle)
        model = b.build_model()
        items, _ = catalogue_vectors(b, model, b.catalogue())
        users = held_out_queries(b, model, queries, limit=2 * n_queries, seed=seed)
        title = f"two-tower item vectors of {bundle} ({len(items):,d} items)"
    users = users[np.random.default_rng(seed).permutation(len(users))]
    if len(users) < 4:
        raise CtrzooError(f"bench retrieval: only {len(users)} distinct queries; need at least 4")
    half = min(n_queries, len(users) // 2)
    return items, users[:half], users[half : 2 * half], title


def write_report(result: dict[str, Any], out: str | Path, title: str) -> Path:
    """``retrieval.md`` (the tables), ``retrieval.json`` (everything) and ``retrieval.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "retrieval.md").write_text(f"## {title}\n\n{format_table(result)}\n\n{format_builds(result)}\n")
    plot(result, out / "retrieval.png", title)
    return out / "retrieval.md"
