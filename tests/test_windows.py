"""Splits (by contig, by fraction, by file) and window planning / datasets over genome stores."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dna_mamba.data.splits import Segment, Split, split_by_contigs, split_by_files, split_by_fraction, whole_contigs
from dna_mamba.data.store import GenomeStore, UnknownContigError, build_store
from dna_mamba.data.windows import RandomWindowDataset, WindowDataset, plan_windows, window_arrays
from dna_mamba.tokenizer import reverse_complement

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ECOLI = DATA / "genomes" / "ecoli_K12_MG1655.fa.gz"


def make_store(tmp_path: Path, records: dict[str, str], name: str = "store") -> GenomeStore:
    fasta = tmp_path / f"{name}.fa"
    fasta.write_text("".join(f">{contig}\n{seq}\n" for contig, seq in records.items()))
    return build_store(fasta, tmp_path / name, progress=False)


def random_bases(n: int, seed: int = 0) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


@pytest.fixture
def genome(tmp_path: Path) -> GenomeStore:
    # chr2 has a 300 bp N run at [400, 700); chrM is shorter than the windows used below.
    return make_store(tmp_path, {
        "chr1": random_bases(1000, 1),
        "chr2": random_bases(400, 2) + "N" * 300 + random_bases(300, 3),
        "chrM": random_bases(50, 4),
    })


def covered(segments: list[Segment]) -> dict[str, np.ndarray]:
    """Per contig, how many times each position is covered."""
    counts: dict[str, np.ndarray] = {}
    for s in segments:
        counts.setdefault(s.contig, np.zeros(s.end, dtype=int))
        if len(counts[s.contig]) < s.end:
            counts[s.contig] = np.pad(counts[s.contig], (0, s.end - len(counts[s.contig])))
        counts[s.contig][s.start:s.end] += 1
    return counts


def test_split_by_fraction_holds_out_each_contig_tail(genome: GenomeStore) -> None:
    split = split_by_fraction(genome, 0.1, 0.2)
    assert Segment("chr1", 0, 700) in split.train
    assert Segment("chr1", 700, 800) in split.val
    assert Segment("chr1", 800, 1000) in split.test
    assert Segment("chrM", 35, 40) in split.val and Segment("chrM", 40, 50) in split.test
    coverage = covered(split.train + split.val + split.test)
    for contig, length in genome.contigs.items():  # a partition: every base in exactly one part
        assert coverage[contig].tolist() == [1] * length
    assert split["val"] == split.val and split.store("test") is genome
    assert split.lengths() == {"train": 1435, "val": 205, "test": 410}
    everything = split_by_fraction(genome, 0.0, 0.0)
    assert everything.train == whole_contigs(genome) and everything.val == [] and everything.test == []


@pytest.mark.parametrize(("val", "test", "message"), [
    (-0.1, 0.0, "val_fraction must be in"), (0.0, 1.0, "test_fraction must be in"), (0.6, 0.4, "must be below 1"),
])
def test_split_by_fraction_validates(genome: GenomeStore, val: float, test: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_by_fraction(genome, val, test)


def test_split_by_contigs_resolves_names_and_validates(genome: GenomeStore) -> None:
    split = split_by_contigs(genome, val=["2"], test=["MT"])
    assert split.train == [Segment("chr1", 0, 1000)]
    assert split.val == [Segment("chr2", 0, 1000)]
    assert split.test == [Segment("chrM", 0, 50)]
    assert split_by_contigs(genome, val="chr2").train == [Segment("chr1", 0, 1000), Segment("chrM", 0, 50)]
    # YAML and Hydra read a bare 1 as an integer; it names contig 'chr1' / '1' like the string does.
    assert split_by_contigs(genome, val=[2], test=1).val == [Segment("chr2", 0, 1000)]
    assert split_by_contigs(genome, val=[2], test=1).test == [Segment("chr1", 0, 1000)]
    with pytest.raises(UnknownContigError, match="unknown contig 'chr9'"):
        split_by_contigs(genome, val=["chr9"])
    with pytest.raises(ValueError, match="'chr2' is in both the val and the test split"):
        split_by_contigs(genome, val=["chr2"], test=["2"])
    with pytest.raises(ValueError, match="leaves no training contig"):
        split_by_contigs(genome, val=["chr1", "chr2"], test=["chrM"])
    with pytest.raises(ValueError, match="listed twice in the val split"):
        split_by_contigs(genome, val=["chr1", "1"])


def test_split_by_files_uses_one_store_per_part(tmp_path: Path, genome: GenomeStore) -> None:
    other = make_store(tmp_path, {"s1": random_bases(300, 9)}, name="other")
    split = split_by_files(genome, val=other)
    assert split.store("train") is genome and split.store("val") is other
    assert split.val == [Segment("s1", 0, 300)] and split.test == []
    with pytest.raises(ValueError, match="extends past the end"):
        Split([Segment("chr1", 0, 2000)], [], [], stores=dict.fromkeys(("train", "val", "test"), genome))
    with pytest.raises(ValueError, match="no training data"):
        Split([], [], [], stores=dict.fromkeys(("train", "val", "test"), genome))
    with pytest.raises(ValueError, match="0 <= start < end"):
        Segment("chr1", 5, 5)


def test_windows_tile_segments_without_overlap(genome: GenomeStore) -> None:
    windows = plan_windows(genome, [Segment("chr1", 10, 1000)], 100)
    assert windows[:, 0].tolist() == [0] * 9
    assert windows[:, 1].tolist() == list(range(10, 910, 100))  # the incomplete 90 bp tail is dropped


def test_sub_segments_and_anchored_windows(genome: GenomeStore) -> None:
    # Sub-segments of 250: [0,250) [250,500) [500,750) [750,1000) each hold two 100 bp windows.
    tiled = plan_windows(genome, [Segment("chr1", 0, 1000)], 100, segment_length=250)
    assert tiled[:, 1].tolist() == [0, 100, 250, 350, 500, 600, 750, 850]
    # Sub-segments of 60 < window 100: windows anchored at each piece's start and end, kept inside the contig.
    anchored = plan_windows(genome, [Segment("chr1", 880, 1000)], 100, segment_length=60)
    assert anchored[:, 1].tolist() == [880, 840, 900]  # [880,940): start 880, end 840; [940,1000): 900 twice
    # A segment shorter than the window at the contig start: the end-anchored window clips to 0.
    assert plan_windows(genome, [Segment("chr1", 0, 30)], 100)[:, 1].tolist() == [0]
    short = plan_windows(genome, [Segment("chr1", 500, 530)], 100)
    assert short[:, 1].tolist() == [500, 430]


def test_windows_with_too_many_n_are_skipped(genome: GenomeStore) -> None:
    segment = [Segment("chr2", 0, 1000)]
    kept = plan_windows(genome, segment, 100, max_n_fraction=0.1)
    assert kept[:, 1].tolist() == [0, 100, 200, 300, 700, 800, 900]
    assert len(plan_windows(genome, segment, 100, max_n_fraction=1.0)) == 10
    # [350, 450) ... overlaps the run by 50 bases: kept at max 0.5, skipped at 0.49.
    assert 350 in plan_windows(genome, [Segment("chr2", 350, 450)], 100, max_n_fraction=0.5)[:, 1]
    assert len(plan_windows(genome, [Segment("chr2", 350, 450)], 100, max_n_fraction=0.49)) == 0


def test_contig_shorter_than_window(genome: GenomeStore) -> None:
    # Without padding a contig shorter than the window holds none (a plasmid beside a chromosome must not stop a
    # run); the other contigs still get theirs.
    unpadded = plan_windows(genome, whole_contigs(genome), 64, max_n_fraction=1.0)
    assert len(unpadded) > 0 and genome.index_of("chrM") not in unpadded[:, 0]
    assert len(plan_windows(genome, [Segment("chrM", 0, 50)], 64)) == 0
    padded = plan_windows(genome, [Segment("chrM", 0, 50)], 64, pad=True, max_n_fraction=1.0)
    assert padded.tolist() == [[2, 0], [2, -14]]
    dataset = WindowDataset(genome, padded, 64)
    np.testing.assert_array_equal(dataset[0][50:].numpy(), 4)
    np.testing.assert_array_equal(dataset[1][:14].numpy(), 4)
    np.testing.assert_array_equal(dataset[0][:50].numpy(), genome.array("chrM"))
    assert len(plan_windows(genome, [Segment("chrM", 0, 50)], 64, pad=True, max_n_fraction=0.1)) == 0


def test_window_dataset_items_and_reverse_complement(genome: GenomeStore) -> None:
    windows = plan_windows(genome, whole_contigs(genome, ["chr1", "chr2"]), 100)
    plain = WindowDataset(genome, windows, 100)
    assert len(plain) == len(windows)
    for i, (contig, start) in enumerate(windows):
        item = plain[i]
        assert item.dtype == torch.int64 and item.shape == (100,)
        np.testing.assert_array_equal(item.numpy(), genome.fetch(genome.names[contig], start, start + 100))
    flipped = WindowDataset(genome, windows, 100, reverse_complement_prob=1.0)
    for i in range(len(windows)):
        assert torch.equal(flipped[i], reverse_complement(plain[i]))

    half = WindowDataset(genome, windows, 100, reverse_complement_prob=0.5, seed=3)
    def draws(dataset: WindowDataset) -> list[bool]:
        return [not torch.equal(dataset[i], plain[i]) for i in range(len(dataset))]
    epoch0 = draws(half)
    assert epoch0 == draws(half)  # reproducible
    assert epoch0 == draws(WindowDataset(genome, windows, 100, reverse_complement_prob=0.5, seed=3))
    assert 0 < sum(epoch0) < len(epoch0)
    half.set_epoch(1)
    assert draws(half) != epoch0
    half.set_epoch(0)
    assert draws(half) == epoch0


def test_datasets_are_picklable_and_work_in_workers(genome: GenomeStore) -> None:
    windows = plan_windows(genome, whole_contigs(genome, ["chr1", "chr2"]), 100)
    dataset = WindowDataset(genome, windows, 100, reverse_complement_prob=0.5, seed=1)
    clone = pickle.loads(pickle.dumps(dataset))
    assert all(torch.equal(clone[i], dataset[i]) for i in range(len(dataset)))
    loader = DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True)
    for epoch in range(2):
        dataset.set_epoch(epoch)  # reaches the persistent workers through shared memory
        in_process = torch.stack([dataset[i] for i in range(len(dataset))])
        assert torch.equal(torch.cat(list(loader)), in_process)


def test_random_window_dataset(genome: GenomeStore) -> None:
    segments = [Segment("chr1", 100, 900), Segment("chr2", 0, 1000)]
    dataset = RandomWindowDataset(genome, segments, 100, num_samples=200, seed=7, max_n_fraction=0.0)
    assert len(dataset) == 200
    chr1, chr2 = genome.array("chr1").tobytes(), genome.array("chr2").tobytes()
    for i in range(len(dataset)):
        item = dataset[i].numpy()
        assert not np.any(item == 4)  # max_n_fraction=0 rejects every draw touching the N run
        needle = item.astype(np.uint8).tobytes()
        assert 100 <= chr1.find(needle) <= 800 or chr2.find(needle) >= 0  # lies inside one of the segments
    again = RandomWindowDataset(genome, segments, 100, num_samples=200, seed=7, max_n_fraction=0.0)
    assert all(torch.equal(dataset[i], again[i]) for i in range(20))
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[5], dataset[5])
    short = RandomWindowDataset(genome, [Segment("chrM", 0, 50)], 64, num_samples=4, pad=True, max_n_fraction=1.0)
    assert all((short[i].numpy() == 4).sum() == 14 for i in range(4))
    mixed = RandomWindowDataset(genome, [Segment("chrM", 0, 50), Segment("chr1", 0, 1000)], 64, num_samples=8)
    assert all(chr1.find(mixed[i].numpy().astype(np.uint8).tobytes()) >= 0 for i in range(8))  # chrM left out
    with pytest.raises(ValueError, match="every segment is on a contig shorter than the 64 bp window"):
        RandomWindowDataset(genome, [Segment("chrM", 0, 50)], 64, num_samples=1)
    with pytest.raises(RuntimeError, match="no window with at most 0% N"):
        RandomWindowDataset(genome, [Segment("chr2", 450, 650)], 100, num_samples=1, max_n_fraction=0.0)[0]


def test_window_arrays_on_a_real_genome(tmp_path: Path) -> None:
    store = build_store(ECOLI, tmp_path / "ecoli", progress=False)
    split = split_by_fraction(store, 0.05)
    windows = plan_windows(store, split.val, 4096)
    assert len(windows) == (4_639_675 - split.train[0].end) // 4096
    arrays = list(window_arrays(store, windows, 4096))
    np.testing.assert_array_equal(arrays[-1], store.array("K-12-MG1655")[windows[-1, 1]:windows[-1, 1] + 4096])
