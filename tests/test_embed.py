"""Embedding extraction: equality with a direct forward pass, streaming, strands, regions, files, CLI, probes."""

import gzip
import json
import warnings

import numpy as np
import pytest
import torch

from dna_mamba.genomics import (
    BedFormatError,
    Region,
    UnknownContigError,
    read_bed,
    resolve_contig_name,
    tile_windows,
)
from dna_mamba.model.config import DnaMambaConfig
from dna_mamba.model.mamba import DnaMambaLM
from dna_mamba.tasks.downstream import evaluate_held_out, fit_classifier, kmer_features, sweep_layers
from dna_mamba.tasks.embed import embed, embed_regions, load_embeddings, resolve_layers
from dna_mamba.tokenizer import InvalidSequenceError, encode

N_LAYER = 2
ATOL = 1e-5


@pytest.fixture(scope="module")
def model() -> DnaMambaLM:
    torch.manual_seed(0)
    return DnaMambaLM(DnaMambaConfig(d_model=16, n_layer=N_LAYER, d_state=4)).eval()


@pytest.fixture(scope="module")
def sequences() -> list[str]:
    rng = np.random.default_rng(0)
    return ["".join(rng.choice(list("ACGT"), size=n)) + "N" for n in (40, 23, 7)]


def direct_hidden(model, sequence: str) -> list[np.ndarray]:
    """All hidden states of one sequence from the model's own forward pass: n_layer + 1 arrays (L, D)."""
    ids = torch.from_numpy(encode(sequence)).long()[None]
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    return [h[0].float().numpy() for h in hidden]


def rc(sequence: str) -> str:
    return sequence[::-1].translate(str.maketrans("ACGTN", "TGCAN"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A small plain FASTA with two contigs named as in the wild ('chr1', 'MT'), indexed by pyfaidx on first use."""
    rng = np.random.default_rng(1)
    contigs = {"chr1": "".join(rng.choice(list("ACGT"), size=50)), "MT": "".join(rng.choice(list("ACGT"), size=21))}
    path = tmp_path_factory.mktemp("ref") / "ref.fa"
    path.write_text("".join(f">{name} test\n{seq[:30]}\n{seq[30:]}\n" for name, seq in contigs.items()))
    return path, contigs


def test_resolve_layers():
    assert resolve_layers(-1, 4) == ([4], False)
    assert resolve_layers([0, -2, 4], 4) == ([0, 3, 4], True)
    assert resolve_layers("all", 2) == ([0, 1, 2], True)
    with pytest.raises(ValueError, match="layer 5 is out of range.*-5 to 4"):
        resolve_layers(5, 4)
    with pytest.raises(ValueError, match="same hidden state"):
        resolve_layers([-1, 4], 4)
    with pytest.raises(ValueError, match="empty"):
        resolve_layers([], 4)
    with pytest.raises(ValueError, match="integers"):
        resolve_layers([1.5], 4)


def test_pooled_and_per_position_equal_direct_forward(model, sequences):
    # Three lengths in one batch: right padding must not leak into shorter sequences.
    layers = list(range(N_LAYER + 1))
    mean = embed(model, sequences, layers=layers, pooling="mean", progress=False)
    last = embed(model, sequences, layers=layers, pooling="last", progress=False)
    per_position = embed(model, sequences, layers=layers, pooling="none", progress=False)
    assert mean.shape == last.shape == (3, N_LAYER + 1, 16)
    for i, sequence in enumerate(sequences):
        hidden = direct_hidden(model, sequence)
        assert per_position[i].shape == (len(sequence), N_LAYER + 1, 16)
        for k, h in enumerate(hidden):
            np.testing.assert_allclose(mean[i, k], h.mean(0), atol=ATOL)
            np.testing.assert_allclose(last[i, k], h[-1], atol=ATOL)
            np.testing.assert_allclose(per_position[i][:, k], h, atol=ATOL)


def test_chunked_equals_one_pass(model, sequences):
    rows = [encode(sequences[0][:35]), encode(sequences[1] * 2)[:35]]
    ids = torch.from_numpy(np.stack(rows))  # a 2-D batch of token ids
    for pooling in ("mean", "last", "none"):
        whole = embed(model, ids, layers=[1, -1], pooling=pooling, chunk_tokens=1 << 12, progress=False)
        chunked = embed(model, ids, layers=[1, -1], pooling=pooling, chunk_tokens=6, batch_size=2, progress=False)
        np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), atol=ATOL)


def test_strands_both_averages_forward_and_reverse_complement(model, sequences):
    sequence = sequences[1]
    forward, reverse = direct_hidden(model, sequence)[-1], direct_hidden(model, rc(sequence))[-1]
    both = {p: embed(model, sequence, pooling=p, strands="both", chunk_tokens=5, progress=False)
            for p in ("mean", "last", "none")}
    np.testing.assert_allclose(both["mean"], (forward.mean(0) + reverse.mean(0)) / 2, atol=ATOL)
    # "last" on the reverse strand is the reverse complement's last position, i.e. forward position 0.
    np.testing.assert_allclose(both["last"], (forward[-1] + reverse[-1]) / 2, atol=ATOL)
    # Per position, the reverse-complement outputs are flipped back to forward coordinates.
    np.testing.assert_allclose(both["none"], (forward + reverse[::-1]) / 2, atol=ATOL)


def test_input_forms_and_errors(model, sequences):
    single = embed(model, sequences[2], progress=False)
    assert single.shape == (16,)
    from_ids = embed(model, [encode(sequences[2]), sequences[2].encode()], progress=False)
    np.testing.assert_allclose(from_ids, np.stack([single, single]), atol=ATOL)
    assert embed(model, sequences[2], layers=[0, 2], pooling="none", progress=False).shape == (8, 2, 16)
    with pytest.raises(ValueError, match="no sequences"):
        embed(model, [], progress=False)
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        embed(model, ["ACGT", ""], progress=False)
    with pytest.raises(InvalidSequenceError, match="sequence 0, position 3: invalid character 'X'"):
        embed(model, ["ACXT"], progress=False)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 5\)"):  # bases only: A C G T N
        embed(model, np.array([0, 1, 16]), progress=False)
    with pytest.raises(ValueError, match="integers"):
        embed(model, np.array([0.0, 1.0]), progress=False)
    with pytest.raises(ValueError, match="pooling must be one of"):
        embed(model, "ACGT", pooling="max", progress=False)
    with pytest.raises(ValueError, match="strands must be one of"):
        embed(model, "ACGT", strands="reverse", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        embed(model, "ACGT", layers=3, progress=False)


def test_genomics_helpers(tmp_path):
    available = ["chr1", "chr2", "chrM"]
    assert resolve_contig_name("chr2", available) == "chr2"
    assert resolve_contig_name("1", available) == "chr1"
    assert resolve_contig_name("MT", available) == "chrM"
    assert resolve_contig_name("chrMT", ["M"]) == "M"
    with pytest.raises(UnknownContigError, match="unknown contig 'chr9' \\(available: chr1, chr2, chrM\\)"):
        resolve_contig_name("chr9", available)
    with pytest.raises(UnknownContigError, match="ambiguous"):
        resolve_contig_name("1", ["chr1", "CHR1"])

    bed = tmp_path / "r.bed.gz"
    with gzip.open(bed, "wt") as handle:
        handle.write("track name=x\n# comment\nchr1\t5\t10\tpeak1\t0\t-\n\n1 0 3\n")
    assert read_bed(bed) == [Region("chr1", 5, 10, "peak1", "-"), Region("1", 0, 3, "1:0-3", ".")]
    with pytest.raises(BedFormatError, match="line 2: .*end must be >= start"):
        read_bed(["chr1\t1\t2", "chr1\t5\t4"])
    for start, end in [("x", "4"), ("1_0", "20"), ("+10", "20"), ("-5", "3"), ("2.0", "5"), ("1", "٣")]:
        # int() would take the underscore, the sign and the Arabic-Indic digit: plain ASCII digits only
        with pytest.raises(BedFormatError, match="line 1: start and end must be non-negative integers"):
            read_bed([f"chr1\t{start}\t{end}"])
    assert read_bed(["browser position chr1:1-10", "chr1 0 3"]) == [Region("chr1", 0, 3, "chr1:0-3", ".")]
    with pytest.raises(FileNotFoundError, match="no such BED file"):
        read_bed(tmp_path / "missing.bed")

    windows = tile_windows({"a": 10, "b": 3}, 4, 3)
    assert [(w.chrom, w.start, w.end) for w in windows] == [("a", 0, 4), ("a", 3, 7), ("a", 6, 10), ("b", 0, 4)]
    assert len(tile_windows({"a": 10, "b": 3}, 4, keep_partial=False)) == 2


def test_embed_regions_reads_pads_and_keeps_order(model, reference):
    path, contigs = reference
    regions = [
        Region("chr1", 40, 50, "past_end"),  # with flank 4 the window runs 4 bases past the contig end
        ("1", 2, 12, "renamed"),  # chr1 written as '1'
        Region("chrM", 0, 10, "minus", "-"),  # chrM resolves to MT; '-' reads the reverse complement
        Region("chr1", 20, 20, "point"),  # zero-length: flank 4 gives an 8-base window
    ]
    with pytest.warns(UserWarning, match="3 of 4 regions reach past a contig end"):
        result = embed_regions(model, path, regions, flank=4, pooling="mean", progress=False)
    assert result.metadata["padded_regions"] == 3
    assert result.names == ["past_end", "renamed", "minus", "point"]
    assert [r.chrom for r in result.regions] == ["chr1", "1", "chrM", "chr1"]
    chr1, mt = contigs["chr1"], contigs["MT"]
    expected = [chr1[36:50] + "NNNN", "NN" + chr1[0:16], rc("NNNN" + mt[0:14]), chr1[16:24]]
    direct = embed(model, expected, progress=False)
    np.testing.assert_allclose(result.values, direct, atol=ATOL)
    # The same from an in-memory mapping and from token arrays.
    with pytest.warns(UserWarning, match="3 of 4 regions"):
        mapping = embed_regions(model, {"chr1": encode(chr1), "MT": mt}, regions, flank=4, progress=False)
    np.testing.assert_allclose(mapping.values, direct, atol=ATOL)
    ignore = embed_regions(model, path, [Region("MT", 0, 10, strand="-")], use_strand=False, progress=False)
    np.testing.assert_allclose(ignore.values[0], embed(model, mt[:10], progress=False), atol=ATOL)


def test_embed_regions_errors(model, reference):
    path, _ = reference
    with pytest.raises(UnknownContigError, match="unknown contig 'chr7'"):
        embed_regions(model, path, [("chr1", 0, 5), ("chr7", 0, 5)], progress=False)
    with pytest.raises(ValueError, match="regions\\[0\\]: region chr1:9-9 is empty"):
        embed_regions(model, path, [("chr1", 9, 9)], progress=False)
    with pytest.raises(ValueError, match="starts past the end of contig 'chr1' \\(50 bp\\)"):
        embed_regions(model, path, [("chr1", 60, 70)], progress=False)
    with pytest.raises(ValueError, match="no regions"):
        embed_regions(model, path, [], progress=False)
    with pytest.raises(ValueError, match="not both"):
        embed_regions(model, path, [("chr1", 0, 5)], window=10, progress=False)
    with pytest.raises(ValueError, match="no such file"):
        embed_regions(model, path.with_name("missing.fa"), window=10, progress=False)
    # One contig given as a string is that contig, not one contig per character
    whole = embed_regions(model, path, contigs="MT", progress=False)
    assert [(r.chrom, r.start) for r in whole.regions] == [("MT", 0)]


def test_bed_errors_name_the_file_and_line(model, reference, tmp_path):
    path, _ = reference
    bed = tmp_path / "r.bed"
    cases = {
        b"track name=x\nchr1\t0\t5\n\nchr7\t0\t5\n": (UnknownContigError, "r.bed, line 4: unknown contig 'chr7'"),
        b"chr1\t0\t5\nchr1\t60\t70\tfar\n": (ValueError,
                                           "r.bed, line 2: region chr1:60-70 \\('far'\\) starts past the end"),
        b"#header\nchr1\t3\t3\n": (ValueError, "r.bed, line 2: region chr1:3-3 is empty"),
        b"": (ValueError, "r.bed: no regions to embed"),
        b"track name=x\n": (ValueError, "r.bed: no regions to embed"),
        b"chr1\t0\t5\n\x89PNG\xff\xfe\n": (BedFormatError, "r.bed, line 2: bytes that are not text"),
        gzip.compress(b"chr1\t0\t5\n")[:-6]: (BedFormatError, "r.bed: truncated or corrupt gzip data"),
    }
    for content, (error, message) in cases.items():
        bed.write_bytes(content)
        with pytest.raises(error, match=message):
            embed_regions(model, path, bed, progress=False)


def test_padding_past_contig_ends_is_counted(model, reference, tmp_path, capsys):
    from dna_mamba.tasks.embed_cli import main

    path, _ = reference
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # regions inside their contigs: no warning
        inside = embed_regions(model, path, [("chr1", 0, 50), ("MT", 1, 21)], progress=False)
    assert inside.metadata["padded_regions"] == 0
    model.save_pretrained(tmp_path / "model")
    bed = tmp_path / "r.bed"
    bed.write_text("chr1\t5\t15\nchr1\t45\t55\nMT\t0\t5\n")
    with pytest.warns(UserWarning, match="1 of 3 regions reach past a contig end"):
        assert main(["--model", str(tmp_path / "model"), "--fasta", str(path), "--bed", str(bed), "--out",
                     str(tmp_path / "r.npz"), "--no-progress", "--device", "cpu"]) == 0
    assert "1 of 3 regions reach past a contig end" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="2 of 3 regions"):  # a flank reaches before the contig starts too
        assert embed_regions(model, path, bed, flank=1, progress=False).metadata["padded_regions"] == 2


def test_embed_input_errors(model):
    with pytest.raises(ValueError, match=r"got a dict \(pass list\(d.values\(\)\)"):
        embed(model, {"gata": "CCCCCCCC"}, progress=False)  # would embed the key 'gata'
    with pytest.raises(ValueError, match="got a set"):
        embed(model, {"ACGT", "CCGG"}, progress=False)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 5\), got 0..7"):
        embed(model, torch.tensor([0, 1, 7]), progress=False)  # special tokens have no reverse complement


def test_files_round_trip_with_metadata(model, reference, tmp_path):
    path, _ = reference
    for name in ("w.parquet", "w.npz", "w.npy"):
        with pytest.warns(UserWarning, match="1 of 5 regions reach past a contig end"):  # MT:15-35, MT being 21 bp
            result = embed_regions(model, path, window=20, stride=15, layers=[0, -1], strands="both",
                                   out=tmp_path / name, progress=False)
        loaded = load_embeddings(tmp_path / name)
        assert loaded.names == result.names == ["chr1:0-20", "chr1:15-35", "chr1:30-50", "MT:0-20", "MT:15-35"]
        assert loaded.regions == result.regions
        assert (loaded.layers, loaded.layer_axis, loaded.pooling, loaded.strands) == ([0, 2], True, "mean", "both")
        assert loaded.metadata["fasta"] == str(path) and loaded.metadata["window"] == 20
        assert loaded.metadata["model"]["d_model"] == 16
        np.testing.assert_array_equal(loaded.values, result.values)
        np.testing.assert_array_equal(loaded.layer(-1), result.values[:, 1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npy", "w.npy.json", "w.npz", "w.parquet"]
    # Plain sequences (no regions), per position, in memory then to .npz.
    values = embed(model, ["ACGTN", "GGA"], pooling="none", names=["a", "b"], out=tmp_path / "s.npz", progress=False)
    loaded = load_embeddings(tmp_path / "s.npz")
    assert loaded.names == ["a", "b"] and loaded.regions is None and loaded.offsets.tolist() == [0, 5, 8]
    np.testing.assert_array_equal(loaded.sequence(1), values[1])


def test_per_position_streams_to_npy(model, reference, tmp_path):
    path, contigs = reference
    out = tmp_path / "pos.npy"
    result = embed_regions(model, path, contigs=["chr1", "chrM"], pooling="none", strands="both", chunk_tokens=7,
                           dtype=np.float16, out=out, progress=False)
    assert isinstance(result.values, np.memmap) and result.values.dtype == np.float16
    loaded = load_embeddings(out)
    assert loaded.offsets.tolist() == [0, 50, 71] and loaded.names == ["chr1:0-50", "MT:0-21"]
    expected = embed(model, contigs["MT"], pooling="none", strands="both", progress=False)
    np.testing.assert_allclose(loaded.sequence(1), expected, atol=2e-3 * np.abs(expected).max())
    assert json.loads((tmp_path / "pos.npy.json").read_text())["offsets"] == [0, 50, 71]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pos.npy", "pos.npy.json"]  # no temporary left behind
    with pytest.raises(ValueError, match="not parquet"):
        embed_regions(model, path, contigs=["chr1"], pooling="none", out=tmp_path / "x.parquet", progress=False)


def test_cli(model, reference, tmp_path, capsys):
    from dna_mamba.tasks.embed_cli import main

    path, _ = reference
    model.save_pretrained(tmp_path / "model")
    bed = tmp_path / "r.bed"
    bed.write_text("chr1\t0\t10\ta\nchrM\t5\t15\tb\t0\t-\n")
    out = tmp_path / "r.parquet"
    argv = ["--model", str(tmp_path / "model"), "--fasta", str(path), "--bed", str(bed), "--layers", "0,-1",
            "--strands", "both", "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert "embedded 2 regions (20 b, both strands)" in summary and "r.parquet" in summary
    loaded = load_embeddings(out)
    assert loaded.names == ["a", "b"] and loaded.values.shape == (2, 2, 16)
    bad = tmp_path / "bad.bed"
    bad.write_text("chr9\t0\t10\n")
    with pytest.raises(SystemExit) as exit_info:
        main([*argv[:4], "--bed", str(bad), "--out", str(out), "--no-progress"])
    assert exit_info.value.code == 1
    assert "bad.bed, line 1: unknown contig 'chr9'" in capsys.readouterr().err


def test_cli_out_of_memory_names_the_embedding_options(model, reference, tmp_path, monkeypatch, capsys):
    import dna_mamba.tasks.embed
    from dna_mamba.tasks.embed_cli import main

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB\nmore detail")

    monkeypatch.setattr(dna_mamba.tasks.embed, "embed_regions", out_of_memory)
    path, _ = reference
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "model"), "--fasta", str(path), "--window", "25", "--out",
              str(tmp_path / "w.npz"), "--no-progress", "--device", "cpu"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error: GPU out of memory (CUDA out of memory. Tried to allocate 4.00 GiB)" in err
    assert "--chunk-tokens" in err and "--batch-size" in err
    assert "trainer." not in err and "more detail" not in err


def test_cli_takes_negative_layer_lists(model, reference, tmp_path, capsys):
    from dna_mamba.cli import main

    path, _ = reference
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "w.npz"
    argv = ["embed", "--model", str(tmp_path / "model"), "--fasta", str(path), "--window", "25", "--contigs", "chr1",
            "--out", str(out),
            "--no-progress", "--device", "cpu"]
    assert main([*argv, "--layers", "-1,0"]) == 0  # argparse alone takes '-1,0' for an option
    assert load_embeddings(out).layers == [N_LAYER, 0]
    assert main([*argv, "--layers", "-2"]) == 0
    assert load_embeddings(out).layers == [N_LAYER - 1]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--layers", "-1,x"])
    assert exit_info.value.code == 1
    assert "--layers must be an integer, comma-separated integers or 'all', got '-1,x'" in capsys.readouterr().err


def test_downstream_probes():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    features = rng.normal(size=(60, 5)) + labels[:, None] * 3.0
    groups = np.tile(np.arange(4), 15)
    report = fit_classifier(features, labels, groups=groups, cv=5)
    assert report.accuracy > 0.95 and report.splitter == "GroupKFold(4)" and report.n_classes == 3
    svm = fit_classifier(features, labels, classifier="linear_svm", cv=3)
    assert svm.accuracy > 0.95 and len(svm.fold_accuracies) == 3
    held_out = evaluate_held_out(features[groups < 3], labels[groups < 3], features[groups == 3], labels[groups == 3])
    assert held_out.accuracy > 0.9 and held_out.confusion.shape == (3, 3)
    sweep = sweep_layers(np.stack([rng.normal(size=(60, 5)), features], axis=1), labels, cv=3)
    assert sweep[1].accuracy > sweep[0].accuracy
    with pytest.raises(ValueError, match="2-D"):
        fit_classifier(features[:, None], labels)
    with pytest.raises(ValueError, match="two classes"):
        fit_classifier(features, np.zeros(60))
    kmers = kmer_features(["ACGTACGT", encode("AAAAANAAAA")], ks=(1, 2))
    assert kmers.shape == (2, 20)
    np.testing.assert_allclose(kmers[1, :4], [1, 0, 0, 0])
    np.testing.assert_allclose(kmers.sum(1), [2, 2])



# --------------------------------------------------------------------------------------------------------------------
# Inputs and outputs that must fail clearly (or work) rather than give a traceback or a wrong answer.


def test_bed_with_a_byte_order_mark(model, reference, tmp_path):
    path, contigs = reference
    bed = tmp_path / "bom.bed"
    bed.write_bytes("\ufeffchr1\t0\t10\tfirst\n".encode())  # as Notepad saves UTF-8
    result = embed_regions(model, path, bed, progress=False)
    assert result.regions == [Region("chr1", 0, 10, "first")]
    np.testing.assert_allclose(result.values[0], embed(model, contigs["chr1"][:10], progress=False), atol=ATOL)
    gzipped = tmp_path / "bom.bed.gz"
    gzipped.write_bytes(gzip.compress(b"\xef\xbb\xbftrack name=x\nchr1\t0\t10\n"))
    assert read_bed(gzipped) == [Region("chr1", 0, 10)]
    assert read_bed(["\ufeffchr1\t0\t10"]) == read_bed([b"\xef\xbb\xbfchr1\t0\t10"]) == [Region("chr1", 0, 10)]


def test_compressed_fasta_is_told_by_its_bytes_not_its_name(model, reference, tmp_path):
    from Bio import bgzf

    path, _ = reference
    regions = [("chr1", 5, 45), ("MT", 0, 21, "mt", "-")]
    expected = embed_regions(model, path, regions, progress=False).values
    bgzipped = tmp_path / "bgzip.fa"
    with bgzf.BgzfWriter(str(bgzipped), "wb") as writer:
        writer.write(path.read_bytes())
    for _ in range(2):  # the second run reads the index the first one wrote
        np.testing.assert_allclose(embed_regions(model, bgzipped, regions, progress=False).values, expected, atol=ATOL)
    # The index lies beside the file, as for bgzip.fa.gz; nothing else is left behind.
    assert {p.name for p in tmp_path.iterdir()} <= {"bgzip.fa", "bgzip.fa.fai", "bgzip.fa.gzi"}
    assert (tmp_path / "bgzip.fa.fai").is_file()
    gzipped = tmp_path / "gzip.fa"
    gzipped.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.warns(UserWarning, match="plain gzip has no random access"):
        np.testing.assert_allclose(embed_regions(model, gzipped, regions, progress=False).values, expected, atol=ATOL)


def test_directories_given_as_inputs_are_named(model, reference, tmp_path, capsys):
    from dna_mamba.tasks.embed_cli import main

    path, _ = reference
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="folder: is a directory, not a BED file"):
        embed_regions(model, path, folder, progress=False)
    with pytest.raises(ValueError, match="folder: is a directory, not a FASTA file"):
        embed_regions(model, folder, [("chr1", 0, 5)], progress=False)
    model.save_pretrained(tmp_path / "model")
    bed = tmp_path / "r.bed"
    bed.write_text("chr1\t0\t10\n")
    for fasta, bed_arg, message in [(path, folder, "is a directory, not a BED file"),
                                    (folder, bed, "is a directory, not a FASTA file")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["--model", str(tmp_path / "model"), "--fasta", str(fasta), "--bed", str(bed_arg), "--out",
                  str(tmp_path / "r.npz"), "--no-progress", "--device", "cpu"])
        assert exit_info.value.code == 1
        assert f"error: {folder}: {message}" in capsys.readouterr().err


def test_cli_device_errors(model, reference, tmp_path, capsys):
    from dna_mamba.tasks.embed_cli import main

    path, _ = reference
    model.save_pretrained(tmp_path / "model")
    argv = ["--model", str(tmp_path / "model"), "--fasta", str(path), "--window", "25", "--contigs", "chr1", "--out",
            str(tmp_path / "w.npz"), "--no-progress"]
    cases = {"foo": "--device foo: not a torch device (use cpu, cuda, cuda:1, mps or auto)",
             "meta": "--device meta: dna_mamba runs on cpu, cuda or mps, not meta"}
    if not torch.cuda.is_available():
        cases["cuda"] = "--device cuda: CUDA is not available on this machine"
        cases["cuda:1"] = "--device cuda:1: CUDA is not available on this machine"
    for device, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--device", device])
        assert exit_info.value.code == 1
        assert f"error: {message}" in capsys.readouterr().err
    assert main([*argv, "--device", "auto"]) == 0
    assert load_embeddings(tmp_path / "w.npz").names == ["chr1:0-25", "chr1:25-50"]


def test_bad_outputs_fail_before_any_work(model, reference, tmp_path, monkeypatch, capsys):
    import dna_mamba.tasks.embed
    from dna_mamba.tasks.embed_cli import main

    path, _ = reference
    model.save_pretrained(tmp_path / "model")

    def no_reading(*args, **kwargs):
        raise AssertionError("the reference was read before the output was checked")

    def no_compute(*args, **kwargs):
        raise AssertionError("the model ran before the output was checked")

    monkeypatch.setattr(dna_mamba.tasks.embed._Reference, "open", no_reading)
    monkeypatch.setattr(dna_mamba.tasks.embed._Engine, "run", no_compute)
    afile = tmp_path / "afile.txt"
    afile.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "model"), "--fasta", str(path), "--window", "25", "--out",
              str(afile / "emb.npz"), "--no-progress", "--device", "cpu"])
    assert exit_info.value.code == 1
    assert f"{afile / 'emb.npz'}: cannot create its folder inside {afile}, which is a file" in capsys.readouterr().err
    with pytest.raises(NotADirectoryError, match="afile.txt, which is a file"):
        embed_regions(model, path, window=25, out=afile / "deeper" / "emb.npy", progress=False)
    with pytest.raises(NotADirectoryError, match="afile.txt, which is a file"):
        embed(model, "ACGT", out=afile / "emb.npz", progress=False)
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(IsADirectoryError, match="folder.npz: is a directory; give a file name"):
        embed(model, "ACGT", out=tmp_path / "folder.npz", progress=False)
    # An output that would overwrite an input, even one with an output's suffix.
    fasta = tmp_path / "ref.npz"
    fasta.write_bytes(path.read_bytes())
    bed = tmp_path / "regions.npy"
    bed.write_text("chr1\t0\t10\n")
    for fasta_arg, bed_arg, out, kind in [(fasta, [("chr1", 0, 5)], fasta, "FASTA"), (path, bed, bed, "BED"),
                                          (path, bed, bed.name, "BED")]:
        monkeypatch.chdir(tmp_path)  # the last case names the BED by another path
        with pytest.raises(ValueError, match=f"is the {kind} input .*destroy the input"):
            embed_regions(model, fasta_arg, bed_arg, out=out, progress=False)
    assert fasta.read_bytes() == path.read_bytes() and bed.read_text() == "chr1\t0\t10\n"


def test_outputs_are_replaced_whole_with_the_usual_permissions(model, reference, tmp_path, monkeypatch):
    import os

    import dna_mamba.tasks.embed

    path, _ = reference
    umask = os.umask(0o022)
    try:
        for name in ("w.npz", "w.parquet", "w.npy"):
            embed_regions(model, path, contigs=["MT"], out=tmp_path / name, progress=False)
        embed_regions(model, path, contigs=["MT"], pooling="none", out=tmp_path / "p.npy", progress=False)
    finally:
        os.umask(umask)
    for name in ("w.npz", "w.parquet", "w.npy", "w.npy.json", "p.npy", "p.npy.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name  # not 0600: others may read results

    # A per-position .npy whose run stops between the values and the sidecar must not load with the old sidecar,
    # which here describes other regions with the same number of positions.
    out = tmp_path / "pos.npy"
    embed_regions(model, path, contigs=["chr1", "MT"], pooling="none", out=out, progress=False)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dna_mamba.tasks.embed, "write_sidecar", crash)
    with pytest.raises(KeyboardInterrupt):
        embed_regions(model, path, contigs=["MT", "chr1"], pooling="none", out=out, progress=False)
    with pytest.raises(FileNotFoundError, match="sidecar pos.npy.json .* is missing"):
        load_embeddings(out)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # atomic_output's temporary files


def test_api_type_errors_are_clear(model, reference):
    path, contigs = reference
    for layers in (1.0, None, True):
        with pytest.raises(ValueError, match="layers must be an int, a list of ints or 'all'"):
            embed(model, "ACGT", layers=layers, progress=False)
    with pytest.raises(TypeError, match="sequences must be a string, bytes, token ids or a list of them, got int"):
        embed(model, 5, progress=False)
    np.testing.assert_allclose(embed(model, bytearray(b"ACGT"), progress=False), embed(model, "ACGT", progress=False),
                               atol=ATOL)
    cases = [
        (("chr1", "10", "20"), "regions\\[0\\]: region chr1:10-20: start must be an integer, got '10'"),
        (("chr1", 10, 20.0), "regions\\[0\\]: region chr1:10-20.0: end must be an integer, got 20.0"),
        ((b"chr1", 10, 20), "regions\\[0\\]: a region's contig name must be a string, got b'chr1'"),
        (("chr1", 10), "regions\\[0\\]: expected a Region or a \\(chrom, start, end"),
        ("chr1:10-20", "regions\\[0\\]: expected a Region or a \\(chrom, start, end"),
    ]
    for region, message in cases:
        with pytest.raises(TypeError, match=message):
            embed_regions(model, path, [region], progress=False)
    with pytest.raises(TypeError, match="start must be an integer"):
        Region("chr1", "10", "20")
    with pytest.raises(TypeError, match="regions must be a BED path or a list of regions, got int"):
        embed_regions(model, path, 5, progress=False)
    for argument, value in [("flank", 1.5), ("window", "10"), ("chunk_tokens", 2.5), ("batch_size", 2.5)]:
        with pytest.raises(TypeError, match=f"{argument} must be an integer, got {value!r}"):
            embed_regions(model, path, contigs=["MT"], **{argument: value}, progress=False)
    numpy_ints = embed_regions(model, path, [("chr1", np.int64(10), np.int32(20))], progress=False)
    assert numpy_ints.regions == [Region("chr1", 10, 20)] and type(numpy_ints.regions[0].start) is int

    # In-memory references: bytes sequences are read as ASCII, like strings; names must be strings.
    as_text = embed_regions(model, contigs, [("chr1", 5, 30)], progress=False).values
    as_bytes = embed_regions(model, {name: seq.encode() for name, seq in contigs.items()}, [("chr1", 5, 30)],
                             progress=False).values
    np.testing.assert_allclose(as_bytes, as_text, atol=ATOL)
    with pytest.raises(TypeError, match="contig names must be strings, got b'chr1'"):
        embed_regions(model, {b"chr1": contigs["chr1"]}, [("chr1", 5, 30)], progress=False)
    for bad in (5, list(contigs["chr1"])):
        with pytest.raises(TypeError, match="contig 'chr1': expected a string, bytes or token ids"):
            embed_regions(model, {"chr1": bad}, [("chr1", 0, 5)], progress=False)
