"""The comparison report: ``report.json`` (machine-readable), ``report.md`` (tables) and a self-contained
``report.html`` whose ROC, reliability and per-slice plots are embedded PNGs (readable offline)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "n/a"
        return f"{x:.{digits}f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    return str(x)


def _p(x: float) -> str:
    return "< 1e-6" if x < 1e-6 else f"{x:.3g}"


def model_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    has_gauc = any("gauc" in m for m in report["models"].values())
    head = ["model", "AUC", "logloss", *(["GAUC"] if has_gauc else []), "RelaImpr", "mean pred / CTR", "ECE"]
    rows = []
    for name, m in report["models"].items():
        cal = m["calibration"]
        rows.append([name, _fmt(m["auc"]), _fmt(m["logloss"]),
                     *([_fmt(m.get("gauc", float("nan")))] if has_gauc else []),
                     f"{m['rela_impr'] * 100:+.2f}%", _fmt(cal["ratio"], 3), _fmt(cal["ece"])])
    return head, rows


def comparison_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    head = ["B vs A", "metric", "B - A", "95% CI", "p", "p (Holm)"]
    rows = []
    for c in report["comparisons"]:
        for metric in ("auc", "logloss", "gauc"):
            if metric not in c:
                continue
            r = c[metric]
            test = "DeLong" if metric == "auc" else "bootstrap"
            rows.append([f"{c['b']} vs {c['a']}", f"{metric.upper()} ({test})", f"{r['diff']:+.5f}",
                         f"[{r['ci_low']:+.5f}, {r['ci_high']:+.5f}]", _p(r["p_value"]), _p(r["p_holm"])])
    return head, rows


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(report: dict) -> str:
    d = report["data"]
    parts = [
        "# A/B offline comparison",
        f"Rows: {d['rows']:,d} ({d['split']} split of `{d['path']}`), CTR {d['ctr']:.4f}. "
        f"Baseline: **{report['baseline']}**.",
        "",
        *[f"- {v}" for v in report["verdicts"]],
        "",
        "## Metrics",
        _md_table(*model_rows(report)),
        "",
        "## Differences against the baseline",
        _md_table(*comparison_rows(report)),
        "",
        report["multiple_comparisons"] + ".",
    ]
    if report.get("slices"):
        s = report["slices"]
        names = list(report["models"])
        rows = [[x["slice"], f"{x['rows']:,d}", _fmt(x["ctr"]), *[_fmt(x["auc"][n]) for n in names]]
                for x in s["slices"]]
        parts += ["", f"## AUC by `{s['field']}`", _md_table([s["field"], "rows", "CTR", *names], rows)]
    for task, t in other_tasks(report).items():
        parts += ["", f"## Task `{task}` ({t['rows']:,d} rows, positive rate {t['ctr']:.4f}; baseline "
                      f"**{t['baseline']}**)", "", *[f"- {v}" for v in t["verdicts"]], "",
                  _md_table(*model_rows(t)), "", _md_table(*comparison_rows(t))]
    return "\n".join(parts) + "\n"


def other_tasks(report: dict) -> dict[str, dict]:
    """With multi-task bundles: the comparisons of every task but the report's own (``data.label``)."""
    primary = report["data"].get("label")
    return {task: t for task, t in report.get("tasks", {}).items() if task != primary}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(report: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, c in report["curves"].items():
        ax.plot(c["fpr"], c["tpr"], label=f"{name} (AUC {report['models'][name]['auc']:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right", fontsize=8)
    out["roc"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    top = 0.0
    for name, m in report["models"].items():
        cur = m["calibration"]["curve"]
        ax.plot(cur["predicted"], cur["observed"], marker="o", ms=3,
                label=f"{name} (ECE {m['calibration']['ece']:.4f})")
        top = max(top, *cur["predicted"], *cur["observed"])
    ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="mean predicted CTR (equal-mass bins)", ylabel="observed CTR", title="Calibration (reliability)")
    ax.legend(loc="upper left", fontsize=8)
    out["calibration"] = _png(fig)
    plt.close(fig)

    if report.get("slices"):
        s = report["slices"]
        names = list(report["models"])
        labels = [x["slice"] for x in s["slices"]]
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(labels) * len(names)), 4))
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            vals = [x["auc"][n] for x in s["slices"]]
            ax.bar([j + i * width for j in range(len(labels))], vals, width, label=n)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=45, ha="right", fontsize=7)
        ax.set(ylabel="AUC", title=f"AUC by {s['field']}", ylim=(0.4, 1.0))
        ax.legend(fontsize=8)
        out["slices"] = _png(fig)
        plt.close(fig)
    return out


def to_html(report: dict) -> str:
    images = plots(report)

    def table(head, rows) -> str:
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"

    d = report["data"]
    imgs = "".join(f'<figure><img alt="{k} plot" src="data:image/png;base64,{v}"></figure>' for k, v in images.items())
    verdicts = "".join(f"<li>{html.escape(v)}</li>" for v in report["verdicts"])
    tasks = "".join(
        f"<h2>Task <code>{html.escape(task)}</code></h2><p>{t['rows']:,d} rows, positive rate {t['ctr']:.4f}; "
        f"baseline <b>{html.escape(t['baseline'])}</b>.</p><ul>"
        + "".join(f"<li>{html.escape(v)}</li>" for v in t["verdicts"])
        + f"</ul>{table(*model_rows(t))}{table(*comparison_rows(t))}"
        for task, t in other_tasks(report).items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ctrzoo A/B comparison</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}\
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
figure{{display:inline-block;margin:0 1em 1em 0}}img{{max-width:520px}}</style></head><body>
<h1>A/B offline comparison</h1>
<p>{d['rows']:,d} rows ({html.escape(d['split'])} split of <code>{html.escape(d['path'])}</code>), CTR {d['ctr']:.4f}.
Baseline: <b>{html.escape(report['baseline'])}</b>.</p>
<ul>{verdicts}</ul>
<h2>Metrics</h2>{table(*model_rows(report))}
<h2>Differences against the baseline</h2>{table(*comparison_rows(report))}
<p>{html.escape(report['multiple_comparisons'])}.</p>
<h2>Plots</h2>{imgs}
{tasks}
</body></html>
"""


def write_report(report: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "report.md").write_text(to_markdown(report))
    (out / "report.html").write_text(to_html(report))
    return out
