"""Genome store: building from real and synthetic FASTA, format identity, caching, atomicity, contig names."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyfaidx
import pytest
from Bio import bgzf

from dna_mamba.data import store as store_module
from dna_mamba.data.fasta import FastaFormatError
from dna_mamba.data.prepare import main as prepare_main
from dna_mamba.data.store import (
    GenomeStore,
    StoreError,
    UnknownContigError,
    build_store,
    cached_store,
    default_store_dir,
    resolve_contig,
)
from dna_mamba.outputs import make_work_dir
from dna_mamba.tokenizer import InvalidSequenceError, encode

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LAMBDA = DATA / "genomes" / "lambda_phage_NC_001416.fa.gz"
ECOLI = DATA / "genomes" / "ecoli_K12_MG1655.fa.gz"
CHRM = DATA / "human" / "rCRS_chrM.fa"
CHR20 = DATA / "human" / "GRCh37_chr20.fa.gz"


def write_fasta(path: Path, records: dict[str, str], *, width: int = 60, newline: str = "\n") -> Path:
    lines = []
    for name, seq in records.items():
        lines.append(f">{name}")
        lines += [seq[i:i + width] for i in range(0, len(seq), width)]
    path.write_text(newline.join(lines) + newline, newline="")
    return path


def random_bases(n: int, seed: int = 0) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


def arrays(store: GenomeStore) -> dict[str, np.ndarray]:
    return {name: np.asarray(store.array(name)) for name in store.names}


@pytest.fixture(scope="module")
def chr20_store(tmp_path_factory: pytest.TempPathFactory) -> GenomeStore:
    return build_store(CHR20, tmp_path_factory.mktemp("chr20") / "store", progress=False)


def test_chr20_bgzip_store_matches_faidx(chr20_store: GenomeStore) -> None:
    assert chr20_store.contigs == {"20": 63_025_520}
    assert chr20_store.source[0].compression == "bgzip"
    array = chr20_store.array("20")
    assert abs(chr20_store.n_fraction("20") - 0.056) < 0.001
    assert chr20_store.info("20").n_count == int(np.count_nonzero(np.asarray(array) == 4))
    # pyfaidx reads the bgzip file through its .fai/.gzi index: an independent reader to compare against.
    reference = pyfaidx.Fasta(str(CHR20), sequence_always_upper=True)
    for start in (0, 59_990, 30_000_000, 63_025_500):
        end = min(start + 5000, 63_025_520)
        np.testing.assert_array_equal(array[start:end], encode(str(reference["20"][start:end])))


def test_chr20_n_runs_match_the_array(chr20_store: GenomeStore) -> None:
    array = chr20_store.array("20")
    runs = chr20_store.n_runs("20")
    # Every run is all N and maximal, and together they hold every N: so they are exactly the N runs.
    for start, end in runs:
        assert np.all(array[start:end] == 4)
        assert start == 0 or array[start - 1] != 4
        assert end == len(array) or array[end] != 4
    assert (runs[:, 1] - runs[:, 0]).sum() == chr20_store.info("20").n_count
    assert chr20_store.count_n("20", 0, len(array)) == chr20_store.info("20").n_count


def test_multi_file_store_metadata_and_read_only_arrays(tmp_path: Path) -> None:
    store = build_store([LAMBDA, ECOLI, CHRM], tmp_path / "s", progress=False)
    assert store.names == ["gi|9626243|ref|NC_001416.1|", "K-12-MG1655", "chrM"]
    assert store.lengths.tolist() == [48_502, 4_639_675, 16_569]
    assert store.total_length == 48_502 + 4_639_675 + 16_569
    assert store.info("chrM").source == 2
    assert [s.compression for s in store.source] == ["gzip", "gzip", "plain"]
    assert store.source[2].size == CHRM.stat().st_size
    assert store.source[2].mtime_ns == CHRM.stat().st_mtime_ns
    assert len(store.source[2].head_sha256) == 64
    array = store.array("chrM")
    assert isinstance(array, np.memmap) and not array.flags.writeable
    reopened = GenomeStore.open(tmp_path / "s")
    np.testing.assert_array_equal(reopened.array("K-12-MG1655")[:1000], store.array("K-12-MG1655")[:1000])


def test_plain_gzip_and_bgzip_give_identical_stores(tmp_path: Path) -> None:
    plain = tmp_path / "ecoli.fa"
    with gzip.open(ECOLI, "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst)
    bgzipped = tmp_path / "ecoli.bgz"
    with open(plain, "rb") as src, bgzf.BgzfWriter(str(bgzipped), "wb") as dst:
        shutil.copyfileobj(src, dst)
    stores = [build_store(path, tmp_path / f"s{i}", progress=False) for i, path in enumerate([plain, ECOLI, bgzipped])]
    assert [s.source[0].compression for s in stores] == ["plain", "gzip", "bgzip"]
    reference = arrays(stores[0])
    for store in stores[1:]:
        assert store.contigs == stores[0].contigs
        for name, ids in arrays(store).items():
            np.testing.assert_array_equal(ids, reference[name])


def test_line_layouts_give_identical_stores(tmp_path: Path) -> None:
    records = {"a": random_bases(5000, 1) + "NNNN" + "acgt", "b": random_bases(777, 2)}
    built = [
        build_store(write_fasta(tmp_path / f"{width}-{len(newline)}.fa", records, width=width, newline=newline),
                    tmp_path / f"s{width}-{len(newline)}", progress=False)
        for width, newline in [(60, "\n"), (80, "\r\n"), (1, "\r\n"), (100_000, "\n")]
    ]
    reference = arrays(built[0])
    for store in built[1:]:
        for name, ids in arrays(store).items():
            np.testing.assert_array_equal(ids, reference[name])
    np.testing.assert_array_equal(reference["a"][-8:], [4, 4, 4, 4, 0, 1, 2, 3])


def test_n_runs_and_counts_across_block_boundaries(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    seq = np.array(list(random_bases(3000, 3)))
    for start in rng.integers(0, 2990, 40):
        seq[start:start + rng.integers(1, 12)] = "N"
    seq[:3] = "N"
    seq[-2:] = "N"
    path = write_fasta(tmp_path / "gaps.fa", {"g": "".join(seq)}, width=13)
    store = build_store(path, tmp_path / "s", progress=False, block_size=17)  # runs cut by many chunk ends
    is_n = seq == "N"
    edges = np.flatnonzero(np.diff(np.concatenate(([0], is_n.astype(np.int8), [0]))))
    np.testing.assert_array_equal(store.n_runs("g"), edges.reshape(-1, 2))
    assert store.info("g").n_count == is_n.sum()
    starts = rng.integers(-50, 3050, 500)
    ends = starts + rng.integers(0, 400, 500)
    padded = np.concatenate([np.ones(50, bool), is_n, np.ones(500, bool)])
    expected = [padded[s + 50:e + 50].sum() for s, e in zip(starts, ends, strict=True)]
    np.testing.assert_array_equal(store.count_n("g", starts, ends), expected)


def test_fetch_pads_with_n_outside_the_contig(tmp_path: Path) -> None:
    store = build_store(write_fasta(tmp_path / "t.fa", {"t": "ACGTACGTAC"}), tmp_path / "s", progress=False)
    np.testing.assert_array_equal(store.fetch("t", -3, 2), [4, 4, 4, 0, 1])
    np.testing.assert_array_equal(store.fetch("t", 8, 13), [0, 1, 4, 4, 4])
    np.testing.assert_array_equal(store.fetch("t", 20, 22), [4, 4])
    np.testing.assert_array_equal(store.fetch("t", 2, 4), [2, 3])
    assert store.fetch("t", 5, 5).shape == (0,)
    with pytest.raises(ValueError, match="end 1 < start 2"):
        store.fetch("t", 2, 1)


def test_cached_store_reuses_until_the_source_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fasta = write_fasta(tmp_path / "genome.fa", {"chr1": random_bases(2000)})
    monkeypatch.setenv("DNA_MAMBA_CACHE", str(tmp_path / "cache"))
    first = cached_store(fasta, progress=False)
    assert first.directory == default_store_dir([fasta])
    assert first.directory.parent == tmp_path / "cache" / "stores"
    assert first.directory.name.startswith("genome-")

    builds = _no_builds(monkeypatch)
    second = cached_store([fasta], progress=False)
    assert builds == [] and second.directory == first.directory

    stat = fasta.stat()
    os.utime(fasta, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    third = cached_store(fasta, progress=False)
    assert builds == [first.directory]
    assert third.source[0].mtime_ns == fasta.stat().st_mtime_ns

    explicit = cached_store(fasta, cache_dir=tmp_path / "elsewhere", progress=False)
    assert explicit.directory.parent == tmp_path / "elsewhere"


def test_cached_store_rebuilds_another_store_version(tmp_path: Path) -> None:
    fasta = write_fasta(tmp_path / "g.fa", {"a": "ACGT" * 10})
    store = cached_store(fasta, cache_dir=tmp_path, progress=False)
    index_path = store.directory / "index.json"
    index = json.loads(index_path.read_text())
    index["version"] = -1
    index_path.write_text(json.dumps(index))
    with pytest.raises(StoreError, match="version -1"):
        GenomeStore.open(store.directory)
    assert cached_store(fasta, cache_dir=tmp_path, progress=False).contigs == {"a": 40}


def test_failed_build_leaves_no_store(tmp_path: Path) -> None:
    bad = write_fasta(tmp_path / "bad.fa", {"ok": random_bases(20_000), "broken": "ACGT" * 100 + "J"})
    out = tmp_path / "stores" / "genome"
    with pytest.raises(InvalidSequenceError, match="record 'broken', position 401"):
        build_store(bad, out, progress=False, block_size=1000)
    assert not out.exists()
    assert list((tmp_path / "stores").iterdir()) == []  # the temporary build directory is gone too


def test_interrupted_rebuild_keeps_the_old_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fasta = write_fasta(tmp_path / "g.fa", {"a": random_bases(5000), "b": random_bases(5000, 1)})
    out = tmp_path / "store"
    before = arrays(build_store(fasta, out, progress=False))

    def interrupt(self, ids):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module._ContigWriter, "write", interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_store(fasta, out, progress=False)
    after = GenomeStore.open(out)
    assert {name: ids.tolist() for name, ids in arrays(after).items()} == {k: v.tolist() for k, v in before.items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.fa", "store"]


def test_refuses_to_overwrite_a_directory_that_is_not_a_store(tmp_path: Path) -> None:
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    fasta = write_fasta(tmp_path / "g.fa", {"a": "ACGT"})
    with pytest.raises(StoreError, match="not a genome store; refusing to overwrite"):
        build_store(fasta, precious, progress=False)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_damaged_or_missing_store_is_reported(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a genome store"):
        GenomeStore.open(tmp_path)
    store = build_store(write_fasta(tmp_path / "g.fa", {"a": "ACGT" * 10}), tmp_path / "s", progress=False)
    (store.directory / store.info("a").file).write_bytes(b"\x00" * 7)
    with pytest.raises(StoreError, match="holds 7 bytes, index says 40"):
        GenomeStore.open(store.directory)


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    first = write_fasta(tmp_path / "one.fa", {"chr1": "ACGT"})
    second = write_fasta(tmp_path / "two.fa", {"chr1": "GGGG"})
    with pytest.raises(FastaFormatError, match=r"two\.fa: record name 'chr1' already used in .*one\.fa"):
        build_store([first, second], tmp_path / "s", progress=False)


def test_resolve_contig_harmonises_names(tmp_path: Path) -> None:
    fasta = write_fasta(tmp_path / "g.fa", {"1": "ACGT", "chrX": "ACGT", "MT": "ACGT", "chr2_random": "AC"})
    store = build_store(fasta, tmp_path / "s", progress=False)
    assert resolve_contig(store, "chr1") == "1"
    assert resolve_contig(store, "1") == "1"
    assert resolve_contig(store, "X") == "chrX"
    assert resolve_contig(store, "chrx") == "chrX"
    for alias in ("chrM", "M", "MT", "chrMT"):
        assert resolve_contig(store, alias) == "MT"
    with pytest.raises(KeyError) as info:
        resolve_contig(store, "chr21")
    assert isinstance(info.value, UnknownContigError)
    assert str(info.value) == "unknown contig 'chr21' in store s (contigs: '1', 'chrX', 'MT', 'chr2_random')"
    with pytest.raises(UnknownContigError, match="did you mean '1'"):
        store.array("chr1")


def test_store_pickles_without_its_memory_maps(tmp_path: Path) -> None:
    store = build_store(write_fasta(tmp_path / "g.fa", {"a": "ACGTN" * 20}), tmp_path / "s", progress=False)
    store.array("a")
    clone = pickle.loads(pickle.dumps(store))
    assert clone._arrays == {}
    np.testing.assert_array_equal(clone.fetch("a", 0, 5), [0, 1, 2, 3, 4])


def test_prepare_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "store"
    assert prepare_main([str(LAMBDA), str(CHRM), "--out", str(out), "--quiet"]) == 0
    assert GenomeStore.open(out).names == ["gi|9626243|ref|NC_001416.1|", "chrM"]
    assert prepare_main([str(LAMBDA), str(CHRM), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "up to date" in printed and "chrM" in printed and "16,569" in printed and "(2 contigs)" in printed

    bad = tmp_path / "bad.fa"
    bad.write_text("ACGT\n")
    assert prepare_main([str(bad), "--out", str(tmp_path / "other")]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: {bad}: line 1: sequence data before the first header line (no '>' " \
                                   f"header); is this a FASTA file?"
    assert "Traceback" not in captured.err
    assert not (tmp_path / "other").exists()
    with pytest.raises(FastaFormatError):
        prepare_main([str(bad), "--out", str(tmp_path / "other"), "--debug"])


def _no_builds(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record the stores that cached_store builds from now on."""
    real_build = store_module.build_store
    builds: list[Path] = []

    def counting_build(*args, **kwargs):
        builds.append(args[1])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(store_module, "build_store", counting_build)
    return builds


def _swap_keeping_size_and_time(path: Path, records: dict[str, str]) -> None:
    stat = path.stat()
    write_fasta(path, records)
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_cached_store_rebuilds_a_file_swapped_for_one_of_the_same_size_and_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fasta = write_fasta(tmp_path / "genome.fa", {"chr1": "A" * 500})
    first = cached_store(fasta, cache_dir=tmp_path / "cache", progress=False)
    builds = _no_builds(monkeypatch)
    _swap_keeping_size_and_time(fasta, {"chr1": "C" * 500})  # same bytes count, same mtime: only the content differs
    second = cached_store(fasta, cache_dir=tmp_path / "cache", progress=False)
    assert builds == [first.directory]
    assert np.all(np.asarray(second.array("chr1")) == 1)  # C, not the stale A


def test_cached_store_notices_a_change_past_the_hashed_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_HEAD_BYTES", 64)  # a small file then has a head and a distinct tail
    fasta = write_fasta(tmp_path / "genome.fa", {"chr1": "A" * 1000})
    first = cached_store(fasta, cache_dir=tmp_path / "cache", progress=False)
    builds = _no_builds(monkeypatch)
    assert cached_store(fasta, cache_dir=tmp_path / "cache", progress=False).directory == first.directory
    assert builds == []
    _swap_keeping_size_and_time(fasta, {"chr1": "A" * 990 + "G" * 10})
    assert cached_store(fasta, cache_dir=tmp_path / "cache", progress=False).array("chr1")[-1] == 2
    assert builds == [first.directory]


def test_a_store_built_before_tail_hashes_still_opens_and_matches(tmp_path: Path) -> None:
    fasta = write_fasta(tmp_path / "g.fa", {"a": "ACGT" * 10})
    store = build_store(fasta, tmp_path / "s", progress=False)
    index_path = store.directory / "index.json"
    index = json.loads(index_path.read_text())
    del index["sources"][0]["tail_sha256"]
    index_path.write_text(json.dumps(index))
    assert GenomeStore.open(store.directory).matches([fasta])


@pytest.mark.parametrize(("umask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_store_permissions_follow_the_umask(tmp_path: Path, umask: int, dir_mode: int, file_mode: int) -> None:
    fasta = write_fasta(tmp_path / "g.fa", {"a": "ACGTN" * 20, "b": "ACGT"})
    previous = os.umask(umask)
    try:
        store = build_store(fasta, tmp_path / "s", progress=False)
        build_store(fasta, tmp_path / "s", progress=False)  # a rebuild replaces the store the same way
    finally:
        os.umask(previous)
    assert store.directory.stat().st_mode & 0o777 == dir_mode
    files = list(store.directory.iterdir())
    assert len(files) == 5 and {p.stat().st_mode & 0o777 for p in files} == {file_mode}


def _leave_work_dir_like_a_killed_build(out: Path) -> Path:
    """Run build's first step in a child process that then dies without cleaning up; the directory it left."""
    before = set(out.parent.iterdir())
    code = ("import os, sys, pathlib; from dna_mamba.outputs import make_work_dir; "
            "d = make_work_dir(pathlib.Path(sys.argv[1])); (d / 'index.json').write_text('{}'); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True)
    (left,) = set(out.parent.iterdir()) - before
    return left


def test_next_build_removes_what_a_killed_build_left(tmp_path: Path) -> None:
    fasta = write_fasta(tmp_path / "g.fa", {"a": "ACGT" * 10})
    out = tmp_path / "store"
    killed = _leave_work_dir_like_a_killed_build(out)
    assert killed.name.startswith(".store.tmp-")
    with pytest.raises(StoreError, match="work directory"):
        GenomeStore.open(killed)  # never taken for a store, even with an index in it
    other_output = _leave_work_dir_like_a_killed_build(tmp_path / "other")
    old_legacy = tmp_path / ".store.tmp-k3j9x2ab"  # older dna_mamba's mkdtemp name, untouched for two days
    old_legacy.mkdir()
    os.utime(old_legacy, (time.time() - 2 * 86400,) * 2)
    recent_legacy = tmp_path / ".store.tmp-q8w7e6r5"  # may be an older version's build in progress
    recent_legacy.mkdir()
    running = make_work_dir(out)  # this process is alive: its build must survive another's cleanup

    build_store(fasta, out, progress=False)
    left = {p.name for p in tmp_path.iterdir()}
    assert killed.name not in left and old_legacy.name not in left
    assert {other_output.name, recent_legacy.name, running.name, "store", "g.fa"} == left


def test_prepare_exits_quietly_when_its_reader_stops(tmp_path: Path) -> None:
    fasta = write_fasta(tmp_path / "g.fa", {"chr1": "ACGT" * 10, "chr2": "ACGTN"})
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` gone before the summary is printed
    try:
        result = subprocess.run([sys.executable, "-m", "dna_mamba.data.prepare", str(fasta), "--out",
                                 str(tmp_path / "s")], stdout=write_end, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    assert result.stderr == "" and result.returncode == 0
    assert GenomeStore.open(tmp_path / "s").names == ["chr1", "chr2"]


def test_a_store_another_process_installs_during_the_swap_stands(tmp_path, monkeypatch):
    """install_work_dir(keep_concurrent=True), as build_store calls it: a concurrent builder's store that appears
    between moving the old one aside and renaming ours in is kept; ours and the old one are removed."""
    from dna_mamba import outputs

    target, tmp = tmp_path / "store", tmp_path / ".store.tmp-build"
    for directory, text in ((target, "old"), (tmp, "ours")):
        directory.mkdir()
        (directory / "index.json").write_text(text)
    real_replace = os.replace

    def racing_replace(src, dst):
        if Path(src) == tmp and not Path(dst).exists():  # the old store is aside: another builder gets in first
            Path(dst).mkdir()
            (Path(dst) / "index.json").write_text("theirs")
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", racing_replace)
    outputs.install_work_dir(tmp, target, keep_concurrent=True)
    assert (target / "index.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["store"]
