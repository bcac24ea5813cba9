"""Embeddings from a :class:`~dna_mamba.model.DnaMambaLM`: of sequences or genomic regions, pooled or per position,
one layer or a sweep of layers in one pass, at any length in constant memory.

    embed(model, ["ACGT...", ...], layers=-1, pooling="mean")            -> (N, D) numpy array
    embed_regions(model, "hg38.fa", "peaks.bed", flank=500)              -> Embeddings (names, regions, values)
    embed_regions(model, "hg38.fa", window=1000, stride=1000, out="emb.parquet")
    embed_regions(model, "hg38.fa", contigs=["chr20"], pooling="none", out="chr20.npy")   # 63 Mb, one chunk of memory

How a sequence is embedded: it is read in chunks of at most ``chunk_tokens`` tokens (summed over a batch) and fed to
the model chunk by chunk with the recurrent state carried from one chunk to the next, which gives the same outputs as
one pass over the whole sequence (the model's streaming guarantee). Pooled outputs are accumulated on the device and
per-position outputs are written to a memory-mapped ``.npy`` as each chunk finishes, so device memory is that of one
chunk and host memory that of the pooled results, whatever the sequence length: a 63 Mb chromosome takes one call.

Choices, stated once:
    layers      indices into the model's hidden states: 0 = embedding output, i = residual stream after block i,
                ``n_layer`` (or -1) = the final RMSNorm output. An int gives arrays without a layer axis; a list
                (or ``"all"``) gives a layer axis before the feature axis, in the order asked.
    pooling     "mean": average over all positions, N included (a window padded with N past a contig end is
                averaged over its full length, so windows of one size stay comparable); "last": the embedding at
                the last position, which for this causal model is the only one that has read the whole sequence;
                "none": every position.
    strands     "both" averages the forward pass and the reverse-complement pass. Per-position outputs of the
                reverse-complement pass are flipped back to forward coordinates first, so position p of the result
                averages the forward output at p with the reverse-complement output at the same base. With "last",
                the reverse-complement pass contributes its own last position, which is forward position 0.
    precision   "auto" runs under bf16 autocast on CUDA and in fp32 elsewhere; outputs are float32 (or float16 if
                asked) either way.
    batching    sequences are sorted by length and batched (right-padded: the model is causal, so padding after a
                sequence never changes its outputs); results come back in input order.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import operator
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from tqdm import tqdm  # plain text bars: tqdm.auto warns in notebooks without ipywidgets

from dna_mamba.genomics import Region, UnknownContigError, read_bed_lines, resolve_contig_name, tile_windows
from dna_mamba.outputs import atomic_output
from dna_mamba.tasks.embed_io import (
    Embeddings,
    drop_stale_sidecar,
    load_embeddings,
    output_format,
    prepare_output,
    save_embeddings,
    write_sidecar,
)
from dna_mamba.tokenizer import PAD, N, encode, encode_bytes, reverse_complement

Pooling = Literal["mean", "last", "none"]
Strands = Literal["forward", "both"]
Precision = Literal["auto", "bf16", "fp32"]
LayerSpec = int | Sequence[int] | Literal["all"]
SequenceInput = str | bytes | np.ndarray | torch.Tensor | Iterable[str | bytes | np.ndarray | torch.Tensor]
FastaInput = str | os.PathLike | Mapping

POOLINGS = ("mean", "last", "none")
STRANDS = ("forward", "both")
PRECISIONS = ("auto", "bf16", "fp32")
CUDA_CHUNK_TOKENS = 1 << 18  # ~1-3 GiB of activations for the 7M-40.7M models, long enough to keep an H100 busy
CPU_CHUNK_TOKENS = 1 << 16  # the CPU reference scan has per-chunk Python overhead; ~0.5 GB of activations at most

__all__ = [
    "Embeddings",
    "embed",
    "embed_regions",
    "load_embeddings",
    "resolve_layers",
    "save_embeddings",
]


def embed(
    model: torch.nn.Module,
    sequences: SequenceInput,
    *,
    layers: LayerSpec = -1,
    pooling: Pooling = "mean",
    strands: Strands = "forward",
    batch_size: int | None = None,
    chunk_tokens: int | None = None,
    precision: Precision = "auto",
    dtype: np.dtype | str = np.float32,
    out: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    progress: bool = True,
) -> np.ndarray | list[np.ndarray]:
    """Embed DNA sequences (strings or token ids) with a DnaMambaLM.

    Args:
        model: the language model; it stays on its device, and its train/eval mode is restored afterwards.
        sequences: one sequence or several: strings (``ACGTN``, lowercase and IUPAC codes accepted), bytes, 1-D
            token-id arrays/tensors, or a 2-D array/tensor with one sequence per row.
        layers: a hidden-state index (negative counts from the end: -1 = final normed output), a list of them
            (a layer sweep, computed in one pass), or ``"all"``.
        pooling: ``"mean"``, ``"last"`` or ``"none"`` (per position); see the module docstring.
        strands: ``"forward"`` or ``"both"`` (average with the reverse complement, flipped back to forward
            coordinates for per-position outputs).
        batch_size: sequences per forward pass; None fills ``chunk_tokens`` with as many as fit.
        chunk_tokens: tokens per forward pass, summed over the batch; longer sequences are streamed in chunks with
            the recurrent state carried. Default: 2^18 on CUDA, 2^16 on CPU. Device memory scales with this only.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 elsewhere), ``"bf16"`` or ``"fp32"``.
        dtype: float32 or float16 for the returned values.
        out: also write the results here (``.npz``, ``.parquet`` for pooled outputs, ``.npy``). Per-position
            outputs to ``.npy`` are streamed to disk as they are computed and returned as read-only memory maps.
        names: names stored in ``out`` (default ``"0"``, ``"1"``, ...).
        progress: show a progress bar (in bases) on stderr.

    Returns:
        For one input sequence (a string, bytes or 1-D ids) the array of that sequence; otherwise one entry per
        sequence, in input order.

    Shapes:
        pooling "mean"/"last": ``(N, D)`` for an int ``layers``, ``(N, n_layers, D)`` for a list; ``(D,)`` or
            ``(n_layers, D)`` for a single input sequence.
        pooling "none": a list of ``(L_i, D)`` or ``(L_i, n_layers, D)`` arrays; one such array for a single input.

    Raises:
        ValueError: no sequences, an empty sequence, token ids outside the vocabulary, a bad layer index, pooling,
            strands, precision, dtype or output suffix.
        TypeError: ``sequences`` is not a sequence or a list of them; ``batch_size`` or ``chunk_tokens`` is not an
            integer.
        InvalidSequenceError: a character that is not a nucleotide or IUPAC code (naming the sequence and position).
        IsADirectoryError, NotADirectoryError, PermissionError: ``out`` cannot be written (checked before any work).
    """
    out = None if out is None else prepare_output(out, pooling)
    # Bases only (A, C, G, T, N): the other ids are special tokens, with no reverse complement for strands="both".
    sources, single = _sequence_sources(sequences, N + 1)
    if names is not None and len(names) != len(sources):
        raise ValueError(f"{len(names)} names for {len(sources)} sequences")
    result = _embed(model, sources, [str(i) for i in range(len(sources))] if names is None else list(names),
                    regions=None, layers=layers, pooling=pooling, strands=strands, batch_size=batch_size,
                    chunk_tokens=chunk_tokens, precision=precision, dtype=dtype, out=out, progress=progress,
                    extra_metadata={})
    values = [result.sequence(i) for i in range(len(result))] if result.per_position else result.values
    return values[0] if single else values


def embed_regions(
    model: torch.nn.Module,
    fasta: FastaInput,
    regions: str | os.PathLike | Iterable[Region | tuple] | None = None,
    *,
    window: int | None = None,
    stride: int | None = None,
    contigs: Sequence[str] | None = None,
    flank: int = 0,
    use_strand: bool = True,
    layers: LayerSpec = -1,
    pooling: Pooling = "mean",
    strands: Strands = "forward",
    batch_size: int | None = None,
    chunk_tokens: int | None = None,
    precision: Precision = "auto",
    dtype: np.dtype | str = np.float32,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> Embeddings:
    """Embed genomic regions of a reference: from a BED file, a list of regions, or fixed windows.

    Each region ``[start, end)`` (0-based, half-open, as in BED) is widened by ``flank`` bases on both sides and
    read from the reference; whatever lies before position 0 or past the contig end is read as N and is part of
    the embedded window (and of a mean). Contig names are matched leniently (``chr1`` ↔ ``1``, ``chrM`` ↔ ``MT``).
    Regions are read lazily, chunk by chunk, so a whole chromosome as one region needs no more memory than a chunk.

    Args:
        model: the language model (see :func:`embed`).
        fasta: a FASTA path (plain or bgzip: random access through pyfaidx, which writes a ``.fai`` beside it if
            missing; plain gzip works too but is read into memory first), an open ``pyfaidx.Fasta``, or a mapping
            of contig name to a string or token-id array.
        regions: a BED path, or regions as :class:`~dna_mamba.genomics.Region` or ``(chrom, start, end[, name
            [, strand]])`` tuples. Leave out to tile windows or to embed whole contigs instead.
        window, stride: tile every contig (or those in ``contigs``) with windows of ``window`` bases every
            ``stride`` bases (default ``window``); the last window of a contig is padded with N.
        contigs: the contigs to tile with ``window`` (default: all); without ``window``, each of these contigs is
            embedded whole as one region (e.g. a chromosome, streamed in chunks).
        flank: bases added on each side of every region.
        use_strand: read regions on the ``-`` strand as the reverse complement, so that "forward" means the
            region's own orientation (a BED without a strand column is unaffected). Per-position outputs of such a
            region then run along its own 5'->3' direction: from reference position ``end + flank - 1`` down to
            ``start - flank``.
        layers, pooling, strands, batch_size, chunk_tokens, precision, dtype, progress: as in :func:`embed`.
        out: write the results here (``.parquet`` or ``.npz`` for pooled outputs; ``.npy`` with a JSON sidecar
            for any, streamed to disk for per-position outputs).

    Returns:
        :class:`Embeddings` in region order, with region names (BED column 4, or ``chrom:start-end``) and the
        regions themselves (without flank); ``metadata["padded_regions"]`` counts the windows that reach outside
        their contig (a warning says so too). ``values`` is ``(N, D)`` / ``(N, n_layers, D)`` pooled; per position it
        is every region's ``end - start + 2 * flank`` positions concatenated, with ``offsets`` marking regions.

    Raises:
        UnknownContigError: a region's contig is not in the reference (the message names it and its BED line).
        BedFormatError: a malformed BED line (naming the file and line).
        ValueError: no regions, an empty window (a zero-length region with no flank), a region that starts past the
            end of its contig (often a BED from another assembly), ``regions`` together with ``window``/``contigs``
            or none of them, ``out`` naming the FASTA or the BED, and the argument errors of :func:`embed`.
        TypeError: a region that is not a Region or a ``(chrom, start, end[, name[, strand]])`` tuple of a string and
            integers; ``flank``, ``window`` or ``stride`` not an integer.
        IsADirectoryError: the FASTA or BED path is a directory.
        NotADirectoryError, PermissionError: ``out`` cannot be written (checked before any work).
    """
    flank = _check_int(flank, "flank", minimum=0)
    window = None if window is None else _check_int(window, "window", minimum=1)
    stride = None if stride is None else _check_int(stride, "stride", minimum=1)
    if regions is not None and (window is not None or contigs is not None):
        raise ValueError("give regions, or window/contigs, not both (filter the regions yourself instead)")
    if regions is None and window is None and contigs is None:
        raise ValueError("nothing to embed: give regions (a BED path or a list of regions), window (and stride) "
                         "or contigs")
    if stride is not None and window is None:
        raise ValueError("stride needs window")
    if isinstance(contigs, str):  # list("12") would be contigs '1' and '2'
        contigs = [contigs]
    bed = regions if isinstance(regions, (str, os.PathLike)) else None
    if out is not None:
        # Before the reference is read, which takes minutes for a large gzip genome.
        out = prepare_output(out, pooling, inputs={"FASTA": _fasta_path(fasta), "BED": bed})
    reference = _Reference.open(fasta)
    if window is not None:
        region_list = tile_windows(reference.lengths, window, stride, contigs=contigs)
    elif regions is None:
        names = [resolve_contig_name(contig, reference.lengths) for contig in contigs]
        region_list = [Region(name, 0, reference.lengths[name]) for name in names]
    elif bed is not None:
        numbered = read_bed_lines(bed)
        region_list = [region for _, region in numbered]
    else:
        region_list = _as_regions(regions)
    if not region_list:
        raise ValueError(f"{bed}: no regions to embed (the BED has no region lines)" if bed else "no regions to embed")
    # Where each region came from, for error messages: its BED line, or its index in the list given.
    places = ([f"{bed}, line {number}" for number, _ in numbered] if bed is not None else
              [f"regions[{i}]" for i in range(len(region_list))])
    sources = [_region_source(reference, place, region, flank, use_strand)
               for place, region in zip(places, region_list, strict=True)]
    padded = sum(1 for source in sources if source.start < 0 or source.end > reference.lengths[source.chrom])
    if padded:
        warnings.warn(f"{padded:,} of {len(sources):,} regions reach past a contig end (or before its start), where "
                      "they are read as N", stacklevel=2)
    extra = {"fasta": reference.label, "flank": flank, "use_strand": use_strand, "padded_regions": padded}
    if window is not None:
        extra.update(window=window, stride=stride or window)
    return _embed(model, sources, [r.name for r in region_list], regions=region_list, layers=layers,
                  pooling=pooling, strands=strands, batch_size=batch_size, chunk_tokens=chunk_tokens,
                  precision=precision, dtype=dtype, out=out, progress=progress, extra_metadata=extra)


def resolve_layers(layers: LayerSpec, n_layer: int) -> tuple[list[int], bool]:
    """Hidden-state indices as non-negative ints, and whether the outputs get a layer axis.

    Args:
        layers: an int, a sequence of ints, or ``"all"``; valid indices are ``-(n_layer + 1) .. n_layer``.
        n_layer: the model's number of Mamba blocks (it has ``n_layer + 1`` hidden states).

    Raises:
        ValueError: an index out of range, a repeated layer, an empty list, or a non-integer (``1.0``, ``None``).
    """
    count = n_layer + 1
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be an int, a list of ints or 'all', got {layers!r}")
        return list(range(count)), True
    if isinstance(layers, bool) or not isinstance(layers, (int, np.integer, Iterable)):
        raise ValueError(f"layers must be an int, a list of ints or 'all', got {layers!r}")
    has_axis = not isinstance(layers, (int, np.integer))
    requested = list(layers) if has_axis else [layers]
    if not requested:
        raise ValueError("layers is empty")
    resolved = []
    for layer in requested:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise ValueError(f"layer indices must be integers, got {layer!r}")
        if not -count <= layer < count:
            raise ValueError(f"layer {layer} is out of range: the model has {n_layer} blocks, so hidden-state "
                             f"indices run from {-count} to {n_layer} (0 = embeddings, -1 = final normed output)")
        resolved.append(int(layer) % count)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layers {requested} name the same hidden state more than once")
    return resolved, has_axis


# --------------------------------------------------------------------------------------------------------------------
# Sources: something of known length whose tokens can be read in any sub-range, in the sequence's own orientation.


class _Source(Protocol):
    length: int

    def read(self, start: int, end: int) -> np.ndarray: ...


@dataclass
class _ArraySource:
    ids: np.ndarray  # uint8 token ids

    @property
    def length(self) -> int:
        return len(self.ids)

    def read(self, start: int, end: int) -> np.ndarray:
        return self.ids[start:end]


@dataclass
class _WindowSource:
    """``[start, end)`` of a contig (may reach outside it: read as N), reverse-complemented when ``reverse``."""

    reference: _Reference
    chrom: str
    start: int
    end: int
    reverse: bool

    @property
    def length(self) -> int:
        return self.end - self.start

    def read(self, start: int, end: int) -> np.ndarray:
        if self.reverse:
            return reverse_complement(self.reference.fetch(self.chrom, self.end - end, self.end - start))
        return self.reference.fetch(self.chrom, self.start + start, self.start + end)


class _Reference:
    """Contig lengths and token reads with N padding outside ``[0, length)``, over pyfaidx or an in-memory mapping."""

    def __init__(self, lengths: dict[str, int], read, label: str):
        self.lengths = lengths
        self._read = read  # (chrom, start, end) within bounds -> uint8 ids
        self.label = label

    @classmethod
    def open(cls, fasta: FastaInput) -> _Reference:
        import pyfaidx

        if isinstance(fasta, pyfaidx.Fasta):
            return cls._from_pyfaidx(fasta, str(fasta.filename))
        if isinstance(fasta, Mapping):
            return cls._from_mapping(fasta, "<in-memory sequences>")
        if not isinstance(fasta, (str, os.PathLike)):
            raise ValueError(f"fasta must be a path, a pyfaidx.Fasta or a mapping of name -> sequence, "
                             f"got {type(fasta).__name__}")
        path = Path(fasta)
        from dna_mamba.data.fasta import (  # raise FastaFormatError naming the file
            check_fasta,
            check_fasta_index,
            detect_compression,
            read_fasta,
        )

        compression = detect_compression(path)
        if compression == "gzip":
            # pyfaidx cannot seek in plain gzip; reading it whole is fine for the small genomes shipped that way.
            warnings.warn(f"{path}: plain gzip has no random access, so it is read into memory; "
                          "recompress with bgzip for large genomes", stacklevel=3)
            return cls._from_mapping({record.name: record.ids for record in read_fasta(path)}, str(path))
        if compression == "plain" and path.suffix.lower() in (".gz", ".bgz"):
            # pyfaidx goes by the name and would try to decompress it
            raise ValueError(f"{path}: named like a compressed file but holds plain text; rename it without "
                             f"'{path.suffix}'")
        if not Path(f"{path}.fai").is_file():
            check_fasta(path)  # before pyfaidx indexes what it should refuse (a nameless header, an empty record, ...)
        try:
            handle = _open_pyfaidx(path, compression)
        except (pyfaidx.FastaIndexingError, pyfaidx.UnsupportedCompressionFormat, ValueError, OSError) as err:
            # e.g. two records with one name ("Duplicate key"), a bgzip file without its end-of-file block
            raise ValueError(f"{path}: cannot index the FASTA ({err})") from None
        check_fasta_index(path)  # pyfaidx compares only modification times with an existing index
        return cls._from_pyfaidx(handle, str(path))

    @classmethod
    def _from_pyfaidx(cls, handle, label: str) -> _Reference:
        lengths = {name: len(handle[name]) for name in handle.keys()}

        def read(chrom: str, start: int, end: int) -> np.ndarray:
            sequence = handle.get_seq(chrom, start + 1, end)  # pyfaidx takes 1-based, inclusive coordinates
            text = sequence if isinstance(sequence, str) else sequence.seq
            return encode(text, source=label, record=chrom, offset=start)

        return cls(lengths, read, label)

    @classmethod
    def _from_mapping(cls, mapping: Mapping, label: str) -> _Reference:
        contigs = {}
        for name, sequence in mapping.items():
            if isinstance(name, (bytes, bytearray)):  # str() would make b'chr1' the contig "b'chr1'"
                raise TypeError(f"contig names must be strings, got {name!r}; decode them first")
            if isinstance(sequence, (np.ndarray, torch.Tensor)):
                contigs[str(name)] = _as_token_array(sequence, f"contig '{name}'", vocab_size=N + 1)
            elif isinstance(sequence, (list, tuple)) or not hasattr(sequence, "__getitem__") \
                    or not hasattr(sequence, "__len__"):
                # A list's slices are lists, whose str() is "['A', 'C']": refused rather than read as sequence.
                raise TypeError(f"contig '{name}': expected a string, bytes or token ids, got "
                                f"{type(sequence).__name__}")
            else:
                contigs[str(name)] = sequence  # a string, bytes or sequence-like object (Bio.Seq), sliced lazily

        def read(chrom: str, start: int, end: int) -> np.ndarray:
            piece = contigs[chrom][start:end]
            if isinstance(piece, np.ndarray):
                return piece
            if isinstance(piece, (bytes, bytearray)):
                return encode_bytes(piece, source=label, record=chrom, offset=start)
            return encode(piece if isinstance(piece, str) else str(piece), source=label, record=chrom, offset=start)

        return cls({name: len(seq) for name, seq in contigs.items()}, read, label)

    def fetch(self, chrom: str, start: int, end: int) -> np.ndarray:
        """Tokens of ``[start, end)`` of ``chrom``; positions outside the contig are N."""
        length = self.lengths[chrom]
        inside_start, inside_end = max(start, 0), min(end, length)
        if start >= 0 and end <= length:
            return self._read(chrom, start, end)
        ids = np.full(end - start, N, dtype=np.uint8)
        if inside_start < inside_end:
            ids[inside_start - start:inside_end - start] = self._read(chrom, inside_start, inside_end)
        return ids


def _open_pyfaidx(path: Path, compression: str):
    """``pyfaidx.Fasta`` over a plain or bgzip FASTA, whatever its name.

    pyfaidx tells bgzip by a ``.gz``/``.bgz`` name alone and would index the compressed bytes as text. A bgzip file
    named otherwise is opened through a link named ``.gz`` in a private folder, with links to where its ``.fai`` and
    ``.gzi`` belong (beside the file, as for any bgzip FASTA): pyfaidx reads and writes the indexes through them. It
    opens the file while being constructed, so the links can go afterwards. (pyfaidx 0.8 has no ``gzi_indexname``
    argument, hence links rather than arguments.)
    """
    import pyfaidx

    if compression != "bgzip" or path.name.lower().endswith((".gz", ".bgz")):
        return pyfaidx.Fasta(str(path), as_raw=True)
    path = path.absolute()  # not resolve(): the indexes of a link to a FASTA belong beside the link, as pyfaidx does
    with tempfile.TemporaryDirectory(prefix="dna_mamba_bgzip_") as folder:
        link = Path(folder) / f"{path.name}.gz"
        link.symlink_to(path)
        for index in (".fai", ".gzi"):
            Path(f"{link}{index}").symlink_to(f"{path}{index}")
        return pyfaidx.Fasta(str(link), as_raw=True)


def _fasta_path(fasta: FastaInput) -> Path | None:
    """The file behind ``fasta`` (a path or an open ``pyfaidx.Fasta``), or None for sequences in memory."""
    if isinstance(fasta, (str, os.PathLike)):
        return Path(fasta)
    filename = getattr(fasta, "filename", None)  # an open pyfaidx.Fasta
    return Path(filename) if isinstance(filename, str) else None


def _as_regions(regions) -> list[Region]:
    """Regions given as a list of :class:`Region` or ``(chrom, start, end[, name[, strand]])`` tuples."""
    if not isinstance(regions, Iterable):
        raise TypeError(f"regions must be a BED path or a list of regions, got {type(regions).__name__}")
    region_list = []
    for i, item in enumerate(regions):
        if isinstance(item, Region):
            region_list.append(item)
            continue
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or not 3 <= len(item) <= 5:
            raise TypeError(f"regions[{i}]: expected a Region or a (chrom, start, end[, name[, strand]]) tuple, "
                            f"got {item!r}")
        try:
            region_list.append(Region(*item))
        except (TypeError, ValueError) as err:
            raise type(err)(f"regions[{i}]: {err}") from None
    return region_list


def _check_int(value, name: str, minimum: int) -> int:
    """``value`` as an int of at least ``minimum``: ints and numpy integers only, as 10.0 or '10' fail deep inside."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{name} must be {'positive' if minimum == 1 else f'>= {minimum}'}, got {value}")
    return value


def _region_source(reference: _Reference, place: str, region: Region, flank: int, use_strand: bool) -> _WindowSource:
    """The window of one region; ``place`` says where the region came from (a BED line) for error messages."""
    try:
        chrom = resolve_contig_name(region.chrom, reference.lengths)
    except UnknownContigError as err:
        raise type(err)(f"{place}: {err}") from None
    length = reference.lengths[chrom]
    coordinates = f"{region.chrom}:{region.start}-{region.end}"
    where = f"{place}: region {coordinates}" + (f" ('{region.name}')" if region.name != coordinates else "")
    if region.start > length or (region.start == length and region.end > region.start):
        raise ValueError(f"{where} starts past the end of contig '{chrom}' ({length:,} bp); "
                         "is the BED from another assembly?")
    if region.length + 2 * flank == 0:
        raise ValueError(f"{where} is empty; give flank > 0 to embed around a point, or drop it")
    return _WindowSource(reference, chrom, region.start - flank, region.end + flank,
                         reverse=use_strand and region.strand == "-")


def _sequence_sources(sequences: SequenceInput, vocab_size: int) -> tuple[list[_Source], bool]:
    single = isinstance(sequences, (str, bytes, bytearray)) or (
        isinstance(sequences, (np.ndarray, torch.Tensor)) and sequences.ndim == 1)
    if not single and not isinstance(sequences, Iterable):
        raise TypeError(f"sequences must be a string, bytes, token ids or a list of them, got "
                        f"{type(sequences).__name__}")
    if single:
        items = [sequences]
    elif isinstance(sequences, (np.ndarray, torch.Tensor)):
        if sequences.ndim != 2:
            raise ValueError(f"token ids must be 1-D (one sequence) or 2-D (one per row), got shape "
                             f"{tuple(sequences.shape)}")
        items = list(sequences)
    elif isinstance(sequences, (Mapping, set, frozenset)):
        # list() of a dict would embed its keys; a set has no order for the output rows
        raise ValueError(f"sequences must be a string, token ids or a list of them, got a {type(sequences).__name__}"
                         + (" (pass list(d.values()) and keep the keys as names)" if isinstance(sequences, Mapping)
                            else ""))
    else:
        items = list(sequences)
    if not items:
        raise ValueError("no sequences to embed")
    sources: list[_Source] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            ids = encode(item, source=f"sequence {i}")
        elif isinstance(item, (bytes, bytearray)):
            ids = encode_bytes(item, source=f"sequence {i}")
        elif isinstance(item, (np.ndarray, torch.Tensor)):
            ids = _as_token_array(item, f"sequence {i}", vocab_size)
        else:
            raise ValueError(f"sequence {i}: expected a string, bytes or token ids, got {type(item).__name__}")
        if ids.ndim != 1:
            raise ValueError(f"sequence {i}: token ids must be 1-D, got shape {ids.shape}")
        if len(ids) == 0:
            raise ValueError(f"sequence {i} is empty")
        sources.append(_ArraySource(ids))
    return sources, single


def _as_token_array(ids: np.ndarray | torch.Tensor, what: str, vocab_size: int) -> np.ndarray:
    array = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what}: token ids must be integers, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= vocab_size):
        raise ValueError(f"{what}: token ids must lie in [0, {vocab_size}), got {array.min()}..{array.max()}")
    return array.astype(np.uint8, copy=False)


# --------------------------------------------------------------------------------------------------------------------
# The engine.


def _embed(model, sources: list[_Source], names: list[str], *, regions: list[Region] | None, layers: LayerSpec,
           pooling: str, strands: str, batch_size: int | None, chunk_tokens: int | None, precision: str,
           dtype, out: Path | None, progress: bool, extra_metadata: dict) -> Embeddings:
    """The engine behind :func:`embed` and :func:`embed_regions`; ``out`` has been through ``prepare_output``."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if strands not in STRANDS:
        raise ValueError(f"strands must be one of {STRANDS}, got {strands!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float16):
        raise ValueError(f"dtype must be float32 or float16, got {dtype}")
    if batch_size is not None:
        batch_size = _check_int(batch_size, "batch_size", minimum=1)
    out_format = None if out is None else output_format(out, pooling)
    config = model.config
    layer_ids, layer_axis = resolve_layers(layers, config.n_layer)
    device = next(model.parameters()).device
    if chunk_tokens is None:
        chunk_tokens = CUDA_CHUNK_TOKENS if device.type == "cuda" else CPU_CHUNK_TOKENS
    chunk_tokens = _check_int(chunk_tokens, "chunk_tokens", minimum=1)
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")

    lengths = np.array([source.length for source in sources], dtype=np.int64)
    shape_tail = (len(layer_ids), config.d_model) if layer_axis else (config.d_model,)
    offsets = np.concatenate([[0], np.cumsum(lengths)]) if pooling == "none" else None
    shape = (int(offsets[-1]) if pooling == "none" else len(sources), *shape_tail)
    engine = _Engine(model, layer_ids, pooling, chunk_tokens, device, use_bf16)
    fill = functools.partial(_fill, engine=engine, sources=sources, lengths=lengths, offsets=offsets,
                             passes=(False, True) if strands == "both" else (False,), batch_size=batch_size,
                             progress=progress)
    streamed = pooling == "none" and out_format == ".npy"
    if streamed:
        # Written to a temporary file beside ``out`` as it is computed and renamed at the end, so an interrupted run
        # never leaves a file that looks complete.
        with atomic_output(out) as tmp:
            memmap = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            fill(memmap)
            memmap.flush()
            del memmap  # unmapped before the rename
            drop_stale_sidecar(out)
        values = np.load(out, mmap_mode="r")
    else:
        values = np.empty(shape, dtype=dtype)
        fill(values)

    metadata = {"model": config.to_dict(), "num_hidden_states": config.n_layer + 1,
                "precision": "bf16" if use_bf16 else "fp32", "chunk_tokens": chunk_tokens, "dtype": dtype.name,
                "mean_includes_n": True, "dna_mamba_version": _package_version(),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                **extra_metadata}
    result = Embeddings(values=values, names=names, layers=layer_ids, pooling=pooling, strands=strands,
                        layer_axis=layer_axis, offsets=offsets, regions=regions, metadata=metadata)
    if streamed:
        write_sidecar(result, out)
    elif out is not None:
        save_embeddings(result, out)
    return result


def _fill(values: np.ndarray, *, engine: _Engine, sources: list[_Source], lengths: np.ndarray,
          offsets: np.ndarray | None, passes: tuple[bool, ...], batch_size: int | None, progress: bool) -> None:
    """Embed every source into ``values``: one row each when pooled, rows ``offsets[i]:offsets[i + 1]`` per position.

    Shapes:
        values: (N, [n_layers,] D) pooled, (total_positions, [n_layers,] D) per position.
    """
    target = values.reshape(values.shape[0], len(engine.layers), values.shape[-1])  # a view: with or without an axis
    n = len(sources)
    order = np.argsort(-lengths, kind="stable")  # longest first: similar lengths share a batch, little padding
    with tqdm(total=int(lengths.sum()) * len(passes), unit="bp", unit_scale=True, desc="embed",
              disable=not progress, mininterval=0.5) as bar, _eval_mode(engine.model), torch.inference_mode():
        start = 0
        while start < n:
            size = batch_size or max(1, engine.chunk_tokens // int(lengths[order[start]]))
            batch = order[start:start + size]
            start += size
            pooled = None
            for reverse in passes:
                write = None
                if engine.pooling == "none":
                    write = functools.partial(_write_positions, target, offsets[batch], lengths[batch],
                                              reverse=reverse)
                result = engine.run([sources[i] for i in batch], reverse, bar, write)
                if result is not None:
                    pooled = result if pooled is None else pooled + result
            if pooled is not None:
                if engine.pooling == "mean":
                    counts = torch.as_tensor(lengths[batch], dtype=pooled.dtype, device=pooled.device)
                    pooled /= counts[:, None, None]
                target[batch] = (pooled / len(passes)).cpu().numpy()


def _write_positions(target: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, row: int, begin: int,
                     chunk: np.ndarray, *, reverse: bool) -> None:
    """Store one chunk of per-position outputs of sequence ``row`` of a batch, in forward coordinates.

    Shapes:
        target: (total_positions, n_layers, D); offsets, lengths: (B,), the batch's sequences;
        chunk: (n, n_layers, D) for stream positions ``begin .. begin + n``.
    """
    offset, length, count = int(offsets[row]), int(lengths[row]), len(chunk)
    if not reverse:
        target[offset + begin:offset + begin + count] = chunk
        return
    # Stream position p of the reverse complement reads forward base length - 1 - p. The forward pass of this batch
    # has already written its outputs there, so this averages the two strands in place.
    low, high = offset + length - begin - count, offset + length - begin
    target[low:high] = (target[low:high].astype(np.float32) + chunk[::-1]) / 2


class _Engine:
    """Streams a batch of sequences through the model chunk by chunk, keeping only the requested hidden states."""

    def __init__(self, model, layers: list[int], pooling: str, chunk_tokens: int, device: torch.device,
                 use_bf16: bool):
        self.model = model
        self.layers = layers
        self.pooling = pooling
        self.chunk_tokens = chunk_tokens
        self.device = device
        self.use_bf16 = use_bf16

    def run(self, sources: list[_Source], reverse: bool, bar, write) -> torch.Tensor | None:
        """One strand of one batch.

        Returns:
            pooling "mean": per-sequence sums over positions, (B, n_layers, D) float64 on the device; "last": the last
            position's outputs, same shape; "none": None (each chunk went to ``write(row, begin, values)``).
        """
        lengths = [source.length for source in sources]
        batch, longest = len(sources), max(lengths)
        step = max(1, self.chunk_tokens // batch)
        d_model = self.model.config.d_model
        pooled = None
        if self.pooling != "none":
            pooled = torch.zeros(batch, len(self.layers), d_model, dtype=torch.float64, device=self.device)
        lengths_t = torch.as_tensor(lengths, device=self.device)
        state = None
        for begin in range(0, longest, step):
            end = min(begin + step, longest)
            valid = [max(0, min(end, length) - begin) for length in lengths]
            # PAD after a sequence's end: the model is causal, so it never changes that sequence's outputs.
            tokens = np.full((batch, end - begin), PAD, dtype=np.uint8)
            for row, source in enumerate(sources):
                if valid[row]:
                    tokens[row, :valid[row]] = _read(source, begin, begin + valid[row], reverse)
            ids = torch.from_numpy(tokens)
            if self.device.type == "cuda":
                # A copy from pinned memory is asynchronous, so reading the next chunk overlaps this chunk's compute.
                ids = ids.pin_memory().to(self.device, non_blocking=True)
            ids = ids.to(self.device).long()  # (B, l)
            autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.use_bf16 else \
                contextlib.nullcontext()
            with autocast:
                hidden, state = _forward_hidden(self.model, ids, state, self.layers)
            if self.pooling == "mean":
                all_valid = min(valid) == end - begin
                mask = None if all_valid else (
                    torch.arange(begin, end, device=self.device)[None, :] < lengths_t[:, None])[..., None]  # (B, l, 1)
                for k, h in enumerate(hidden):
                    h = h.float() if all_valid else h.float() * mask
                    pooled[:, k] += h.sum(dim=1, dtype=torch.float64)
            elif self.pooling == "last":
                for row, length in enumerate(lengths):
                    if begin < length <= end:
                        pooled[row] = torch.stack([h[row, length - 1 - begin] for h in hidden]).double()
            else:
                stacked = torch.stack(hidden, dim=2).float().cpu().numpy()  # (B, l, n_layers, D)
                for row in range(batch):
                    if valid[row]:
                        write(row, begin, stacked[row, :valid[row]])
            bar.update(sum(valid))
        return pooled


def _forward_hidden(model, ids: torch.Tensor, state, layers: list[int]) -> tuple[list[torch.Tensor], list]:
    """The requested hidden states of one chunk and the per-block states to carry to the next chunk.

    This walks the model's modules instead of calling ``model(..., output_hidden_states=True)``, which keeps all
    n_layer + 1 hidden states of the chunk alive: here only the requested ones are kept, blocks past the deepest
    requested layer are skipped, and the LM head is never run. Indices are those of ``LMOutput.hidden_states``
    (0 = embedding output, i = after block i, n_layer = after the final norm); the tests hold the two equal.

    Shapes:
        ids: (B, l) -> hidden states (B, l, D) each, in the order of ``layers``.
    """
    n_layer = len(model.layers)
    deepest = max(layers)
    x = model.embedding(ids)  # (B, l, D)
    kept = {0: x} if 0 in layers else {}
    new_state = []
    for i in range(min(deepest, n_layer)):
        x, layer_state = model.layers[i](x, None if state is None else state[i], True)
        new_state.append(layer_state)
        if i + 1 in layers and i + 1 < n_layer:
            kept[i + 1] = x
    if deepest == n_layer:
        kept[n_layer] = model.norm_f(x)
    return [kept[k] for k in layers], new_state


def _read(source: _Source, begin: int, end: int, reverse: bool) -> np.ndarray:
    """Stream positions ``[begin, end)`` of a source, or of its reverse complement."""
    if not reverse:
        return source.read(begin, end)
    return reverse_complement(source.read(source.length - end, source.length - begin))


@contextlib.contextmanager
def _eval_mode(model) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _package_version() -> str:
    try:
        return importlib_metadata.version("dna_mamba")
    except importlib_metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"
