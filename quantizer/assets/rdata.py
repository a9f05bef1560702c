"""Reader for R lazy-load databases (`Rdata.rdx` index + `Rdata.rdb` records), as shipped in R packages.

`.rdx` is a gzip-compressed R serialization of `list(variables=, references=, compressed=)` where
`variables` maps each object name to an integer pair `(offset, length)` into the `.rdb` file.
Each `.rdb` record is `[u32 big-endian uncompressed length][zlib stream]`, and the stream holds one
R serialization in XDR (big-endian) form.

Only the subset of R's serialization that data packages use is decoded: NULL, logical, integer,
double and character vectors, lists, pairlists and symbols. Vectors with a `names` attribute become
`dict`s, other vectors `list`s; NA becomes `None`; other attributes are dropped.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

# SEXP type codes (R Internals, "Serialization formats").
NILSXP, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 0, 1, 2, 9, 10, 13, 14, 16, 19
REFSXP, NILVALUE_SXP = 255, 254
NA_INTEGER = -(2**31)
UTF8_MASK, LATIN1_MASK = 1 << 3, 1 << 2


class RDataError(ValueError):
    """The bytes are not an R serialization this reader understands."""


class _XdrReader:
    """Decodes one XDR serialization stream (format 'X', versions 2 and 3)."""

    def __init__(self, data: bytes, source: str):
        self.data, self.pos, self.source = data, 0, source
        self.refs: list = []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RDataError(f"{self.source}: truncated R serialization at byte {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints, upper and lower halves
            upper, lower = struct.unpack(">II", self.take(8))
            n = (upper << 32) + lower
        return n

    def header(self) -> None:
        fmt = self.take(2)
        if fmt != b"X\n":
            raise RDataError(f"{self.source}: serialization format {fmt!r} is not XDR (b'X\\n')")
        version = self.int()
        self.take(8)  # R version that wrote it, minimal R version to read it
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise RDataError(f"{self.source}: serialization version {version} not in (2, 3)")

    def item(self):
        flags = self.int()
        sexptype, levels = flags & 0xFF, flags >> 12
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if sexptype in (NILVALUE_SXP, NILSXP):
            return None
        if sexptype == REFSXP:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if sexptype == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if sexptype == LISTSXP:
            return self.pairlist(has_attr, has_tag)
        if sexptype == CHARSXP:
            return self.charsxp(levels)
        if sexptype in (LGLSXP, INTSXP):
            n = self.length()
            values = [None if v == NA_INTEGER else v for v in struct.unpack(f">{n}i", self.take(4 * n))]
        elif sexptype == REALSXP:
            n = self.length()
            values = list(struct.unpack(f">{n}d", self.take(8 * n)))
        elif sexptype in (STRSXP, VECSXP):
            values = [self.item() for _ in range(self.length())]
        else:
            raise RDataError(f"{self.source}: unsupported R object type {sexptype} at byte {self.pos - 4}")
        attributes = self.item() if has_attr else {}
        names = attributes.get("names")
        return dict(zip(names, values)) if names is not None else values

    def charsxp(self, levels: int) -> str | None:
        n = self.int()
        if n == -1:
            return None
        encoding = "latin-1" if levels & LATIN1_MASK else "utf-8"
        return self.take(n).decode(encoding)

    def pairlist(self, has_attr: bool, has_tag: bool) -> dict:
        """A pairlist (e.g. an attribute list) as {tag: value}; the chain is read iteratively."""
        out = {}
        while True:
            if has_attr:
                self.item()
            tag = self.item() if has_tag else str(len(out))
            out[tag] = self.item()
            flags = self.int()
            if flags & 0xFF != LISTSXP:
                if flags & 0xFF != NILVALUE_SXP:
                    raise RDataError(f"{self.source}: pairlist ends in type {flags & 0xFF}, expected NULL")
                return out
            has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))


def unserialize(data: bytes, source: str = "<bytes>"):
    """Decode one XDR R serialization (the bytes after decompression) into Python values."""
    reader = _XdrReader(data, source)
    reader.header()
    return reader.item()


def read_index(rdx_path: Path) -> dict[str, tuple[int, int]]:
    """Map object name -> (offset, length) of its record in the matching `.rdb` file."""
    raw = Path(rdx_path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    index = unserialize(raw, str(rdx_path))
    if not isinstance(index, dict) or not isinstance(index.get("variables"), dict):
        raise RDataError(f"{rdx_path}: not a lazy-load index (no 'variables' list)")
    if index.get("compressed") not in ([True], [1]):
        raise RDataError(f"{rdx_path}: records compressed with {index.get('compressed')}, only zlib (TRUE) is supported")
    return {name: (int(pos[0]), int(pos[1])) for name, pos in index["variables"].items()}


def read_record(rdb_path: Path, offset: int, length: int):
    """Decode the record at `offset` (`length` bytes) of an `.rdb` file."""
    with open(rdb_path, "rb") as f:
        f.seek(offset)
        record = f.read(length)
    if len(record) != length or length < 4:
        raise RDataError(f"{rdb_path}: record at {offset} (length {length}) runs past the end of the file")
    expected = struct.unpack(">I", record[:4])[0]
    try:
        data = zlib.decompress(record[4:])
    except zlib.error as e:
        raise RDataError(f"{rdb_path}: record at {offset} is not a zlib stream ({e})") from None
    if len(data) != expected:
        raise RDataError(f"{rdb_path}: record at {offset} inflates to {len(data)} bytes, header says {expected}")
    return unserialize(data, f"{rdb_path}@{offset}")


def read_lazyload_db(stem: Path) -> dict:
    """All objects of the database `<stem>.rdx` / `<stem>.rdb` as {name: value}."""
    stem = Path(stem)
    index = read_index(stem.with_suffix(".rdx"))
    return {name: read_record(stem.with_suffix(".rdb"), *where) for name, where in index.items()}
