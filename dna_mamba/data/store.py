"""Compact genome token store: one memory-mapped uint8 file per contig plus ``index.json``, reused across runs.

Layout of a store directory::

    index.json          format, version, sources (path, size, mtime_ns, sha256 of the first and last MiB), contigs
    000000.u8           token ids of contig 0 (tokenizer ids, one byte per base, no header)
    000000.nruns.npy    (R, 2) int64 half-open [start, end) runs of N in contig 0, for fast N counts per window
    ...

Contig files are named by position rather than by contig name because FASTA names may hold '/', '|' or spaces.
A store is built in a sibling work directory (``.<store>.tmp-<pid>@<host>-<random>``) and renamed into place, so a
crash never leaves a partial store that looks valid; the next build of that store removes what a killed one left.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dna_mamba.data.fasta import DEFAULT_BLOCK_SIZE, FastaFormatError, detect_compression, iter_fasta_chunks
from dna_mamba.genomics import canonical_contig_name
from dna_mamba.outputs import install_work_dir, is_work_dir, make_work_dir, remove_stale_work_dirs
from dna_mamba.tokenizer import N

INDEX_NAME = "index.json"
STORE_FORMAT = "dna_mamba.genome_store"
STORE_VERSION = 1  # bump when the layout or the tokenizer ids change: cached stores of another version are rebuilt
CACHE_ENV = "DNA_MAMBA_CACHE"
_HEAD_BYTES = 1 << 20  # bytes hashed at each end of a source file: cheap, and catches same-size same-mtime swaps
_PROGRESS_MIN_BYTES = 32 << 20  # smaller inputs build in about a second: a bar would only flicker

PathLike = str | os.PathLike


class StoreError(ValueError):
    """A directory is not a valid genome store, or a store cannot be written there."""


class UnknownContigError(KeyError):
    """A contig name is not in the store. The message lists some names that are."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class SourceFile:
    """A FASTA file a store was built from, as it was when the build started."""

    path: str  # absolute
    size: int
    mtime_ns: int
    head_sha256: str  # sha256 of the first MiB
    compression: str  # "plain", "gzip" or "bgzip"
    tail_sha256: str | None = None  # sha256 of the last MiB; None in stores built before it was recorded


@dataclass(frozen=True)
class ContigInfo:
    """Index entry of one contig."""

    name: str
    description: str  # full FASTA header after '>'
    length: int
    n_count: int
    file: str  # token file, relative to the store directory
    source: int  # index into GenomeStore.source


class GenomeStore:
    """Read-only view of a store directory. Open with :meth:`open`; build with :func:`build_store`.

    Contig arrays are memory-mapped on first use, so the object is cheap to pickle into DataLoader workers: the
    maps are dropped when pickling and reopened lazily in each process.
    """

    def __init__(self, directory: Path, sources: list[SourceFile], contigs: list[ContigInfo]):
        self.directory = directory
        self.source = sources
        self._infos = {info.name: info for info in contigs}
        self._order = [info.name for info in contigs]
        self._index = {name: i for i, name in enumerate(self._order)}
        self._arrays: dict[str, np.memmap] = {}
        self._n_runs: dict[str, np.ndarray] = {}
        self._n_index: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._aliases: dict[str, list[str]] | None = None

    @classmethod
    def open(cls, directory: PathLike) -> GenomeStore:
        """Open a store directory.

        Raises:
            StoreError: no index, an unreadable or foreign index, another store version, or contig files whose
                sizes disagree with the index (a damaged store).
        """
        directory = Path(directory).expanduser().absolute()
        if is_work_dir(directory):
            raise StoreError(f"{directory}: a work directory that a store build left behind, not a store; open the "
                             f"store itself (the name without the leading '.' and the .tmp-/.old- suffix)")
        index_path = directory / INDEX_NAME
        try:
            index = json.loads(index_path.read_text())
        except FileNotFoundError:
            raise StoreError(f"{directory}: not a genome store (no {INDEX_NAME}); build one with build_store() "
                             f"or `dna-mamba prepare`") from None
        except (OSError, ValueError) as err:
            raise StoreError(f"{index_path}: unreadable store index ({err})") from None
        if not isinstance(index, dict) or index.get("format") != STORE_FORMAT:
            raise StoreError(f"{index_path}: not a dna_mamba genome store index")
        if index.get("version") != STORE_VERSION:
            raise StoreError(f"{directory}: store version {index.get('version')} is not the supported "
                             f"version {STORE_VERSION}; rebuild it")
        try:
            sources = [SourceFile(**entry) for entry in index["sources"]]
            contigs = [ContigInfo(**entry) for entry in index["contigs"]]
        except (KeyError, TypeError) as err:
            raise StoreError(f"{index_path}: malformed store index ({err})") from None
        for info in contigs:
            path = directory / info.file
            size = path.stat().st_size if path.is_file() else -1
            if size != info.length:
                raise StoreError(f"{path}: contig '{info.name}' file holds {size} bytes, index says {info.length}; "
                                 f"the store is damaged, rebuild it")
        return cls(directory, sources, contigs)

    @property
    def names(self) -> list[str]:
        """Contig names in file order."""
        return list(self._order)

    @property
    def contigs(self) -> dict[str, int]:
        """Contig name → length, in file order."""
        return {name: self._infos[name].length for name in self._order}

    @property
    def lengths(self) -> np.ndarray:
        """Contig lengths as int64, in file order."""
        return np.array([self._infos[name].length for name in self._order], dtype=np.int64)

    @property
    def total_length(self) -> int:
        return sum(info.length for info in self._infos.values())

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __repr__(self) -> str:
        return f"GenomeStore({str(self.directory)!r}, {len(self)} contigs, {self.total_length:,} bp)"

    def info(self, name: str) -> ContigInfo:
        """Index entry of a contig (exact name)."""
        return self._info(name)

    def index_of(self, name: str) -> int:
        """Position of a contig in file order (exact name)."""
        self._info(name)
        return self._index[name]

    def length(self, name: str) -> int:
        return self._info(name).length

    def array(self, name: str) -> np.memmap:
        """The whole contig as a read-only uint8 memory map of token ids (exact name)."""
        info = self._info(name)
        array = self._arrays.get(name)
        if array is None:
            array = np.memmap(self.directory / info.file, dtype=np.uint8, mode="r")
            self._arrays[name] = array
        return array

    def fetch(self, name: str, start: int, end: int) -> np.ndarray:
        """Token ids of ``[start, end)``; positions outside ``[0, length)`` are N, so windows may overhang ends.

        Returns:
            A new uint8 array of length ``end - start``.
        """
        if end < start:
            raise ValueError(f"fetch: end {end} < start {start}")
        array = self.array(name)
        length = len(array)
        if 0 <= start and end <= length:
            return np.array(array[start:end])
        out = np.full(end - start, N, dtype=np.uint8)
        lo, hi = max(start, 0), min(end, length)
        if lo < hi:
            out[lo - start:hi - start] = array[lo:hi]
        return out

    def n_fraction(self, name: str | None = None) -> float:
        """Fraction of N in a contig, or in the whole store when ``name`` is None."""
        if name is None:
            return sum(i.n_count for i in self._infos.values()) / max(self.total_length, 1)
        info = self._info(name)
        return info.n_count / info.length

    def n_runs(self, name: str) -> np.ndarray:
        """Runs of N as an (R, 2) int64 array of half-open ``[start, end)`` intervals, sorted and disjoint."""
        runs = self._n_runs.get(name)
        if runs is None:
            runs = np.load(self.directory / _runs_file(self._info(name).file))
            self._n_runs[name] = runs
        return runs

    def count_n(self, name: str, starts: np.ndarray | int, ends: np.ndarray | int) -> np.ndarray:
        """Number of N in each interval ``[starts[i], ends[i])``, counting positions past the contig ends as N.

        Vectorised over intervals via the N runs: cost O(len(starts) · log R), independent of interval length.

        Shapes:
            starts, ends: (M,) integers (or scalars) → (M,) int64.
        """
        starts = np.asarray(starts, dtype=np.int64)
        ends = np.asarray(ends, dtype=np.int64)
        length = self.length(name)
        run_starts, run_ends, before = self._n_run_index(name)

        def n_before(x: np.ndarray) -> np.ndarray:  # N positions in [0, x)
            x = np.clip(x, 0, length)
            j = np.searchsorted(run_starts, x, side="left") - 1
            return before[j] + np.minimum(x, run_ends[j]) - run_starts[j]

        padding = np.maximum(np.minimum(ends, 0) - starts, 0) + np.maximum(ends - np.maximum(starts, length), 0)
        return n_before(ends) - n_before(starts) + np.minimum(padding, ends - starts)

    def _n_run_index(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cached run starts, run ends and N count before each run, led by a sentinel run ``[-1, -1)``.

        The sentinel makes "the last run starting before x" always exist. The cache matters for random-offset
        datasets, which count N once per item.
        """
        index = self._n_index.get(name)
        if index is None:
            runs = self.n_runs(name)
            run_starts = np.concatenate(([-1], runs[:, 0]))
            run_ends = np.concatenate(([-1], runs[:, 1]))
            before = np.concatenate(([0], np.cumsum(run_ends - run_starts)))[:-1]
            index = self._n_index[name] = (run_starts, run_ends, before)
        return index

    def matches(self, paths: Sequence[PathLike]) -> bool:
        """Whether this store was built from exactly these files, unchanged: same paths, sizes and modification
        times, and the same first and last MiB (a file replaced by another of the same size and time differs there).
        """
        if len(paths) != len(self.source):
            return False
        for path, recorded in zip(paths, self.source, strict=True):
            try:
                stat = os.stat(path)
                if (_absolute(path), stat.st_size, stat.st_mtime_ns) != (recorded.path, recorded.size,
                                                                          recorded.mtime_ns):
                    return False
                head, tail = file_fingerprint(Path(path), stat.st_size)
            except OSError:
                return False
            if head != recorded.head_sha256 or (recorded.tail_sha256 is not None and tail != recorded.tail_sha256):
                return False
        return True

    def _info(self, name: str) -> ContigInfo:
        info = self._infos.get(name)
        if info is None:
            hint = ""
            try:
                hint = f"; did you mean '{resolve_contig(self, name)}'? (use resolve_contig)"
            except KeyError:
                pass
            raise UnknownContigError(f"unknown contig '{name}' in {self._describe_names()}{hint}")
        return info

    def _describe_names(self, limit: int = 5) -> str:
        shown = ", ".join(repr(n) for n in self._order[:limit])
        more = f", ... ({len(self._order)} in all)" if len(self._order) > limit else ""
        return f"store {self.directory.name} (contigs: {shown}{more})"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # memory maps are reopened lazily in each process
        return state


def resolve_contig(store: GenomeStore, name: str) -> str:
    """Map a contig name to the store's spelling: 'chr1' ↔ '1', and 'chrM' / 'MT' / 'M' for the mitochondrion.

    Exact names always win; otherwise names are compared without a 'chr' prefix and case-insensitively.

    Raises:
        UnknownContigError: no contig matches (the message lists some available names), or several do.
    """
    if name in store:
        return name
    if store._aliases is None:
        aliases: dict[str, list[str]] = {}
        for contig in store.names:
            aliases.setdefault(canonical_contig_name(contig), []).append(contig)
        store._aliases = aliases
    matches = store._aliases.get(canonical_contig_name(name), [])
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UnknownContigError(f"contig '{name}' is ambiguous in store {store.directory.name}: matches {matches}")
    raise UnknownContigError(f"unknown contig '{name}' in {store._describe_names()}")


def build_store(fasta_paths: PathLike | Sequence[PathLike], out_dir: PathLike, *, progress: bool = True,
                block_size: int = DEFAULT_BLOCK_SIZE) -> GenomeStore:
    """Parse FASTA files into a genome store at ``out_dir``, atomically replacing any store already there.

    Args:
        fasta_paths: one or more plain, gzip or bgzip FASTA files; their records become the store's contigs in
            order, and record names must be unique across all of them.
        out_dir: store directory. It may be absent, empty, or hold a previous store; any other directory is
            refused so that a typo cannot delete user data.
        progress: show a byte progress bar for inputs over 32 MiB.
        block_size: decompressed bytes read at a time.

    Raises:
        FastaFormatError, InvalidSequenceError: malformed input (nothing is written to ``out_dir``).
        StoreError: ``out_dir`` is a non-empty directory that is not a store.
    """
    paths = _as_paths(fasta_paths)
    out_dir = Path(out_dir).expanduser().absolute()
    _check_replaceable(out_dir)
    sources = [_describe_source(path) for path in paths]
    remove_stale_work_dirs(out_dir)  # what builds killed part-way left (a crash cannot clean up after itself)
    tmp = make_work_dir(out_dir)
    try:
        contigs = _write_contigs(paths, tmp, label=out_dir.name, progress=progress, block_size=block_size)
        index = {"format": STORE_FORMAT, "version": STORE_VERSION, "sources": [asdict(s) for s in sources],
                 "contigs": [asdict(c) for c in contigs]}
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=1))
        # Readers see the old store or the new one; a store another process installed meanwhile stands.
        install_work_dir(tmp, out_dir, keep_concurrent=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return GenomeStore.open(out_dir)


def default_store_dir(fasta_paths: PathLike | Sequence[PathLike], cache_dir: PathLike | None = None) -> Path:
    """Where :func:`cached_store` keeps the store for these files: ``<cache_dir>/<stem>-<hash of the paths>``.

    ``cache_dir`` defaults to ``$DNA_MAMBA_CACHE/stores`` when that variable is set, else
    ``$XDG_CACHE_HOME/dna_mamba/stores`` (``~/.cache/dna_mamba/stores``).
    """
    paths = _as_paths(fasta_paths)
    if cache_dir is None:
        root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "dna_mamba"
        cache_dir = Path(root) / "stores"
    digest = hashlib.sha256("\n".join(_absolute(p) for p in paths).encode()).hexdigest()[:12]
    stem = re.sub(r"\.(gz|bgz|bgzf)$", "", paths[0].name, flags=re.IGNORECASE)
    stem = re.sub(r"\.(fa|fasta|fna|fas|seq)$", "", stem, flags=re.IGNORECASE)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem) + (f"+{len(paths) - 1}" if len(paths) > 1 else "")
    return Path(cache_dir).expanduser() / f"{stem}-{digest}"


def cached_store(fasta_paths: PathLike | Sequence[PathLike], cache_dir: PathLike | None = None, *,
                 progress: bool = True) -> GenomeStore:
    """Open the cached store for these FASTA files, building it first if absent or stale.

    A cached store is reused when it was built from the same absolute paths, in the same order, with the same
    sizes, modification times and first and last MiB; touching or replacing a source file triggers a rebuild.

    Args:
        fasta_paths: one or more FASTA files.
        cache_dir: directory holding cached stores (see :func:`default_store_dir`).
        progress: show a progress bar while building large stores.
    """
    paths = _as_paths(fasta_paths)
    for path in paths:
        detect_compression(path)  # fails early, with the FASTA error, on a missing or unsupported file
    directory = default_store_dir(paths, cache_dir)
    try:
        store = GenomeStore.open(directory)
    except StoreError:
        store = None
    if store is not None and store.matches(paths):
        return store
    return build_store(paths, directory, progress=progress)


def _as_paths(fasta_paths: PathLike | Sequence[PathLike]) -> list[Path]:
    items = [fasta_paths] if isinstance(fasta_paths, str | os.PathLike) else list(fasta_paths)
    if not items:
        raise ValueError("no FASTA files given")
    return [Path(p).expanduser() for p in items]


def _absolute(path: PathLike) -> str:
    return str(Path(path).expanduser().absolute())


def _describe_source(path: Path) -> SourceFile:
    compression = detect_compression(path)  # also the missing/unreadable file check
    stat = path.stat()
    head, tail = file_fingerprint(path, stat.st_size)
    return SourceFile(_absolute(path), stat.st_size, stat.st_mtime_ns, head, compression, tail)


def file_fingerprint(path: Path, size: int) -> tuple[str, str]:
    """sha256 of the first and of the last MiB of a file (the same bytes twice for a file up to 1 MiB)."""
    with open(path, "rb") as handle:
        head = hashlib.sha256(handle.read(_HEAD_BYTES)).hexdigest()
        handle.seek(max(size - _HEAD_BYTES, 0))
        tail = hashlib.sha256(handle.read(_HEAD_BYTES)).hexdigest()
    return head, tail


def _runs_file(token_file: str) -> str:
    return token_file.removesuffix(".u8") + ".nruns.npy"


def _write_contigs(paths: list[Path], directory: Path, *, label: str, progress: bool,
                   block_size: int) -> list[ContigInfo]:
    total = sum(p.stat().st_size for p in paths)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"building store {label}",
               disable=not progress or total < _PROGRESS_MIN_BYTES)
    contigs: list[ContigInfo] = []
    origin: dict[str, Path] = {}
    done = 0  # bytes of the files already finished
    try:
        for source_index, path in enumerate(paths):
            writer: _ContigWriter | None = None
            def advance(position: int, offset: int = done) -> None:
                bar.update(offset + position - bar.n)

            for chunk in iter_fasta_chunks(path, block_size=block_size, on_progress=advance):
                if chunk.offset == 0:
                    if writer is not None:
                        contigs.append(writer.close())
                    if chunk.record in origin:
                        raise FastaFormatError(f"{path}: record name '{chunk.record}' already used in "
                                               f"{origin[chunk.record]}; record names must be unique in a store")
                    origin[chunk.record] = path
                    writer = _ContigWriter(directory, len(contigs), chunk.record, chunk.description, source_index)
                writer.write(chunk.ids)
            if writer is not None:
                contigs.append(writer.close())
            done += path.stat().st_size
    finally:
        bar.close()
    return contigs


class _ContigWriter:
    """Appends a contig's token ids to its file and collects its runs of N."""

    def __init__(self, directory: Path, index: int, name: str, description: str, source: int):
        self.file = f"{index:06d}.u8"
        self.directory, self.name, self.description, self.source = directory, name, description, source
        self.handle = open(directory / self.file, "wb")  # closed in close()
        self.length = 0
        self.n_count = 0
        self.run_starts: list[np.ndarray] = []
        self.run_ends: list[np.ndarray] = []

    def write(self, ids: np.ndarray) -> None:
        self.handle.write(ids)
        is_n = ids == N
        n = int(np.count_nonzero(is_n))
        if n:
            # Positions where N-ness flips, plus the chunk ends when they are N: alternately run starts and ends.
            flips = np.flatnonzero(is_n[1:] != is_n[:-1]) + 1
            bounds = np.concatenate(([0] if is_n[0] else [], flips, [len(ids)] if is_n[-1] else [])).astype(np.int64)
            self.run_starts.append(bounds[0::2] + self.length)
            self.run_ends.append(bounds[1::2] + self.length)
            self.n_count += n
        self.length += len(ids)

    def close(self) -> ContigInfo:
        self.handle.close()
        starts = np.concatenate(self.run_starts) if self.run_starts else np.empty(0, np.int64)
        ends = np.concatenate(self.run_ends) if self.run_ends else np.empty(0, np.int64)
        # A run cut by a chunk boundary appears as two runs that touch; join them.
        keep_start = np.ones(len(starts), dtype=bool)
        keep_end = np.ones(len(ends), dtype=bool)
        touching = starts[1:] == ends[:-1]
        keep_start[1:] &= ~touching
        keep_end[:-1] &= ~touching
        runs = np.stack([starts[keep_start], ends[keep_end]], axis=1).astype(np.int64)
        np.save(self.directory / _runs_file(self.file), runs)
        return ContigInfo(self.name, self.description, self.length, self.n_count, self.file, self.source)


def _check_replaceable(out_dir: Path) -> None:
    if is_work_dir(out_dir):
        raise StoreError(f"{out_dir}: named like the work directory of a store build (.NAME.tmp-... or .NAME.old-...), "
                         "which later builds delete; choose another store directory")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise StoreError(f"{out_dir}: exists and is not a directory; refusing to replace it with a genome store")
    if any(out_dir.iterdir()) and not _looks_like_store(out_dir):
        raise StoreError(f"{out_dir}: directory is not empty and is not a genome store; refusing to overwrite it")


def _looks_like_store(directory: Path) -> bool:
    try:
        return json.loads((directory / INDEX_NAME).read_text()).get("format") == STORE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


