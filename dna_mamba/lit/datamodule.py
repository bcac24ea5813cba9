"""A LightningDataModule over a genome store: windows of a fixed context for train / val / test."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from dna_mamba.data.splits import Split, split_by_contigs, split_by_files, split_by_fraction
from dna_mamba.data.store import GenomeStore, UnknownContigError, cached_store, resolve_contig
from dna_mamba.data.windows import WindowDataset, plan_windows

EMBEDDED_ECOLI = "embedded:ecoli"


def embedded_genome_path() -> Path:
    """The E. coli K-12 MG1655 genome shipped inside the package (the default training data)."""
    return Path(str(resources.files("dna_mamba.resources") / "ecoli_K12_MG1655.fa.gz"))


@dataclass
class GenomeDataConfig:
    """Which genome to read and how to split it into training and evaluation windows."""

    fasta: list[str] = field(default_factory=lambda: [EMBEDDED_ECOLI])  # FASTA files, or "embedded:ecoli"
    split: str = "fraction"  # "fraction" (tail of each contig held out), "contigs", or "files"
    val_fraction: float = 0.05  # split="fraction"; above 0, since the run validates and keeps its best checkpoint
    test_fraction: float = 0.0
    val_contigs: list[str] = field(default_factory=list)  # split="contigs"; one name or a list, 'chr1' / '1' / 1
    test_contigs: list[str] = field(default_factory=list)
    val_fasta: list[str] = field(default_factory=list)  # split="files": separate genomes for validation
    segment_length: int | None = None  # sub-segments that windows tile; None: whole segments
    max_n_fraction: float = 0.1  # windows with more N than this are skipped
    pad: bool = False  # N-pad contigs shorter than the context instead of leaving them out
    rc_prob: float = 0.5  # reverse-complement augmentation probability for training windows
    max_val_windows: int | None = 256  # evaluation cost cap: an evenly spaced subset of validation windows
    num_workers: int = 0
    cache_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # A single value is one item (data.val_contigs=chr2 is one contig, not four letters); YAML and Hydra read a
        # bare 1 as an integer, and contig 1 is the store's '1' or 'chr1'.
        self.fasta, self.val_fasta = _as_list(self.fasta), _as_list(self.val_fasta)
        self.val_contigs = [str(name) for name in _as_list(self.val_contigs)]
        self.test_contigs = [str(name) for name in _as_list(self.test_contigs)]
        if not self.fasta:
            raise ValueError("data.fasta needs at least one FASTA file")
        if self.split not in ("fraction", "contigs", "files"):
            raise ValueError(f"data.split must be 'fraction', 'contigs' or 'files', got {self.split!r}")
        # Settings of another split method would be ignored without a word: refuse them instead.
        for setting, method in (("val_contigs", "contigs"), ("test_contigs", "contigs"), ("val_fasta", "files")):
            if getattr(self, setting) and self.split != method:
                raise ValueError(f"data.{setting} is used only with data.split={method}, and data.split is "
                                 f"{self.split}; add data.split={method} (or drop data.{setting})")
        if self.split == "files" and not self.val_fasta:
            raise ValueError("data.split=files needs data.val_fasta, e.g. 'data.val_fasta=[heldout.fa.gz]'")
        if self.split == "contigs" and not self.val_contigs:
            raise ValueError("data.split=contigs needs data.val_contigs, e.g. 'data.val_contigs=[chr20]'")
        if self.split == "fraction":
            self._check_fractions()
        if not 0 <= self.rc_prob <= 1:
            raise ValueError(f"data.rc_prob must be in [0, 1], got {self.rc_prob}")

    def _check_fractions(self) -> None:
        for setting in ("val_fraction", "test_fraction"):
            value = getattr(self, setting)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"data.{setting} must be a number, got {value!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be above 0 and below 1 (the tail of each contig held out for "
                             f"validation, e.g. 0.05), got {self.val_fraction}")
        if not 0 <= self.test_fraction < 1:
            raise ValueError(f"data.test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"data.val_fraction + data.test_fraction must be below 1 (the rest is for training), got "
                             f"{self.val_fraction} + {self.test_fraction}")

    def identity(self) -> dict:
        """What makes two runs train and validate on the same sequence: the genome files (absolute paths, so that a
        relative path means the file it named when the run started) and the split."""
        def absolute(paths: list[str]) -> list[str]:
            return [p if p == EMBEDDED_ECOLI else str(Path(p).expanduser().resolve()) for p in paths]

        return {"fasta": absolute(self.fasta), "val_fasta": absolute(self.val_fasta), "split": self.split,
                "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                "val_contigs": self.val_contigs, "test_contigs": self.test_contigs}

    def resolved_fasta(self, paths: list[str]) -> list[Path]:
        return [embedded_genome_path() if p == EMBEDDED_ECOLI else Path(p).expanduser() for p in paths]


def _as_list(value: object) -> list:
    if value is None:
        return []
    if isinstance(value, str | int | float | Path):
        return [value]
    return list(value)


class GenomeDataModule(L.LightningDataModule):
    def __init__(self, config: GenomeDataConfig, seq_len: int, batch_size: int, progress: bool = True):
        super().__init__()
        if seq_len < 2:
            raise ValueError(f"seq_len must be at least 2 for next-token training, got {seq_len}")
        # Saved in every checkpoint (datamodule_hyper_parameters), so that a resume can tell whose data it holds.
        self.save_hyperparameters({"data": config.identity()})
        self.config = config
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.progress = progress
        self.datasets: dict[str, WindowDataset] = {}
        self.split: Split | None = None
        # Seconds this process spent in prepare_data and setup (building or opening the stores, planning windows):
        # Lightning calls both inside fit, and the run's summary reports them apart from the training time.
        self.prepare_seconds = 0.0

    def prepare_data(self) -> None:
        # Builds (or reuses) the token stores once, on one process: one store per file list, exactly the stores
        # that setup() opens (a store is keyed by its whole list of files).
        start = time.perf_counter()
        cfg = self.config
        for paths in (cfg.fasta, cfg.val_fasta):
            if paths:
                cached_store(cfg.resolved_fasta(paths), cache_dir=cfg.cache_dir, progress=self.progress)
        self.prepare_seconds += time.perf_counter() - start

    def _store(self, paths: list[Path]) -> GenomeStore:
        return cached_store(paths, cache_dir=self.config.cache_dir, progress=False)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        start = time.perf_counter()
        self._plan_datasets()
        self.prepare_seconds += time.perf_counter() - start

    def _plan_datasets(self) -> None:
        cfg = self.config
        store = self._store(cfg.resolved_fasta(cfg.fasta))
        if cfg.split == "fraction":
            split = split_by_fraction(store, cfg.val_fraction, cfg.test_fraction)
        elif cfg.split == "contigs":
            split = split_by_contigs(store, val=_resolve_setting(store, "val_contigs", cfg.val_contigs),
                                     test=_resolve_setting(store, "test_contigs", cfg.test_contigs))
        else:
            split = split_by_files(store, val=self._store(cfg.resolved_fasta(cfg.val_fasta)))
        self.split: Split = split
        if cfg.split == "fraction" and not split.val:  # every held-out tail rounds to no base (contigs of a few bp)
            raise ValueError(f"data.val_fraction={cfg.val_fraction} holds out no base of any contig (the longest is "
                             f"{max(store.contigs.values()):,} bp); raise data.val_fraction")
        for name in ("train", "val", "test"):
            segments = split[name]
            if not segments:
                continue
            contig_lengths = split.store(name).contigs
            longest = max(contig_lengths[s.contig] for s in segments)
            short = [s for s in segments if contig_lengths[s.contig] < self.seq_len]
            if short and not cfg.pad and len(short) < len(segments):
                # plan_windows leaves them out (a plasmid must not stop a chromosome's run); say so, once.
                print(f"data: {len(short):,} {name} segment(s), {sum(s.length for s in short):,} bp, lie on contigs "
                      f"shorter than the {self.seq_len:,}-bp context and are left out (data.pad=true pads them "
                      "with N)")
            windows = plan_windows(
                split.store(name), segments, self.seq_len, max_n_fraction=cfg.max_n_fraction,
                segment_length=cfg.segment_length, pad=cfg.pad,
            )
            if name != "train" and cfg.max_val_windows is not None and len(windows) > cfg.max_val_windows:
                keep = np.linspace(0, len(windows) - 1, cfg.max_val_windows).round().astype(np.int64)
                windows = windows[keep]
            if len(windows) == 0:
                raise ValueError(
                    f"no {name} windows of length {self.seq_len:,}: the longest {name} contig is {longest:,} bp, or "
                    f"the windows hold too much N (data.max_n_fraction={cfg.max_n_fraction}); lower the context "
                    "or set data.pad=true"
                )
            rc_prob = cfg.rc_prob if name == "train" else 0.0
            self.datasets[name] = WindowDataset(
                split.store(name), windows, self.seq_len, reverse_complement_prob=rc_prob, seed=cfg.seed
            )

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[name]
        distributed = self.trainer is not None and self.trainer.world_size > 1
        sampler = None
        if name == "train":
            # The order is drawn from (data.seed, epoch) alone, on one device or many (each rank then sees a disjoint
            # shard); Lightning calls set_epoch on it, and checkpoints the loader's place (see ResumableLoader).
            world, rank = (self.trainer.world_size, self.trainer.global_rank) if distributed else (1, 0)
            sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.config.seed,
                                       drop_last=shuffle and distributed)
            shuffle = False
        elif distributed:
            sampler = DistributedSampler(dataset, shuffle=shuffle, seed=self.config.seed, drop_last=shuffle)
            shuffle = False
        loader_class = ResumableLoader if name == "train" else DataLoader
        loader = loader_class(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.config.num_workers,
            drop_last=name == "train" and len(dataset) >= self.batch_size,
            persistent_workers=self.config.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
        loader.datamodule = self
        return loader

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.datasets else "val", shuffle=False)


class ResumableSampler(DistributedSampler):
    """DistributedSampler's shuffle (a permutation drawn from seed + epoch alone, so a resumed run draws the same one),
    which can start an epoch part-way: after :attr:`resume_at` is set to ``(epoch, samples)``, the next pass over that
    epoch leaves out its first ``samples`` indices (those of the batches trained before the checkpoint), unless that
    is all of them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_at: tuple[int, int] | None = None

    def __iter__(self):
        indices = list(super().__iter__())
        if self.resume_at is not None:
            epoch, done = self.resume_at
            self.resume_at = None
            # A checkpoint of an epoch's last batch leaves nothing of it: Lightning then ends that epoch without
            # training on what it fetched, as with any loader, and an empty pass would end it twice.
            if epoch == self.epoch and done < len(indices):
                indices = indices[done:]
        return iter(indices)


class ResumableLoader(DataLoader):
    """The training loader, whose place in its epoch Lightning saves in checkpoints (``state_dict``) and restores on
    resume (``load_state_dict``), so that a run resumed mid-epoch trains on the batches the uninterrupted run would
    have. Counted from Lightning's own progress, not from what the loader has handed out: the trainer fetches a batch
    ahead, and worker processes further still.

    ``datamodule`` (set after construction, so that Lightning can rebuild the loader from its arguments if it must)
    gives the trainer.
    """

    datamodule: GenomeDataModule | None = None

    def state_dict(self) -> dict:
        trainer = self.datamodule.trainer if self.datamodule is not None else None
        if trainer is None:
            return {}
        return {"epoch": trainer.current_epoch, "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        if not state or not isinstance(self.sampler, ResumableSampler):
            return
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # saved on the epoch's last batch: the resumed run starts the next epoch
            epoch, batches = epoch + 1, 0
        # Lightning makes the resumed epoch's iterator, and fetches its first batch, before it calls set_epoch and
        # the epoch-start hooks (EpochSeeder: the windows' strand draws), so both epochs are set here.
        self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self.sampler.resume_at = (epoch, batches * self.batch_size)


def _resolve_setting(store: GenomeStore, setting: str, names: list[str]) -> list[str]:
    """The store's spelling of each contig a setting names ('chr1' for '1', 'MT' for 'chrM'), or one line that names
    the setting and the contigs the store has."""
    try:
        return [resolve_contig(store, name) for name in names]
    except UnknownContigError as err:
        raise UnknownContigError(f"data.{setting}: {err}") from None
