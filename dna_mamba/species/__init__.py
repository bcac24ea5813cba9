"""Species classification from genomes: manifests, leak-free splits, windows, the k-mer baseline, reports.

No Lightning or Hydra here (the fine-tuning module is ``dna_mamba.lit.species``), so notebooks can prepare data,
score baselines and load a trained classifier with plain calls.
"""

from dna_mamba.species.dataset import (
    BalancedWindowDataset,
    EvalWindowDataset,
    EvalWindows,
    SpeciesDataset,
    SplitConfig,
    prepare_species,
    split_segments,
)
from dna_mamba.species.kmer import kmer_baseline, kmer_counts, kmer_features
from dna_mamba.species.manifest import GenomeEntry, Manifest, ManifestError, example_manifest, read_manifest
from dna_mamba.species.metrics import classification_metrics, metrics_from_confusion, plot_confusion
from dna_mamba.species.model import SpeciesClassifier, SpeciesHead, load_classifier, save_classifier

__all__ = [
    "BalancedWindowDataset",
    "EvalWindowDataset",
    "EvalWindows",
    "GenomeEntry",
    "Manifest",
    "ManifestError",
    "SpeciesClassifier",
    "SpeciesDataset",
    "SpeciesHead",
    "SplitConfig",
    "classification_metrics",
    "example_manifest",
    "kmer_baseline",
    "kmer_counts",
    "kmer_features",
    "load_classifier",
    "metrics_from_confusion",
    "plot_confusion",
    "prepare_species",
    "read_manifest",
    "save_classifier",
    "split_segments",
]
