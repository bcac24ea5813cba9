"""Embeddings on disk: ``.npz``, ``.parquet`` and memory-mapped ``.npy`` with a JSON sidecar, all round-tripping.

    .npz      values, names, region columns and offsets as arrays; the header as a JSON string (``header``)
    .parquet  pooled only: one row per sequence (name, chrom, start, end, strand, one ``layer_<k>`` column of
              fixed-size float lists per layer); the header as JSON in the schema metadata under ``dna_mamba``
    .npy      the values array (memory-mapped on load; written incrementally for per-position outputs) and
              ``<file>.npy.json`` beside it holding names, region columns, offsets and the header

Every writer goes through a temporary file in the same folder and renames it, so a crash never leaves a file that
looks complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dna_mamba.genomics import Region
from dna_mamba.outputs import atomic_output, check_output

FORMAT = "dna_mamba.embeddings"
FORMAT_VERSION = 1
SUFFIXES = (".npz", ".parquet", ".npy")
_PARQUET_KEY = b"dna_mamba"


@dataclass
class Embeddings:
    """Embeddings of a set of sequences or regions, in input order, with what produced them.

    Attributes:
        values: pooled: ``(N, D)``, or ``(N, n_layers, D)`` when ``layer_axis``; per-position (``pooling="none"``):
            all sequences' positions concatenated, ``(total_positions, D)`` or ``(total_positions, n_layers, D)``;
            may be a read-only memory map.
        names: one name per sequence or region.
        layers: hidden-state indices, non-negative (0 = embedding output, ``n_layer`` = final normed output), in
            the order of the layer axis.
        pooling: ``"mean"``, ``"last"`` or ``"none"``.
        strands: ``"forward"`` or ``"both"``.
        layer_axis: whether ``values`` has a layer axis (a list of layers was asked for) or not (a single layer).
        offsets: per-position only, ``(N + 1,)`` int64: sequence ``i`` is ``values[offsets[i]:offsets[i + 1]]``.
        regions: the regions embedded (before flanking), when the inputs were genomic regions.
        metadata: JSON-serialisable provenance (model config, flank, precision, chunk size, ...).

    Shapes:
        values: (N, [n_layers,] D) pooled, (sum of lengths, [n_layers,] D) per position.
    """

    values: np.ndarray
    names: list[str]
    layers: list[int]
    pooling: str
    strands: str
    layer_axis: bool = False
    offsets: np.ndarray | None = None
    regions: list[Region] | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = [str(name) for name in self.names]
        expected_ndim = 3 if self.layer_axis else 2
        if self.values.ndim != expected_ndim:
            raise ValueError(f"values must have {expected_ndim} dimensions, got shape {self.values.shape}")
        if self.values.shape[1:-1] not in ((len(self.layers),), ()):
            raise ValueError(f"values of shape {self.values.shape} do not match {len(self.layers)} layers")
        if not self.layer_axis and len(self.layers) != 1:
            raise ValueError(f"{len(self.layers)} layers need layer_axis=True")
        if self.regions is not None and len(self.regions) != len(self.names):
            raise ValueError(f"{len(self.regions)} regions for {len(self.names)} names")
        if self.pooling == "none":
            if self.offsets is None:
                raise ValueError("per-position embeddings need offsets")
            self.offsets = np.asarray(self.offsets, dtype=np.int64)
            if self.offsets.shape != (len(self.names) + 1,) or self.offsets[-1] != self.values.shape[0]:
                raise ValueError(f"offsets of shape {self.offsets.shape} ending at "
                                 f"{self.offsets[-1] if self.offsets.size else None} do not match {len(self.names)} "
                                 f"sequences and {self.values.shape[0]} positions")
        elif self.values.shape[0] != len(self.names):
            raise ValueError(f"{self.values.shape[0]} rows of values for {len(self.names)} names")

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:  # the dataclass default would print every value
        kind = "regions" if self.regions is not None else "sequences"
        return (f"Embeddings({len(self)} {kind}, values {tuple(self.values.shape)} {self.values.dtype}, "
                f"layers={self.layers}, pooling={self.pooling!r}, strands={self.strands!r})")

    @property
    def per_position(self) -> bool:
        return self.pooling == "none"

    @property
    def dim(self) -> int:
        return int(self.values.shape[-1])

    def sequence(self, i: int) -> np.ndarray:
        """The embedding of sequence ``i``: ``([n_layers,] D)`` pooled, ``(L_i, [n_layers,] D)`` per position."""
        if not self.per_position:
            return self.values[i]
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def layer(self, index: int) -> np.ndarray:
        """The values of one layer (without the layer axis): ``index`` as listed in :attr:`layers`, or negative
        (counted from the last hidden state, as in ``embed(layers=...)``)."""
        if index < 0 and "num_hidden_states" in self.metadata:
            index += int(self.metadata["num_hidden_states"])
        if index not in self.layers:
            raise ValueError(f"layer {index} was not embedded; available: {self.layers}")
        return self.values[:, self.layers.index(index)] if self.layer_axis else self.values

    def header(self) -> dict:
        """Everything but the arrays, as JSON-serialisable data."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "layers": self.layers, "layer_axis": self.layer_axis,
                "pooling": self.pooling, "strands": self.strands, "dim": self.dim, "metadata": self.metadata}

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``.npz``, ``.parquet`` (pooled only) or ``.npy`` (+ ``.npy.json`` sidecar), by suffix."""
        return save_embeddings(self, path)


def output_format(path: str | os.PathLike, pooling: str) -> str:
    """The file format for ``path`` (its suffix), checked against the pooling.

    Raises:
        ValueError: an unknown suffix, or per-position outputs asked for as parquet.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: output must end in {', '.join(SUFFIXES)}, got {suffix or 'no suffix'!r}")
    if suffix == ".parquet" and pooling == "none":
        raise ValueError(f"{path}: per-position embeddings (pooling='none') are written as a memory-mapped .npy "
                         "(or .npz for small inputs), not parquet")
    return suffix


def prepare_output(path: str | os.PathLike, pooling: str,
                   inputs: Mapping[str, str | os.PathLike | None] | None = None) -> Path:
    """Check an output path (and a ``.npy``'s sidecar) before any work is done that a bad path would waste.

    Args:
        path: the output file.
        pooling: the pooling it will hold (parquet takes pooled outputs only).
        inputs: what the run reads, as name -> file (``{"FASTA": ..., "BED": ...}``), which the output must not
            overwrite; None values are skipped.

    Raises:
        ValueError: an unknown suffix, per-position outputs as parquet, or an output that is one of ``inputs``.
        IsADirectoryError, NotADirectoryError, PermissionError: as :func:`dna_mamba.outputs.check_output`.
    """
    path = Path(path)
    suffix = output_format(path, pooling)
    for target in (path, sidecar_path(path)) if suffix == ".npy" else (path,):
        check_output(target, inputs=inputs)
    return path


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON file that describes a ``.npy`` of embeddings: ``emb.npy`` -> ``emb.npy.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_embeddings(embeddings: Embeddings, path: str | os.PathLike) -> Path:
    """Write embeddings to ``path``; the format follows the suffix (see the module docstring).

    Raises:
        ValueError: unknown suffix, or per-position embeddings to parquet.
        IsADirectoryError, NotADirectoryError, PermissionError: as :func:`prepare_output`.
    """
    path = prepare_output(path, embeddings.pooling)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with atomic_output(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **_columns(embeddings), values=np.asarray(embeddings.values),
                     header=np.array(json.dumps(embeddings.header())))
    elif suffix == ".parquet":
        _write_parquet(embeddings, path)
    else:
        already_there = isinstance(embeddings.values, np.memmap) and Path(embeddings.values.filename) == path.resolve()
        if not already_there:
            with atomic_output(path) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, np.asarray(embeddings.values))
                drop_stale_sidecar(path)
        write_sidecar(embeddings, path)
    return path


def write_sidecar(embeddings: Embeddings, path: str | os.PathLike) -> Path:
    """Write the JSON that accompanies a ``.npy`` of embeddings (names, region columns, offsets, header)."""
    columns = {key: value.tolist() for key, value in _columns(embeddings).items()}
    target = sidecar_path(path)
    with atomic_output(target) as tmp:
        Path(tmp).write_text(json.dumps({**embeddings.header(), **columns}) + "\n")
    return target


def load_embeddings(path: str | os.PathLike) -> Embeddings:
    """Read embeddings written by :func:`save_embeddings` (or by ``embed``/``embed_regions`` with ``out=``).

    ``.npy`` values come back as a read-only memory map, so per-position files of any size open instantly.

    Raises:
        FileNotFoundError: the file (or a ``.npy``'s sidecar) is missing.
        ValueError: the file is not a dna_mamba embeddings file of a known version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such embeddings file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            header = _check_header(json.loads(str(data["header"])), path)
            columns = {key: data[key] for key in data.files if key not in ("values", "header")}
            values = data["values"]
    elif suffix == ".parquet":
        return _read_parquet(path)
    elif suffix == ".npy":
        side = sidecar_path(path)
        if not side.is_file():
            raise FileNotFoundError(f"{path}: its sidecar {side.name} (names, offsets, metadata) is missing")
        content = json.loads(side.read_text())
        header = _check_header(content, path)
        columns = {key: np.asarray(content[key]) for key in ("names", "chrom", "start", "end", "strand", "offsets")
                   if key in content}
        values = np.load(path, mmap_mode="r")
    else:
        raise ValueError(f"{path}: unknown embeddings format {suffix!r}; expected one of {', '.join(SUFFIXES)}")
    return _assemble(values, header, columns)


def _columns(embeddings: Embeddings) -> dict[str, np.ndarray]:
    columns = {"names": np.array(embeddings.names, dtype=str)}
    if embeddings.regions is not None:
        regions = embeddings.regions
        columns["chrom"] = np.array([r.chrom for r in regions], dtype=str)
        columns["start"] = np.array([r.start for r in regions], dtype=np.int64)
        columns["end"] = np.array([r.end for r in regions], dtype=np.int64)
        columns["strand"] = np.array([r.strand for r in regions], dtype=str)
    if embeddings.offsets is not None:
        columns["offsets"] = np.asarray(embeddings.offsets, dtype=np.int64)
    return columns


def _assemble(values: np.ndarray, header: dict, columns: dict[str, np.ndarray]) -> Embeddings:
    names = [str(name) for name in columns["names"]]
    regions = None
    if "chrom" in columns:
        regions = [Region(str(c), int(s), int(e), name, str(strand)) for c, s, e, name, strand in
                   zip(columns["chrom"], columns["start"], columns["end"], names, columns["strand"], strict=True)]
    return Embeddings(values=values, names=names, layers=[int(k) for k in header["layers"]],
                      pooling=header["pooling"], strands=header["strands"], layer_axis=bool(header["layer_axis"]),
                      offsets=columns.get("offsets"), regions=regions, metadata=header.get("metadata", {}))


def _check_header(header: dict, path: Path) -> dict:
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a dna_mamba embeddings file")
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: embeddings format version {header.get('version')} is not supported "
                         f"(this version reads {FORMAT_VERSION})")
    return header


def _layer_column(layer: int) -> str:
    return f"layer_{layer}"


def _write_parquet(embeddings: Embeddings, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, pa.Array] = {"name": pa.array(embeddings.names, type=pa.string())}
    if embeddings.regions is not None:
        for key, value in _columns(embeddings).items():
            if key in ("chrom", "start", "end", "strand"):
                columns[key] = pa.array(value)
    values = np.asarray(embeddings.values)
    dim = embeddings.dim
    for position, layer in enumerate(embeddings.layers):
        layer_values = values[:, position] if embeddings.layer_axis else values
        flat = pa.array(np.ascontiguousarray(layer_values).reshape(-1))
        columns[_layer_column(layer)] = pa.FixedSizeListArray.from_arrays(flat, dim)
    table = pa.table(columns).replace_schema_metadata({_PARQUET_KEY: json.dumps(embeddings.header()).encode()})
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp, row_group_size=1 << 16)


def _read_parquet(path: Path) -> Embeddings:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(_PARQUET_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a dna_mamba embeddings file (no '{_PARQUET_KEY.decode()}' schema metadata)")
    header = _check_header(json.loads(raw), path)
    dim = int(header["dim"])
    per_layer = []
    for layer in header["layers"]:
        column = table.column(_layer_column(layer)).combine_chunks()
        per_layer.append(column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim))
    values = np.stack(per_layer, axis=1) if header["layer_axis"] else per_layer[0]
    columns = {"names": np.array(table.column("name").to_pylist(), dtype=str)}
    if "chrom" in table.column_names:
        for key in ("chrom", "start", "end", "strand"):
            columns[key] = np.array(table.column(key).to_pylist())
    return _assemble(values, header, columns)


def drop_stale_sidecar(path: Path) -> None:
    """Delete the sidecar of an earlier ``.npy`` at ``path``, just before a new one replaces it.

    The new sidecar is written after the new values; a crash between the two then leaves a ``.npy`` without a sidecar,
    which :func:`load_embeddings` refuses, instead of new values described by the old names and offsets.
    """
    sidecar_path(path).unlink(missing_ok=True)
