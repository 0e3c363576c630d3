"""Sample rows the tests write themselves, in the formats of the real ones in ``../shared/data``.

A clone without ``../shared`` runs every sample-row test on these; only real-row fidelity needs the real
files. The counts match the real sample (see its README) so row-count assertions hold for both sources.
"""

from __future__ import annotations

from pathlib import Path

from ctrzoo.synth import generate

CRITEO_ROWS = 200
TAOBAO_ROWS = 100
FILES = ("criteo_sample.tsv", "criteo_sample.txt", "taobao_ad_sample.csv")
CRITEO_HEADER = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
# The real CSV writes integers as floats (`260.0`), except I2, the column with the negative codes (`-1`).
CSV_PLAIN_INTEGERS = {"I2"}


def criteo_tsv_to_csv(tsv: Path, out: Path) -> Path:
    """The same rows as comma-separated text with a header and the integer columns written as floats."""
    as_float = [name.startswith("I") and name not in CSV_PLAIN_INTEGERS for name in CRITEO_HEADER]
    lines = [",".join(CRITEO_HEADER)]
    for line in tsv.read_text().splitlines():
        fields = line.split("\t")
        lines.append(",".join(f"{v}.0" if v and f else v for v, f in zip(fields, as_float, strict=True)))
    out.write_text("\n".join(lines) + "\n")
    return out


def write_sample_rows(root: Path, seed: int = 1) -> Path:
    """Write the three sample files of ``../shared/data`` (Criteo TSV and CSV, Taobao CSV) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    generate("criteo", CRITEO_ROWS, seed, root / "criteo_sample.tsv")
    generate("taobao", TAOBAO_ROWS, seed, root / "taobao_ad_sample.csv")
    criteo_tsv_to_csv(root / "criteo_sample.tsv", root / "criteo_sample.txt")
    for extra in root.glob("*.synth.json"):  # the generator's summaries and truths: not sample rows
        extra.unlink()
    for extra in root.glob("*.truth.parquet"):
        extra.unlink()
    return root
