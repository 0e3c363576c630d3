"""Raw input files as byte streams: plain, or gzip (multi-member, damage reported with the bytes read before it)."""

from __future__ import annotations

import zlib
from pathlib import Path

from ctrzoo.errors import DataError


def open_raw(path: Path):
    """Binary stream of a raw file, transparently gunzipped (Criteo 1TB day files ship as .gz)."""
    return GunzipStream(path) if path.suffix == ".gz" else open(path, "rb")


class GzipDataError(DataError):
    """A cut-short or corrupt .gz input; ``offset``: uncompressed bytes handed out before the damage."""

    def __init__(self, message: str, file: str, offset: int):
        super().__init__(f"{message}, after {offset:,} bytes of uncompressed data", file)
        self.detail, self.offset = message, offset


class GunzipStream:
    """Reader of a (multi-member) .gz file that hands out every byte decompressed before a truncation or
    corruption and only then raises ``GzipDataError``, so the caller can name the last whole line read
    (``gzip.open`` drops that data and raises a bare ``EOFError``). Output per call is bounded by ``size``.
    """

    _CHUNK = 1 << 18  # compressed bytes per raw read

    def __init__(self, path: Path):
        self._file = str(path)
        self._raw = open(path, "rb")  # noqa: SIM115 - closed by close() / __exit__
        self._z = None  # decompressor of the current member; None between members
        self._in = b""  # compressed input not yet fed
        self._out: list[bytes] = []  # decompressed, not yet handed out
        self._have = 0
        self._offset = 0
        self._done = False
        self._error: GzipDataError | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._raw.close()

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while part := self.read(1 << 24):
                parts.append(part)
            return b"".join(parts)
        if size == 0:
            return b""
        self._fill(size)
        if not self._have and self._error is not None:
            raise self._error
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        out, rest = (data, b"") if len(data) <= size else (data[:size], data[size:])
        self._out, self._have = ([rest] if rest else []), len(rest)
        self._offset += len(out)
        return out

    def readline(self, limit: int = -1) -> bytes:
        while True:
            data = b"".join(self._out)
            self._out = [data] if data else []
            nl = data.find(b"\n")
            if nl >= 0 or 0 <= limit <= len(data) or self._done:
                end = nl + 1 if nl >= 0 else len(data)
                end = min(end, limit) if limit >= 0 else end
                if not end and self._error is not None:
                    raise self._error
                return self.read(end)
            self._fill(self._have + (1 << 16))

    def _fill(self, want: int) -> None:
        """Decompress until ``want`` bytes are pending, the data ends, or it is found damaged."""
        while self._have < want and not self._done:
            at_end = False
            if not self._in:
                self._in = self._raw.read(self._CHUNK)
                at_end = not self._in
            if self._z is None:
                self._in = self._in.lstrip(b"\0")  # gzip allows zero padding after a member
                if at_end:
                    self._done = True
                    break
                if not self._in:
                    continue
                self._z = zlib.decompressobj(31)
            try:
                piece = self._z.decompress(self._in, want - self._have)
            except zlib.error as exc:
                self._fail(f"corrupt gzip data ({exc})")
                break
            self._in = self._z.unused_data if self._z.eof else self._z.unconsumed_tail
            if piece:
                self._out.append(piece)
                self._have += len(piece)
            if self._z.eof:
                self._z = None
            elif at_end and not piece:
                self._fail("truncated gzip file: the compressed data stops before the end of the stream")

    def _fail(self, message: str) -> None:
        self._done = True
        self._error = GzipDataError(message, self._file, self._offset + self._have)
