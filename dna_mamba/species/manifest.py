"""Species manifests: which FASTA files belong to which class, and (optionally) which split each genome is in.

Two formats, chosen by the file extension:

TSV (``.tsv``, ``.txt``; tab-separated, or whitespace-separated when a line has no tab)::

    # label   path                              split (optional: train, val or test)
    label     path                              split
    E_coli    species/bacteria/E_Coli/DH1.fa.gz test
    E_coli    species/bacteria/E_Coli/MG1655-K12.fa.gz

YAML (``.yaml``, ``.yml``): a mapping from label to a list of paths, where an entry may also be a mapping
``{path: ..., split: test}``; optionally nested under a top-level ``genomes:`` key.

Relative paths are looked up under ``data_root`` when one is given, else under ``$DNA_MAMBA_DATA`` when set, then
next to the manifest; the examples shipped in the package (``bacteria``, ``drosophila_chr4``) also look in
``<repository>/../shared/data``, where a development checkout keeps the shared data.

Everything a user can get wrong fails here, with one line, before any store is built or model trained: a missing
file, fewer than two classes, a label with no file or listed twice, a FASTA listed under two labels. Copies that
differ in bytes (gzip, another line width, other record names) are only found from their sequence, once the stores
are built (:func:`dna_mamba.species.dataset.prepare_species`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

PARTS = ("train", "val", "test")
DATA_ROOT_ENV = "DNA_MAMBA_DATA"
EXAMPLES = ("bacteria", "drosophila_chr4")
_YAML_SUFFIXES = (".yaml", ".yml")
# A TSV line without tabs is split at runs of spaces, so a path with a space in it becomes two columns.
_SPACES_HINT = ("; columns are tab-separated (a line without tabs is split at spaces), so a path with spaces needs "
                "tabs between the columns")


class ManifestError(ValueError):
    """A manifest is missing or malformed, or describes an unusable classification problem."""


@dataclass(frozen=True)
class GenomeEntry:
    """One genome (FASTA file) of a class.

    Attributes:
        label: class name.
        path: absolute path of the FASTA file (plain, gzip or bgzip; any number of contigs).
        part: ``"train"``, ``"val"`` or ``"test"`` when the manifest assigns one, else None (the split decides).
        name: a short name, unique in the manifest (the file name without FASTA/compression suffixes).
        where: the manifest line (``m.tsv:3``) or entry (``m.yaml: label 'A'``) it was read from, for error
            messages; empty for entries made in code.
    """

    label: str
    path: Path
    part: str | None
    name: str
    where: str = ""


@dataclass(frozen=True)
class Manifest:
    """The genomes of a species-classification problem, grouped by class in order of first appearance."""

    source: Path
    genomes: tuple[GenomeEntry, ...]

    @property
    def labels(self) -> list[str]:
        """Class names, in order of first appearance (class index = position in this list)."""
        return list(dict.fromkeys(g.label for g in self.genomes))

    def by_label(self) -> dict[str, list[GenomeEntry]]:
        """Genomes of each class, in manifest order."""
        grouped: dict[str, list[GenomeEntry]] = {label: [] for label in self.labels}
        for genome in self.genomes:
            grouped[genome.label].append(genome)
        return grouped

    @property
    def has_parts(self) -> bool:
        """Whether the manifest assigns any genome to a split."""
        return any(g.part is not None for g in self.genomes)


def example_manifest(name: str) -> Path:
    """Path of a manifest shipped with the package (``bacteria`` or ``drosophila_chr4``)."""
    if name not in EXAMPLES:
        raise ManifestError(f"unknown example manifest {name!r}; shipped examples: {', '.join(EXAMPLES)}")
    return Path(str(resources.files("dna_mamba.resources") / "species" / f"{name}.tsv"))


def _shared_data_root() -> Path:
    # Development checkouts keep the shared data beside the repository (<repo>/../shared/data).
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def read_manifest(manifest: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Manifest:
    """Read and validate a manifest.

    Args:
        manifest: a TSV or YAML file, or the name of a shipped example (``bacteria``, ``drosophila_chr4``).
        data_root: folder that relative FASTA paths are relative to (default: ``$DNA_MAMBA_DATA``, then the
            manifest's folder, then, for the shipped examples, ``<repository>/../shared/data``).

    Raises:
        ManifestError: missing manifest or FASTA, malformed line, unknown split, a label with no file, the same
            FASTA twice (under one label or two), or fewer than two classes.
    """
    path = Path(manifest).expanduser()
    roots: list[Path]
    if not path.exists() and str(manifest) in EXAMPLES:
        path = example_manifest(str(manifest))
        shipped = True
    else:
        shipped = False
    if path.is_dir():
        raise ManifestError(f"{manifest}: is a directory; a species manifest is a TSV or YAML file")
    if not path.is_file():
        raise ManifestError(f"{manifest}: species manifest not found (a TSV or YAML file, or a shipped example: "
                            f"{', '.join(EXAMPLES)})")
    if data_root is not None:
        roots = [Path(data_root).expanduser()]
    else:
        roots = [Path(os.environ[DATA_ROOT_ENV]).expanduser()] if os.environ.get(DATA_ROOT_ENV) else []
        roots.append(path.parent)
        if shipped:
            roots.append(_shared_data_root())
    rows = _read_yaml(path) if path.suffix.lower() in _YAML_SUFFIXES else _read_tsv(path)
    return _validate(path, rows, roots, explicit_root=data_root is not None)


# (where, label, path text, split text or None): "where" names the line or entry in error messages.
_Row = tuple[str, str, str, str | None]


def _read_tsv(path: Path) -> list[_Row]:
    rows: list[_Row] = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: spreadsheet exports start with a BOM
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: cannot read manifest ({err})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
        while fields and not fields[-1]:
            fields.pop()  # trailing tabs
        if [f.lower() for f in fields[:2]] == ["label", "path"]:
            continue  # header
        where = f"{path}:{number}"
        if len(fields) == 1:
            raise ManifestError(f"{where}: label '{fields[0]}' has no FASTA file (expected: label, path[, split])")
        hint = _SPACES_HINT if "\t" not in line else ""
        if len(fields) > 3:
            raise ManifestError(f"{where}: expected 2 or 3 columns (label, path[, split]), got {len(fields)}{hint}")
        if len(fields) == 3 and fields[2].lower() not in PARTS:
            raise ManifestError(f"{where}: split must be one of {', '.join(PARTS)} (or empty), got '{fields[2]}'"
                                f"{hint}")
        rows.append((where, fields[0], fields[1], fields[2] if len(fields) == 3 else None))
    return rows


class _RepeatedKey(Exception):
    """A key repeated in one YAML mapping, at ``line`` (1-based); ``is_label`` when that mapping is the labels'."""

    def __init__(self, key: object, line: int, is_label: bool):
        super().__init__(key, line, is_label)
        self.key, self.line, self.is_label = key, line, is_label


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key repeated in one mapping.

    PyYAML keeps the last value of a repeated key without a word, so a label written twice would silently drop the
    genomes listed under its first occurrence.
    """

    def construct_document(self, node: yaml.Node):
        # The mapping whose keys are labels: the document itself, or what its single `genomes:` key holds.
        self.labels_node = node
        if isinstance(node, yaml.MappingNode) and {key.value for key, _ in node.value} == {"genomes"}:
            self.labels_node = node.value[0][1]
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` merges are meant to be overridden
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                except TypeError:
                    continue  # unhashable: the base class reports it
                if repeated:
                    raise _RepeatedKey(key, key_node.start_mark.line + 1, node is self.labels_node)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> list[_Row]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=_UniqueKeyLoader)
    except _RepeatedKey as err:
        what = (f"label '{err.key}' appears twice; list all its genomes under one key" if err.is_label
                else f"key '{err.key}' appears twice in one mapping")
        raise ManifestError(f"{path}:{err.line}: {what}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ManifestError(f"{where}: cannot read manifest ({problem})") from None
    if isinstance(data, dict) and set(data) == {"genomes"}:
        data = data["genomes"]
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: a YAML manifest maps each label to a list of FASTA paths")
    rows: list[_Row] = []
    for label, entries in data.items():
        where = f"{path}: label '{label}'"
        if entries in (None, [], ""):
            raise ManifestError(f"{where} has no FASTA file")
        for entry in entries if isinstance(entries, list) else [entries]:
            if isinstance(entry, dict):
                unknown = set(entry) - {"path", "split"}
                if unknown or "path" not in entry:
                    raise ManifestError(f"{where}: an entry must be a path or {{path: ..., split: ...}}, got {entry}")
                rows.append((where, str(label), str(entry["path"]), entry.get("split")))
            elif isinstance(entry, str | os.PathLike):
                rows.append((where, str(label), str(entry), None))
            else:
                raise ManifestError(f"{where}: an entry must be a path or {{path: ..., split: ...}}, got {entry!r}")
    return rows


def _validate(source: Path, rows: list[_Row], roots: list[Path], explicit_root: bool) -> Manifest:
    genomes: list[GenomeEntry] = []
    seen: dict[tuple, tuple[str, Path]] = {}  # (device, inode) and (size, head hash) -> (label, path)
    for where, label, text, part in rows:
        if not label:
            raise ManifestError(f"{where}: empty label")
        if not text:
            raise ManifestError(f"{where}: label '{label}' has no FASTA file")
        if part is not None:
            part = str(part).strip().lower() or None
        if part is not None and part not in PARTS:
            raise ManifestError(f"{where}: split must be one of {', '.join(PARTS)} (or empty), got '{part}'")
        fasta = _resolve(where, text, roots, explicit_root)
        stat = fasta.stat()
        # The same file (also through a link), or a copy of it: same size and same first MiB.
        for key in ((stat.st_dev, stat.st_ino), (stat.st_size, _head_digest(fasta))):
            if key in seen:
                other_label, other_path = seen[key]
                if other_label == label:
                    raise ManifestError(f"{where}: {fasta} is listed twice under label '{label}'" if other_path == fasta
                                        else f"{where}: {fasta} has the same content as {other_path} (both under "
                                        f"label '{label}')")
                raise ManifestError(f"{where}: {fasta} appears under two labels, '{other_label}' and '{label}' "
                                    f"(as {other_path}); a genome must belong to one class")
            seen[key] = (label, fasta)
        genomes.append(GenomeEntry(label, fasta, part, "", where))
    labels = list(dict.fromkeys(g.label for g in genomes))
    if len(labels) < 2:
        found = f"only '{labels[0]}'" if labels else "none"
        raise ManifestError(f"{source}: species classification needs at least two classes, found {found}")
    names = _unique_names(genomes)
    return Manifest(source, tuple(GenomeEntry(g.label, g.path, g.part, n, g.where)
                                  for g, n in zip(genomes, names, strict=True)))


def _resolve(where: str, text: str, roots: list[Path], explicit_root: bool) -> Path:
    path = Path(text).expanduser()
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.absolute()
        if candidate.is_dir():
            raise ManifestError(f"{where}: {candidate.absolute()} is a directory, not a FASTA file")
    if path.is_absolute():
        raise ManifestError(f"{where}: FASTA file {path} not found")
    hint = "" if explicit_root else (f" (point --data-root, or task.data_root when training, or {DATA_ROOT_ENV} at the "
                                     "folder it is relative to)")
    looked = ", ".join(str(r) for r in roots)
    raise ManifestError(f"{where}: FASTA file '{text}' not found under {looked}{hint}")


def _head_digest(path: Path, size: int = 1 << 20) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(size)).hexdigest()


def _unique_names(genomes: Iterable[GenomeEntry]) -> list[str]:
    genomes = list(genomes)
    stems = [_stem(g.path) for g in genomes]
    names = [stem if stems.count(stem) == 1 else f"{g.label}-{stem}" for g, stem in zip(genomes, stems, strict=True)]
    # Still ambiguous (same stem under one label, different folders): number them in manifest order.
    counts: dict[str, int] = {}
    unique = []
    for name in names:
        counts[name] = counts.get(name, 0) + 1
        unique.append(name if names.count(name) == 1 else f"{name}-{counts[name]}")
    return unique


def _stem(path: Path) -> str:
    stem = re.sub(r"\.(gz|bgz|bgzf)$", "", path.name, flags=re.IGNORECASE)
    stem = re.sub(r"\.(fa|fasta|fna|fas|seq)$", "", stem, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "genome"
