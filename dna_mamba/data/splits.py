"""Train / validation / test splits of genome stores: by contig list, by held-out fraction of each contig, or by file.

A split is a list of half-open :class:`Segment` intervals per part. Contig and fraction splits draw all parts from
one store; a file split gives each part its own store (built from its own FASTA files), so :class:`Split` keeps the
store of each part beside its segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dna_mamba.data.store import GenomeStore, resolve_contig

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Segment:
    """A half-open interval ``[start, end)`` of one contig (0-based, like BED)."""

    contig: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"segment {self.contig}:{self.start}-{self.end} must satisfy 0 <= start < end")

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class Split:
    """Segments of each part, and the store each part's segments refer to.

    ``split["train"]`` (or ``split.train``) gives the segments; ``split.store("val")`` the store to read them from.
    """

    train: list[Segment]
    val: list[Segment]
    test: list[Segment]
    stores: dict[str, GenomeStore] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError("the split leaves no training data")
        for part in PARTS:
            store = self.stores.get(part)
            if store is None:
                raise ValueError(f"split has no store for part '{part}'")
            for segment in self[part]:
                if segment.end > store.length(segment.contig):
                    raise ValueError(f"{part} segment {segment} extends past the end of contig '{segment.contig}' "
                                     f"({store.length(segment.contig)} bp)")

    def __getitem__(self, part: str) -> list[Segment]:
        if part not in PARTS:
            raise KeyError(f"unknown split part '{part}'; expected one of {PARTS}")
        return getattr(self, part)

    def store(self, part: str) -> GenomeStore:
        """The store that ``part``'s segments index."""
        if part not in PARTS:
            raise KeyError(f"unknown split part '{part}'; expected one of {PARTS}")
        return self.stores[part]

    def lengths(self) -> dict[str, int]:
        """Bases in each part."""
        return {part: sum(s.length for s in self[part]) for part in PARTS}


def whole_contigs(store: GenomeStore, names: Sequence[str] | None = None) -> list[Segment]:
    """One segment per contig (all contigs in file order when ``names`` is None)."""
    names = store.names if names is None else names
    return [Segment(name, 0, store.length(name)) for name in names]


def split_by_contigs(store: GenomeStore, val: Sequence[str | int] | str = (), test: Sequence[str | int] | str = (),
                     train: Sequence[str | int] | str | None = None) -> Split:
    """Hold out whole contigs.

    Args:
        store: the genome.
        val: contigs for validation (a list, or one name); 'chr1' / '1' / 1 and 'chrM' / 'MT' spellings are resolved
            against the store.
        test: contigs for testing.
        train: training contigs; default: every contig not in ``val`` or ``test``.

    Raises:
        UnknownContigError: a name matches no contig.
        ValueError: a contig is in two parts, or no training contig is left.
    """
    val_names = _resolve_all(store, val)
    test_names = _resolve_all(store, test)
    held_out = set(val_names) | set(test_names)
    train_names = [n for n in store.names if n not in held_out] if train is None else _resolve_all(store, train)
    seen: dict[str, str] = {}
    for part, names in (("train", train_names), ("val", val_names), ("test", test_names)):
        for name in names:
            if seen.get(name) == part:
                raise ValueError(f"contig '{name}' is listed twice in the {part} split")
            if name in seen:
                raise ValueError(f"contig '{name}' is in both the {seen[name]} and the {part} split")
            seen[name] = part
    if not train_names:
        raise ValueError(f"the contig split leaves no training contig (store has {len(store)}: {store.names[:5]})")
    return Split(whole_contigs(store, train_names), whole_contigs(store, val_names), whole_contigs(store, test_names),
                 stores=dict.fromkeys(PARTS, store))


def split_by_fraction(store: GenomeStore, val_fraction: float, test_fraction: float = 0.0) -> Split:
    """Hold out the tail of every contig: train ``[0, a)``, val ``[a, b)``, test ``[b, length)``.

    Held-out lengths are ``round(length * fraction)`` per contig; a part that rounds to zero bases on a short
    contig gets no segment there. Windows longer than a held-out tail are anchored inside it but extend into the
    training part (see :func:`~dna_mamba.data.windows.plan_windows`); choose fractions whose tails exceed the
    window length when evaluation must not see training bases.

    Raises:
        ValueError: a fraction outside ``[0, 1)`` or fractions summing to 1 or more.
    """
    for label, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"{label} must be in [0, 1), got {fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}")
    parts: dict[str, list[Segment]] = {part: [] for part in PARTS}
    for name, length in store.contigs.items():
        add_tail_split(parts, name, length, val_fraction, test_fraction)
    return Split(parts["train"], parts["val"], parts["test"], stores=dict.fromkeys(PARTS, store))


def add_tail_split(parts: dict[str, list[Segment]], contig: str, length: int, val_fraction: float,
                   test_fraction: float) -> None:
    """Append one contig's train head, val middle and test tail (empty parts skipped) to ``parts``.

    The test tail is ``round(length * test_fraction)`` bases and the val part the ``round(length * val_fraction)``
    bases before it; fractions are not validated here (:func:`split_by_fraction` does that).
    """
    b = length - round(length * test_fraction)
    a = b - round(length * val_fraction)
    for part, start, end in (("train", 0, a), ("val", a, b), ("test", b, length)):
        if end > start:
            parts[part].append(Segment(contig, start, end))


def split_by_files(train: GenomeStore, val: GenomeStore | None = None, test: GenomeStore | None = None) -> Split:
    """One store per part (e.g. training strains vs held-out strains): every contig of each store, whole.

    Parts given no store are empty (their store defaults to the training store).
    """
    stores = {"train": train, "val": val or train, "test": test or train}
    return Split(whole_contigs(train), whole_contigs(val) if val is not None else [],
                 whole_contigs(test) if test is not None else [], stores=stores)


def _resolve_all(store: GenomeStore, names: Sequence[str | int] | str | int) -> list[str]:
    if isinstance(names, str | int):  # a bare string would otherwise be split into characters
        names = [names]
    # YAML and Hydra read a bare 1 as an integer: contig 1 is the '1' (or 'chr1') of the store.
    return [resolve_contig(store, str(name)) for name in names]
