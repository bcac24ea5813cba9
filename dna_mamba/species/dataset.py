"""Prepared species datasets: one genome store per genome, train / val / test segments that do not leak.

``prepare_species(manifest, out_dir)`` writes::

    out_dir/species.json        classes, genomes, the split method and every genome's segments per part
    out_dir/stores/<genome>/    one genome store per FASTA file (see dna_mamba.data.store)

Split methods (``SplitConfig.method``):

- ``genome``: whole genomes (e.g. strains) are held out for testing: those the manifest marks ``test``, else the
  last genome of each class. Validation uses genomes marked ``val``, else the tail ``val_fraction`` of every
  contig of the training genomes (never trained on).
- ``contig``: whole contigs of each class are held out until ``test_fraction`` of the class's bases is reached
  (contigs taken in a seeded, name-hashed order); validation as for ``genome``.
- ``region``: each contig is cut into train ``[0, a)``, val ``[a, b)`` and test ``[b, end)`` (fractions of its
  length), for genomes with no strains, such as one assembly per species.
- ``auto``: ``genome`` when the manifest assigns splits or every class has two genomes or more, else ``region``.

Windows never cross parts: evaluation windows tile val / test segments at least one window long (or, with an
evaluation stride shorter than the window, overlap inside them), and training windows start at random offsets
inside training segments at least one window long, so no base of a held-out genome, contig or region is ever in
a training window.

Nor does a copy of it: two manifest entries with the same sequence (a gzip copy, another line width, renamed
records) are refused once their stores are built, and a single contig found in two places (say, one plasmid in two
genomes) whose copies are split or labelled differently is reported with a warning.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dna_mamba.data.splits import Segment, add_tail_split
from dna_mamba.data.store import INDEX_NAME as STORE_INDEX_NAME
from dna_mamba.data.store import GenomeStore, StoreError, build_store
from dna_mamba.data.windows import plan_windows
from dna_mamba.outputs import atomic_output, remove_stale_work_dirs, work_dir_target
from dna_mamba.species.manifest import PARTS, GenomeEntry, Manifest, ManifestError, read_manifest
from dna_mamba.tokenizer import reverse_complement

DATASET_FORMAT = "dna_mamba.species_dataset"
DATASET_VERSION = 2  # 2: contig digests in the index; datasets of version 1 were never checked for copied genomes
INDEX_NAME = "species.json"
SPLIT_METHODS = ("auto", "genome", "contig", "region")


@dataclass(frozen=True)
class SplitConfig:
    """How a manifest's genomes become train / val / test segments (see the module docstring)."""

    method: str = "auto"
    val_fraction: float = 0.05  # held-out tail of training contigs for validation (genome, contig and region)
    test_fraction: float = 0.2  # share of each class (contig) or of each contig (region) held out for testing
    seed: int = 0  # order in which the contig method holds out contigs

    def __post_init__(self) -> None:
        # Named as users set them: task.* when training, --* on the command line.
        if self.method not in SPLIT_METHODS:
            raise ValueError(f"task.split (--split) must be one of {', '.join(SPLIT_METHODS)}, got {self.method!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"task.val_fraction (--val-fraction) must be in [0, 1), got {self.val_fraction}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"task.test_fraction (--test-fraction) must be in (0, 1), got {self.test_fraction}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"task.val_fraction + task.test_fraction must be below 1, got "
                             f"{self.val_fraction + self.test_fraction}")


@dataclass(frozen=True)
class PreparedGenome:
    """One genome of a prepared dataset: its class, its store and its segments in each part."""

    name: str
    label: str
    class_index: int
    fasta: str
    store: str  # store directory, relative to the dataset directory
    segments: dict[str, list[Segment]]


def resolve_method(manifest: Manifest, method: str) -> str:
    """The split method ``auto`` stands for, given the manifest."""
    if method != "auto":
        return method
    if manifest.has_parts or all(len(g) >= 2 for g in manifest.by_label().values()):
        return "genome"
    return "region"


def split_segments(manifest: Manifest, contigs: list[dict[str, int]], config: SplitConfig) -> list[dict[str, list]]:
    """Segments of each genome in each part.

    Args:
        manifest: the genomes.
        contigs: for each genome (manifest order), contig name → length in file order.
        config: the split method and fractions.

    Returns:
        For each genome, ``{"train": [...], "val": [...], "test": [...]}`` lists of :class:`Segment`.

    Raises:
        ManifestError: the method cannot split this manifest (a class with one genome under ``genome``, one contig
            under ``contig``, or split assignments in the manifest under ``contig`` / ``region``).
    """
    method = validate_split(manifest, config)
    parts: list[dict[str, list]] = [{p: [] for p in PARTS} for _ in manifest.genomes]
    index = {id(g): i for i, g in enumerate(manifest.genomes)}
    for label, genomes in manifest.by_label().items():
        members = [index[id(g)] for g in genomes]
        if method == "genome":
            _split_genomes(manifest.source, label, [manifest.genomes[i] for i in members], members, contigs,
                           parts, config)
        elif method == "contig":
            _split_contigs(label, members, manifest, contigs, parts, config)
        else:
            for i in members:
                for contig, length in contigs[i].items():
                    add_tail_split(parts[i], contig, length, config.val_fraction, config.test_fraction)
    return parts


def validate_split(manifest: Manifest, config: SplitConfig) -> str:
    """Check what can be checked before any store is built; returns the resolved method.

    Raises:
        ManifestError: split assignments in the manifest under a method other than ``genome``, or (``genome``) a
            class with no genome to hold out or none to train on.
    """
    method = resolve_method(manifest, config.method)
    if method != "genome" and manifest.has_parts:
        raise ManifestError(f"{manifest.source}: the manifest assigns genomes to splits, which only split=genome "
                            f"uses; drop the split column or use split=genome")
    if method == "genome":
        for label, genomes in manifest.by_label().items():
            _genome_roles(manifest.source, label, genomes)
    return method


def _genome_roles(source: Path, label: str, genomes: list) -> list[str]:
    """train / val / test of each genome of a class: the manifest's, and the last unassigned genome as test."""
    roles = [g.part for g in genomes]
    automatic = None
    if "test" not in roles:
        free = [k for k, role in enumerate(roles) if role is None]
        if len(genomes) < 2:
            raise ManifestError(f"{source}: class '{label}' has a single genome, so none can be held out for testing "
                                f"while another trains: add a genome of the class, or use split=region")
        if not free:
            raise ManifestError(f"{source}: class '{label}' has no genome to hold out for testing: all are marked "
                                f"train or val; mark one 'test' or leave one unmarked")
        automatic = free[-1]
        roles[automatic] = "test"
    roles = [role or "train" for role in roles]
    if "train" not in roles:
        held = ", ".join(f"{g.name} {role}" + (" (the last unmarked genome)" if k == automatic else "")
                         for k, (g, role) in enumerate(zip(genomes, roles, strict=True)))
        raise ManifestError(f"{source}: class '{label}' has no training genome ({held}); add a genome or mark one "
                            f"'train'")
    return roles


def _split_genomes(source, label, genomes, members, contigs, parts, config) -> None:
    roles = _genome_roles(source, label, genomes)
    has_val_genome = "val" in roles
    for i, role in zip(members, roles, strict=True):
        for contig, length in contigs[i].items():
            if role == "train" and not has_val_genome:
                add_tail_split(parts[i], contig, length, config.val_fraction, 0.0)
            else:
                parts[i][role].append(Segment(contig, 0, length))


def _split_contigs(label, members, manifest, contigs, parts, config) -> None:
    pool = [(i, contig, length) for i in members for contig, length in contigs[i].items()]
    if len(pool) < 2:
        raise ManifestError(f"class '{label}' has a single contig, so none can be held out: split=contig needs "
                            f"two or more per class; use split=region")

    def order(item: tuple[int, str, int]) -> str:  # stable under reordering of the manifest or the FASTA
        return hashlib.sha256(f"{config.seed}:{manifest.genomes[item[0]].name}:{item[1]}".encode()).hexdigest()

    pool.sort(key=order)
    target = config.test_fraction * sum(length for *_, length in pool)
    held = 0
    for k, (i, contig, length) in enumerate(pool):
        if held < target and k < len(pool) - 1:  # the last contig always trains
            parts[i]["test"].append(Segment(contig, 0, length))
            held += length
        else:
            add_tail_split(parts[i], contig, length, config.val_fraction, 0.0)


def _acceptable_starts(store: GenomeStore, contig: str, first: int, last: int, window: int, limit: int) -> np.ndarray:
    """Runs ``[lo, hi]`` (inclusive, disjoint, in order) of the window starts from ``first`` to ``last`` whose
    ``window`` bases hold at most ``limit`` N.

    The N count of ``[s, s + window)`` is piecewise linear in ``s``: it bends only where the window's start or end
    meets an edge of an N run. Counting N at those points and solving each linear piece between them is exact, at a
    cost set by the number of N runs rather than by the contig's length.

    Shapes:
        returns: (K, 2) int64.
    """
    edges = store.n_runs(contig).ravel()
    bends = np.concatenate([edges, edges - window])
    points = np.unique(np.concatenate([[first, last + 1], bends[(bends > first) & (bends <= last)]]))
    p, q = points[:-1], points[1:] - 1  # pieces [p, q]: the count is linear on each
    at_p = store.count_n(contig, p, p + window)
    at_q = store.count_n(contig, q, q + window)
    slope = (at_q - at_p) // np.maximum(q - p, 1)  # exact: the count changes by the same integer at every step
    lo, hi = p.copy(), q.copy()
    rising, falling = slope > 0, slope < 0
    hi[rising] = np.minimum(q, p + (limit - at_p) // np.where(rising, slope, 1))[rising]
    lo[falling] = np.maximum(p, q - (limit - at_q) // np.where(falling, -slope, 1))[falling]
    keep = np.where(slope == 0, at_p <= limit, lo <= hi)
    lo, hi = lo[keep], hi[keep]
    if len(lo) == 0:
        return np.empty((0, 2), dtype=np.int64)
    joined = lo[1:] == hi[:-1] + 1  # neighbouring pieces that are both acceptable where they meet
    return np.column_stack([lo[np.concatenate([[True], ~joined])], hi[np.concatenate([~joined, [True]])]])


class SpeciesDataset:
    """A prepared species dataset (open with :meth:`open`; build with :func:`prepare_species`)."""

    def __init__(self, directory: Path, classes: list[str], genomes: list[PreparedGenome], split: dict):
        self.directory = directory
        self.classes = classes
        self.genomes = genomes
        self.split = split
        self._stores: dict[int, GenomeStore] = {}

    @classmethod
    def open(cls, directory: str | os.PathLike) -> SpeciesDataset:
        """Open a directory written by :func:`prepare_species`.

        Raises:
            StoreError: not a prepared species dataset, or one of another version.
        """
        directory = Path(directory).expanduser().absolute()
        try:
            index = json.loads((directory / INDEX_NAME).read_text())
        except FileNotFoundError:
            raise StoreError(f"{directory}: not a prepared species dataset (no {INDEX_NAME}); build one with "
                             f"`dna-mamba prepare-species`") from None
        except (OSError, ValueError) as err:
            raise StoreError(f"{directory / INDEX_NAME}: unreadable ({err})") from None
        if not isinstance(index, dict) or index.get("format") != DATASET_FORMAT \
                or index.get("version") != DATASET_VERSION:
            raise StoreError(f"{directory}: not a species dataset of version {DATASET_VERSION}; prepare it again")
        try:
            genomes = [
                PreparedGenome(g["name"], g["label"], g["class_index"], g["fasta"], g["store"],
                               {p: [Segment(*s) for s in g["segments"][p]] for p in PARTS})
                for g in index["genomes"]
            ]
            return cls(directory, index["classes"], genomes, index["split"])
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(f"{directory / INDEX_NAME}: malformed species dataset index ({type(err).__name__}: "
                             f"{err}); prepare it again") from None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def store(self, genome: int) -> GenomeStore:
        """The genome store of genome ``genome`` (index into :attr:`genomes`), opened on first use."""
        store = self._stores.get(genome)
        if store is None:
            store = self._stores[genome] = GenomeStore.open(self.directory / self.genomes[genome].store)
        return store

    def bases(self, part: str) -> dict[str, int]:
        """Bases of each class in a part."""
        totals = dict.fromkeys(self.classes, 0)
        for genome in self.genomes:
            totals[genome.label] += sum(s.length for s in genome.segments[part])
        return totals

    def identity(self) -> dict:
        """What makes two runs train and evaluate on the same sequence: the classes (their order is the head's),
        each genome's class and FASTA file, the split settings, and a digest of the segments they gave.

        The digest also tells a changed split column of the manifest, a contig split under another seed, or FASTA
        contigs of other lengths apart. The dataset's directory is left out: a moved prepared dataset, or the same
        manifest prepared anew, holds the same data.
        """
        segments = [{p: [[s.contig, s.start, s.end] for s in g.segments[p]] for p in PARTS} for g in self.genomes]
        return {"classes": list(self.classes),
                "genomes": [f"{g.label}: {g.fasta}" for g in self.genomes],
                "split": self.split["method"], "val_fraction": self.split["val_fraction"],
                "test_fraction": self.split["test_fraction"],
                "segments": hashlib.sha256(json.dumps(segments).encode()).hexdigest()[:16]}

    def train_regions(self, window: int, max_n_fraction: float = 0.1) -> list[list[tuple[int, str, int, int]]]:
        """Per class, runs ``(genome, contig, first start, last start)`` of training window starts: a window that
        starts anywhere in ``[first, last]`` lies inside one training segment and holds at most ``max_n_fraction``
        N, and every such window is in exactly one run.

        Planning them here, once, lets a context or an N threshold that some class cannot meet fail before training,
        and lets training draw a start uniformly from them without redrawing.

        Raises:
            ValueError: ``max_n_fraction`` outside [0, 1]; or a class has no such window: its training segments are
                all shorter than ``window``, or every window in them has too much N.
        """
        if not 0.0 <= max_n_fraction <= 1.0:
            raise ValueError(f"task.max_n_fraction must be in [0, 1], got {max_n_fraction}")
        limit = math.floor(max_n_fraction * window)  # N counts are integers: n <= f * window  <=>  n <= limit
        regions: list[list[tuple[int, str, int, int]]] = [[] for _ in self.classes]
        longest = [0] * self.num_classes
        for g, genome in enumerate(self.genomes):
            for s in genome.segments["train"]:
                longest[genome.class_index] = max(longest[genome.class_index], s.length)
                if s.length >= window:
                    runs = _acceptable_starts(self.store(g), s.contig, s.start, s.end - window, window, limit)
                    regions[genome.class_index] += [(g, s.contig, int(lo), int(hi)) for lo, hi in runs]
        for c, found in enumerate(regions):
            if not found and longest[c] < window:
                raise ValueError(self._too_short(c, "train", window, longest[c]))
            if not found:
                raise ValueError(self._too_much_n_to_train(c, window, max_n_fraction))
        return regions

    def _too_much_n_to_train(self, c: int, window: int, max_n_fraction: float) -> str:
        genomes = [(g, genome) for g, genome in enumerate(self.genomes) if genome.class_index == c]
        bases = n = 0
        for g, genome in genomes:
            for s in genome.segments["train"]:
                bases += s.length
                n += int(self.store(g).count_n(s.contig, s.start, s.end))
        names = [genome.name for _, genome in genomes if genome.segments["train"]]
        in_genomes = f"genome{'s' if len(names) > 1 else ''} {', '.join(names)}"
        return (f"class '{self.classes[c]}': every {window:,}-bp training window has more than {max_n_fraction:.0%} N "
                f"(task.max_n_fraction), so none of its training sequence is usable ({bases:,} bp in {in_genomes}, "
                f"{n / bases:.0%} N); raise task.max_n_fraction or use a shorter context")

    def eval_windows(self, part: str, window: int, *, per_class: int | None = None, max_n_fraction: float = 0.1,
                     required: bool = True, stride: int | None = None) -> EvalWindows:
        """Fixed windows inside a part's segments, at most ``per_class`` per class.

        Windows start every ``stride`` bases of each segment at least ``window`` long and end inside it; the
        default (``stride`` = ``window``) tiles the segments without overlap. A shorter stride draws more windows
        from a small held-out set; they overlap, so they lower the variance that window placement adds but are
        not independent samples. A class with more than ``per_class`` windows keeps an evenly spaced subset
        (deterministic, spread over all its genomes).

        Raises:
            ValueError: ``stride`` is not an integer from 1 to ``window``; or (when ``required``) a class has no
                window in this part: its segments are all shorter than ``window`` or too rich in N.
        """
        rows = []
        for c in range(self.num_classes):
            found, longest = [], 0
            for g, genome in enumerate(self.genomes):
                if genome.class_index != c:
                    continue
                segments = [s for s in genome.segments[part] if s.length >= window]
                longest = max([longest] + [s.length for s in genome.segments[part]])
                planned = plan_windows(self.store(g), segments, window, max_n_fraction=max_n_fraction,
                                       stride=stride)
                found.append(np.column_stack([np.full(len(planned), g), planned]))
            windows = np.concatenate(found) if found else np.empty((0, 3), dtype=np.int64)
            if len(windows) == 0:
                if required and longest < window:
                    raise ValueError(self._too_short(c, part, window, longest))
                if required:
                    raise ValueError(f"class '{self.classes[c]}': every {window:,}-bp {part} window has more than "
                                     f"{max_n_fraction:.0%} N; raise task.max_n_fraction or use a shorter context")
                continue
            if per_class is not None and len(windows) > per_class:
                windows = windows[np.unique(np.linspace(0, len(windows) - 1, per_class).round().astype(np.int64))]
            rows.append(np.column_stack([windows, np.full(len(windows), c)]))
        table = np.concatenate(rows).astype(np.int64) if rows else np.empty((0, 4), dtype=np.int64)
        return EvalWindows(table[:, 0], table[:, 1], table[:, 2], table[:, 3], window, stride or window)

    def _too_short(self, c: int, part: str, window: int, longest: int) -> str:
        word = "training" if part == "train" else part
        where = {"genome": "genomes", "contig": "contigs"}.get(self.split["method"], "regions")
        return (f"class '{self.classes[c]}': no {word} sequence is as long as the {window:,}-bp context (longest: "
                f"{longest:,} bp in its {word} {where}); {self._fraction_hint(c, part)}use a shorter context")

    def _fraction_hint(self, c: int, part: str) -> str:
        """The split setting that would lengthen class ``c``'s sequence in ``part``, where one would."""
        region = self.split["method"] == "region"
        # Validation cut as the tail of training contigs (rather than whole genomes marked val) costs training.
        val_from_tails = any(g.segments["train"] and g.segments["val"] for g in self.genomes if g.class_index == c)
        if part == "train" and region:
            return "lower --val-fraction and --test-fraction (task.val_fraction, task.test_fraction) or "
        if part == "train" and val_from_tails:
            return "lower --val-fraction (task.val_fraction) or "
        if part == "val" and (region or val_from_tails):
            return "raise --val-fraction (task.val_fraction) or "
        if part == "test" and region:
            return "raise --test-fraction (task.test_fraction) or "
        return ""  # whole genomes or contigs: no fraction makes one longer

    def describe(self) -> str:
        """A table of classes, genomes and bases per part."""
        lines = [f"{'class':<16} {'genomes':>7} " + " ".join(f"{p + ' bp':>14}" for p in PARTS)]
        per_part = {p: self.bases(p) for p in PARTS}
        for c, label in enumerate(self.classes):
            count = sum(g.class_index == c for g in self.genomes)
            lines.append(f"{label:<16} {count:>7} " + " ".join(f"{per_part[p][label]:>14,}" for p in PARTS))
        lines.append(f"split: {self.split['method']} (val_fraction {self.split['val_fraction']}, "
                     f"test_fraction {self.split['test_fraction']})")
        return "\n".join(lines)


@dataclass(frozen=True)
class EvalWindows:
    """Fixed evaluation windows: genome index, contig index (into that genome's store), start, class index.

    ``stride`` is the spacing they were planned at inside a segment: ``window`` when they do not overlap.

    Shapes:
        genome, contig, start, label: (M,) int64.
    """

    genome: np.ndarray
    contig: np.ndarray
    start: np.ndarray
    label: np.ndarray
    window: int
    stride: int

    def __len__(self) -> int:
        return len(self.start)

    def per_class(self, num_classes: int) -> list[int]:
        return np.bincount(self.label, minlength=num_classes).tolist()


class _EpochMixin:
    """Per-item random draws from ``(seed, epoch, index)``, with the epoch in shared memory for workers."""

    def _init_epoch(self, seed: int) -> None:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.seed = seed
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Select the draws of an epoch (called by ``EpochSeeder`` before each training epoch)."""
        self._epoch[0] = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, int(self._epoch[0]), index))


@dataclass(frozen=True)
class WindowDraw:
    """Where a training item comes from: class, genome index, contig, start and strand."""

    label: int
    genome: int
    contig: str
    start: int
    reverse: bool


class BalancedWindowDataset(_EpochMixin, Dataset):
    """Training windows at random offsets, the same number from every class.

    Item ``i`` belongs to class ``i % num_classes`` (so every batch is balanced); its start is drawn uniformly from
    the class's training window starts with at most ``max_n_fraction`` N (planned up front by
    :meth:`SpeciesDataset.train_regions`, so a draw cannot fail); a window is reverse-complemented with probability
    ``reverse_complement_prob`` (both strands).

    Shapes:
        item: ``(tokens (window,) int64, label () int64)``.
    """

    def __init__(self, dataset: SpeciesDataset, window: int, *, num_samples: int, seed: int = 0,
                 reverse_complement_prob: float = 0.5, max_n_fraction: float = 0.1):
        if num_samples < 0:
            raise ValueError(f"num_samples must be non-negative, got {num_samples}")
        if not 0.0 <= reverse_complement_prob <= 1.0:
            raise ValueError(f"task.rc_prob (reverse_complement_prob) must be in [0, 1], got {reverse_complement_prob}")
        self._init_epoch(seed)
        self.dataset = dataset
        self.window = window
        self.num_samples = num_samples
        self.reverse_complement_prob = reverse_complement_prob
        self.max_n_fraction = max_n_fraction
        self.regions = dataset.train_regions(window, max_n_fraction)
        # A run is drawn in proportion to its starts, then a start in it: uniform over all acceptable starts.
        self._weights = [np.cumsum([last - first + 1 for _, _, first, last in r], dtype=np.int64)
                         for r in self.regions]

    def __len__(self) -> int:
        return self.num_samples

    def locate(self, index: int) -> WindowDraw:
        """The window item ``index`` reads (in the current epoch), without reading it."""
        label = index % self.dataset.num_classes
        rng = self._rng(index)
        regions, weights = self.regions[label], self._weights[label]
        genome, contig, first, last = regions[int(np.searchsorted(weights, rng.integers(weights[-1]), side="right"))]
        start = int(rng.integers(first, last, endpoint=True))
        return WindowDraw(label, genome, contig, start, bool(rng.random() < self.reverse_complement_prob))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        draw = self.locate(index)
        ids = self.dataset.store(draw.genome).fetch(draw.contig, draw.start, draw.start + self.window)
        if draw.reverse:
            ids = reverse_complement(ids)
        return torch.from_numpy(ids.astype(np.int64)), torch.tensor(draw.label)


class EvalWindowDataset(Dataset):
    """Fixed evaluation windows, forward strand (evaluation adds the reverse complement itself).

    Shapes:
        item: ``(tokens (window,) int64, label () int64)``.
    """

    def __init__(self, dataset: SpeciesDataset, windows: EvalWindows):
        self.dataset = dataset
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.windows
        store = self.dataset.store(int(w.genome[index]))
        start = int(w.start[index])
        ids = store.fetch(store.names[int(w.contig[index])], start, start + w.window)
        return torch.from_numpy(ids.astype(np.int64)), torch.tensor(int(w.label[index]))


def prepare_species(manifest: Manifest | str | os.PathLike, out_dir: str | os.PathLike, *,
                    split: SplitConfig | None = None, data_root: str | os.PathLike | None = None,
                    progress: bool = True) -> SpeciesDataset:
    """Build (or reuse) one genome store per genome and write the split to ``out_dir/species.json``.

    Stores already in ``out_dir`` built from the same, unchanged FASTA files are kept.

    Args:
        manifest: a :class:`Manifest`, a manifest file or a shipped example name.
        out_dir: dataset directory: absent, empty, or a previous species dataset.
        split: how to split (default :class:`SplitConfig`).
        data_root: folder relative FASTA paths are relative to (when ``manifest`` is not yet read).
        progress: progress bars for large FASTA files.

    Raises:
        ManifestError: a bad manifest, or a split the manifest does not allow.
        FastaFormatError, InvalidSequenceError: a malformed FASTA file.
        StoreError: ``out_dir`` holds something other than a species dataset.
    """
    split = split or SplitConfig()
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest, data_root)
    validate_split(manifest, split)  # before building stores: a bad split should cost no parsing
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not _is_dataset_dir(out):
        raise StoreError(f"{out}: exists and is not a species dataset; refusing to write into it")
    stores = []
    for genome in manifest.genomes:
        directory = out / "stores" / genome.name
        try:
            store = GenomeStore.open(directory)
        except StoreError:
            store = None
        if store is None or not store.matches([genome.path]):
            store = build_store([genome.path], directory, progress=progress)
        stores.append(store)
    _remove_stale_stores(out / "stores", {g.name for g in manifest.genomes})
    digests = _contig_digests(stores, _recorded_digests(out))
    _refuse_copies(manifest, digests)
    segments = split_segments(manifest, [s.contigs for s in stores], split)
    _warn_about_shared_contigs(manifest, stores, digests, segments)
    classes = manifest.labels
    index = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "manifest": str(manifest.source),
        "classes": classes,
        "split": {**asdict(split), "method": resolve_method(manifest, split.method)},
        "genomes": [
            {"name": g.name, "label": g.label, "class_index": classes.index(g.label), "fasta": str(g.path),
             "store": f"stores/{g.name}", "store_index_digest": digest[0], "contig_digests": digest[1],
             "segments": {p: [[s.contig, s.start, s.end] for s in parts[p]] for p in PARTS}}
            for g, parts, digest in zip(manifest.genomes, segments, digests, strict=True)
        ],
    }
    with atomic_output(out / INDEX_NAME) as tmp:
        tmp.write_text(json.dumps(index, indent=1) + "\n")
    return SpeciesDataset.open(out)


# (digest of the store's index, {contig: digest of its tokens}) of one genome.
_Digests = tuple[str, dict[str, str]]


def _contig_digests(stores: list[GenomeStore], recorded: dict[str, _Digests]) -> list[_Digests]:
    """A digest of each contig's tokens, for each store: the same whatever the record names, line width, case or
    compression of the FASTA file, so copies are found however they were written.

    Hashing reads every base, so digests are reused from the previous index (``recorded``, by store directory)
    while the store's own index is unchanged, which it is unless the store was rebuilt. Contigs that hold no sequence
    (empty, or all N) are left out: they are alike without being copies.
    """
    found = []
    for store in stores:
        key = hashlib.sha256((store.directory / STORE_INDEX_NAME).read_bytes()).hexdigest()[:16]
        previous = recorded.get(store.directory.name)
        if previous is not None and previous[0] == key:
            found.append(previous)
            continue
        contigs = {name: hashlib.sha256(store.array(name)).hexdigest()[:32] for name in store.names
                   if store.info(name).n_count < store.length(name)}
        found.append((key, contigs))
    return found


def _recorded_digests(out: Path) -> dict[str, _Digests]:
    """Digests in an earlier index of ``out``, by store directory name; none when there is no readable one."""
    try:
        index = json.loads((out / INDEX_NAME).read_text())
        return {Path(g["store"]).name: (g["store_index_digest"], g["contig_digests"]) for g in index["genomes"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _where(manifest: Manifest, genome: GenomeEntry) -> str:
    return genome.where or str(manifest.source)


def _refuse_copies(manifest: Manifest, digests: list[_Digests]) -> None:
    """Refuse two manifest entries holding the same genome (the same contig sequences, in any order or names).

    :func:`read_manifest` finds the same file and byte-identical copies before anything is built; a gzip copy, or
    one written at another line width, is only found here, from the sequence.

    Raises:
        ManifestError: naming both entries; a copy under one label would put one genome in two parts (its test
            windows would be training data), a copy under two labels would teach two classes the same sequence.
    """
    seen: dict[tuple[str, ...], GenomeEntry] = {}
    for genome, (_, contigs) in zip(manifest.genomes, digests, strict=True):
        other = seen.setdefault(tuple(sorted(contigs.values())), genome)
        if other is genome:
            continue
        where = _where(manifest, genome)
        same = f"it holds the same sequence as {other.path} ({_where(manifest, other)})"
        if other.label == genome.label:
            raise ManifestError(f"{where}: {genome.path} is listed twice under label '{genome.label}': {same}; list "
                                f"each genome once")
        raise ManifestError(f"{where}: {genome.path} appears under two labels, '{other.label}' and '{genome.label}': "
                            f"{same}; a genome must belong to one class")


def _warn_about_shared_contigs(manifest: Manifest, stores: list[GenomeStore], digests: list[_Digests],
                               segments: list[dict[str, list[Segment]]]) -> None:
    """Warn about a contig found in two places (e.g. one plasmid in two genomes) whose copies differ in class or
    split: windows of it are then trained on while a copy is held out, or teach two classes the same sequence.

    A warning, not an error: related genomes can truly share a contig, and it is usually a small part of them.
    Copies with the same class and the same split (e.g. under split=region, which cuts both alike) are fine.
    """
    places: dict[str, list[tuple[int, str]]] = {}
    for g, (_, contigs) in enumerate(digests):
        for name, digest in contigs.items():
            places.setdefault(digest, []).append((g, name))

    def role(g: int, name: str) -> tuple:  # class, and which bases of the contig are in which part
        parts = tuple((p, s.start, s.end) for p in PARTS for s in segments[g][p] if s.contig == name)
        return manifest.genomes[g].label, parts

    for copies in places.values():
        if len(copies) < 2 or len({role(g, name) for g, name in copies}) == 1:
            continue
        described = ", ".join(f"'{name}' of {manifest.genomes[g].name} (class {manifest.genomes[g].label}, "
                              f"{'+'.join(dict.fromkeys(p for p, *_ in role(g, name)[1]))})" for g, name in copies)
        labels = {manifest.genomes[g].label for g, _ in copies}
        why = ("two classes share it" if len(labels) > 1 else
               "windows of one copy are trained on while another is held out")
        g, name = copies[0]
        warnings.warn(f"{manifest.source}: the same {stores[g].length(name):,}-bp contig is in {len(copies)} places: "
                      f"{described}; {why}", stacklevel=3)


def _is_dataset_dir(directory: Path) -> bool:
    """An empty directory, or one holding only what prepare_species writes (maybe interrupted before the index)."""
    if not directory.is_dir():
        return False
    return all(child.name in (INDEX_NAME, "stores") or child.name.startswith(f".{INDEX_NAME}.tmp-")
               for child in directory.iterdir())


def _remove_stale_stores(stores_dir: Path, keep: set[str]) -> None:
    """Drop stores of genomes no longer in the manifest, so a dataset directory does not grow without bound.

    Work folders of store builds (``.NAME.tmp-...``) are not stores: one may be another process's build about to be
    renamed into place, so only :func:`remove_stale_work_dirs` (whose owner is gone) removes them.
    """
    if not stores_dir.is_dir():
        return
    for child in stores_dir.iterdir():
        target = work_dir_target(child)
        if target is not None:
            remove_stale_work_dirs(target)
        elif child.is_dir() and child.name not in keep and (child / "index.json").is_file():
            shutil.rmtree(child, ignore_errors=True)


def default_dataset_dir(manifest: Manifest, split: SplitConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a manifest's prepared dataset is cached: ``<cache>/species/<manifest stem>-<hash>``.

    The hash covers the genomes (label, absolute path, split column) and the split settings, so changing either
    prepares a new dataset instead of silently reusing another split. ``cache_dir`` defaults to
    ``$DNA_MAMBA_CACHE`` or ``~/.cache/dna_mamba``.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("DNA_MAMBA_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / \
            "dna_mamba"
    key = json.dumps([[g.label, str(g.path), g.part] for g in manifest.genomes] + [asdict(split)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser() / "species" / f"{manifest.source.stem}-{digest}"
