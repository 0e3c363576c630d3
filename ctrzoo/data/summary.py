"""The human summary of a prepared dataset: what ``ctrzoo prepare`` prints at the end and ``ctrzoo info`` shows."""

from __future__ import annotations

from pathlib import Path

from ctrzoo.data.dataset import PreparedDataset


def format_summary(path: str | Path) -> str:
    """Splits (rows, CTR, shards), feature widths, embedding rows, skipped bad rows and split warnings."""
    from ctrzoo.data.prepare import split_warnings  # prepare imports the reader: only when summarizing

    ds = PreparedDataset.open(path)
    m = ds.meta
    lines = [f"dataset {ds.path} ({m.kind}, fingerprint {m.fingerprint[:24]}...)"]
    for name, s in m.splits.items():
        ctr = s.positives / s.rows if s.rows else float("nan")
        lines.append(f"  {name:<5} {s.rows:>10,d} rows  CTR {ctr:.4f}  {len(s.shards)} shard(s)")
    if len(m.labels) > 1 or any(rule != "0/1" for rule in m.label_rules.values()):
        rules = [f"{name} ({m.label_rules[name]})" if name in m.label_rules else name for name in m.labels]
        lines.append(f"  labels: {', '.join(rules)} (the first is the default; `ctrzoo train --label NAME`)")
    if m.weight:
        lines.append(f"  sample weight: {m.weight}")
    lines += ds.codec.describe()
    bad = m.bad_rows
    if bad.total:
        lines.append(f"  bad rows skipped: {bad.total}")
        for reason, info in bad.by_reason.items():
            lines.append(f"    {info.count:>8} x {reason}  (first: {', '.join(info.first[:3])})")
    else:
        lines.append("  bad rows skipped: 0")
    lines += [f"  warning: {w}" for w in split_warnings(m.splits)]
    return "\n".join(lines)
