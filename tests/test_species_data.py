"""Species data: manifests and their errors, leak-free splits, balanced windows, the k-mer features, metrics."""

from __future__ import annotations

import gzip
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from dna_mamba.baselines import kmer_frequencies
from dna_mamba.data.store import GenomeStore, StoreError
from dna_mamba.species.cli import prepare_main
from dna_mamba.species.dataset import (
    DATASET_VERSION,
    BalancedWindowDataset,
    EvalWindowDataset,
    SpeciesDataset,
    SplitConfig,
    prepare_species,
)
from dna_mamba.species.kmer import kmer_counts, kmer_features, reverse_complement_index
from dna_mamba.species.manifest import ManifestError, read_manifest
from dna_mamba.species.metrics import classification_metrics
from dna_mamba.tokenizer import N, encode, reverse_complement


def random_genome(n: int, gc: float, seed: int) -> str:
    p = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n, p=p))


def write_fasta(path: Path, records: dict[str, str], width: int | None = None) -> Path:
    def wrap(seq: str) -> str:
        return "\n".join(seq[i:i + width] for i in range(0, len(seq), width)) if width else seq

    text = "".join(f">{name}\n{wrap(seq)}\n" for name, seq in records.items())
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture
def genomes(tmp_path: Path) -> Path:
    """Two classes (low / high GC), two genomes each, two contigs per genome; plain and gzip FASTA."""
    folder = tmp_path / "genomes"
    folder.mkdir()
    for i, (label, gc) in enumerate((("low", 0.35), ("high", 0.6))):
        for j, strain in enumerate(("a", "b")):
            seed = 10 * i + 2 * j
            write_fasta(folder / f"{label}_{strain}.fa{'.gz' if strain == 'b' else ''}",
                        {f"{label}{strain}1": random_genome(6000, gc, seed),
                         f"{label}{strain}2": random_genome(3000, gc, seed + 1)})
    return folder


def read_records(path: Path) -> dict[str, str]:
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return {head.split("\n", 1)[0]: head.split("\n", 1)[1].replace("\n", "") for head in text.split(">")[1:]}


def manifest(tmp_path: Path, lines: list[str], name: str = "m.tsv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def four_genomes(genomes: Path, split: bool = True) -> list[str]:
    rows = ["label\tpath\tsplit"] if split else ["label\tpath"]
    for label in ("low", "high"):
        rows.append(f"{label}\tgenomes/{label}_a.fa" + ("\ttrain" if split else ""))
        rows.append(f"{label}\tgenomes/{label}_b.fa.gz" + ("\ttest" if split else ""))
    return rows


def test_tsv_and_yaml_manifests_resolve_paths(tmp_path: Path, genomes: Path) -> None:
    m = read_manifest(manifest(tmp_path, ["# comment", *four_genomes(genomes)]))
    assert m.labels == ["low", "high"]
    assert [g.name for g in m.genomes] == ["low_a", "low_b", "high_a", "high_b"]
    assert [g.part for g in m.genomes] == ["train", "test"] * 2
    assert all(g.path.is_absolute() and g.path.is_file() for g in m.genomes)

    yaml_path = tmp_path / "other" / "m.yaml"
    yaml_path.parent.mkdir()
    yaml_path.write_text("genomes:\n  low: [genomes/low_a.fa, {path: genomes/low_b.fa.gz, split: test}]\n"
                         "  high: [genomes/high_a.fa, genomes/high_b.fa.gz]\n")
    y = read_manifest(yaml_path, data_root=tmp_path)  # relative to data_root, not to the manifest's folder
    assert y.labels == ["low", "high"] and [g.part for g in y.genomes] == [None, "test", None, None]


def test_shipped_manifests_read(shared_data: Path) -> None:
    bacteria = read_manifest("bacteria", data_root=shared_data)
    assert len(bacteria.labels) == 5 and len(bacteria.genomes) == 20
    assert sum(g.part == "test" for g in bacteria.genomes) == 5
    assert len(read_manifest("drosophila_chr4", data_root=shared_data).labels) == 6


@pytest.mark.parametrize(("lines", "message"), [
    (["low\tgenomes/low_a.fa", "low\tgenomes/low_b.fa.gz"], "at least two classes, found only 'low'"),
    (["low\tgenomes/low_a.fa", "high"], "label 'high' has no FASTA file"),
    (["low\tgenomes/low_a.fa", "high\tgenomes/low_a.fa"], "appears under two labels, 'low' and 'high'"),
    (["low\tgenomes/low_a.fa", "high\tgenomes/nope.fa"], "'genomes/nope.fa' not found"),
    (["low\tgenomes/low_a.fa\tholdout", "high\tgenomes/high_a.fa"], "split must be one of train, val, test"),
    (["low\tgenomes/low_a.fa", "low\tgenomes/low_a.fa", "high\tgenomes/high_a.fa"], "listed twice under label"),
    (["low\tgenomes", "high\tgenomes/high_a.fa"], r"m.tsv:1: .*genomes is a directory, not a FASTA file"),
    # A path with a space on a space-separated line: the error says why its pieces became columns.
    (["low genomes/low a.fa", "high genomes/high_a.fa"],
     r"m.tsv:1: split must be one of train, val, test \(or empty\), got 'a.fa'; columns are tab-separated \(a line "
     r"without tabs is split at spaces\), so a path with spaces needs tabs"),
    (["low genomes/my low a.fa test", "high genomes/high_a.fa"],
     r"m.tsv:1: expected 2 or 3 columns \(label, path\[, split\]\), got 5; columns are tab-separated"),
])
def test_bad_manifests_fail_with_one_clear_error(tmp_path: Path, genomes: Path, lines, message) -> None:
    with pytest.raises(ManifestError, match=message):
        read_manifest(manifest(tmp_path, lines))


def test_same_fasta_through_a_link_under_two_labels(tmp_path: Path, genomes: Path) -> None:
    (genomes / "alias.fa").symlink_to(genomes / "low_a.fa")
    with pytest.raises(ManifestError, match="two labels"):
        read_manifest(manifest(tmp_path, ["low\tgenomes/low_a.fa", "high\tgenomes/alias.fa"]))


def test_copy_of_a_fasta_under_another_label(tmp_path: Path, genomes: Path) -> None:
    (genomes / "copy.fa").write_bytes((genomes / "low_a.fa").read_bytes())
    with pytest.raises(ManifestError, match="appears under two labels, 'low' and 'high'"):
        read_manifest(manifest(tmp_path, ["low\tgenomes/low_a.fa", "high\tgenomes/copy.fa"]))


@pytest.mark.parametrize("case", ["gzip copy, other split", "re-wrapped, renamed copy under another label"])
def test_copies_of_a_genome_are_found_from_their_sequence(tmp_path: Path, genomes: Path, case: str) -> None:
    # Not the same bytes, so read_manifest cannot tell; the sequence is the same, so test data would be training data.
    records = read_records(genomes / "low_a.fa")
    if case.startswith("gzip"):
        write_fasta(genomes / "low_a_copy.fa.gz", records)
        lines = ["low\tgenomes/low_a.fa\ttrain", "low\tgenomes/low_b.fa.gz\ttrain", "high\tgenomes/high_a.fa\ttrain",
                 "high\tgenomes/high_b.fa.gz\ttest", "low\tgenomes/low_a_copy.fa.gz\ttest"]
        message = (r"m.tsv:5: .*low_a_copy.fa.gz is listed twice under label 'low': it holds the same sequence as "
                   r".*genomes/low_a.fa \(.*m.tsv:1\); list each genome once")
    else:  # soft-masked, 60 bases a line, records renamed and in the other order
        write_fasta(genomes / "other.fa", {f"copy{k}": seq.lower() for k, seq in enumerate(reversed(records.values()))},
                    width=60)
        lines = four_genomes(genomes, split=False) + ["high\tgenomes/other.fa"]
        message = (r"m.tsv:6: .*other.fa appears under two labels, 'low' and 'high': it holds the same sequence as "
                   r".*genomes/low_a.fa \(.*m.tsv:2\); a genome must belong to one class")
    with pytest.raises(ManifestError, match=message):
        prepare_species(manifest(tmp_path, lines), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "species.json").exists()


def test_a_contig_in_two_genomes_is_reported_when_its_copies_are_split_apart(tmp_path: Path, genomes: Path) -> None:
    plasmid = random_genome(1500, 0.5, 99)
    write_fasta(genomes / "low_p.fa", {**read_records(genomes / "low_a.fa"), "p1": plasmid})
    write_fasta(genomes / "high_p.fa", {**read_records(genomes / "high_b.fa.gz"), "pX": plasmid})
    lines = ["low\tgenomes/low_p.fa\ttrain", "low\tgenomes/low_b.fa.gz\ttest", "high\tgenomes/high_a.fa\ttrain",
             "high\tgenomes/high_p.fa\ttest"]
    with pytest.warns(UserWarning, match=re.escape("the same 1,500-bp contig is in 2 places: 'p1' of low_p (class low, "
                                                   "train+val), 'pX' of high_p (class high, test); two classes share "
                                                   "it")):
        prepare_species(manifest(tmp_path, lines), tmp_path / "out", progress=False)
    # Copies within one class that the split cuts alike (split=region cuts every contig the same way) leak nothing.
    write_fasta(genomes / "low_q.fa", {**read_records(genomes / "low_b.fa.gz"), "p2": plasmid})
    lines = ["low\tgenomes/low_p.fa", "low\tgenomes/low_q.fa", "high\tgenomes/high_a.fa", "high\tgenomes/high_b.fa.gz"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_species(manifest(tmp_path, lines), tmp_path / "region", split=SplitConfig("region"), progress=False)
    # ...but held out in one genome and trained on in the other, they would.
    with pytest.warns(UserWarning, match=r"'p1' of low_p \(class low, train\+val\), 'p2' of low_q \(class low, "
                                         r"test\); windows of one copy are trained on while another is held out"):
        prepare_species(manifest(tmp_path, lines), tmp_path / "genome", split=SplitConfig("genome"), progress=False)


def test_sequence_digests_are_reused_until_a_store_is_rebuilt(tmp_path: Path, genomes: Path, monkeypatch) -> None:
    path = manifest(tmp_path, four_genomes(genomes))
    prepare_species(path, tmp_path / "out", progress=False)
    with monkeypatch.context() as patch:  # unchanged stores: nothing is read to check for copies again
        patch.setattr(GenomeStore, "array", lambda *_: pytest.fail("digest recomputed for an unchanged store"))
        prepare_species(path, tmp_path / "out", progress=False)
    # low_a.fa now holds high_a's sequence: its store is rebuilt, and the digest recorded for the old one must go.
    write_fasta(genomes / "low_a.fa", read_records(genomes / "high_a.fa"), width=70)
    with pytest.raises(ManifestError, match="appears under two labels, 'low' and 'high'"):
        prepare_species(path, tmp_path / "out", progress=False)


def test_manifest_saved_with_a_byte_order_mark(tmp_path: Path, genomes: Path) -> None:
    # Spreadsheet "UTF-8" exports start with a BOM, which must not turn the header into a data row.
    path = manifest(tmp_path, four_genomes(genomes))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_manifest(path).labels == ["low", "high"]


def test_manifest_paths_that_are_directories(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="is a directory; a species manifest is a TSV or YAML file"):
        read_manifest(tmp_path)


def test_yaml_syntax_error_names_the_line(tmp_path: Path, genomes: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("low: [genomes/low_a.fa]\nhigh: [genomes/high_a.fa\n")
    with pytest.raises(ManifestError, match=r"m.yaml:3: cannot read manifest \(expected ',' or '\]'"):
        read_manifest(path)


def test_yaml_label_without_files(tmp_path: Path, genomes: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("low: [genomes/low_a.fa]\nhigh: []\n")
    with pytest.raises(ManifestError, match="label 'high' has no FASTA file"):
        read_manifest(path)


@pytest.mark.parametrize(("text", "message"), [
    ("low: [genomes/low_a.fa]\nhigh: [genomes/high_a.fa]\nlow: [genomes/low_b.fa.gz]\n",
     "m.yaml:3: label 'low' appears twice; list all its genomes under one key"),
    ("genomes:\n  low: [genomes/low_a.fa]\n  low: [genomes/low_b.fa.gz]\n",  # not "needs two classes"
     "m.yaml:3: label 'low' appears twice; list all its genomes under one key"),
    ("low: [{path: genomes/low_a.fa, path: genomes/low_b.fa.gz}]\nhigh: [genomes/high_a.fa]\n",
     "m.yaml:1: key 'path' appears twice in one mapping"),
])
def test_yaml_key_written_twice_is_refused(tmp_path: Path, genomes: Path, text: str, message: str) -> None:
    # YAML itself keeps the last value of a repeated key, which would silently drop the genomes listed first.
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError, match=re.escape(message)):
        read_manifest(path)


def test_prepare_cli_reports_bad_input_in_one_line(tmp_path: Path, genomes: Path, capsys) -> None:
    bad = manifest(tmp_path, ["low\tgenomes/low_a.fa"])
    with pytest.raises(SystemExit) as exit_info:
        prepare_main([str(bad), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "at least two classes" in err and "Traceback" not in err


def test_single_genome_class_cannot_hold_out_a_genome(tmp_path: Path, genomes: Path) -> None:
    lines = ["low\tgenomes/low_a.fa", "high\tgenomes/high_a.fa", "high\tgenomes/high_b.fa.gz"]
    with pytest.raises(ManifestError, match=r"m.tsv: class 'low' has a single genome"):
        prepare_species(manifest(tmp_path, lines), tmp_path / "out", split=SplitConfig("genome"), progress=False)
    # auto falls back to held-out regions, which needs no second genome
    data = prepare_species(manifest(tmp_path, lines), tmp_path / "out", progress=False)
    assert data.split["method"] == "region"


@pytest.mark.parametrize(("low_splits", "message"), [
    (("val", ""), r"class 'low' has no training genome \(low_a val, low_b test \(the last unmarked genome\)\)"),
    (("test", "test"), r"class 'low' has no training genome \(low_a test, low_b test\)"),
    (("train", "val"), "class 'low' has no genome to hold out for testing: all are marked train or val"),
])
def test_genome_split_roles_that_leave_a_part_empty(tmp_path: Path, genomes: Path, low_splits, message) -> None:
    lines = [f"low\tgenomes/low_a.fa\t{low_splits[0]}", f"low\tgenomes/low_b.fa.gz\t{low_splits[1]}",
             "high\tgenomes/high_a.fa", "high\tgenomes/high_b.fa.gz"]
    with pytest.raises(ManifestError, match=f"m.tsv: {message}"):
        prepare_species(manifest(tmp_path, lines), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # refused before any store is built


def test_damaged_dataset_index_is_one_error(tmp_path: Path, genomes: Path) -> None:
    path = manifest(tmp_path, four_genomes(genomes))
    data = prepare_species(path, tmp_path / "out", progress=False)
    index_path = data.directory / "species.json"
    intact = index_path.read_text()
    index = json.loads(intact)
    del index["genomes"][0]["segments"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(StoreError, match="species.json: malformed species dataset index .KeyError: 'segments'."):
        SpeciesDataset.open(data.directory)
    index_path.write_text("[]")
    with pytest.raises(StoreError, match=f"not a species dataset of version {DATASET_VERSION}"):
        SpeciesDataset.open(data.directory)
    # Datasets of version 1 were prepared without the check for copied genomes: refused, and prepared again in place.
    index_path.write_text(json.dumps({**json.loads(intact), "version": 1}))
    with pytest.raises(StoreError, match="not a species dataset of version 2; prepare it again"):
        SpeciesDataset.open(data.directory)
    prepare_species(path, tmp_path / "out", progress=False)
    assert index_path.read_text() == intact


def test_class_shorter_than_context_fails_before_training(tmp_path: Path, genomes: Path) -> None:
    data = prepare_species(manifest(tmp_path, four_genomes(genomes)), tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="class 'low': no training sequence is as long as the 8,192-bp context"):
        data.train_regions(8192)
    with pytest.raises(ValueError, match="no test sequence is as long as the 7,000-bp context"):
        data.eval_windows("test", 7000)


@pytest.mark.parametrize(("split", "part", "window", "message"), [
    # Held-out regions come out of every contig: the training part grows as the val and test fractions shrink.
    ("region", "train", 4000, "no training sequence is as long as the 4,000-bp context (longest: 3,600 bp in its "
                              "training regions); lower --val-fraction and --test-fraction (task.val_fraction, "
                              "task.test_fraction) or use a shorter context"),
    ("region", "test", 2000, "no test sequence is as long as the 2,000-bp context (longest: 1,800 bp in its test "
                             "regions); raise --test-fraction (task.test_fraction) or use a shorter context"),
    ("region", "val", 1000, "raise --val-fraction (task.val_fraction) or use a shorter context"),
    # Whole held-out genomes: the only fraction that costs training is the validation tail of training contigs.
    ("genome", "train", 6000, "(longest: 5,400 bp in its training genomes); lower --val-fraction (task.val_fraction) "
                              "or use a shorter context"),
    ("genome", "test", 7000, "(longest: 6,000 bp in its test genomes); use a shorter context"),
])
def test_short_part_hints_name_the_setting_that_lengthens_it(tmp_path: Path, genomes: Path, split: str, part: str,
                                                               window: int, message: str) -> None:
    data = prepare_species(manifest(tmp_path, four_genomes(genomes, split=split == "genome")), tmp_path / "out",
                           split=SplitConfig(split, val_fraction=0.1, test_fraction=0.3), progress=False)
    with pytest.raises(ValueError, match=re.escape(message)):
        data.train_regions(window) if part == "train" else data.eval_windows(part, window)


@pytest.mark.parametrize(("config", "message"), [
    (dict(test_fraction=1.5), "task.test_fraction (--test-fraction) must be in (0, 1), got 1.5"),
    (dict(val_fraction=-0.1), "task.val_fraction (--val-fraction) must be in [0, 1), got -0.1"),
    (dict(method="strain"), "task.split (--split) must be one of auto, genome, contig, region, got 'strain'"),
])
def test_split_settings_out_of_range_are_named_as_users_set_them(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SplitConfig(**config)


def n_rich_genomes(folder: Path) -> list[str]:
    """Class high: 15 kb of N, then 5 kb of AT; split=region holds out the tail, leaving training only N."""
    folder.mkdir()
    write_fasta(folder / "low.fa", {"low1": random_genome(20_000, 0.4, 1)})
    write_fasta(folder / "high.fa", {"high1": "N" * 15_000 + "AT" * 2_500})
    return [f"low\t{folder.name}/low.fa", f"high\t{folder.name}/high.fa"]


def test_class_with_only_n_rich_training_windows_fails_when_checked(tmp_path: Path, capsys) -> None:
    path = manifest(tmp_path, n_rich_genomes(tmp_path / "n_rich"))
    with pytest.raises(SystemExit) as exit_info:  # prepare-species --context checks training windows for N too
        prepare_main([str(path), "--out", str(tmp_path / "out"), "--split", "region", "--context", "1k", "--quiet"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert ("error: class 'high': every 1,024-bp training window has more than 10% N (task.max_n_fraction), so none "
            "of its training sequence is usable (15,000 bp in genome high, 100% N); raise task.max_n_fraction or use "
            "a shorter context") in err
    data = SpeciesDataset.open(tmp_path / "out")
    with pytest.raises(ValueError, match="class 'high': every 1,000-bp training window has more than 10% N"):
        BalancedWindowDataset(data, 1000, num_samples=8)  # when training starts, not at the first batch
    with pytest.raises(ValueError, match=re.escape("task.max_n_fraction must be in [0, 1], got 1.5")):
        BalancedWindowDataset(data, 1000, num_samples=8, max_n_fraction=1.5)
    assert len(BalancedWindowDataset(data, 1000, num_samples=8, max_n_fraction=1.0)) == 8


def test_training_windows_are_drawn_only_where_n_is_acceptable(tmp_path: Path) -> None:
    folder = tmp_path / "gappy"
    folder.mkdir()
    rng = np.random.default_rng(5)
    seq = np.array(list(random_genome(12_000, 0.5, 4)))
    for start in rng.integers(0, 11_900, 30):  # gaps of every size, some overlapping, some at the ends
        seq[start:start + rng.integers(1, 400)] = "N"
    seq[:50] = seq[-70:] = "N"
    write_fasta(folder / "gappy.fa", {"g1": "".join(seq)})
    write_fasta(folder / "clean.fa", {"c1": random_genome(12_000, 0.4, 6)})
    path = manifest(tmp_path, [f"low\t{folder.name}/clean.fa", f"high\t{folder.name}/gappy.fa"])
    data = prepare_species(path, tmp_path / "out", split=SplitConfig("region"), progress=False)
    train = data.genomes[1].segments["train"][0]
    tokens = data.store(1).fetch("g1", 0, train.end)
    for window, fraction in ((300, 0.1), (300, 0.0), (1000, 0.25)):
        n_in_window = np.convolve(tokens == N, np.ones(window, dtype=np.int64), mode="valid")  # by start
        acceptable = set(np.flatnonzero(n_in_window <= fraction * window).tolist())
        runs = data.train_regions(window, fraction)[1]
        planned = [start for _, _, first, last in runs for start in range(first, last + 1)]
        assert sorted(planned) == sorted(acceptable) and len(planned) == len(acceptable)  # exactly, each once
        draws = BalancedWindowDataset(data, window, num_samples=400, max_n_fraction=fraction, seed=2)
        starts = [draws.locate(i).start for i in range(1, 400, 2)]
        assert set(starts) <= acceptable and len(set(starts)) > 150


def _overlaps(start: int, end: int, segments) -> bool:
    return any(start < s.end and s.start < end for s in segments)


def _inside(contig: str, start: int, end: int, segments) -> bool:
    return any(s.contig == contig and s.start <= start and end <= s.end for s in segments)


@pytest.mark.parametrize("method", ["genome", "contig", "region"])
def test_no_training_window_touches_held_out_sequence(tmp_path: Path, genomes: Path, method: str) -> None:
    lines = four_genomes(genomes, split=method == "genome")
    data = prepare_species(manifest(tmp_path, lines), tmp_path / method, progress=False,
                           split=SplitConfig(method, val_fraction=0.1, test_fraction=0.3))
    window = 500
    train = BalancedWindowDataset(data, window, num_samples=3000, seed=1)
    labels = []
    for i in range(len(train)):
        draw = train.locate(i)
        genome = data.genomes[draw.genome]
        held_out = [s for s in genome.segments["val"] + genome.segments["test"] if s.contig == draw.contig]
        assert genome.class_index == draw.label
        assert _inside(draw.contig, draw.start, draw.start + window, genome.segments["train"])
        assert not _overlaps(draw.start, draw.start + window, held_out)
        labels.append(draw.label)
    assert np.bincount(labels).tolist() == [1500, 1500]  # balanced classes
    for part in ("val", "test"):
        windows = data.eval_windows(part, window)
        for g, c, start in zip(windows.genome, windows.contig, windows.start, strict=True):
            genome = data.genomes[g]
            contig = data.store(g).names[c]
            assert _inside(contig, start, start + window, genome.segments[part])
            assert not _overlaps(start, start + window, [s for s in genome.segments["train"] if s.contig == contig])
    if method == "genome":  # held-out strains contribute no training window at all
        test_genomes = {g for g, genome in enumerate(data.genomes) if genome.segments["test"]}
        assert test_genomes == {1, 3}
        assert not {train.locate(i).genome for i in range(len(train))} & test_genomes


@pytest.mark.parametrize("method", ["genome", "region"])
@pytest.mark.parametrize("stride", [None, 500, 120])
def test_eval_windows_every_stride_bases_inside_held_out_segments(tmp_path: Path, genomes: Path, method: str,
                                                                   stride: int | None) -> None:
    lines = four_genomes(genomes, split=method == "genome")
    data = prepare_species(manifest(tmp_path, lines), tmp_path / method, progress=False,
                           split=SplitConfig(method, val_fraction=0.1, test_fraction=0.3))
    window = 500
    windows = data.eval_windows("test", window, stride=stride)
    assert windows.stride == (stride or window)
    by_segment: dict[tuple, list[int]] = {}
    for g, c, start in zip(windows.genome, windows.contig, windows.start, strict=True):
        genome = data.genomes[g]
        contig = data.store(g).names[c]
        assert _inside(contig, start, start + window, genome.segments["test"])
        assert not _overlaps(start, start + window, [s for s in genome.segments["train"] if s.contig == contig])
        segment = next(s for s in genome.segments["test"] if s.contig == contig and s.start <= start < s.end)
        by_segment.setdefault((g, segment), []).append(int(start))
    # Every test segment a window fits in has one every `stride` bases from its start (no N in these genomes),
    # up to the last that fits; the default, stride = window, is the non-overlapping tiling.
    fits = {(g, s) for g, genome in enumerate(data.genomes) for s in genome.segments["test"] if s.length >= window}
    assert set(by_segment) == fits
    for (_, segment), starts in by_segment.items():
        assert starts == list(range(segment.start, segment.end - window + 1, stride or window))
    if stride is None:
        same = data.eval_windows("test", window, stride=window)
        for name in ("genome", "contig", "start", "label"):
            assert np.array_equal(getattr(windows, name), getattr(same, name))
    else:  # per_class still keeps an evenly spaced subset of the overlapping windows
        subset = data.eval_windows("test", window, stride=stride, per_class=5)
        assert subset.per_class(2) == [5, 5]
        assert set(subset.start.tolist()) <= set(windows.start.tolist())


@pytest.mark.parametrize("stride", [0, -100, 501, 250.0, True])
def test_bad_eval_stride_is_refused(tmp_path: Path, genomes: Path, stride) -> None:
    data = prepare_species(manifest(tmp_path, four_genomes(genomes)), tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match=re.escape(f"stride must be an integer from 1 to the window (500), got "
                                                   f"{stride!r}")):
        data.eval_windows("test", 500, stride=stride)


def test_items_are_reproducible_and_both_strands(tmp_path: Path, genomes: Path) -> None:
    data = prepare_species(manifest(tmp_path, four_genomes(genomes)), tmp_path / "out", progress=False)
    train = BalancedWindowDataset(data, 300, num_samples=64, seed=3)
    tokens, label = train[5]
    assert tokens.shape == (300,) and int(label) == 1
    assert np.array_equal(tokens.numpy(), train[5][0].numpy())
    strands = [train.locate(i).reverse for i in range(64)]
    assert 10 < sum(strands) < 54
    draw = next(train.locate(i) for i in range(64) if train.locate(i).reverse)
    index = next(i for i in range(64) if train.locate(i) == draw)
    forward = data.store(draw.genome).fetch(draw.contig, draw.start, draw.start + 300)
    assert np.array_equal(train[index][0].numpy(), reverse_complement(forward).astype(np.int64))
    train.set_epoch(1)
    assert [train.locate(i).start for i in range(8)] != [BalancedWindowDataset(data, 300, num_samples=64, seed=3)
                                                          .locate(i).start for i in range(8)]
    test = EvalWindowDataset(data, data.eval_windows("test", 300, per_class=4))
    assert len(test) == 8 and [int(test[i][1]) for i in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_prepare_reuses_stores_and_refuses_foreign_directories(tmp_path: Path, genomes: Path) -> None:
    path = manifest(tmp_path, four_genomes(genomes))
    first = prepare_species(path, tmp_path / "out", progress=False)
    stamp = (first.directory / "stores" / "low_a" / "index.json").stat().st_mtime_ns
    again = prepare_species(path, tmp_path / "out", progress=False)
    assert (again.directory / "stores" / "low_a" / "index.json").stat().st_mtime_ns == stamp
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a species dataset"):
        prepare_species(path, tmp_path / "foreign", progress=False)


def test_prepare_keeps_a_running_store_build_and_removes_a_killed_ones(tmp_path: Path, genomes: Path) -> None:
    import subprocess
    import sys

    from dna_mamba.outputs import make_work_dir

    path = manifest(tmp_path, four_genomes(genomes))
    stores = prepare_species(path, tmp_path / "out", progress=False).directory / "stores"
    running = make_work_dir(stores / "gone")  # a live build (this process) of a store no longer in the manifest
    (running / "index.json").write_text("{}")
    code = ("import os, sys, pathlib; from dna_mamba.outputs import make_work_dir; "
            "d = make_work_dir(pathlib.Path(sys.argv[1])); (d / 'index.json').write_text('{}'); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(stores / "gone")], check=True)
    killed = [p for p in stores.iterdir() if p.name.startswith(".gone.tmp-") and p != running]
    assert len(killed) == 1
    prepare_species(path, tmp_path / "out", progress=False)
    assert running.is_dir() and not killed[0].exists()


def test_kmer_counts_match_the_reference_and_are_strand_symmetric() -> None:
    seq = "ACGTNACGGTTAC" + random_genome(200, 0.5, 7)
    ids = encode(seq)
    for k in (1, 3, 4):
        counts = kmer_counts(ids[None], k)[0]
        np.testing.assert_allclose(counts / counts.sum(), kmer_frequencies(ids, k), rtol=1e-6)
    rc = reverse_complement(ids)
    np.testing.assert_allclose(kmer_features(ids[None], 4), kmer_features(rc[None], 4), rtol=1e-6)
    index = reverse_complement_index(2)
    assert index[0] == 15 and index[1] == 11  # AA <-> TT, AC <-> GT


def test_metrics() -> None:
    m = classification_metrics([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 0], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"]["recall"] == pytest.approx(2 / 3) and m["per_class"]["c"]["recall"] == 0.0
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["macro_f1"] == pytest.approx((2 * 2 / (3 + 3) + 2 * 2 / (2 + 3) + 0) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_a_relative_fasta_not_found_names_every_way_to_give_the_data_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DNA_MAMBA_DATA", raising=False)
    path = manifest(tmp_path, ["low\tno_such/low.fa", "high\tno_such/high.fa"])
    with pytest.raises(ManifestError, match=r"m.tsv:1: FASTA file 'no_such/low.fa' not found under .*"
                                            r"--data-root, or task.data_root when training, or DNA_MAMBA_DATA"):
        read_manifest(path)
