"""Rows for the preset tests, generated from hashes (the same bytes on every machine and version), and a digest
of a prepared dataset's content: what "the same dataset" means when a preset is checked against earlier code.

The generated files hold every value shape of the real formats (missing, negative and float-written integers,
rare and frequent categories, sequences, YYMMDDHH hours) and a few bad rows of each kind the formats count.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CRITEO_COLUMNS = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
AVAZU_COLUMNS = [
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]
TAOBAO_COLUMNS = [
    "clk", "time_stamp", "userid", "adgroup_id", "pid", "cate_id", "campaign_id", "customer", "brand", "price",
    "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level", "shopping_level", "occupation",
    "new_user_class_level", "click_sequence",
]


def _h(*parts) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def criteo_rows(n: int, seed: str = "c") -> list[list[str]]:
    rows = []
    for i in range(n):
        row = ["1" if _h(seed, i, "y") % 4 == 0 else "0"]
        for j in range(1, 14):
            r = _h(seed, i, "I", j)
            row.append("" if r % 7 == 0 else str((r >> 8) % (20 + 40 * j) - (3 if j == 2 else 0)))
        for j in range(1, 27):
            r = _h(seed, i, "C", j)
            row.append("" if r % 9 == 0 else f"{(_h(seed, 'v', j, (r >> 8) % (4 + 3 * j))) & 0xFFFFFFFF:08x}")
        rows.append(row)
    return rows


def write_criteo(root: Path, n: int = 600) -> dict[str, Path]:
    """``criteo.tsv`` (with bad rows), ``criteo.csv`` (header, integers as floats), ``criteo.tsv.gz``."""
    rows = criteo_rows(n)
    lines = ["\t".join(r) for r in rows]
    lines[3] = "\t".join(rows[3][:-2])  # wrong column count
    lines[10] = lines[10] + "\textra"  # wrong column count
    lines[20] = "\t".join([rows[20][0], "x1", *rows[20][2:]])  # I1 not an integer
    lines[30] = "\t".join(["2", *rows[30][1:]])  # label 2
    lines[40] = "\t".join(["", *rows[40][1:]])  # missing label
    lines[50] = ""  # empty line
    lines[60] = "\t".join([rows[60][0], "2.5", *rows[60][2:]])  # a float in an integer field
    out = {"tsv": root / "criteo.tsv", "csv": root / "criteo.csv", "gz": root / "criteo.tsv.gz"}
    out["tsv"].write_text("\n".join(lines) + "\n")
    csv = [",".join(CRITEO_COLUMNS)]
    for r in rows:
        csv.append(",".join(f"{v}.0" if v and 1 <= k <= 13 and k != 2 else v for k, v in enumerate(r)))
    out["csv"].write_text("\n".join(csv) + "\n")
    out["gz"].write_bytes(gzip.compress(("\n".join("\t".join(r) for r in rows[: n // 2]) + "\n").encode(), mtime=0))
    return out


def write_avazu(root: Path, n: int = 500) -> Path:
    lines = [",".join(AVAZU_COLUMNS)]
    for i in range(n):
        r = lambda *k, i=i: _h("a", i, *k)  # noqa: E731
        day, hour = 21 + r("d") % 9, r("h") % 24
        row = [str(r("id") % (1 << 64)), "1" if r("y") % 5 == 0 else "0", f"1410{day:02d}{hour:02d}"]
        for j, name in enumerate(AVAZU_COLUMNS[3:]):
            v = r(name)
            row.append("" if v % 31 == 0 else f"{_h('av', name, (v >> 8) % (3 + 2 * j)) & 0xFFFFFF:x}")
        lines.append(",".join(row))
    lines[7] = lines[7].replace(",1410", ",141", 1)  # hour not YYMMDDHH
    lines[9] = lines[9] + ",x"  # wrong column count
    lines[11] = "5" + lines[11][lines[11].index(","):]  # a 5-digit id is fine; the label stays
    lines[13] = ",".join([lines[13].split(",")[0], "x", *lines[13].split(",")[2:]])  # label not 0/1
    path = root / "avazu.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_taobao(root: Path, n: int = 400) -> Path:
    lines = [",".join(TAOBAO_COLUMNS)]
    items = [str(1000 + k) for k in range(60)]
    for i in range(n):
        r = lambda *k, i=i: _h("t", i, *k)  # noqa: E731
        item = items[r("item") % len(items)]
        seq = "^".join(items[r("s", k) % len(items)] for k in range(r("len") % 6))
        price = "" if r("p") % 13 == 0 else f"{(r('pv') % 100000) / 100:.2f}"
        row = ["1" if r("y") % 6 == 0 else "0", str(1494000000 + r("ts") % 700000), str(r("u") % 80), item,
               f"430548_{r('pid') % 2}", str(r("cate") % 15), str(r("camp") % 30), str(r("cust") % 25),
               "" if r("b") % 5 == 0 else str(r("brand") % 20), price]
        row += ["" if r("prof", k) % 11 == 0 else str(r("pv", k) % (3 + k)) for k in range(8)]
        row.append(seq)
        lines.append(",".join(row))
    lines[5] = lines[5].rsplit(",", 1)[0] + ",12^^x"  # broken click_sequence
    cells = lines[8].split(",")
    cells[9] = "cheap"
    lines[8] = ",".join(cells)  # price not a number
    path = root / "taobao.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _column_bytes(col: pa.ChunkedArray) -> bytes:
    arr = col.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return json.dumps(arr.to_pylist(), sort_keys=True, default=str).encode()


def dataset_digest(path: Path) -> dict[str, str]:
    """Digests of what a prepared dataset holds: shard columns and values per split, the raw test rows, the
    fitted spec, the fingerprint, split sizes and bad rows (file names reduced to their base names)."""
    meta = json.loads((path / "dataset.json").read_text())
    out = {}
    for split, info in meta["splits"].items():
        h = hashlib.sha256()
        for shard in info["shards"]:
            table = pq.read_table(path / shard)
            for name in table.column_names:
                h.update(name.encode() + b"=" + _column_bytes(table.column(name)))
        out[f"shards.{split}"] = h.hexdigest()[:16]
    raw = pq.read_table(path / meta["raw"]["test"]) if meta.get("raw") else None
    h = hashlib.sha256()
    if raw is not None:
        for name in raw.column_names:
            h.update(name.encode() + b"=" + _column_bytes(raw.column(name)))
    out["raw_test"] = h.hexdigest()[:16]
    spec = json.loads((path / "spec.json").read_text())
    out["spec"] = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    out["fingerprint"] = meta["fingerprint"]
    out["splits"] = json.dumps({k: [v["rows"], v["positives"]] for k, v in meta["splits"].items()})
    bad = {reason: [info["count"], [Path(x).name for x in info["first"]]]
           for reason, info in meta["bad_rows"]["by_reason"].items()}
    out["bad_rows"] = json.dumps(bad, sort_keys=True)
    return out
