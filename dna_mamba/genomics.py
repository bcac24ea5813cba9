"""Genomic coordinates shared by the tasks: contig-name harmonisation, BED regions and fixed windows.

Coordinates are 0-based and half-open throughout, as in BED: ``Region("chr1", 100, 200)`` covers the 100 bases
whose 1-based positions are 101..200. Nothing here reads sequence; see ``dna_mamba.tasks.embed`` for that.
"""

from __future__ import annotations

import gzip
import operator
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_MITOCHONDRIAL = {"M", "MT"}
_BED_HEADER_PREFIXES = ("#", "track", "browser")


class UnknownContigError(KeyError):
    """A contig name matches none of the available ones. The message names it and lists some that exist."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class AmbiguousContigError(UnknownContigError):
    """A contig name matches several of the available ones after harmonisation (``M`` against ``MT`` and ``chrM``)."""


class BedFormatError(ValueError):
    """A BED line cannot be parsed. The message names the file and the 1-based line number."""


@dataclass(frozen=True)
class Region:
    """A stretch of a contig: 0-based, half-open ``[start, end)``, as in BED.

    Attributes:
        chrom: contig name as given (it is matched to the reference with :func:`resolve_contig_name`).
        start: 0-based first position.
        end: 0-based position one past the last; ``end == start`` is an empty (point) region.
        name: label kept with the region's outputs; ``chrom:start-end`` when not given.
        strand: ``"+"``, ``"-"`` or ``"."`` (unknown).
    """

    chrom: str
    start: int
    end: int
    name: str = ""
    strand: str = "."

    def __post_init__(self) -> None:
        if not isinstance(self.chrom, str):
            raise TypeError(f"a region's contig name must be a string, got {self.chrom!r}")
        for field_name in ("start", "end"):
            value = getattr(self, field_name)
            # Ints and numpy integers only: '10' or 10.0 would fail later, far from the cause.
            if isinstance(value, bool) or not hasattr(type(value), "__index__"):
                raise TypeError(f"region {self.chrom}:{self.start}-{self.end}: {field_name} must be an integer, "
                                f"got {value!r}")
            object.__setattr__(self, field_name, operator.index(value))
        if not self.chrom:
            raise ValueError("a region needs a contig name")
        if self.start < 0:
            raise ValueError(f"region {self.chrom}:{self.start}-{self.end}: start must be >= 0")
        if self.end < self.start:
            raise ValueError(f"region {self.chrom}:{self.start}-{self.end}: end must be >= start")
        if self.strand not in ("+", "-", "."):
            raise ValueError(f"region {self.chrom}:{self.start}-{self.end}: strand must be '+', '-' or '.', "
                             f"got {self.strand!r}")
        if not self.name:
            object.__setattr__(self, "name", f"{self.chrom}:{self.start}-{self.end}")

    @property
    def length(self) -> int:
        return self.end - self.start


def canonical_contig_name(name: str) -> str:
    """The key under which contig names are compared: no 'chr' prefix, upper case, 'M' for 'MT'/'chrM'."""
    key = name.strip().upper()
    if key.startswith("CHR"):
        key = key[3:]
    return "M" if key in _MITOCHONDRIAL else key


def resolve_contig_name(name: str, available: Iterable[str]) -> str:
    """Map a contig name to the spelling used by a reference: ``chr1`` ↔ ``1``, ``chrM`` ↔ ``MT`` ↔ ``M``.

    An exact match always wins; otherwise names are compared by :func:`canonical_contig_name`.

    Args:
        name: the name as written in a BED/VCF file or by a user.
        available: the reference's contig names (a dict's keys, a FASTA index, ...).

    Returns:
        The matching name from ``available``.

    Raises:
        UnknownContigError: no contig matches (the message names ``name`` and lists some available names),
            or several match after harmonisation.
    """
    names = available if isinstance(available, (Mapping, set, frozenset)) else list(available)
    if name in names:
        return name
    key = canonical_contig_name(name)
    matches = [contig for contig in names if canonical_contig_name(contig) == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise AmbiguousContigError(f"contig '{name}' is ambiguous: it matches {sorted(matches)}")
    shown = sorted(names)
    listing = ", ".join(shown[:10]) + (f", ... ({len(shown)} in all)" if len(shown) > 10 else "")
    raise UnknownContigError(f"unknown contig '{name}' (available: {listing or 'none'})")


def open_maybe_gzip(path: str | os.PathLike) -> BinaryIO:
    """A binary handle on a plain or gzip (bgzip included) file; gzip is told by its magic bytes, not the name."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read_bed(source: str | os.PathLike | Iterable[str]) -> list[Region]:
    """Read regions from a BED file (plain or gzip), in file order.

    Columns 1-3 (chrom, start, end) are required; column 4 (name) and column 6 (strand) are kept when present.
    ``track``/``browser``/``#`` lines and blank lines are skipped. Fields may be separated by tabs or spaces.

    Args:
        source: a path, or an iterable of lines (for BED text already in memory).

    Raises:
        FileNotFoundError: the file does not exist.
        IsADirectoryError: the path is a directory.
        BedFormatError: a line with fewer than 3 fields, non-integer coordinates, a negative start,
            ``end < start``, a bad strand, bytes that are not text, or corrupt gzip data; the message names the
            file and line.
    """
    return [region for _, region in read_bed_lines(source)]


def read_bed_lines(source: str | os.PathLike | Iterable[str]) -> list[tuple[int, Region]]:
    """As :func:`read_bed`, each region with its 1-based line number, for messages about a region."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a directory, not a BED file")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such BED file")
        try:
            with open_maybe_gzip(path) as lines:
                return list(_parse_bed(lines, str(path)))
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise BedFormatError(f"{path}: truncated or corrupt gzip data ({err})") from None
    return list(_parse_bed(source, "<BED lines>"))


def _parse_bed(lines: Iterable[str | bytes], label: str) -> Iterator[tuple[int, Region]]:
    for number, line in enumerate(lines, start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                raise BedFormatError(f"{label}, line {number}: bytes that are not text; is this a BED file?") from None
        if number == 1:
            # Editors on Windows start UTF-8 files with a byte-order mark, which would become part of the contig name.
            line = line.removeprefix("\ufeff")
        text = line.strip()
        if not text or text.startswith(_BED_HEADER_PREFIXES):
            continue
        fields = text.split("\t") if "\t" in text else text.split()
        if len(fields) < 3:
            raise BedFormatError(f"{label}, line {number}: expected at least 3 fields (chrom start end), "
                                 f"got {len(fields)}")
        # Plain digits only: int() would also take '1_000', '+10' or ' 7', which no BED writer produces.
        if not (fields[1].isdecimal() and fields[2].isdecimal() and fields[1].isascii() and fields[2].isascii()):
            raise BedFormatError(f"{label}, line {number}: start and end must be non-negative integers, "
                                 f"got {fields[1]!r} and {fields[2]!r}")
        start, end = int(fields[1]), int(fields[2])
        name = fields[3].strip() if len(fields) > 3 and fields[3].strip() not in ("", ".") else ""
        strand = fields[5].strip() if len(fields) > 5 and fields[5].strip() else "."
        try:
            yield number, Region(fields[0].strip(), start, end, name, strand)
        except ValueError as err:
            raise BedFormatError(f"{label}, line {number}: {err}") from None


def tile_windows(lengths: Mapping[str, int], window: int, stride: int | None = None, *,
                 contigs: Iterable[str] | None = None, keep_partial: bool = True) -> list[Region]:
    """Fixed windows along contigs, contig by contig in the given order.

    Args:
        lengths: contig name -> length.
        window: window length in bases.
        stride: distance between window starts (default: ``window``, i.e. adjacent windows).
        contigs: the contigs to tile, matched with :func:`resolve_contig_name` (default: all, in ``lengths`` order).
        keep_partial: keep the last window of a contig when it runs past the end (its tail is read as N);
            otherwise drop it.

    Returns:
        Regions named ``chrom:start-end``; a contig shorter than ``window`` gives one partial window or none.

    Raises:
        ValueError: ``window`` or ``stride`` is not positive.
        UnknownContigError: a name in ``contigs`` matches no contig.
    """
    stride = window if stride is None else stride
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be positive, got window={window}, stride={stride}")
    names = list(lengths) if contigs is None else [resolve_contig_name(c, lengths) for c in contigs]
    regions = []
    for chrom in names:
        length = lengths[chrom]
        for start in range(0, length, stride):
            if start + window > length and not keep_partial:
                break
            regions.append(Region(chrom, start, start + window))
            if start + window >= length:
                break  # later windows would only repeat the contig's tail
    return regions
