"""``ctrzoo compare``: score the same raw rows with every bundle's own encoder, then test the differences."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrzoo.bundle import Bundle, load_bundle
from ctrzoo.compare.calibration import calibration
from ctrzoo.compare.stats import delong_test, holm, paired_bootstrap_mean, paired_bootstrap_weighted
from ctrzoo.data.dataset import PreparedDataset, parquet_file, read_table
from ctrzoo.devices import resolve_device
from ctrzoo.errors import CtrzooError
from ctrzoo.evaluate import score_raw_file, score_split
from ctrzoo.metrics import auc, gauc, logloss, per_user_auc, rela_impr

MAX_SLICES = 10


@dataclass
class Scored:
    name: str
    bundle: Bundle
    probs: np.ndarray


def _names(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def _check_same_data(bundles: list[Bundle], ds: PreparedDataset) -> None:
    for b in bundles:
        fp = b.meta.data.fingerprint
        if fp != ds.fingerprint:
            raise CtrzooError(
                f"bundle {b.path} was trained on other raw data (fingerprint {fp}) than {ds.path} "
                f"({ds.fingerprint}): an A/B comparison needs bundles trained on the same raw data"
            )


def score_all(paths: list[Path], ds: PreparedDataset, split: str, device: str = "cpu"):
    """Every bundle's scores of the same rows (its own encoder over the raw rows where there are some), on
    ``device`` (fp32): (labels per task, users, [(name, bundle, probabilities per task)], raw path). A
    single-task bundle scores one task, the label it learned; a multi-task bundle each of its tasks."""
    where = resolve_device(device)
    bundles = [load_bundle(p) for p in paths]
    _check_same_data(bundles, ds)
    raw_path = ds.meta.raw.get(split)
    labels: dict[str, np.ndarray] = {}
    users = None
    scored = []
    for name, b in zip(_names(paths), bundles):
        if raw_path:
            y, p, u = score_raw_file(b, b.build_model().to(where), str(ds.path / raw_path), ds.meta.user_id)
        else:
            y, p, u = score_split(b, ds, split, device=str(where))
        tasks = b.tasks or (b.spec.label,)
        y, p = (y, p) if y.ndim == 2 else (y[:, None], p[:, None])
        for i, task in enumerate(tasks):
            if task in labels and not np.array_equal(labels[task], y[:, i]):
                raise CtrzooError("internal: bundles scored different rows")
            labels[task] = y[:, i]
        users = u
        scored.append((name, b, {task: p[:, i] for i, task in enumerate(tasks)}))
    return labels, users, scored, (ds.path / raw_path if raw_path else None)


def _row_logloss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _slices(raw_path: Path | None, field: str | None, labels, scored: list[Scored]) -> dict | None:
    if field is None:
        return None
    if raw_path is None:
        raise CtrzooError("--slice-by needs the raw rows of the split (prepare without --no-raw)")
    schema = parquet_file(raw_path).schema_arrow  # a damaged file: DatasetError naming it
    if field not in schema.names:
        raise CtrzooError(f"--slice-by {field!r}: no such raw column; columns: {', '.join(schema.names)}")
    values = read_table(raw_path, columns=[field]).column(field).to_pandas().astype("string").fillna("(missing)")
    counts = values.value_counts()
    top = list(counts.index[:MAX_SLICES])
    keys = np.where(values.isin(top), values, "(other)")
    out = []
    for key in [*top, "(other)"]:
        mask = keys == key
        if not mask.any():
            continue
        y = labels[mask]
        out.append({"slice": str(key), "rows": int(mask.sum()), "ctr": float(y.mean()),
                    "auc": {s.name: auc(y, s.probs[mask]) for s in scored}})
    return {"field": field, "slices": out}


def compare(paths: list[str | Path], data: str | Path, split: str = "test", baseline: str | None = None,
            slice_by: str | None = None, n_boot: int = 1000, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Compare bundles on the same rows. The report's top level is the baseline's task (its label; a
    multi-task baseline's first task); with multi-task bundles, ``tasks`` holds the same comparison for
    every task that two or more bundles score (a single-task model takes part in its own label's)."""
    resolve_device(device)  # a missing GPU: one line, before anything is read
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise CtrzooError("compare needs at least two bundles")
    ds = PreparedDataset.open(data)
    labels, users, scored_all, raw_path = score_all(paths, ds, split, device)
    names = [name for name, _, _ in scored_all]
    base_name = baseline or names[0]
    if base_name not in names:
        matches = [name for name, b, _ in scored_all
                   if str(b.path) == str(Path(base_name)) or name == Path(base_name).name]
        if not matches:
            raise CtrzooError(f"--baseline {baseline!r} is none of the compared bundles: {names}")
        base_name = matches[0]
    primary = next(iter(next(p for name, _, p in scored_all if name == base_name)))
    per_task = {}
    for task in labels:
        scored = [Scored(name, b, probs[task]) for name, b, probs in scored_all if task in probs]
        if len(scored) < 2:
            if task == primary:
                raise CtrzooError(f"the baseline {base_name} learned label {task!r}, which no other bundle scores: "
                                  f"the bundles score {', '.join(sorted({t for _, _, p in scored_all for t in p}))}")
            continue
        base = base_name if any(s.name == base_name for s in scored) else scored[0].name
        per_task[task] = _compare_task(labels[task], users, scored, base, split, n_boot, seed)
    report = {
        "data": {"path": str(ds.path), "split": split, "rows": int(labels[primary].size),
                 "ctr": float(labels[primary].mean()), "fingerprint": ds.fingerprint, "label": primary},
        **per_task[primary],
        "multiple_comparisons": (
            "each model is compared with the baseline; p-values are Holm-Bonferroni adjusted per metric "
            f"over {len(per_task[primary]['comparisons'])} comparison(s) (p_holm), which controls the "
            "family-wise error rate" + (" (per task)" if len(per_task) > 1 else "")
        ),
        "bootstrap": {"replicates": n_boot, "seed": seed, "gauc_unit": "user"},
        "slices": _slices(raw_path, slice_by, labels[primary],
                          [Scored(n, b, p[primary]) for n, b, p in scored_all if primary in p]),
    }
    if len(per_task) > 1 or any(len(p) > 1 for _, _, p in scored_all):
        report["tasks"] = per_task
    return report


def _compare_task(labels: np.ndarray, users: np.ndarray | None, scored: list[Scored], base_name: str, split: str,
                  n_boot: int, seed: int) -> dict[str, Any]:
    """One label's comparison: every model's metrics, each against the baseline (DeLong for AUC, paired
    bootstrap for logloss and GAUC, Holm-adjusted), verdicts and ROC curves."""
    if labels.min() == labels.max():
        raise CtrzooError(f"the {split} split has one class only: AUC is undefined")
    base = next(s for s in scored if s.name == base_name)
    base_auc = auc(labels, base.probs)
    pu = {s.name: per_user_auc(labels, s.probs, users) for s in scored} if users is not None else {}
    models = {}
    for s in scored:
        m = {"bundle": str(s.bundle.path), "model": s.bundle.model_name, "version": s.bundle.version,
             "auc": auc(labels, s.probs), "logloss": logloss(labels, s.probs),
             "calibration": calibration(labels, s.probs)}
        m["rela_impr"] = rela_impr(m["auc"], base_auc) if s is not base else 0.0
        if users is not None:
            m["gauc"], info = gauc(labels, s.probs, users)
            m["gauc_users"], m["gauc_users_skipped"] = info["users"], info["users_skipped"]
        models[s.name] = m
    comparisons = []
    for i, s in enumerate(x for x in scored if x is not base):
        c = {"a": base.name, "b": s.name, "auc": delong_test(labels, base.probs, s.probs),
             "logloss": paired_bootstrap_mean(_row_logloss(labels, s.probs) - _row_logloss(labels, base.probs),
                                              n_boot, seed + i)}
        if users is not None:
            a_u, b_u = pu[base.name], pu[s.name]
            c["gauc"] = paired_bootstrap_weighted(a_u["auc"], b_u["auc"], a_u["rows"], n_boot, seed + i)
        comparisons.append(c)
    for metric in ("auc", "logloss", "gauc"):
        present = [c for c in comparisons if metric in c]
        for c, adj in zip(present, holm([c[metric]["p_value"] for c in present])):
            c[metric]["p_holm"] = adj
    return {"baseline": base.name, "models": models, "comparisons": comparisons,
            "verdicts": [verdict(c) for c in comparisons],
            "curves": {s.name: _roc_points(labels, s.probs) for s in scored},
            "rows": int(labels.size), "ctr": float(labels.mean())}


def verdict(c: dict) -> str:
    a = c["auc"]
    p = a.get("p_holm", a["p_value"])
    ptxt = "p < 1e-6" if p < 1e-6 else f"p = {p:.3g}"
    ci = f"[{a['ci_low']:+.4f}, {a['ci_high']:+.4f}]"
    if p < 0.05:
        winner, loser = (c["b"], c["a"]) if a["diff"] > 0 else (c["a"], c["b"])
        return f"{winner} beats {loser}: {abs(a['diff']):+.4f} AUC {ci}, {ptxt}"
    return f"no significant AUC difference between {c['b']} and {c['a']}: {a['diff']:+.4f} {ci}, {ptxt}"


def _roc_points(labels: np.ndarray, probs: np.ndarray, max_points: int = 400) -> dict[str, list[float]]:
    order = np.argsort(-probs, kind="stable")
    y = labels[order].astype(np.float64)
    p = probs[order]
    last_of_tie = np.r_[p[1:] != p[:-1], True]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(1 - y)[last_of_tie]
    tpr = np.r_[0.0, tp / max(tp[-1], 1)]
    fpr = np.r_[0.0, fp / max(fp[-1], 1)]
    keep = np.unique(np.linspace(0, tpr.size - 1, min(max_points, tpr.size)).astype(int))
    return {"fpr": fpr[keep].round(5).tolist(), "tpr": tpr[keep].round(5).tolist()}
