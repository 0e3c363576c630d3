"""Measure indexes (recall@k against exact search, queries per second) and pick one: ``--kind auto``.

Which index is fastest at a given recall depends on the data: the Möbius graph wins when item norms vary
a lot (popularity-skewed vectors), plain inner-product HNSW when they barely do, IVF-PQ when memory is the
constraint. So ``auto`` builds the candidates, sweeps each one's search parameter on held-out queries,
keeps for each the cheapest setting that reaches the recall target, and picks the one with the most
queries per second, writing every measurement and the reason into the index's metadata.

Queries per second are measured on one thread, per query as a service pays it (one user per request):
all queries go in one call, but FAISS's BLAS path for large query batches (which would make exact search
look several times faster than it is for a single query) is switched off while measuring. Each setting is
timed ``repeats`` times in interleaved rounds over all settings of all kinds and the best time kept, so a
burst of load on a shared machine slows one round of everything rather than one kind.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ctrzoo.retrieval.errors import RetrievalError
from ctrzoo.retrieval.evaluate import exact_top, overlap_recall
from ctrzoo.retrieval.index import KINDS, IndexParams, VectorIndex, build_index, check_vectors, faiss_module

SWEEPS: dict[str, tuple[int, ...]] = {
    "hnsw-ip": (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512),
    "mobius-hnsw": (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512),
    "ivfpq-ip": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
}
# in order of preference: a later kind must be ``margin`` faster to displace an earlier one (exact search
# first, then the simpler graph), so measurement noise never flips the choice between near-equal kinds
AUTO_KINDS = ("flat-ip", "hnsw-ip", "mobius-hnsw", "ivfpq-ip")
CONSTANT_NORM = 1e-3  # relative spread of item norms under which the Möbius graph is the inner-product graph


def settings(index: VectorIndex) -> list[int | None]:
    if index.kind == "flat-ip":
        return [None]
    values = SWEEPS[index.kind]
    if index.kind == "ivfpq-ip":
        values = [v for v in values if v <= index.params.nlist]
    return list(values)


def sweep_many(indexes: Sequence[VectorIndex], queries: np.ndarray, truth: np.ndarray, k: int,
               stop_at: float | None = None, repeats: int = 3) -> list[dict[str, Any]]:
    """recall@k (against ``truth``) and single-thread QPS of every index at each of its search settings.

    A first pass finds the recall of each setting (stopping a kind once it reaches ``stop_at``); then
    ``repeats - 1`` more timing rounds go over all kept settings in turn, and the best time counts.
    """
    faiss = faiss_module()
    threads = faiss.omp_get_max_threads()
    blas = faiss.cvar.distance_compute_blas_threshold
    faiss.omp_set_num_threads(1)
    faiss.cvar.distance_compute_blas_threshold = 1 << 30  # per-query cost: no batching of queries into a GEMM
    rows: list[dict[str, Any]] = []
    plan: list[tuple[VectorIndex, int | None, dict[str, Any]]] = []
    try:
        for index in indexes:
            for value in settings(index):
                t0 = time.perf_counter()
                _, pos = index.search(queries, k, value)
                seconds = time.perf_counter() - t0
                row = {"kind": index.kind, "param": index.search_param, "value": value,
                       "recall": overlap_recall(pos, truth[:, :k]), "seconds": seconds}
                rows.append(row)
                plan.append((index, value, row))
                if stop_at is not None and row["recall"] >= stop_at:
                    break
        for _ in range(max(repeats, 1) - 1):
            for index, value, row in plan:
                t0 = time.perf_counter()
                index.search(queries, k, value)
                row["seconds"] = min(row["seconds"], time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(threads)
        faiss.cvar.distance_compute_blas_threshold = blas
    for row in rows:
        seconds = max(row.pop("seconds"), 1e-9)
        row["qps"] = len(queries) / seconds
        row["ms_per_query"] = 1e3 * seconds / len(queries)
    return rows


def sweep(index: VectorIndex, queries: np.ndarray, truth: np.ndarray, k: int, stop_at: float | None = None,
          repeats: int = 3) -> list[dict[str, Any]]:
    """``sweep_many`` of one index."""
    return sweep_many([index], queries, truth, k, stop_at, repeats)


def candidate_kinds(vectors: np.ndarray, kinds: Sequence[str]) -> tuple[list[str], list[str]]:
    """The kinds worth comparing on these vectors (``flat-ip`` always), and notes on those left out."""
    kinds = list(dict.fromkeys(kinds)) + ([] if "flat-ip" in kinds else ["flat-ip"])
    notes = []
    norms = np.linalg.norm(vectors, axis=1)
    spread = (norms.max() - norms.min()) / max(float(norms.max()), 1e-30)
    if "mobius-hnsw" in kinds and spread < CONSTANT_NORM:
        kinds.remove("mobius-hnsw")
        notes.append(f"mobius-hnsw skipped: item norms are constant (relative spread {spread:.1e}), so the "
                     "Möbius graph is the inner-product graph")
    return kinds, notes


def choose(rows: list[dict[str, Any]], target: float, kinds: Sequence[str], margin: float = 0.05) -> dict[str, Any]:
    """Per kind the cheapest setting reaching ``target``; the fastest of those, ties within ``margin`` going
    to the earlier kind."""
    best = None
    for kind in kinds:
        ok = [r for r in rows if r["kind"] == kind and r["recall"] >= target]
        if not ok:
            continue
        cheapest = ok[0] if kind == "flat-ip" else min(ok, key=lambda r: (r["value"], -r["qps"]))
        if best is None or cheapest["qps"] > best["qps"] * (1 + margin):
            best = cheapest
    if best is None:
        raise RetrievalError(f"no index reached recall {target} (flat-ip was not measured)")
    return best


def select_index(vectors: np.ndarray, queries: np.ndarray, k: int = 10, target: float = 0.95,
                 kinds: Sequence[str] = AUTO_KINDS, params: IndexParams | None = None,
                 built: dict[str, VectorIndex] | None = None, repeats: int = 3, margin: float = 0.05,
                 log=None) -> tuple[VectorIndex, dict[str, Any]]:
    """Build each of ``kinds`` (or reuse ``built``), find the fastest one reaching ``target`` recall@k.

    ``kinds`` are in order of preference: a later kind replaces the best so far only when it is more than
    ``margin`` faster. Returns the chosen index, its search parameter set to the cheapest setting that met
    the target, and a report: every measurement, the choice and why. ``flat-ip`` is always a candidate
    (recall 1 by definition), so some index always qualifies.
    """
    if not 0 < target <= 1:
        raise RetrievalError(f"the recall target must be in (0, 1], got {target}")
    unknown = [kd for kd in kinds if kd not in KINDS]
    if unknown:
        raise RetrievalError(f"auto: unknown index kinds {unknown}; known: {list(KINDS)}")
    x = check_vectors(vectors, "item vectors")
    q = check_vectors(queries, "held-out queries", x.shape[1])
    kinds, notes = candidate_kinds(x, kinds)
    _, truth = exact_top(x, q, k)
    built = dict(built or {})
    for kind in kinds:
        if kind not in built:
            t0 = time.perf_counter()
            built[kind] = build_index(x, kind, params)
            built[kind].info["build_seconds"] = round(time.perf_counter() - t0, 2)
    measured = sweep_many([built[kd] for kd in kinds], q, truth, k, stop_at=target, repeats=repeats)
    for r in measured:
        r["meets_target"] = r["recall"] >= target
    best = choose(measured, target, kinds, margin)
    if log is not None:
        for kind in kinds:
            rows = [r for r in measured if r["kind"] == kind]
            ok = [r for r in rows if r["meets_target"]]
            at = f" at {ok[0]['param']}={ok[0]['value']}" if ok and ok[0]["param"] else ""
            log(f"auto: {kind}: " + (f"recall@{k} {ok[0]['recall']:.3f}{at}, {ok[0]['qps']:,.0f} QPS" if ok else
                                     f"best recall@{k} {max(r['recall'] for r in rows):.3f} < {target}"))
        for note in notes:
            log(f"auto: {note}")
    chosen = built[best["kind"]]
    if chosen.search_param is not None:
        setattr(chosen.params, chosen.search_param, int(best["value"]))
    report = {"target_recall": target, "k": k, "queries": len(q), "margin": margin, "measurements": measured,
              "chosen": {kk: best[kk] for kk in ("kind", "param", "value", "recall", "qps")},
              "why": why(best, measured, target, k, kinds, notes)}
    chosen.info["auto"] = report
    return chosen, report


def why(best: dict[str, Any], measured: list[dict[str, Any]], target: float, k: int, kinds: list[str],
        notes: Sequence[str] = ()) -> str:
    setting = f" at {best['param']}={best['value']}" if best["param"] else ""
    parts = [f"{best['kind']}{setting}: recall@{k} {best['recall']:.3f} >= {target} at {best['qps']:,.0f} QPS "
             "(single thread), the fastest candidate reaching the target (ties within the margin go to the "
             "earlier of " + ", ".join(kinds) + ")"]
    for kind in kinds:
        if kind == best["kind"]:
            continue
        ok = [r for r in measured if r["kind"] == kind and r["recall"] >= target]
        if ok:
            parts.append(f"{kind}: {ok[0]['qps']:,.0f} QPS at recall {ok[0]['recall']:.3f} "
                         f"(the choice is {best['qps'] / ok[0]['qps']:.2f}x as fast)")
        else:
            best_recall = max((r["recall"] for r in measured if r["kind"] == kind), default=float("nan"))
            parts.append(f"{kind}: never reached the target (best recall {best_recall:.3f})")
    return "; ".join([*parts, *notes])
