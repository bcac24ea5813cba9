"""Genome data: FASTA parsing, token stores, train/val/test splits and training windows."""

from dna_mamba.data.fasta import (
    FastaChunk,
    FastaFormatError,
    FastaRecord,
    detect_compression,
    iter_fasta_chunks,
    read_fasta,
)
from dna_mamba.data.splits import Segment, Split, split_by_contigs, split_by_files, split_by_fraction, whole_contigs
from dna_mamba.data.store import (
    GenomeStore,
    StoreError,
    UnknownContigError,
    build_store,
    cached_store,
    default_store_dir,
    resolve_contig,
)
from dna_mamba.data.windows import RandomWindowDataset, WindowDataset, plan_windows, window_arrays

__all__ = [
    "FastaChunk",
    "FastaFormatError",
    "FastaRecord",
    "GenomeStore",
    "RandomWindowDataset",
    "Segment",
    "Split",
    "StoreError",
    "UnknownContigError",
    "WindowDataset",
    "build_store",
    "cached_store",
    "default_store_dir",
    "detect_compression",
    "iter_fasta_chunks",
    "plan_windows",
    "read_fasta",
    "resolve_contig",
    "split_by_contigs",
    "split_by_files",
    "split_by_fraction",
    "whole_contigs",
    "window_arrays",
]
