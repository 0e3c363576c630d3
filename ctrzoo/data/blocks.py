"""Blocks of raw rows and their bad rows: what every input reader hands to ``prepare``.

``finish_block`` validates a parsed block against the schema and reports its rejected rows; ``parse_dirty``
and ``bisect_lines`` take a line-based block that does not parse whole apart until each bad line is found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ctrzoo.data.checks import validate
from ctrzoo.data.schema import DatasetSchema
from ctrzoo.errors import DataError
from ctrzoo.metadata import BadRowReason, BadRowsSummary


@dataclass
class RawBlock:
    """Valid rows of one block: typed raw columns, physical line numbers and global data-row indices."""

    table: pa.Table
    file: str
    lines: np.ndarray
    row_index: np.ndarray
    nbytes: int


@dataclass
class BadRows:
    """Bad rows counted by reason, with the first few locations of each; ``strict`` raises instead."""

    strict: bool = False
    keep_first: int = 5
    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, list[str]] = field(default_factory=dict)

    def report(self, file: str, failures: list[tuple[np.ndarray, str]]) -> None:
        """Record ``(line numbers, reason)`` pairs; in strict mode raise at the earliest line instead."""
        failures = [(lines, reason) for lines, reason in failures if lines.size]
        if self.strict and failures:
            line, reason = min((int(lines.min()), reason) for lines, reason in failures)
            raise DataError(reason, file, line)
        for lines, reason in failures:
            self.add(file, lines, reason)

    def merge(self, other: BadRows) -> None:
        """Fold in another file's (or worker's) counts; first locations stay in file order."""
        for reason, count in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count
            room = self.keep_first - len(self.first.setdefault(reason, []))
            self.first[reason] += other.first[reason][: max(room, 0)]

    def add(self, file: str, lines: np.ndarray, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + int(lines.size)
        slots = self.keep_first - len(self.first.setdefault(reason, []))
        self.first[reason] += [f"{file}:{int(x)}" for x in np.sort(lines)[: max(slots, 0)]]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> BadRowsSummary:
        """As ``dataset.json`` records them."""
        return BadRowsSummary(total=self.total, by_reason={r: BadRowReason(count=c, first=list(self.first[r]))
                                                           for r, c in self.counts.items()})


def finish_block(table: pa.Table, kept: np.ndarray, failures: list, schema: DatasetSchema, file: str,
                 first_line: int, row_base: int, bad: BadRows, nbytes: int, empty_reason: str = "empty line"
                 ) -> RawBlock:
    """Validate a parsed block (``kept``: its rows' line indices in the block) and report its bad rows."""
    lines = first_line + kept
    table, ok, type_failures = validate(table, schema, empty_reason)
    failures = [(first_line + idx, reason) for idx, reason in failures]
    bad.report(file, failures + [(lines[mask], reason) for mask, reason in type_failures])
    return RawBlock(table.filter(pa.array(ok)), file, lines[ok], row_base + kept[ok], nbytes)


def parse_dirty(chunk: bytes, parse, rejected: str, empty: pa.Table):
    """The slow path, for a block with a damaged line: flag NUL bytes, bare ``\\r`` and invalid UTF-8 line by
    line (vectorized; only lines with non-ASCII bytes are decoded in Python), drop those lines, parse the rest
    with ``parse(data, n_lines)``, and bisect whatever still fails down to single lines (``rejected``)."""
    arr = np.frombuffer(chunk, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)  # the chunk ends in a newline
    starts = np.concatenate([[0], ends[:-1] + 1])
    flagged = np.zeros(len(ends), dtype=bool)
    failures: list[tuple[np.ndarray, str]] = []

    def flag(line_idx: np.ndarray, reason: str) -> None:
        new = np.unique(line_idx)
        new = new[~flagged[new]]
        if new.size:
            flagged[new] = True
            failures.append((new, reason))

    flag(np.searchsorted(ends, np.flatnonzero(arr == 0)), "NUL byte in the line")
    cr = np.flatnonzero(arr == 13)
    flag(np.searchsorted(ends, cr[arr[cr + 1] != 10]), "carriage return (\\r) inside the line")
    suspects = np.unique(np.searchsorted(ends, np.flatnonzero(arr >= 0x80)))
    flag(np.array([i for i in suspects[~flagged[suspects]] if not is_utf8(chunk, starts[i], ends[i])], dtype=np.int64),
         "invalid UTF-8")
    good = np.flatnonzero(~flagged)
    data = chunk if not failures else arr[np.repeat(~flagged, ends - starts + 1)].tobytes()
    line_ends = np.cumsum(ends[good] - starts[good] + 1)
    tables: list[pa.Table] = []
    kept: list[np.ndarray] = []
    bisect_lines(data, good, line_ends, parse, rejected, tables, kept, failures)
    table = pa.concat_tables(tables) if tables else empty
    return table, np.concatenate([np.zeros(0, dtype=np.int64), *kept]), failures


def bisect_lines(data, lines, line_ends, parse, rejected, tables, kept, failures) -> None:
    """Parse ``data`` (its ``lines``, ending at byte offsets ``line_ends``); halve it by lines until it parses."""
    if not len(lines):
        return
    parsed = parse(data, len(lines))
    if parsed is not None:
        table, idx, fails = parsed
        tables.append(table)
        kept.append(lines[idx])
        failures += [(lines[i], reason) for i, reason in fails]
    elif len(lines) == 1:
        failures.append((lines, rejected))
    else:
        half = len(lines) // 2
        cut = int(line_ends[half - 1])
        bisect_lines(data[:cut], lines[:half], line_ends[:half], parse, rejected, tables, kept, failures)
        bisect_lines(data[cut:], lines[half:], line_ends[half:] - cut, parse, rejected, tables, kept, failures)


def is_utf8(chunk: bytes, start: int, end: int) -> bool:
    try:
        chunk[start:end].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
