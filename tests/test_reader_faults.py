"""One damaged line never aborts a read: it is a bad row counted by reason at its exact ``file:line``
(``--strict``: a DataError there), and every good row around it is kept with its values and line number.
A truncated or corrupt .gz is a DataError naming the last whole line read."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ctrzoo.cli import main
from ctrzoo.data import reader
from ctrzoo.data.formats import open_raw
from ctrzoo.data.prepare import PrepareOptions, prepare
from ctrzoo.data.reader import BadRows, read_blocks
from ctrzoo.data.splits import SplitConfig
from ctrzoo.errors import DataError
from ctrzoo.synth import generate

ROWS = 300
BLOCK = 4096  # small blocks: faults land on, before and after block boundaries
MAX_LINE = 2000  # small line limit for read_blocks tests; prepare tests use the real default (1 MiB)
DELIM = {"criteo": b"\t", "avazu": b","}
# pyarrow must not even print an ignored decode error ("Exception ignored in ...") for a damaged line
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
GARBAGE = bytes(b for b in range(1, 256) if b not in (10, 13)) * 2  # binary, with tabs and commas, no NUL


def _in_field(line: bytes, delim: bytes, insert: bytes) -> bytes:
    """``insert`` in the middle of a categorical field (C24 for Criteo, C19 for Avazu)."""
    fields = line.split(delim)
    fields[-3] = fields[-3][:2] + insert + fields[-3][2:]
    return delim.join(fields)


FAULTS = {  # name -> (damage one line, reason counted)
    "invalid_utf8": (lambda line, d: _in_field(line, d, b"\xff\xfe"), "invalid UTF-8"),
    "nul": (lambda line, d: _in_field(line, d, b"\0"), "NUL byte in the line"),
    "bare_cr": (lambda line, d: _in_field(line, d, b"\r"), "carriage return (\\r) inside the line"),
    # pyarrow would parse "...\tlast" as a whole row and skip "xyz" as a short one: the counts must catch it
    "bare_cr_last_field": (lambda line, d: line + b"\rxyz", "carriage return (\\r) inside the line"),
    "binary_garbage": (lambda line, d: GARBAGE, "invalid UTF-8"),
    "over_long": (lambda line, d: line + b"9" * MAX_LINE, f"line longer than {MAX_LINE} bytes"),
    "only_cr": (lambda line, d: b"\r", "empty line"),
}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict[str, tuple[list[bytes], list[bytes]]]:
    """Per kind: (header lines, data lines) of a small clean synthetic file."""
    root = tmp_path_factory.mktemp("raw")
    out = {}
    for kind in ("criteo", "avazu"):
        path = root / f"{kind}.{'tsv' if kind == 'criteo' else 'csv'}"
        generate(kind, ROWS, 3, path)
        lines = path.read_bytes().split(b"\n")[:-1]
        n_header = 1 if kind == "avazu" else 0
        out[kind] = (lines[:n_header], lines[n_header:])
        bad = BadRows()
        assert sum(b.table.num_rows for b in read_blocks([path], kind, bad)) == ROWS and bad.total == 0
    return out


def _write(path: Path, header: list[bytes], lines: list[bytes], final_newline: bool = True, eol: bytes = b"\n") -> Path:
    path.write_bytes(eol.join(header + lines) + (eol if final_newline else b""))
    return path


def _read(path: Path, kind: str, bad: BadRows, **kw):
    blocks = list(read_blocks([path], kind, bad, **kw))
    return (pa.concat_tables([b.table for b in blocks]), np.concatenate([b.lines for b in blocks]),
            np.concatenate([b.row_index for b in blocks]))


def _damaged(raw, kind: str, fault: str, idx: int, tmp_path: Path) -> tuple[Path, int, str]:
    header, lines = raw[kind]
    damage, reason = FAULTS[fault]
    lines = list(lines)
    lines[idx] = damage(lines[idx], DELIM[kind])
    path = _write(tmp_path / f"{kind}-{fault}.txt", header, lines, final_newline=idx != len(lines) - 1)
    return path, idx + 1 + len(header), reason


@pytest.mark.parametrize("kind", ["criteo", "avazu"])
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_damaged_line_is_one_bad_row_and_good_rows_keep_values_and_lines(raw, kind, fault, where, tmp_path):
    idx = {"first": 0, "middle": ROWS // 2, "last": ROWS - 1}[where]  # "last": also no final newline
    path, line, reason = _damaged(raw, kind, fault, idx, tmp_path)
    bad = BadRows()
    table, lines, row_index = _read(path, kind, bad, block_bytes=BLOCK, max_line_bytes=MAX_LINE)
    assert bad.counts == {reason: 1}
    assert bad.first[reason] == [f"{path}:{line}"]
    header = raw[kind][0]
    clean = _write(tmp_path / "clean.txt", header, raw[kind][1])
    ref_table, ref_lines, _ = _read(clean, kind, BadRows())
    keep = np.flatnonzero(ref_lines != line)
    assert table.equals(ref_table.take(pa.array(keep)))
    np.testing.assert_array_equal(lines, ref_lines[keep])  # true physical lines, also after the bad one
    np.testing.assert_array_equal(row_index, ref_lines[keep] - 1 - len(header))


@pytest.mark.parametrize("kind", ["criteo", "avazu"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_strict_names_file_and_line_of_the_damaged_line(raw, kind, fault, tmp_path):
    path, line, reason = _damaged(raw, kind, fault, 101, tmp_path)
    with pytest.raises(DataError) as err:
        _read(path, kind, BadRows(strict=True), block_bytes=BLOCK, max_line_bytes=MAX_LINE)
    assert (err.value.file, err.value.line) == (str(path), line)
    assert str(err.value) == f"{path}:{line}: {reason}"


PREPARE_CASES = [  # one full prepare per fault family, alternating formats
    ("criteo", "invalid_utf8"), ("avazu", "nul"), ("criteo", "bare_cr"), ("avazu", "binary_garbage"),
    ("criteo", "over_long"), ("avazu", "only_cr"),
]


@pytest.mark.parametrize(("kind", "fault"), PREPARE_CASES)
def test_prepare_counts_the_damaged_line_or_fails_strict_at_it(raw, kind, fault, tmp_path):
    header, lines = raw[kind]
    lines = list(lines)
    damage, reason = FAULTS[fault]
    if fault == "over_long":  # the real case: a 10 MB line against the default 1 MiB limit
        lines[77] = lines[77] + b"7" * (10 << 20)
        reason = f"line longer than {reader.DEFAULT_MAX_LINE_BYTES} bytes"
    else:
        lines[77] = damage(lines[77], DELIM[kind])
    path = _write(tmp_path / "in.txt", header, lines)
    line = 78 + len(header)
    meta = prepare(kind, [path], tmp_path / "ds", options=PrepareOptions(block_bytes=BLOCK, spill=False))
    assert meta.bad_rows.total == 1
    assert meta.bad_rows.by_reason[reason].to_json() == {"count": 1, "first": [f"{path}:{line}"]}
    assert sum(s.rows for s in meta.splits.values()) == ROWS - 1
    with pytest.raises(DataError, match=rf"^{path}:{line}: ") as err:
        prepare(kind, [path], tmp_path / "strict", options=PrepareOptions(block_bytes=BLOCK, strict=True))
    assert err.value.reason == reason
    assert not (tmp_path / "strict").exists()


def test_line_limit_is_an_option_of_prepare_and_the_cli(raw, tmp_path):
    header, lines = raw["criteo"]
    lines = list(lines)
    lines[10] = lines[10] + b"7" * 5000  # over a 4 KiB limit, well under the default
    path = _write(tmp_path / "in.txt", header, lines)
    meta = prepare("criteo", [path], tmp_path / "ds", options=PrepareOptions(block_bytes=BLOCK, max_line_bytes=4096))
    assert meta.bad_rows.by_reason["line longer than 4096 bytes"].first == [f"{path}:{11 + len(header)}"]
    assert main(["prepare", "criteo", "--input", str(path), "--out", str(tmp_path / "cli"),
                 "--max-line-mb", str(4096 / (1 << 20))]) == 0
    assert json.loads((tmp_path / "cli" / "dataset.json").read_text())["bad_rows"]["total"] == 1


def test_faults_of_every_kind_in_one_block_each_at_its_line(raw, tmp_path):
    header, lines = raw["criteo"]
    lines = list(lines)
    faults = {3: "nul", 4: "invalid_utf8", 6: "bare_cr", 9: "only_cr", 10: "binary_garbage"}
    for idx, fault in faults.items():
        lines[idx] = FAULTS[fault][0](lines[idx], b"\t")
    lines[5] += b"\textra"  # wrong width beside them
    fields = lines[7].split(b"\t")
    fields[2] = b"abc"  # a type error beside them
    lines[7] = b"\t".join(fields)
    path = _write(tmp_path / "many.tsv", header, lines)
    bad = BadRows(keep_first=10)
    table, got_lines, _ = _read(path, "criteo", bad, block_bytes=1 << 20)
    want = {FAULTS[f][1]: [f"{path}:{i + 1}"] for i, f in faults.items() if f not in ("invalid_utf8", "binary_garbage")}
    want["invalid UTF-8"] = [f"{path}:5", f"{path}:11"]
    want["wrong column count: expected 40, got 41"] = [f"{path}:6"]
    want["I2 is not an integer"] = [f"{path}:8"]
    assert bad.first == want
    assert bad.total == 7 and table.num_rows == ROWS - 7
    assert got_lines[:5].tolist() == [1, 2, 3, 9, 12]
    with pytest.raises(DataError, match=rf"^{path}:4: NUL byte in the line$"):
        _read(path, "criteo", BadRows(strict=True), block_bytes=1 << 20)


@pytest.mark.parametrize("kind", ["criteo", "avazu"])
def test_crlf_and_missing_final_newline_read_like_lf(raw, kind, tmp_path):
    header, lines = raw[kind]
    ref, ref_lines, _ = _read(_write(tmp_path / "lf.txt", header, lines), kind, BadRows())
    for name, kw in (("crlf", {"eol": b"\r\n"}), ("nofinal", {"final_newline": False}),
                     ("crlf-nofinal", {"eol": b"\r\n", "final_newline": False})):
        bad = BadRows()
        table, got, _ = _read(_write(tmp_path / name, header, lines, **kw), kind, bad, block_bytes=BLOCK)
        assert bad.total == 0 and table.equals(ref), name
        np.testing.assert_array_equal(got, ref_lines)


def test_lines_near_the_block_and_length_limits_are_cut_exactly():
    """Random line lengths around the limit and block size: every line comes back whole or as its length."""
    rng = random.Random(14)
    for _ in range(60):
        max_line, block = rng.choice([(50, 16), (50, 64), (64, 50), (100, 100), (30, 1000)])
        lines = [bytes([rng.choice(b"ab\t\r")]) * rng.choice([0, 1, max_line - 1, max_line, max_line + 1,
                                                                rng.randrange(3 * max_line)])
                 for _ in range(rng.randrange(1, 30))]
        final_newline = rng.random() < 0.7
        data = b"\n".join(lines) + (b"\n" if final_newline else b"")
        hasher = hashlib.blake2b(digest_size=16)
        out = []
        for item in reader._chunks(io.BytesIO(data), block, max_line, hasher):
            if isinstance(item, int):
                out.append(item)
            else:
                assert item.endswith(b"\n") and len(item) <= block + max_line + 1
                out += item[:-1].split(b"\n")
        whole = data if data.endswith(b"\n") or not data else data + b"\n"  # a missing final newline added
        assert out == [len(x) if len(x) > max_line else x for x in whole.split(b"\n")[:-1]]
        assert hasher.digest() == hashlib.blake2b(whole, digest_size=16).digest()


def test_over_long_line_is_skipped_with_bounded_memory(raw, tmp_path):
    header, lines = raw["criteo"]
    lines = list(lines)
    lines[50] = lines[50] + b"1" * (30 << 20)
    path = _write(tmp_path / "long.tsv", header, lines)
    bad = BadRows()
    tracemalloc.start()
    try:
        rows = sum(b.table.num_rows for b in read_blocks([path], "criteo", bad, block_bytes=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows == ROWS - 1 and bad.first == {"line longer than 1048576 bytes": [f"{path}:51"]}
    assert peak < 12 << 20, f"peak {peak / 2**20:.1f} MiB while skipping a 30 MiB line"


def test_block_hash_sees_every_byte_as_before(raw, tmp_path):
    """The dataset fingerprint hashes the raw bytes (a missing final newline added), damaged lines included."""
    header, lines = raw["avazu"]
    lines = list(lines)
    lines[10] = lines[10] + b"x" * 5000
    lines[20] = GARBAGE
    path = _write(tmp_path / "h.csv", header, lines, final_newline=False)
    hasher = hashlib.blake2b(digest_size=16)
    list(read_blocks([path], "avazu", BadRows(), block_bytes=BLOCK, hasher=hasher, max_line_bytes=MAX_LINE))
    assert hasher.digest() == hashlib.blake2b(path.read_bytes() + b"\n", digest_size=16).digest()


def test_block_the_parser_still_rejects_is_bisected_to_its_line(raw, tmp_path, monkeypatch):
    """Any other parser failure: the block is halved until the one line it rejects is a bad row."""
    header, lines = raw["criteo"]
    lines = list(lines)
    lines[40] = lines[40].replace(b"\t", b"\tBOOM", 1)
    path = _write(tmp_path / "boom.tsv", header, lines)
    real = reader.pcsv.read_csv

    def picky(source, **kw):
        if b"BOOM" in source.to_pybytes():
            raise pa.ArrowInvalid("synthetic parser failure")
        return real(source, **kw)

    monkeypatch.setattr(reader.pcsv, "read_csv", picky)
    bad = BadRows()
    table, got, _ = _read(path, "criteo", bad, block_bytes=1 << 20)
    assert bad.first == {"line the CSV parser rejects": [f"{path}:41"]} and bad.total == 1
    assert got.tolist() == [i for i in range(1, ROWS + 1) if i != 41]
    monkeypatch.undo()
    ref, _, _ = _read(_write(tmp_path / "ref.tsv", header, raw["criteo"][1]), "criteo", BadRows())
    assert table.equals(ref.take(pa.array([i for i in range(ROWS) if i != 40])))


def test_entirely_garbage_file_is_a_data_error_not_a_crash(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "garbage.tsv"
    path.write_bytes(rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    bad = BadRows()
    assert sum(b.table.num_rows for b in read_blocks([path], "criteo", bad, block_bytes=BLOCK)) == 0
    assert bad.total == path.read_bytes().count(b"\n") + 1
    with pytest.raises(DataError, match=r"no valid data rows in the input \(\d+ bad rows"):
        prepare("criteo", [path], tmp_path / "ds", options=PrepareOptions(block_bytes=BLOCK))
    blob = tmp_path / "blob.tsv"  # one 3 MB "line": no newline at all
    blob.write_bytes(bytes(rng.integers(11, 256, 3 << 20, dtype=np.uint8)))
    bad = BadRows()
    assert list(read_blocks([blob], "criteo", bad, block_bytes=1 << 20)) == []
    assert bad.first == {"line longer than 1048576 bytes": [f"{blob}:1"]}


def _truncated_gz(path: Path, data: bytes) -> int:
    """Write the first half of ``data``'s gzip to ``path``; the number of whole lines it still holds."""
    gz = gzip.compress(data)
    path.write_bytes(gz[: len(gz) // 2])
    return zlib.decompressobj(31).decompress(gz[: len(gz) // 2]).count(b"\n")


@pytest.mark.parametrize("kind", ["criteo", "avazu"])
@pytest.mark.parametrize("strict", [False, True])
def test_truncated_gz_names_file_and_last_line_read(raw, kind, strict, tmp_path):
    header, lines = raw[kind]
    path = tmp_path / "cut.txt.gz"
    last = _truncated_gz(path, b"\n".join(header + lines) + b"\n")
    assert 0 < last < ROWS
    expected = rf"^{path}:{last}: truncated gzip file: .* after line {last} \(the last whole line read\)$"
    with pytest.raises(DataError, match=expected):
        _read(path, kind, BadRows(strict=strict), block_bytes=BLOCK)
    with pytest.raises(DataError, match=expected):
        prepare(kind, [path], tmp_path / "ds", options=PrepareOptions(strict=strict, block_bytes=BLOCK))
    with pytest.raises(DataError, match=expected):  # a time-ordered split counts the lines first: same message
        prepare(kind, [path], tmp_path / "ds", options=PrepareOptions(strict=strict, block_bytes=BLOCK,
                                                                       split=SplitConfig("order")))
    assert not (tmp_path / "ds").exists()


def test_corrupt_and_not_gzip_files_are_data_errors(raw, tmp_path):
    lines = raw["criteo"][1]
    gz = bytearray(gzip.compress(b"\n".join(lines) + b"\n"))
    gz[len(gz) // 2 : len(gz) // 2 + 8] = b"\xff" * 8
    bad_gz = tmp_path / "bad.tsv.gz"
    bad_gz.write_bytes(bytes(gz))
    with pytest.raises(DataError, match=rf"^{bad_gz}:\d+: corrupt gzip data \(Error -3 .*\) after line \d+ "):
        _read(bad_gz, "criteo", BadRows(), block_bytes=BLOCK)
    plain = tmp_path / "plain.tsv.gz"
    plain.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=rf"^{plain}: corrupt gzip data \(.*incorrect header check\), after 0 bytes"):
        _read(plain, "criteo", BadRows())


def test_gunzip_stream_reads_members_padding_and_lines_like_gzip(raw, tmp_path):
    data = b"\n".join(raw["avazu"][0] + raw["avazu"][1]) + b"\n"
    path = tmp_path / "multi.csv.gz"
    path.write_bytes(gzip.compress(data[:30_000]) + gzip.compress(data[30_000:]) + b"\0" * 100)
    with open_raw(path) as fh:
        first = fh.readline(10)
        rest = fh.readline()
        pieces = []
        while piece := fh.read(7777):
            pieces.append(piece)
    assert first + rest + b"".join(pieces) == data and first == data[:10] and rest.endswith(b"\n")
    assert gzip.decompress(path.read_bytes()) == data
    prepared = prepare("avazu", [path], tmp_path / "ds", options=PrepareOptions(block_bytes=BLOCK))
    assert prepared.bad_rows.total == 0
    assert sum(s.rows for s in prepared.splits.values()) == ROWS
