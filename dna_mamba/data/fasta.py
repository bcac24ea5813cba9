"""Streaming FASTA reader: plain text, gzip or bgzip, multi-record, any line width, ``\\n`` or ``\\r\\n`` endings.

The reader never holds a whole file in memory: it decompresses fixed-size blocks, cuts them at header lines and
encodes the sequence bytes of each block with one ``bytes.translate`` call (table lookup and newline removal in a
single C loop), so a record may be far larger than a block. Compression is detected from the file's magic bytes,
not its name. Every malformed input fails with one line naming the file and the problem.
"""

from __future__ import annotations

import gzip
import io
import os
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from dna_mamba.tokenizer import ENCODE_TABLE, encode_bytes

Compression = Literal["plain", "gzip", "bgzip"]

DEFAULT_BLOCK_SIZE = 16 << 20  # decompressed bytes per read: large enough to amortise per-block overhead
_GZIP_MAGIC = b"\x1f\x8b"
_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
_UTF8_BOM = b"\xef\xbb\xbf"
_OTHER_COMPRESSIONS = {  # recognised only to say clearly that they are unsupported
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}
_TRANSLATE = ENCODE_TABLE.tobytes()  # 256-byte table for bytes.translate; 255 marks an invalid byte
_INVALID = b"\xff"
_NEWLINES = b"\r\n"


class FastaFormatError(ValueError):
    """A FASTA file is missing, unreadable or malformed. The message names the file and the problem."""


@dataclass(frozen=True)
class FastaChunk:
    """A run of encoded sequence from one record.

    Attributes:
        record: record name (first word of the header).
        description: the full header line after '>'.
        offset: 0-based position of ``ids[0]`` within the record; 0 marks the start of a new record.
        ids: uint8 token ids (read-only, never empty).
    """

    record: str
    description: str
    offset: int
    ids: np.ndarray


@dataclass(frozen=True)
class FastaRecord:
    """One whole FASTA record, encoded.

    Attributes:
        name: first whitespace-delimited word of the header.
        description: the full header line after '>'.
        ids: uint8 token ids.
    """

    name: str
    description: str
    ids: np.ndarray


def detect_compression(path: str | os.PathLike) -> Compression:
    """Tell plain, gzip and bgzip apart by magic bytes (bgzip: a gzip member with the 'BC' extra subfield).

    Raises:
        FastaFormatError: the file is missing, unreadable or compressed with an unsupported format.
    """
    path = Path(path)
    with _open_raw(path) as raw:
        head = raw.read(16)
    for magic, name in _OTHER_COMPRESSIONS.items():
        if head.startswith(magic):
            raise FastaFormatError(f"{path}: {name}-compressed files are not supported; use plain text, gzip or bgzip")
    if not head.startswith(_GZIP_MAGIC):
        return "plain"
    # Byte 3 is FLG; bit 2 (FEXTRA) announces the extra field that BGZF uses for its 'BC' block-size subfield.
    if len(head) >= 16 and head[3] & 4 and head[12:14] == b"BC":
        return "bgzip"
    return "gzip"


def iter_fasta_chunks(path: str | os.PathLike, *, block_size: int = DEFAULT_BLOCK_SIZE,
                      on_progress: Callable[[int], None] | None = None) -> Iterator[FastaChunk]:
    """Stream a FASTA file as encoded chunks, at most about ``block_size`` bases each.

    Args:
        path: plain, gzip or bgzip FASTA file.
        block_size: decompressed bytes read at a time.
        on_progress: called after each block with the number of on-disk (compressed) bytes consumed so far.

    Yields:
        :class:`FastaChunk` objects in file order; each record yields at least one, the first with offset 0.

    Raises:
        FastaFormatError: missing/empty file, data before the first header, a header without a name, a record
            without sequence, a duplicate record name, or truncated/corrupt compressed data.
        InvalidSequenceError: a character that is not a nucleotide or IUPAC code (names record and position).
    """
    path = Path(path)
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    compression = detect_compression(path)
    if compression == "bgzip":
        _warn_if_bgzip_eof_missing(path)
    with _open_raw(path) as raw:
        stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if compression != "plain" else raw
        parser = _Parser(path)
        try:
            while True:
                block = stream.read(block_size)
                yield from parser.feed(block, eof=not block)
                if on_progress is not None:
                    on_progress(raw.tell())
                if not block:
                    break
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise FastaFormatError(f"{path}: truncated or corrupt {compression} data ({err})") from None
        except OSError as err:
            raise FastaFormatError(f"{path}: read error ({err.strerror or err})") from None


def read_fasta(path: str | os.PathLike, *, block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[FastaRecord]:
    """Yield whole encoded records (each record is held in memory; use :func:`iter_fasta_chunks` otherwise).

    Raises:
        FastaFormatError, InvalidSequenceError: as :func:`iter_fasta_chunks`.
    """
    parts: list[np.ndarray] = []
    name = description = ""
    for chunk in iter_fasta_chunks(path, block_size=block_size):
        if chunk.offset == 0 and parts:
            yield FastaRecord(name, description, np.concatenate(parts))
            parts = []
        name, description = chunk.record, chunk.description
        parts.append(chunk.ids)
    if parts:
        yield FastaRecord(name, description, np.concatenate(parts))


def check_fasta(path: str | os.PathLike) -> None:
    """Parse a whole file once and discard it, for readers that only index it before random access.

    htslib (pysam) and pyfaidx index a header with no name, an empty record or a lone ``\\r`` without complaint,
    then read other bases or other records; this makes them refuse what :func:`iter_fasta_chunks` refuses.

    Raises:
        FastaFormatError, InvalidSequenceError: as :func:`iter_fasta_chunks`.
    """
    for _ in iter_fasta_chunks(path):
        pass


def _open_raw(path: Path) -> BinaryIO:
    try:
        if path.is_dir():
            raise FastaFormatError(f"{path}: is a directory, not a FASTA file")
        return open(path, "rb")  # closed by the caller's `with`
    except FileNotFoundError:
        raise FastaFormatError(f"{path}: no such file") from None
    except OSError as err:
        raise FastaFormatError(f"{path}: cannot open ({err.strerror or err})") from None


def _warn_if_bgzip_eof_missing(path: Path) -> None:
    # A bgzip file cut exactly at a block boundary decompresses cleanly to a shorter genome; only the missing
    # end-of-file block reveals it. Old bgzip writers omitted that block, so this warns rather than fails.
    with _open_raw(path) as raw:
        raw.seek(0, io.SEEK_END)
        if raw.tell() >= len(_BGZF_EOF):
            raw.seek(-len(_BGZF_EOF), io.SEEK_END)
            if raw.read() == _BGZF_EOF:
                return
    warnings.warn(f"{path}: bgzip end-of-file marker missing; the file may be truncated", stacklevel=3)


_INDEX_RECORDS_CHECKED = 20_000  # per end of the index: enough for any chromosome-level assembly, bounded for the rest


def check_fasta_index(path: str | os.PathLike) -> None:
    """Raise if ``path``'s ``.fai`` (or, bgzip, its ``.fai`` / ``.gzi``) was built for another version of the file.

    pysam (htslib) never checks an existing index and pyfaidx only compares modification times, so an index left
    from an earlier version (a re-download kept with its old index, ``cp -p``, ``tar``) makes reads return other
    bytes: other bases, a contig cut short, a variant "out of range". For plain text every indexed record is checked
    against the file (its header line ends just before its offset; its sequence ends where its length says, at a
    line end followed by the next header or the end of the file), up to ``_INDEX_RECORDS_CHECKED`` at each end of
    the index; for bgzip, whose offsets are in decompressed bytes, an index over a minute older than the file is
    refused. Also refused: two index entries with one name, which the readers would resolve to the first silently.

    Raises:
        FastaFormatError: naming the index, the record and what to do. A missing index is fine (it gets built).
    """
    path = Path(path)
    fai = Path(f"{path}.fai")
    if not fai.is_file():
        return
    gzi = Path(f"{path}.gzi")
    fix = (f"delete {fai.name}" + (f" and {gzi.name}" if gzi.is_file() else "")
           + f" (it is rebuilt on the next run) or rebuild it with `samtools faidx {path.name}`")
    entries = []
    for number, line in enumerate(fai.read_text(errors="replace").splitlines(), start=1):
        fields = line.split("\t")
        if not line.strip():
            continue
        try:
            entries.append((fields[0], *(int(f) for f in fields[1:5])))
        except (ValueError, IndexError):
            raise FastaFormatError(f"{fai}, line {number}: not a FASTA index line; {fix}") from None
    seen: set[str] = set()
    for name, length, *_ in entries:
        if not name or not length:
            check_fasta(path)  # says what is wrong with the file, with its line number
            raise FastaFormatError(f"{fai}: a record with no name or no sequence ('{name}', {length} bases); {fix}")
        if name in seen:
            raise FastaFormatError(f"{path}: two records are named '{name}'; rename one (the index {fai.name} "
                                   f"would resolve the name to the first)")
        seen.add(name)
    compression = detect_compression(path)
    if compression == "bgzip":
        for index in (fai, gzi):
            # A minute's slack: copies of a matching pair can land in either order within a second or two.
            if index.is_file() and index.stat().st_mtime < path.stat().st_mtime - 60:
                raise FastaFormatError(f"{index}: older than {path.name}, so probably built for another version of "
                                       f"it; {fix}")
        return
    if compression != "plain":
        return
    size = path.stat().st_size
    check = entries if len(entries) <= 2 * _INDEX_RECORDS_CHECKED else (
        entries[:_INDEX_RECORDS_CHECKED] + entries[-_INDEX_RECORDS_CHECKED:])
    with _open_raw(path) as raw:
        for name, length, offset, line_bases, line_bytes in check:
            problem = _index_entry_problem(raw, size, name, length, offset, line_bases, line_bytes)
            if problem:
                raise FastaFormatError(f"{fai} does not match {path.name} (record '{name}': {problem}); it was "
                                       f"built for another version of the file; {fix}")


def _index_entry_problem(raw: BinaryIO, size: int, name: str, length: int, offset: int, line_bases: int,
                         line_bytes: int) -> str | None:
    """Why one .fai entry (name, length, offset, bases and bytes per line) does not describe the plain file, or None."""
    if not 0 < offset <= size or (length and not 0 < line_bases <= line_bytes):
        return f"offset {offset} or line layout {line_bases}/{line_bytes} impossible in a {size}-byte file"
    head = max(0, offset - 65536)  # headers with long descriptions
    raw.seek(head)
    before = raw.read(offset - head)
    line_start = before.rfind(b"\n", 0, len(before) - 1) + 1
    header = before[line_start:].rstrip(b"\r\n")
    if not before.endswith(b"\n"):
        return "its offset is not at the start of a line"
    if (line_start or not head) and (not header.startswith(b">") or header[1:].split(maxsplit=1)[:1] != [
            name.encode()]):
        return "the line before its offset is not its header"
    full_lines, rest = divmod(length, line_bases) if length else (0, 0)
    end = offset + (full_lines - 1) * line_bytes + line_bases if length and not rest else (
        offset + full_lines * line_bytes + rest)
    if end > size:
        return f"{length:,} bases would run past the end of the file"
    raw.seek(end)
    after = raw.read(line_bytes + 2).lstrip(b"\r\n")
    if after and not after.startswith(b">"):
        return f"the sequence goes on past the indexed {length:,} bases"
    return None


def _lone_cr(data: bytes) -> int:
    """Index of the first '\\r' followed by anything but '\\n', or -1; a '\\r' that ends ``data`` ends a line."""
    if b"\r" not in data or data.count(b"\r") == data.count(b"\r\n") + data.endswith(b"\r"):
        return -1
    index = data.find(b"\r")
    while data[index + 1:index + 2] in (b"\n", b""):
        index = data.find(b"\r", index + 1)
    return index


class _Parser:
    """Incremental FASTA parser fed with decompressed blocks; keeps only a partial header line between blocks."""

    def __init__(self, path: Path):
        self.path = path
        self.record: str | None = None
        self.description = ""
        self.header_line = 0  # 1-based line number of the current record's header
        self.record_length = 0
        self.names: set[str] = set()
        self.at_line_start = True
        self.carry = b""  # an unfinished header line from the previous block
        self.lines_before = 0  # newlines in all fully consumed blocks
        self.started = False  # any byte seen at all

    def feed(self, block: bytes, *, eof: bool) -> Iterator[FastaChunk]:
        if not self.started and block:
            self.started = True
            if block.startswith(_UTF8_BOM):
                block = block[len(_UTF8_BOM):]
        buf = self.carry + block if self.carry else block
        self.carry = b""
        held = b""
        if not eof and buf.endswith(b"\r"):
            buf, held = buf[:-1], b"\r"  # perhaps the first half of a '\r\n' split between blocks
        pos = 0
        counted = 0  # `newlines` counts the newlines in buf[:counted]
        newlines = 0
        while pos < len(buf):
            if self.at_line_start and buf[pos] == 0x3E:  # '>'
                end = buf.find(b"\n", pos)
                if end == -1 and not eof:
                    self.carry = buf[pos:]  # the header continues in the next block
                    break
                end = len(buf) if end == -1 else end
                newlines += buf.count(b"\n", counted, pos)
                counted = pos
                header = buf[pos + 1:end]
                if _lone_cr(header) != -1:
                    self._reject_lone_cr(line=self.lines_before + newlines + 1)
                self._start_record(header, line=self.lines_before + newlines + 1)
                pos = end + 1
                self.at_line_start = True
                continue
            # Sequence runs up to the next line that starts with '>'; a '>' elsewhere is left in and reported as
            # an invalid character by the encoder.
            end = self._next_header(buf, pos)
            raw = buf[pos:end]
            if self.record is None:
                self._reject_data_before_header(raw, line=self.lines_before + newlines + buf.count(b"\n", counted, pos))
            else:
                lone = _lone_cr(raw)
                if lone != -1:
                    self._reject_lone_cr(line=self.lines_before + newlines + buf.count(b"\n", counted, pos + lone) + 1)
                chunk = self._encode(raw)
                if chunk is not None:
                    yield chunk
            self.at_line_start = buf[end - 1] == 0x0A  # '\n'
            pos = end
        self.lines_before += newlines + buf.count(b"\n", counted, len(buf) - len(self.carry))
        self.carry += held
        if eof:
            self._finish()

    @staticmethod
    def _next_header(buf: bytes, pos: int) -> int:
        """Index of the next '>' that starts a line after ``pos``, or ``len(buf)``."""
        # A single-byte find is a memchr, several times faster than searching for b"\n>".
        gt = buf.find(b">", pos + 1)
        while gt != -1 and buf[gt - 1] != 0x0A:
            gt = buf.find(b">", gt + 1)
        return len(buf) if gt == -1 else gt

    def _start_record(self, header: bytes, *, line: int) -> None:
        self._check_previous_not_empty()
        description = header.decode("utf-8", errors="replace").strip()  # strip() also drops a '\r' ending
        if not description:
            raise FastaFormatError(f"{self.path}: line {line}: header with no name ('>' followed by nothing)")
        name = description.split(None, 1)[0]
        if name in self.names:
            raise FastaFormatError(f"{self.path}: line {line}: duplicate record name '{name}'")
        self.names.add(name)
        self.record, self.description, self.header_line, self.record_length = name, description, line, 0

    def _reject_lone_cr(self, *, line: int) -> None:
        # Translating '\r' away with the '\n's would join the two sides of a lone '\r' into one line of bases.
        within = f" (record '{self.record}')" if self.record is not None else ""
        raise FastaFormatError(
            f"{self.path}: line {line}{within}: a carriage return (\\r) inside a line; lines must end in \\n or "
            "\\r\\n (old Mac files end them in \\r alone: convert with tr '\\r' '\\n')"
        )

    def _reject_data_before_header(self, raw: bytes, *, line: int) -> None:
        """Blank lines may precede the first header; anything else means this is not FASTA (or lost its header)."""
        content = raw.lstrip(_NEWLINES)
        if content:
            line += raw.count(b"\n", 0, len(raw) - len(content)) + 1
            raise FastaFormatError(
                f"{self.path}: line {line}: sequence data before the first header line (no '>' header); "
                f"is this a FASTA file?"
            )

    def _encode(self, raw: bytes) -> FastaChunk | None:
        ids = raw.translate(_TRANSLATE, _NEWLINES)
        if not ids:
            return None  # blank lines
        if ids.find(_INVALID) != -1:
            # Re-encode through the tokenizer only to produce its standard error with the record position.
            encode_bytes(raw.translate(None, _NEWLINES), source=str(self.path), record=self.record,
                         offset=self.record_length)
        chunk = FastaChunk(self.record, self.description, self.record_length, np.frombuffer(ids, dtype=np.uint8))
        self.record_length += len(ids)
        return chunk

    def _check_previous_not_empty(self) -> None:
        if self.record is not None and self.record_length == 0:
            raise FastaFormatError(
                f"{self.path}: line {self.header_line}: record '{self.record}' is empty (header with no sequence)"
            )

    def _finish(self) -> None:
        if not self.started:
            raise FastaFormatError(f"{self.path}: empty file (no data)")
        if self.record is None:
            raise FastaFormatError(f"{self.path}: no FASTA records (only blank lines)")
        self._check_previous_not_empty()
