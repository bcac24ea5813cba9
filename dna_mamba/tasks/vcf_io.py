"""Variant input and output: reference access, VCF/BCF and table readers, allele checks, scored VCF/TSV writers.

Coordinates: VCF ``POS`` is 1-based; everything computed here is 0-based (``Allele.start``). Contig names are
harmonised against the FASTA (``chr1``/``1``, ``chrM``/``MT``/``M``) by :func:`dna_mamba.genomics.resolve_contig_name`;
outputs keep the names the input used.

Every input record is kept. A record's ALT alleles are split and checked one by one; an allele that cannot be
scored carries a *skip reason* (see :data:`SKIP_REASONS`) instead of scores, in the output VCF as ``DNAM_SKIP``
and in the TSV as ``skip_reason``.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import os
import re
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np
import pandas as pd

from dna_mamba.data.fasta import FastaFormatError, check_fasta, check_fasta_index, detect_compression
from dna_mamba.genomics import AmbiguousContigError, UnknownContigError, open_maybe_gzip, resolve_contig_name
from dna_mamba.outputs import atomic_output, same_file
from dna_mamba.tokenizer import ENCODE_TABLE, N, encode, encode_bytes, reverse_complement

PathLike = str | os.PathLike

SKIP_REASONS: dict[str, str] = {
    "missing_alt": "ALT is '.' (no alternative allele)",
    "symbolic_alt": "symbolic or breakend ALT (<DEL>, <INS>, *, N[1:2[, ...): no sequence to score",
    "invalid_allele": "REF or ALT holds characters other than A, C, G, T, N or IUPAC codes",
    "ambiguous_alt": "ALT holds N or an IUPAC ambiguity code (R, Y, ...): the alternative sequence is unknown",
    "unknown_contig": "the contig is not in the FASTA, even after chr1/1 and chrM/MT harmonisation",
    "ambiguous_contig": "the contig name matches several FASTA contigs after chr1/1 and chrM/MT harmonisation",
    "alt_equals_ref": "ALT is the same sequence as REF: nothing changes",
    "out_of_range": "POS (or POS + len(REF) - 1) lies outside the contig",
    "ref_mismatch": "REF differs from the FASTA at POS",
    "all_n_window": "every scored window position is N on the reference or the alternative haplotype",
}

_SYMBOLIC = re.compile(r"^<.*>$|^\*$|[\[\]]|^\.[A-Za-z]|[A-Za-z]\.$")
_VALID_ALLELE = re.compile(r"^[A-Za-z]+$")
# An ALT is a sequence to score: an N or IUPAC code in it would be scored as N, i.e. not scored at all at that base,
# and the allele would get the LLR of some other, unknown sequence.
_SCORABLE_ALT = re.compile(r"^[ACGTacgt]+$")


class ReferenceGenome:
    """Random access to a FASTA file, N-padded outside each contig.

    Indexed plain and bgzip FASTA (``.fai``, plus ``.gzi`` for bgzip) are read through ``pysam.FastaFile``
    without loading them; the index is built if missing and the folder is writable. Anything else pysam cannot
    open (plain gzip, a read-only folder without an index) is read into memory once.

    Args:
        path: FASTA file (plain, gzip or bgzip).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a directory.
    """

    def __init__(self, path: PathLike | None = None, *, sequences: Mapping[str, np.ndarray] | None = None):
        self.path = None if path is None else Path(path)
        self._fasta = None
        self._arrays: dict[str, np.ndarray] = {}
        if sequences is not None:
            self._arrays = {name: np.asarray(ids, dtype=np.uint8) for name, ids in sequences.items()}
        elif self.path is not None:
            _check_input_file(self.path, "FASTA file")
            self._fasta = _open_indexed_fasta(self.path)
            if self._fasta is None:
                from dna_mamba.data.fasta import read_fasta

                self._arrays = {record.name: record.ids for record in read_fasta(self.path)}
        else:
            raise ValueError("ReferenceGenome needs a FASTA path or sequences")
        if self._fasta is not None:
            self.lengths = dict(zip(self._fasta.references, self._fasta.lengths, strict=True))
        else:
            self.lengths = {name: len(ids) for name, ids in self._arrays.items()}

    @classmethod
    def from_sequences(cls, sequences: Mapping[str, str | bytes | np.ndarray]) -> ReferenceGenome:
        """A reference held in memory: contig name -> DNA string, ASCII bytes or token ids (for tests and notebooks).

        Raises:
            TypeError: ``sequences`` is not a mapping, a name is not a string, or a sequence is of another type.
            ValueError: a sequence holds characters that are not bases, or token ids other than A, C, G, T, N.
        """
        if not isinstance(sequences, Mapping):
            raise TypeError(f"sequences must map contig names to sequences, e.g. {{'chr1': 'ACGT'}}, "
                            f"got {type(sequences).__name__}")
        return cls(sequences={_contig_name(name): _sequence_ids(name, s) for name, s in sequences.items()})

    def resolve(self, name: str) -> str | None:
        """The FASTA's spelling of a contig name (``chr20`` -> ``20``), or None when no contig, or several, match."""
        return self._contig_or_problem(name)[0]

    def _contig_or_problem(self, name: str) -> tuple[str | None, str | None]:
        """(the FASTA's spelling, None), or (None, the skip reason: ``unknown_contig`` or ``ambiguous_contig``)."""
        try:
            return resolve_contig_name(name, self.lengths), None
        except AmbiguousContigError:
            return None, "ambiguous_contig"
        except UnknownContigError:
            return None, "unknown_contig"

    def fetch(self, contig: str, start: int, end: int) -> np.ndarray:
        """Token ids of ``[start, end)`` on the forward strand; positions outside the contig read as N.

        Shapes:
            returns (end - start,) uint8.
        """
        length = self.lengths[contig]
        out = np.full(max(0, end - start), N, dtype=np.uint8)
        lo, hi = max(0, start), min(length, end)
        if lo < hi:
            if self._fasta is not None:
                text = self._fasta.fetch(contig, lo, hi)
                out[lo - start:hi - start] = encode_bytes(text.encode("ascii"), source=str(self.path),
                                                          record=contig, offset=lo)
            else:
                out[lo - start:hi - start] = self._arrays[contig][lo:hi]
        return out

    def fetch_strand(self, contig: str, strand: str, start: int, end: int) -> np.ndarray:
        """Token ids of ``[start, end)`` in the coordinates of one strand (N outside the contig).

        On the reverse strand, position ``q`` is the complement of forward position ``length - 1 - q``, so
        ``fetch_strand(c, "-", s, e)`` is the reverse complement of ``fetch(c, length - e, length - s)``.
        """
        if strand == "+":
            return self.fetch(contig, start, end)
        if strand != "-":
            raise ValueError(f"strand must be '+' or '-', got {strand!r}")
        length = self.lengths[contig]
        return np.ascontiguousarray(reverse_complement(self.fetch(contig, length - end, length - start)))

    def close(self) -> None:
        if self._fasta is not None:
            self._fasta.close()
            self._fasta = None

    def __enter__(self) -> ReferenceGenome:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _contig_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"contig names must be strings, got {name!r} ({type(name).__name__})")
    return name


def _sequence_ids(name: str, sequence: object) -> np.ndarray:
    """Token ids of one in-memory contig, which may be given as text, ASCII bytes or ids already."""
    if isinstance(sequence, str):
        return encode(sequence, record=name)
    if isinstance(sequence, bytes | bytearray):
        return encode_bytes(bytes(sequence), record=name)
    if isinstance(sequence, np.ndarray):
        if sequence.ndim != 1 or not np.issubdtype(sequence.dtype, np.integer):
            raise TypeError(f"contig {name!r}: token ids must be a 1-D integer array, got shape {sequence.shape} "
                            f"of {sequence.dtype}")
        if sequence.size and (sequence.min() < 0 or sequence.max() > N):
            raise ValueError(f"contig {name!r}: token ids must be 0..{N} (A, C, G, T, N), got values from "
                             f"{sequence.min()} to {sequence.max()}")
        return sequence.astype(np.uint8)
    raise TypeError(f"contig {name!r}: expected a DNA string, ASCII bytes or a token-id array, "
                    f"got {type(sequence).__name__}")


def _check_input_file(path: Path, kind: str) -> None:
    """FileNotFoundError or IsADirectoryError naming ``path`` when it is not a file to read."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a {kind}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {kind}")


def _open_indexed_fasta(path: Path):
    """``pysam.FastaFile`` for ``path``, or None where pysam cannot index it (plain gzip, read-only folder)."""
    try:
        import pysam
    except ImportError:  # pysam has no Windows wheels; the in-memory reader works everywhere
        return None
    if detect_compression(path) == "gzip":
        return None  # htslib cannot index plain gzip
    if not Path(f"{path}.fai").is_file():
        check_fasta(path)  # before htslib indexes what it should refuse (a nameless header, an empty record, ...)
    with _quiet_htslib(pysam):
        try:
            handle = pysam.FastaFile(str(path))
        except (OSError, ValueError):
            return None
    try:
        check_fasta_index(path)  # htslib trusts any existing index, even one built for another version of the file
    except FastaFormatError:
        handle.close()
        raise
    return handle


@contextlib.contextmanager
def _quiet_htslib(pysam):
    """Silence htslib's stderr chatter (missing header lines, index building) while pysam works."""
    previous = pysam.set_verbosity(0)
    try:
        yield
    finally:
        pysam.set_verbosity(previous)


@dataclass(frozen=True)
class VariantRecord:
    """One input record (a VCF line or a table row), ALTs not yet split.

    Attributes:
        index: 0-based position of the record in the input.
        chrom: contig name as the input wrote it.
        pos: 1-based position of the first REF base (VCF ``POS``).
        id: the record's ID, or '.'.
        ref: REF as written.
        alts: ALT alleles as written; empty for a missing ALT ('.').
    """

    index: int
    chrom: str
    pos: int
    id: str
    ref: str
    alts: tuple[str, ...]

    def __post_init__(self) -> None:
        # Records built in Python reach integer arithmetic and regexes only later, where a string position or a
        # None allele would fail with a message that names neither the record nor the field.
        where = f"VariantRecord {self.index} ({self.chrom}:{self.pos})"
        if not isinstance(self.pos, Integral) or isinstance(self.pos, bool):
            raise TypeError(f"{where}: pos must be an integer (1-based), got {self.pos!r} ({type(self.pos).__name__})")
        for name in ("chrom", "id", "ref"):
            if not isinstance(getattr(self, name), str):
                value = getattr(self, name)
                raise TypeError(f"{where}: {name} must be a string, got {value!r} ({type(value).__name__})")
        if not isinstance(self.alts, tuple | list) or not all(isinstance(alt, str) for alt in self.alts):
            raise TypeError(f"{where}: alts must be a tuple of ALT strings, e.g. ('C',) or ('C', 'CT'), "
                            f"got {self.alts!r}")
        object.__setattr__(self, "alts", tuple(self.alts))  # a list would make the frozen record unhashable


@dataclass(frozen=True)
class Allele:
    """One REF/ALT pair to score, or a reason not to.

    Attributes:
        record: the input record.
        alt_index: index of this ALT in ``record.alts`` (0 for a missing ALT).
        alt: the ALT as written ('.' when missing).
        contig: the FASTA's name of the record's contig (None when unknown).
        start: 0-based start of the trimmed REF (the first changed base; for an insertion, the base after it).
        ref_bases: trimmed REF (shared leading, then trailing bases removed; '' for a pure insertion).
        alt_bases: trimmed ALT ('' for a pure deletion).
        skip: a key of :data:`SKIP_REASONS`, or None when the allele is scored.
    """

    record: VariantRecord
    alt_index: int
    alt: str
    contig: str | None = None
    start: int = -1
    ref_bases: str = ""
    alt_bases: str = ""
    skip: str | None = None


def trim_alleles(pos0: int, ref: str, alt: str) -> tuple[int, str, str]:
    """Remove the bases REF and ALT share at their ends: leading ones first (the VCF anchor base), then trailing.

    Leading first keeps an indel where VCF puts it, after its anchor base (``C -> CAC`` inserts ``AC`` after the
    C). There is no left-alignment: an indel in a repeat is scored where the caller placed it.

    Returns:
        ``(start, ref, alt)`` with ``start`` the 0-based position of the first remaining REF base.
    """
    shared = 0
    while shared < min(len(ref), len(alt)) and ref[shared] == alt[shared]:
        shared += 1
    ref, alt = ref[shared:], alt[shared:]
    while ref and alt and ref[-1] == alt[-1]:
        ref, alt = ref[:-1], alt[:-1]
    return pos0 + shared, ref, alt


def prepare_alleles(records: Sequence[VariantRecord], reference: ReferenceGenome) -> list[Allele]:
    """Split records into alleles, harmonise contigs and check each allele (see :data:`SKIP_REASONS`).

    Checks run from the allele to the record: missing/symbolic/invalid ALT, then unknown contig, out-of-range
    position and REF mismatch against the FASTA (IUPAC codes in either compare as N).
    """
    alleles = []
    contig_cache: dict[str, tuple[str | None, str | None]] = {}
    for record in records:
        if record.chrom not in contig_cache:
            contig_cache[record.chrom] = reference._contig_or_problem(record.chrom)
        contig, contig_problem = contig_cache[record.chrom]
        record_skip = _record_problem(record, contig, reference, contig_problem)
        alts = record.alts or (".",)
        for alt_index, alt in enumerate(alts):
            skip = _allele_problem(alt) or record_skip
            if skip is None and alt.upper() == record.ref.upper():
                skip = "alt_equals_ref"
            if skip is not None:
                alleles.append(Allele(record, alt_index, alt, contig, skip=skip))
                continue
            start, ref_bases, alt_bases = trim_alleles(record.pos - 1, record.ref.upper(), alt.upper())
            alleles.append(Allele(record, alt_index, alt, contig, start, ref_bases, alt_bases))
    return alleles


def _allele_problem(alt: str) -> str | None:
    if alt in (".", ""):
        return "missing_alt"
    if _SYMBOLIC.search(alt):
        return "symbolic_alt"
    if not _VALID_ALLELE.match(alt) or _is_invalid_sequence(alt):
        return "invalid_allele"
    if not _SCORABLE_ALT.match(alt):
        return "ambiguous_alt"
    return None


def _record_problem(record: VariantRecord, contig: str | None, reference: ReferenceGenome,
                    contig_problem: str | None) -> str | None:
    if not _VALID_ALLELE.match(record.ref) or _is_invalid_sequence(record.ref):
        return "invalid_allele"
    if contig is None:
        return contig_problem
    start = record.pos - 1
    if start < 0 or start + len(record.ref) > reference.lengths[contig]:
        return "out_of_range"
    if not np.array_equal(reference.fetch(contig, start, start + len(record.ref)), encode(record.ref)):
        return "ref_mismatch"
    return None


def _is_invalid_sequence(allele: str) -> bool:
    return bool((ENCODE_TABLE[np.frombuffer(allele.encode("ascii", "replace"), dtype=np.uint8)] == 255).any())


# ---------------------------------------------------------------------------------------------------- input

def read_vcf(path: PathLike) -> tuple[list[VariantRecord], str]:
    """Records of a VCF or BCF (plain, gzip or bgzip) and its header text, including lines htslib added.

    htslib adds a ``##contig`` / ``##INFO`` line for every name a record uses but the header lacks; the returned
    header holds them, so a VCF written from it is valid.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a directory.
        ValueError: the file is not a VCF/BCF htslib can read, or a record is malformed (the message names the
            file and the line, or the record number in a BCF).
    """
    path = Path(path)
    _check_input_file(path, "VCF file")
    records = []
    with _open_variant_file(path) as vcf:
        try:
            for rec in vcf:
                records.append(VariantRecord(len(records), rec.chrom, rec.pos, rec.id or ".", rec.ref or "",
                                             tuple(rec.alts or ())))
        except (OSError, ValueError) as err:  # htslib says only "truncated file" or "unable to parse next record"
            raise ValueError(_malformed_record(path, len(records), err)) from None
        header = str(vcf.header)
    return records, header


def _malformed_record(path: Path, index: int, err: Exception) -> str:
    """``<path>, line <n>: <what is wrong>`` for the record htslib could not parse, ``index`` records into the file."""
    try:
        with open_maybe_gzip(path) as handle:
            if handle.read(3) == b"BCF":
                return f"{path}, record {index + 1}: not a valid BCF record ({err})"
            handle.seek(0)
            data_lines = (item for item in enumerate(handle, start=1) if not item[1].startswith(b"#"))
            found = next(itertools.islice(data_lines, index, None), None)
    except (OSError, EOFError, zlib.error) as read_err:
        return f"{path}, record {index + 1}: cannot be read ({read_err})"
    if found is None:
        return f"{path}, record {index + 1}: cannot be read ({err})"
    number, line = found
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    fields = text.split("\t")
    if not text.strip():
        problem = "a blank line among the records"
    elif len(fields) < 8:
        problem = (f"{len(fields)} tab-separated column{'s' if len(fields) > 1 else ''}; a VCF record has at least 8 "
                   "(CHROM POS ID REF ALT QUAL FILTER INFO)")
    elif not (fields[1].isdecimal() and int(fields[1]) > 0):
        problem = f"POS must be a positive integer, got {fields[1]!r}"
    else:
        problem = f"htslib cannot parse this record ({err})"
    return f"{path}, line {number}: {problem}"


@contextlib.contextmanager
def _open_variant_file(path: Path) -> Iterator:
    import pysam

    # A file object, not the name: pysam's open() asks for tell(), which plain-gzip VCFs do not support, while
    # htslib reads them fine from a descriptor.
    with open(path, "rb") as handle, _quiet_htslib(pysam):
        try:
            vcf = pysam.VariantFile(handle)
        # TypeError: pysam fails to format its own error for some binary files it cannot identify.
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(_not_a_vcf(path, err)) from None
        try:
            yield vcf
        finally:
            vcf.close()


def _not_a_vcf(path: Path, err: Exception) -> str:
    """Why htslib refused to open ``path``, in words (its own message only names the file object)."""
    try:
        with open_maybe_gzip(path) as handle:
            first = handle.readline(200)
    except (OSError, EOFError, zlib.error):
        return f"{path}: not a VCF/BCF file (corrupt compressed data)"
    if not first:
        return f"{path}: empty file, not a VCF (a VCF starts with a '##fileformat=VCFv4.x' line)"
    if not first.startswith(b"##fileformat=VCF"):
        try:
            shown = repr(first.decode("utf-8").rstrip("\r\n")[:60])
        except UnicodeDecodeError:
            shown = "binary data"
        return f"{path}: not a VCF/BCF file (its first line must be '##fileformat=VCFv4.x', got {shown})"
    return f"{path}: not a readable VCF/BCF file ({str(err).splitlines()[0] if str(err) else type(err).__name__})"


_TABLE_COLUMNS = {
    "chrom": ("chrom", "#chrom", "chr", "chromosome", "contig", "seqname"),
    "pos": ("pos", "position", "pos1", "start1"),
    "ref": ("ref", "reference"),
    "alt": ("alt", "alternate", "alts"),
    "id": ("id", "name", "variant_id"),
}


def read_variant_table(path_or_frame: PathLike | pd.DataFrame) -> tuple[list[VariantRecord], pd.DataFrame]:
    """Records of a variant table: TSV, CSV (optionally gzipped) or parquet, or a DataFrame.

    Columns ``chrom``, ``pos`` (1-based), ``ref`` and ``alt`` are required (case-insensitive; ``#CHROM``,
    ``position``, ... are accepted); ``id`` is optional. A comma-separated ``alt`` (or, in a DataFrame, a list of
    ALTs) is a multi-allelic record; '.' is a missing ALT. Positions may be written as text (``"100"``), as they are
    in a TSV.

    Returns:
        The records and the table itself (its other columns, e.g. labels, are carried to the output).

    Raises:
        FileNotFoundError: the file does not exist.
        IsADirectoryError: the path is a directory.
        ValueError: the file cannot be parsed or is a VCF (read those with :func:`read_vcf`), a required column is
            missing, a position is not an integer (or is too large for any contig), or a cell is empty (None/NaN).
        TypeError: a DataFrame cell holds a container or bytes where text belongs.
    """
    if isinstance(path_or_frame, pd.DataFrame):
        table, label = path_or_frame.reset_index(drop=True), "<DataFrame>"
    else:
        path = Path(path_or_frame)
        _check_input_file(path, "variant table")
        table, label = _read_table_file(path), str(path)
    found = {}
    lower = {str(c).lower(): c for c in table.columns}
    for key, names in _TABLE_COLUMNS.items():
        column = next((lower[n] for n in names if n in lower), None)
        if column is None and key != "id":
            raise ValueError(f"{label}: no '{key}' column (columns: {', '.join(map(str, table.columns))})")
        found[key] = column
    positions = _table_positions(table[found["pos"]], label, found["pos"])
    records = []
    for index, (chrom, pos, ref, alt) in enumerate(zip(table[found["chrom"]], positions, table[found["ref"]],
                                                        table[found["alt"]], strict=True)):
        where = (label, index)
        ident = "." if found["id"] is None else _table_id(table[found["id"]].iloc[index])
        records.append(VariantRecord(index, _table_text(chrom, found["chrom"], *where), pos, ident,
                                     _table_text(ref, found["ref"], *where), _table_alts(alt, found["alt"], *where)))
    return records, table


def _read_table_file(path: Path) -> pd.DataFrame:
    """The table in ``path``, with every parser's error turned into a ValueError that names the file."""
    if is_vcf_path(path) or _starts_like_vcf(path):
        raise ValueError(f"{path}: a VCF/BCF file, not a variant table; pass it with --vcf (read_vcf in Python)")
    name = path.name.lower().removesuffix(".gz")
    parquet = name.endswith((".parquet", ".pq"))
    kind = "parquet" if parquet else "comma-separated" if name.endswith(".csv") else "tab-separated"
    try:
        if parquet:
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="," if name.endswith(".csv") else "\t", dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file, not a variant table (it needs a header line naming chrom, pos, ref "
                         f"and alt)") from None
    # ValueError covers pandas' ParserError, pyarrow's ArrowInvalid and undecodable bytes; the others are damaged
    # gzip data. None of their messages names the file.
    except (ValueError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: cannot be read as a {kind} table ({first_line})") from None


def _starts_like_vcf(path: Path) -> bool:
    try:
        with open_maybe_gzip(path) as handle:
            start = handle.read(16)
    except (OSError, EOFError, zlib.error):
        return False  # the table reader then says what is wrong with the file
    return start.startswith((b"##fileformat=VCF", b"BCF\x02"))


# No contig comes near this many bases; past it a position read as float64 is no longer exact.
_MAX_POSITION = 2**53


def _table_positions(column: pd.Series, label: str, name: str) -> list[int]:
    try:
        numbers = pd.to_numeric(column, errors="raise")
    except (ValueError, TypeError) as err:
        raise ValueError(f"{label}: column '{name}' must hold integer positions ({err})") from None
    as_float = numbers.astype(np.float64)  # also holds the integers too large for int64 (object dtype)
    fractional = np.flatnonzero(np.asarray(as_float.isna() | (as_float != np.floor(as_float))))
    if fractional.size:  # astype(int64) would truncate 2.5 to 2 and score another base
        row = int(fractional[0])
        raise ValueError(f"{label}: column '{name}' must hold integer positions, row {row + 1} has "
                         f"{column.iloc[row]!r}")
    too_large = np.flatnonzero(np.asarray(as_float.abs() >= _MAX_POSITION))
    if too_large.size:  # astype(int64) would overflow, or wrap to a negative position
        row = int(too_large[0])
        raise ValueError(f"{label}: column '{name}' row {row + 1} has {column.iloc[row]!r}, a position beyond any "
                         f"contig (positions are 1-based base numbers)")
    return [int(p) for p in numbers.astype(np.int64)]


def _table_text(value: object, column: str, label: str, index: int) -> str:
    """A cell as stripped text: a number (chrom 7) becomes text; an empty cell or a container is an error."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list | tuple | set | dict | np.ndarray | bytes | bytearray):
        raise TypeError(f"{label}: column '{column}' row {index + 1} holds a {type(value).__name__} "
                        f"({value!r}), not text")
    if pd.isna(value):
        missing = "; write '.' for a record without ALT" if str(column).lower() in _TABLE_COLUMNS["alt"] else ""
        raise ValueError(f"{label}: column '{column}' row {index + 1} is empty (None or NaN){missing}")
    return str(value).strip()


def _table_alts(value: object, column: str, label: str, index: int) -> tuple[str, ...]:
    """ALTs of one row: a comma-separated string, or a list of ALT strings from a DataFrame; () for '.'."""
    if isinstance(value, list | tuple):
        return tuple(_table_text(alt, column, label, index) for alt in value)
    text = _table_text(value, column, label, index)
    return tuple(alt.strip() for alt in text.split(",")) if text not in ("", ".") else ()


def _table_id(value: object) -> str:
    if isinstance(value, str):
        return value or "."
    return "." if pd.isna(value) else str(value)


def is_vcf_path(path: PathLike) -> bool:
    """True for ``.vcf``, ``.vcf.gz``, ``.vcf.bgz`` and ``.bcf`` names."""
    name = Path(path).name.lower()
    return name.endswith((".vcf", ".vcf.gz", ".vcf.bgz", ".bcf"))


# ---------------------------------------------------------------------------------------------------- output

@dataclass(frozen=True)
class InfoField:
    """One INFO field written per ALT (``Number=A``)."""

    id: str
    column: str  # the score table's column it comes from
    type: str  # "Float" or "String"
    description: str


INFO_FIELDS: tuple[InfoField, ...] = (
    InfoField("DNAM_LLR", "llr", "Float", "dna_mamba zero-shot log-likelihood ratio log p(ALT) - log p(REF) over the "
              "scored window (nats), mean of the forward and reverse-complement strands"),
    InfoField("DNAM_LLR_FWD", "llr_fwd", "Float", "dna_mamba LLR on the forward strand (nats)"),
    InfoField("DNAM_LLR_RC", "llr_rc", "Float", "dna_mamba LLR on the reverse-complement strand (nats)"),
    InfoField("DNAM_EMB_COS", "emb_cos", "Float", "dna_mamba cosine distance between the REF and ALT window "
              "embeddings (1 - cosine similarity, mean over strands)"),
    InfoField("DNAM_EMB_L2", "emb_l2", "Float", "dna_mamba L2 distance between the REF and ALT window embeddings "
              "(mean over strands)"),
    InfoField("DNAM_SKIP", "skip_reason", "String", "why dna_mamba did not score this ALT: "
              + "; ".join(f"{k} = {v}" for k, v in SKIP_REASONS.items())),
)
_OUR_INFO = re.compile(r"^##INFO=<ID=DNAM_")


def write_scored_vcf(input_path: PathLike, output_path: PathLike, header: str, scores: pd.DataFrame,
                     meta: Mapping[str, object] | None = None) -> Path:
    """Copy a VCF/BCF to ``output_path`` with per-ALT INFO scores added; every input record is kept.

    Records are copied as htslib formats them, with any earlier ``DNAM_*`` INFO entries replaced. Output is
    bgzip-compressed and tabix-indexed when the name ends in ``.gz``/``.bgz`` (unindexed, with a warning, if
    the input is not sorted), plain text otherwise. The file appears at ``output_path`` only once complete.

    Args:
        input_path: the VCF/BCF that was scored.
        output_path: ``.vcf``, ``.vcf.gz`` or ``.vcf.bgz``.
        header: the input header as returned by :func:`read_vcf` (with htslib's additions).
        scores: the score table (one row per allele with ``record_index``, ``alt_index`` and score columns).
        meta: written as one ``##dna_mamba_scoring=`` header line (model, window, context, ...).

    Raises:
        ValueError: ``output_path`` is the input file (under any spelling), which writing would destroy.
    """
    output_path = Path(output_path)
    if same_file(input_path, output_path):
        raise ValueError(f"{output_path}: the output would overwrite the input VCF {input_path}; write to "
                         f"another file")
    fields = [f for f in INFO_FIELDS if f.column in scores.columns]
    per_record = _info_strings(scores, fields)
    lines = _output_header(header, fields, meta)
    compressed = output_path.name.lower().endswith((".gz", ".bgz"))
    import pysam

    opener = (lambda p: pysam.BGZFile(str(p), "wb")) if compressed else (lambda p: open(p, "wb"))
    index, tmp_index, indexed = Path(f"{output_path}.tbi"), None, False
    try:
        with atomic_output(output_path) as tmp:
            with opener(tmp) as out, _open_variant_file(Path(input_path)) as vcf:
                out.write(("\n".join(lines) + "\n").encode())
                for number, rec in enumerate(vcf):
                    columns = str(rec).rstrip("\n").split("\t")
                    kept = [e for e in columns[7].split(";") if e not in (".", "") and not e.startswith("DNAM_")]
                    columns[7] = ";".join(kept + per_record.get(number, [])) or "."
                    out.write(("\t".join(columns) + "\n").encode())
            if compressed:
                tmp_index = Path(f"{tmp}.tbi")
                indexed = _tabix_index(tmp, output_path)
        if indexed:
            os.replace(tmp_index, index)
        elif compressed:
            index.unlink(missing_ok=True)  # an index left by an earlier run would point into the old file
    finally:
        if tmp_index is not None:
            tmp_index.unlink(missing_ok=True)
    return output_path


def _tabix_index(path: Path, shown: Path) -> bool:
    """Tabix-index a bgzip VCF (``path.tbi``); False, with a warning naming ``shown``, when htslib cannot."""
    import pysam

    try:
        with _quiet_htslib(pysam):
            pysam.tabix_index(str(path), preset="vcf", force=True)
    except (OSError, ValueError) as err:
        warnings.warn(f"{shown}: written but not indexed ({err}); sort the input to get a tabix index", stacklevel=3)
        return False
    return True


def _output_header(header: str, fields: Sequence[InfoField], meta: Mapping[str, object] | None) -> list[str]:
    lines = [line for line in header.rstrip("\n").split("\n") if line and not _OUR_INFO.match(line)]
    # Number=A arrived in VCF 4.1; declare a version that has it.
    if lines and lines[0] in ("##fileformat=VCFv4.0", "##fileformat=VCFv3.3"):
        lines[0] = "##fileformat=VCFv4.2"
    ours = [f'##INFO=<ID={f.id},Number=A,Type={f.type},Description="{f.description}">' for f in fields]
    if meta:
        ours.append("##dna_mamba_scoring=<" + ",".join(f"{k}={_meta_value(v)}" for k, v in meta.items()) + ">")
    return lines[:-1] + ours + lines[-1:]  # the last line is #CHROM


def _meta_value(value: object) -> str:
    text = str(value)
    return f'"{text}"' if re.search(r'[,<>="\s]', text) else text


def _info_strings(scores: pd.DataFrame, fields: Sequence[InfoField]) -> dict[int, list[str]]:
    """``record_index -> ["DNAM_LLR=0.1,.", ...]`` with one value per ALT ('.' where missing)."""
    out: dict[int, list[str]] = {}
    ordered = scores.sort_values(["record_index", "alt_index"])
    for record_index, group in ordered.groupby("record_index", sort=False):
        entries = []
        for field in fields:
            values = [_format_value(v, field.type) for v in group[field.column]]
            if any(v != "." for v in values):
                entries.append(f"{field.id}={','.join(values)}")
        out[int(record_index)] = entries
    return out


def _format_value(value: object, kind: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "."
    if kind == "Float":
        return f"{float(value):.6g}"
    return str(value) or "."


SCORE_COLUMNS = ("chrom", "pos", "id", "ref", "alt", "llr", "llr_fwd", "llr_rc", "emb_cos", "emb_l2",
                 "n_scored", "skip_reason")


def write_scores_tsv(scores: pd.DataFrame, path: PathLike, extra: pd.DataFrame | None = None) -> Path:
    """One row per ALT allele: position, alleles, scores and skip reason (gzip when the name ends in .gz).

    Args:
        scores: the score table.
        path: output path.
        extra: the input table, whose other columns (e.g. labels) are joined on the record index.
    """
    path = Path(path)
    columns = [c for c in SCORE_COLUMNS if c in scores.columns]
    table = scores[columns + ["record_index"]].copy()
    if extra is not None:
        known = {n for names in _TABLE_COLUMNS.values() for n in names}
        carried = extra.drop(columns=[c for c in extra.columns if str(c).lower() in known])
        carried = carried.rename(columns={c: f"{c}_input" for c in carried.columns if c in table.columns})
        table = table.merge(carried, left_on="record_index", right_index=True, how="left")
    opener = gzip.open if path.name.endswith(".gz") else open
    with atomic_output(path) as tmp, opener(tmp, "wt") as handle:
        table.drop(columns="record_index").to_csv(handle, sep="\t", index=False, na_rep="NA", float_format="%.6g")
    return path
