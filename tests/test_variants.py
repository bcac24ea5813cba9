"""Variant scoring: allele checks, the score's definition, cached = naive, VCF/TSV round trips, mutagenesis, CLI."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pysam
import pytest
import torch

from dna_mamba.baselines import MarkovModel
from dna_mamba.model import DnaMambaConfig, DnaMambaLM, save_pretrained
from dna_mamba.tasks.mutagenesis import saturation_mutagenesis
from dna_mamba.tasks.variant_classifier import build_feature_matrix, cross_validate_classifier
from dna_mamba.tasks.variants import (
    ScoringConfig,
    default_human_model,
    load_scoring_model,
    markov_llr,
    prefix_anchor,
    score_alleles,
    score_records,
    score_variants,
)
from dna_mamba.tasks.variants_cli import main, parse_region
from dna_mamba.tasks.vcf_io import (
    ReferenceGenome,
    VariantRecord,
    prepare_alleles,
    read_variant_table,
    read_vcf,
    trim_alleles,
)
from dna_mamba.tokenizer import N, decode, encode, reverse_complement

RNG = np.random.default_rng(7)
CONTIG = "".join(RNG.choice(list("ACGT"), 180))  # the FASTA calls it chr7; records say 7
CHR20 = "human/GRCh37_chr20.fa.gz"


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: thread start-up costs more than the arithmetic.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _supports_float64() -> bool:
    model = DnaMambaLM(DnaMambaConfig(d_model=8, n_layer=1, d_state=2)).double()
    try:
        model(torch.zeros(1, 3, dtype=torch.long))
    except ValueError:  # a kernel that accepts only fp32/fp16/bf16
        return False
    return True


FLOAT64 = _supports_float64()
# float64 shows that cached and naive compute the same function; float32 only that they agree to round-off.
TOL = dict(rtol=1e-9, atol=1e-9) if FLOAT64 else dict(rtol=1e-4, atol=2e-5)


def tiny_model(seed: int = 0) -> DnaMambaLM:
    torch.manual_seed(seed)
    model = DnaMambaLM(DnaMambaConfig(d_model=16, n_layer=2, d_state=4))
    with torch.no_grad():  # move parameters off their init so every path of the block matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return (model.double() if FLOAT64 else model).eval()


@pytest.fixture(scope="module")
def model() -> DnaMambaLM:
    return tiny_model()


@pytest.fixture
def reference() -> ReferenceGenome:
    return ReferenceGenome.from_sequences({"chr7": CONTIG, "chrM": CONTIG[:50]})


def records(*rows) -> list[VariantRecord]:
    return [VariantRecord(i, chrom, pos, ".", ref, tuple(alts)) for i, (chrom, pos, ref, alts) in enumerate(rows)]


def base(pos: int) -> str:
    """Reference base at a 1-based position."""
    return CONTIG[pos - 1]


def other(b: str) -> str:
    return "G" if b != "G" else "T"


# ------------------------------------------------------------------------------------------------ checks


def test_trim_alleles():
    assert trim_alleles(9, "A", "G") == (9, "A", "G")
    assert trim_alleles(9, "CTCTT", "C") == (10, "TCTT", "")  # VCF anchor base removed
    assert trim_alleles(9, "G", "GAC") == (10, "", "AC")
    assert trim_alleles(9, "ACGT", "ACTT") == (11, "G", "T")  # shared prefix and suffix
    assert trim_alleles(9, "AT", "GT") == (9, "A", "G")


def test_allele_checks_name_each_reason(reference):
    rows = records(
        ("7", 10, base(10), [other(base(10))]),  # ok, contig harmonised 7 -> chr7
        ("chr7", 11, other(base(11)), ["A"]),  # REF mismatch
        ("chr9", 5, "A", ["C"]),  # unknown contig
        ("7", 12, base(12), ["<DEL>"]),  # symbolic
        ("7", 13, base(13), ["*"]),  # spanning deletion
        ("7", 14, base(14), []),  # missing ALT '.'
        ("7", 15, base(15), [other(base(15)), "<INS>", base(15) + "AC"]),  # multi-allelic, one symbolic
        ("7", 16, base(16), ["X"]),  # not a base
        ("7", 180, base(180) + "A", ["A"]),  # REF runs past the contig end
        ("7", 0, "A", ["C"]),  # POS 0
        ("MT", 3, CONTIG[2], [other(CONTIG[2])]),  # MT -> chrM
        ("7", 17, base(17).lower(), [other(base(17)).lower()]),  # soft-masked case is fine
        ("7", 18, base(18), [base(18).lower()]),  # ALT is REF: nothing to score
        ("7", 19, base(19), [base(19) + "[chr7:5["]),  # breakend
    )
    alleles = prepare_alleles(rows, reference)
    got = [(a.record.index, a.alt, a.skip) for a in alleles]
    assert got == [
        (0, other(base(10)), None),
        (1, "A", "ref_mismatch"),
        (2, "C", "unknown_contig"),
        (3, "<DEL>", "symbolic_alt"),
        (4, "*", "symbolic_alt"),
        (5, ".", "missing_alt"),
        (6, other(base(15)), None),
        (6, "<INS>", "symbolic_alt"),
        (6, base(15) + "AC", None),
        (7, "X", "invalid_allele"),
        (8, "A", "out_of_range"),
        (9, "C", "out_of_range"),
        (10, other(CONTIG[2]), None),
        (11, other(base(17)).lower(), None),
        (12, base(18).lower(), "alt_equals_ref"),
        (13, base(19) + "[chr7:5[", "symbolic_alt"),
    ]
    assert alleles[0].contig == "chr7" and alleles[12].contig == "chrM"

    both = ReferenceGenome.from_sequences({"MT": CONTIG[:50], "chrM": CONTIG[:50]})
    assert [a.skip for a in prepare_alleles(records(("M", 3, CONTIG[2], [other(CONTIG[2])])), both)] == [
        "ambiguous_contig"]  # not "unknown": M matches both MT and chrM
    assert (alleles[8].start, alleles[8].ref_bases, alleles[8].alt_bases) == (15, "", "AC")


# ------------------------------------------------------------------------------------------------ the score


def direct_llr(model, contig: str, pos1: int, ref: str, alt: str, window: int, context: int, strand: str):
    """The documented definition, computed from explicit haplotype sequences with one plain forward each."""
    start, ref, alt = trim_alleles(pos1 - 1, ref, alt)
    seq = encode(contig)
    ref_ids, alt_ids = encode(ref), encode(alt)
    if strand == "-":
        start = len(seq) - start - len(ref_ids)
        seq, ref_ids, alt_ids = (np.ascontiguousarray(reverse_complement(x)) for x in (seq, ref_ids, alt_ids))
    anchor = prefix_anchor(start, context)
    padded = np.concatenate([np.full(max(0, -anchor), N), seq, np.full(window + 8, N)]).astype(np.uint8)
    offset = max(0, -anchor)
    prefix = padded[anchor + offset:start + offset]
    ref_win = padded[start + offset:start + offset + window]
    alt_win = np.concatenate([alt_ids, padded[start + offset + len(ref_ids):]])[:window]
    log_probs = []
    for win in (ref_win, alt_win):
        ids = torch.as_tensor(np.concatenate([prefix, win]), dtype=torch.long)[None]
        with torch.no_grad():
            hidden = model(ids, output_hidden_states=True).hidden_states[-1][0]  # after the final norm
            logp = torch.log_softmax(hidden @ model.lm_head.weight.T, dim=-1)
        targets = ids[0, len(prefix):]
        log_probs.append(logp[len(prefix) - 1:len(prefix) - 1 + window].gather(-1, targets[:, None])[:, 0])
    valid = torch.as_tensor((ref_win != N) & (alt_win != N))
    count = int(valid.sum())
    return (float((log_probs[1] - log_probs[0])[valid].sum()) if count else np.nan), count


CASES = [  # (pos, ref, alt): SNV, MNP, insertion, deletion, position 1, last base, deletion reaching the end
    (40, base(40), other(base(40))),
    (41, base(41) + base(42), other(base(41)) + other(base(42))),
    (43, base(43), base(43) + "TTAG"),
    (44, base(44) + base(45) + base(46), base(44)),
    (1, base(1), other(base(1))),
    (180, base(180), other(base(180))),
    (176, CONTIG[175:], base(176)),
]


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "naive"])
def test_scores_follow_the_definition(model, reference, cached):
    window, context = 12, 16
    config = ScoringConfig(window=window, context=context, cached=cached, batch_size=5, snapshot_stride=3)
    table = score_variants(model, reference, [("7", *case) for case in CASES], config).table
    for row, (pos, ref, alt) in zip(table.itertuples(), CASES, strict=True):
        fwd, n_fwd = direct_llr(model, CONTIG, pos, ref, alt, window, context, "+")
        rc, n_rc = direct_llr(model, CONTIG, pos, ref, alt, window, context, "-")
        np.testing.assert_allclose([row.llr_fwd, row.llr_rc, row.llr], [fwd, rc, np.nanmean([fwd, rc])], **TOL)
        assert row.n_scored == n_fwd + n_rc
        assert row.skip_reason is None
    # Position 1 and the contig end are scored, with N padding counted out of the window; a deletion of the contig's
    # last bases leaves only N in the forward ALT window, so only its reverse strand counts.
    first, last, end_deletion = table.iloc[4], table.iloc[5], table.iloc[6]
    assert first.n_scored == window + 1 and last.n_scored == 1 + window
    assert np.isnan(end_deletion.llr_fwd) and end_deletion.llr == end_deletion.llr_rc


@pytest.mark.parametrize("stride, stream_tokens", [(512, 1 << 21), (5, 48)], ids=["stride=context", "stride=5"])
def test_cached_equals_naive_for_close_variants(model, reference, stride, stream_tokens):
    # Variants closer together than the window, several ALTs and REF lengths at one position, both strands and
    # several grid cells; small batches so snapshots from different cells share a forward pass. With stride 5 and
    # two cells per reference pass, rows stop at different steps and snapshots fall between variants.
    rows = [("chr7", p, base(p), other(base(p))) for p in (30, 31, 33, 36, 47, 48, 95, 120)]
    rows += [("chr7", 31, base(31), "A" if base(31) != "A" else "C"), ("chr7", 31, base(31) + base(32), base(31)),
             ("chr7", 33, base(33), base(33) + "GG")]
    results = {}
    for cached in (True, False):
        config = ScoringConfig(window=20, context=24, cached=cached, batch_size=4, keep_embedding_diffs=True,
                               snapshot_stride=stride, stream_tokens=stream_tokens)
        results[cached] = score_variants(model, reference, rows, config)
    a, b = results[True].table, results[False].table
    for column in ("llr_fwd", "llr_rc", "llr", "emb_cos", "emb_l2"):
        np.testing.assert_allclose(a[column], b[column], **TOL, err_msg=column)
    np.testing.assert_allclose(results[True].embedding_diffs, results[False].embedding_diffs, **TOL)
    assert a["llr"].notna().all() and (a["n_scored"] == b["n_scored"]).all()


def test_embedding_layer_and_forward_strand(model, reference):
    rows = [("chr7", 60, base(60), other(base(60)))]
    final = score_variants(model, reference, rows, ScoringConfig(window=8, context=16, strands="forward")).table
    first = score_variants(model, reference, rows, ScoringConfig(window=8, context=16, layer=1)).table
    assert "llr_rc" not in final.columns and final.llr[0] == final.llr_fwd[0]
    assert final.emb_cos[0] != first.emb_cos[0]
    with pytest.raises(ValueError, match="layer"):
        score_variants(model, reference, rows, ScoringConfig(layer=5))


def test_all_n_window_is_reported():
    ref = ReferenceGenome.from_sequences({"chr1": "ACGT" + "N" * 30 + "ACGT"})
    table = score_variants(tiny_model(), ref, [("chr1", 15, "N", "A")], ScoringConfig(window=4, context=4)).table
    assert table.skip_reason[0] == "all_n_window" and np.isnan(table.llr[0])


# ------------------------------------------------------------------------------------------------ real data


def test_real_chr20_vcfs_check_against_grch37(shared_data):
    with ReferenceGenome(shared_data / CHR20) as reference:
        for name, n_indels in [("pysam_1000G_chr20_300snv.vcf.gz", 0), ("pysam_chr20_977indel.vcf.gz", 1012),
                               ("vt_normalize_chr20_194indel.vcf.gz", 194)]:
            records_, header = read_vcf(shared_data / "variants" / "chr20_grch37" / name)
            alleles = prepare_alleles(records_, reference)
            skips = pd.Series([a.skip for a in alleles]).value_counts()
            assert "##contig=<ID=20" in header
            assert len(records_) in (300, 977, 194)
            assert "unknown_contig" not in skips and "ref_mismatch" not in skips, (name, skips)
            changes = [(len(a.ref_bases), len(a.alt_bases)) for a in alleles if a.skip is None]
            assert len(changes) == len(alleles)  # every allele checks out against GRCh37
            assert sum(r != a for r, a in changes) == n_indels  # the Platypus file also holds 8 SNVs/MNPs


def test_mitomap_table_harmonises_mt_to_chrm(shared_data):
    records_, table = read_variant_table(shared_data / "variants" / "chrM_mitomap" / "chrM_labeled_snvs.tsv")
    with ReferenceGenome(shared_data / "human" / "rCRS_chrM.fa") as reference:
        alleles = prepare_alleles(records_, reference)
    assert len(records_) == 416 and {a.contig for a in alleles} == {"chrM"}
    assert all(a.skip is None for a in alleles)
    assert table["label"].nunique() == 2


def _subset_vcf(source, target, n: int, before: list[str] = (), after: list[str] = (),
                header_lines: list[str] = ()) -> None:
    """The first n records of a real VCF, with extra records before and after them (kept sorted for tabix)."""
    with gzip.open(source, "rt") as handle:
        lines = handle.read().splitlines()
    header = [line for line in lines if line.startswith("#")]
    header[-1:-1] = header_lines
    body = [line for line in lines if not line.startswith("#")][:n]
    target.write_text("\n".join(header + list(before) + body + list(after)) + "\n")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_pretrained(tiny_model().float(), path)
    return path


def test_cli_scores_real_vcf_and_output_parses_back(shared_data, model_dir, tmp_path, capsys):
    src = shared_data / "variants" / "chr20_grch37"
    vcf = tmp_path / "in.vcf"
    _subset_vcf(src / "vt_normalize_chr20_194indel.vcf.gz", vcf, 6, before=[
        "20\t1\t.\tN\tA\t.\tPASS\t.",  # position 1 (the reference is N there)
    ], after=[
        "20\t63025519\t.\tN\t.\t.\tPASS\t.",  # missing ALT
        "20\t63025520\t.\tN\tA,<DEL>\t.\tPASS\t.",  # the last base of chr20, plus a symbolic ALT
        "20\t63025520\t.\tA\tG\t.\tPASS\t.",  # REF mismatch
        "chr21\t100\t.\tA\tG\t.\tPASS\t.",  # unknown contig
    ])
    out = tmp_path / "out.vcf.gz"
    table_out = tmp_path / "out.tsv"
    code = main(["score-vcf", "--model", str(model_dir), "--fasta", str(shared_data / CHR20), "--vcf", str(vcf),
                 "--out", str(out), "--tsv", str(table_out), "--window", "16", "--context", "32", "--no-progress"])
    assert code == 0
    assert "skipped 6 alleles" in capsys.readouterr().err
    assert (tmp_path / "out.vcf.gz.tbi").is_file()

    reader = pysam.VariantFile(str(out))
    for field in ("DNAM_LLR", "DNAM_LLR_FWD", "DNAM_LLR_RC", "DNAM_EMB_COS", "DNAM_EMB_L2", "DNAM_SKIP"):
        assert reader.header.info[field].number == "A"
    got = [(r.chrom, r.pos, r.alts, r.info.get("DNAM_LLR"), r.info.get("DNAM_SKIP")) for r in reader]
    assert len(got) == 11  # every record kept
    scores = pd.read_csv(table_out, sep="\t")
    assert len(scores) == 12
    for (_, _, _, llr, skip), row in zip(got[1:7], scores.iloc[1:7].itertuples(), strict=True):
        assert skip is None and llr[0] == pytest.approx(row.llr, rel=1e-5)
    # Position 1 and the contig end are N in GRCh37 chr20: checked (REF N matches) but every window base is N.
    assert got[0][4] == ("all_n_window",)
    assert [g[4] for g in got[7:]] == [("missing_alt",), ("all_n_window", "symbolic_alt"), ("ref_mismatch",),
                                       ("unknown_contig",)]
    assert got[7][2] is None and got[10][0] == "chr21"


def test_cli_reads_bcf_and_plain_gzip_vcf(shared_data, model_dir, tmp_path):
    folder = shared_data / "variants" / "chr20_grch37"  # plain gzip, not bgzip
    assert len(read_vcf(folder / "pysam_1000G_chr20_300snv.vcf.gz")[0]) == 300
    vcf = tmp_path / "in.vcf"
    _subset_vcf(folder / "vt_normalize_chr20_194indel.vcf.gz", vcf, 4)
    bcf = tmp_path / "in.bcf"
    with pysam.VariantFile(str(vcf)) as reader, pysam.VariantFile(str(bcf), "wb", header=reader.header) as writer:
        for rec in reader:
            writer.write(rec)
    outs = []
    for source in (vcf, bcf):
        out = tmp_path / f"{source.suffix[1:]}.vcf"
        main(["score-vcf", "--model", str(model_dir), "--fasta", str(shared_data / CHR20), "--vcf", str(source),
              "--out", str(out), "--window", "8", "--context", "16", "--strands", "forward", "--no-embeddings",
              "--no-progress"])
        outs.append([rec.info["DNAM_LLR"] for rec in pysam.VariantFile(str(out))])
    assert outs[0] == outs[1] and len(outs[0]) == 4
    assert "DNAM_LLR_RC" not in pysam.VariantFile(str(tmp_path / "vcf.vcf")).header.info


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".parquet"])
def test_cli_table_input_keeps_extra_columns(model_dir, tmp_path, suffix):
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">chr7 test\n" + "\n".join(CONTIG[i:i + 60] for i in range(0, len(CONTIG), 60)) + "\n")
    frame = pd.DataFrame({"chrom": ["7", "7", "chr7"], "pos": [20, 21, 22],
                          "ref": [base(20), base(21), "A" if base(22) != "A" else "C"],
                          "alt": [other(base(20)), f"{other(base(21))},<DEL>", "G"], "label": ["x", "y", "z"]})
    table = tmp_path / f"in{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(table)
    else:
        frame.to_csv(table, sep="\t" if suffix == ".tsv" else ",", index=False)
    out = tmp_path / "out.tsv"
    assert main(["score-vcf", "--model", str(model_dir), "--fasta", str(fasta), "--table", str(table),
                 "--out", str(out), "--window", "8", "--context", "16", "--no-progress"]) == 0
    scored = pd.read_csv(out, sep="\t")
    assert list(scored["label"]) == ["x", "y", "y", "z"]
    assert list(scored["skip_reason"].fillna("")) == ["", "", "symbolic_alt", "ref_mismatch"]


def test_table_positions_must_be_whole_numbers(tmp_path):
    table = tmp_path / "in.tsv"
    table.write_text("chrom\tpos\tref\talt\n7\t20\tA\tC\n7\t2.5\tA\tC\n")
    with pytest.raises(ValueError, match="integer positions, row 2 has '2.5'"):  # not truncated to 2
        read_variant_table(table)
    table.write_text("chrom\tpos\tref\talt\n7\t20.0\tA\tC\n")
    assert read_variant_table(table)[0][0].pos == 20


def test_cli_user_errors_are_one_line(model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["score-vcf", "--model", str(model_dir), "--fasta", str(tmp_path / "missing.fa"), "--vcf",
              str(tmp_path / "x.vcf"), "--out", str(tmp_path / "o.vcf")])
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score-vcf", "--fasta", "x.fa", "--vcf", "x.vcf", "--out", str(tmp_path / "o.tsv")])
    assert "must be a VCF" in capsys.readouterr().err


def test_read_fasta_without_index_falls_back_to_memory(tmp_path):
    fasta = tmp_path / "ref.fa.gz"
    with gzip.open(fasta, "wt") as handle:  # plain gzip: pysam cannot index it
        handle.write(">chr7\n" + CONTIG + "\n")
    with ReferenceGenome(fasta) as reference:
        assert reference.lengths == {"chr7": 180}
        assert decode(reference.fetch("chr7", -2, 3)) == "NN" + CONTIG[:3]
        assert decode(reference.fetch_strand("chr7", "-", 0, 3)) == decode(reverse_complement(encode(CONTIG[-3:])))


# ------------------------------------------------------------------------------------------------ mutagenesis


def test_mutagenesis_equals_variant_scores(model, reference):
    config = ScoringConfig(window=8, context=16, batch_size=9, embeddings=False)
    result = saturation_mutagenesis(model, reference, "7", 25, 45, config)
    table = result.table()
    assert len(table) == 60 and set(table["pos"]) == set(range(26, 46))
    rows = [("chr7", int(r.pos), r.ref, r.alt) for r in table.itertuples()]
    expected = score_variants(model, reference, rows, config).table
    for column in ("llr_fwd", "llr_rc", "llr"):
        np.testing.assert_allclose(table[column], expected[column], **TOL, err_msg=column)
    per_position = result.per_position("min")
    assert per_position[0] == pytest.approx(table["llr"][:3].min())


def test_mutagenesis_cli_writes_tsv_bedgraph_and_plot(model_dir, tmp_path):
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">chr7\n" + CONTIG[:60] + "NN" + CONTIG[60:100] + "\n")
    prefix = tmp_path / "ism"
    assert main(["mutagenesis", "--model", str(model_dir), "--fasta", str(fasta), "--region", "7:55-66",
                 "--out", str(prefix), "--window", "6", "--context", "8", "--no-progress"]) == 0
    tsv = pd.read_csv(f"{prefix}.tsv", sep="\t")
    assert len(tsv) == 10 * 3 and set(tsv["chrom"]) == {"chr7"}  # the two N positions have no substitutions
    lines = open(f"{prefix}.bedGraph").read().splitlines()
    assert lines[0].startswith("track type=bedGraph") and len(lines) == 11
    assert lines[1].split("\t")[:3] == ["chr7", "54", "55"]
    assert (tmp_path / "ism.png").stat().st_size > 1000


@pytest.mark.parametrize("folder_given_as", ["existing", "trailing slash"])
def test_mutagenesis_out_naming_a_folder_writes_inside_it(model_dir, tmp_path, folder_given_as):
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">chr7\n" + CONTIG[:100] + "\n")
    folder = tmp_path / "results"
    if folder_given_as == "existing":
        folder.mkdir()
    out = str(folder) + ("/" if folder_given_as == "trailing slash" else "")
    assert main(["mutagenesis", "--model", str(model_dir), "--fasta", str(fasta), "--region", "chr7:55-60",
                 "--out", out, "--window", "6", "--context", "8", "--no-progress", "--no-plot"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["chr7_55_60.bedGraph", "chr7_55_60.tsv"]
    assert not list(tmp_path.glob("results.*"))  # not beside the folder


def test_parse_region():
    assert parse_region("chr20:1,000,001-1,010,000") == ("chr20", 1_000_000, 1_010_000)
    with pytest.raises(ValueError):
        parse_region("chr20:10-5")


# ------------------------------------------------------------------------------------------------ supervised


def test_supervised_features_and_cross_validation(model, reference):
    rows = [("chr7", p, base(p), alt) for p in range(30, 70) for alt in "ACGT" if alt != base(p)]
    result = score_variants(model, reference, rows, ScoringConfig(window=8, context=16, keep_embedding_diffs=True))
    X, names = build_feature_matrix(result, include_embedding_diffs=True)
    assert X.shape == (120, 5 + 16) and names[:2] == ["llr", "llr_fwd"]
    # Labels that a linear model over these features can recover, to show the folds and scaling work.
    labels = result.table["llr"] > result.table["llr"].median()
    cv = cross_validate_classifier(X, labels, n_splits=4, feature_names=names)
    assert len(cv.fold_auroc) == 4 and cv.mean_auroc > 0.9 and cv.used.all()
    with pytest.raises(ValueError, match="two label classes"):
        cross_validate_classifier(X, np.ones(len(X)))


def test_markov_baseline_uses_the_same_windows(reference):
    markov = MarkovModel(order=3).fit(encode(CONTIG))
    window = 10
    cases = [(60, base(60), other(base(60))), (43, base(43), base(43) + "TTAG"), (44, base(44) + base(45), base(44))]
    alleles = prepare_alleles(records(*[("chr7", pos, ref, [alt]) for pos, ref, alt in cases]), reference)
    table = markov_llr(markov, reference, alleles, ScoringConfig(window=window))
    for row, allele in zip(table.itertuples(), alleles, strict=True):
        s, ref, alt = allele.start, encode(allele.ref_bases), encode(allele.alt_bases)
        seq = encode(CONTIG)
        haplotypes = (seq, np.concatenate([seq[:s], alt, seq[s + len(ref):]]))
        fwd = [markov.log_prob_per_position(h)[s:s + window].sum() for h in haplotypes]
        q = len(seq) - s - len(ref)  # the variant's start on either haplotype's reverse complement
        rc = [markov.log_prob_per_position(np.ascontiguousarray(reverse_complement(h)))[q:q + window].sum()
              for h in haplotypes]
        np.testing.assert_allclose([row.llr_fwd, row.llr_rc], [fwd[1] - fwd[0], rc[1] - rc[0]], rtol=1e-6)


def test_default_human_model_is_optional():
    path = default_human_model()
    if path is None:
        with pytest.raises(FileNotFoundError, match="human model"):
            load_scoring_model(None)
    else:
        assert load_scoring_model(None).config.n_layer >= 1


def test_score_alleles_keeps_skipped_rows(model, reference):
    alleles = prepare_alleles(records(("chr7", 10, base(10), ["<DEL>", other(base(10))])), reference)
    result = score_alleles(model, reference, alleles, ScoringConfig(window=4, context=8))
    assert list(result.table["skip_reason"]) == ["symbolic_alt", None]
    assert result.skipped().to_dict() == {"symbolic_alt": 1}


@pytest.mark.parametrize("reader", ["score-vcf", "embed"])
def test_a_stale_fasta_index_is_an_error_not_other_bases(tmp_path, reader):
    """A FASTA replaced by a longer version while its old index stays (with a newer time, as `cp -p` leaves it):
    htslib would read the contig as its old length and pyfaidx would trust the index; both paths refuse it."""
    import os

    from dna_mamba.data.fasta import FastaFormatError

    fasta = tmp_path / "ref.fa"
    fasta.write_text(">chr7\n" + "\n".join(CONTIG[i:i + 60] for i in range(0, 100, 60)) + "\n")
    pysam.faidx(str(fasta))
    fasta.write_text(">chr7\n" + "\n".join(CONTIG[i:i + 60] for i in range(0, len(CONTIG), 60)) + "\n")
    stamp = fasta.stat().st_mtime + 10
    os.utime(f"{fasta}.fai", (stamp, stamp))
    with pytest.raises(FastaFormatError, match="ref.fa.fai does not match ref.fa"):
        if reader == "score-vcf":
            ReferenceGenome(fasta).__enter__()
        else:
            from dna_mamba.tasks.embed import _Reference

            _Reference.open(fasta)


def _open_reference(reader: str, fasta) -> None:
    if reader == "score-vcf":
        ReferenceGenome(fasta).close()
    else:
        from dna_mamba.tasks.embed import _Reference

        _Reference.open(fasta)


@pytest.mark.parametrize("reader", ["score-vcf", "embed"])
@pytest.mark.parametrize("content, message", [
    (b">chr7\nACGT\n>\nACGT\n", "line 3: header with no name"),
    (b">chr7\nACGT\n>chr8\n>chr9\nAC\n", "line 3: record 'chr8' is empty"),
    (b">chr7\nACGT\rACGT\n", "line 2 (record 'chr7'): a carriage return (\\r) inside a line"),
    (b">chr7\rACGT\rACGT\r", "line 1: a carriage return (\\r) inside a line"),  # old Mac line endings
], ids=["nameless_header", "empty_record", "lone_cr", "cr_only"])
def test_malformed_fasta_is_refused_by_the_indexed_readers(tmp_path, reader, content, message):
    """htslib and pyfaidx index these without complaint (then drop a record, or read other bases)."""
    import re

    from dna_mamba.data.fasta import FastaFormatError

    fasta = tmp_path / "ref.fa"
    fasta.write_bytes(content)
    with pytest.raises(FastaFormatError, match=re.escape(f"{fasta}: {message}")):
        _open_reference(reader, fasta)
    assert not (tmp_path / "ref.fa.fai").exists()  # no index left behind for a later run to trust


@pytest.mark.parametrize("reader", ["score-vcf", "embed"])
def test_an_existing_index_of_a_nameless_header_is_refused(tmp_path, reader):
    from dna_mamba.data.fasta import FastaFormatError

    fasta = tmp_path / "ref.fa"
    fasta.write_bytes(b">chr7\nACGT\n>\nACGT\n")
    pysam.faidx(str(fasta))  # htslib indexes it under the name ''
    with pytest.raises(FastaFormatError, match="ref.fa: line 3: header with no name"):
        _open_reference(reader, fasta)


VCF_HEADER = "##fileformat=VCFv4.2\n##contig=<ID=chr7,length=180>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
GOOD_RECORD = "chr7\t5\t.\tA\tC\t.\t.\t.\n"


@pytest.mark.parametrize("name, content, message", [
    ("in.vcf", VCF_HEADER + GOOD_RECORD + "chr7\tabc\t.\tA\tG\t.\t.\t.\n",
     "in.vcf, line 5: POS must be a positive integer, got 'abc'"),
    ("in.vcf.gz", VCF_HEADER + "chr7\t5.5\t.\tA\tG\t.\t.\t.\n",
     "in.vcf.gz, line 4: POS must be a positive integer, got '5.5'"),
    ("in.vcf", VCF_HEADER + GOOD_RECORD + "chr7\t7\t.\tA\n",
     "in.vcf, line 5: 4 tab-separated columns; a VCF record has at least 8"),
    ("in.vcf", VCF_HEADER + GOOD_RECORD.replace("\t", " "), "in.vcf, line 4: 1 tab-separated column;"),
    ("in.vcf", VCF_HEADER + GOOD_RECORD + "\n" + GOOD_RECORD, "in.vcf, line 5: a blank line among the records"),
    ("in.vcf", "", "in.vcf: empty file, not a VCF"),
    ("in.vcf.gz", "", "in.vcf.gz: empty file, not a VCF"),
    ("in.vcf", GOOD_RECORD, "in.vcf: not a VCF/BCF file (its first line must be '##fileformat=VCFv4.x', got 'chr7"),
    ("in.vcf", "\x89PNG\r\n\x1a\n\x00\x00\xff", "in.vcf: not a VCF/BCF file (its first line must be"),
], ids=["bad_pos", "fractional_pos_gzip", "few_columns", "spaces", "blank_line", "empty", "empty_gzip", "no_header",
        "binary"])
def test_malformed_vcf_is_one_line_naming_file_and_line(model_dir, tmp_path, capsys, name, content, message):
    vcf = tmp_path / name
    data = content.encode("latin-1")
    vcf.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(ValueError) as info:
        read_vcf(vcf)
    assert f"{tmp_path}/{message}" in str(info.value) and "\n" not in str(info.value)
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">chr7\n" + CONTIG + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["score-vcf", "--model", str(model_dir), "--fasta", str(fasta), "--vcf", str(vcf),
              "--out", str(tmp_path / "out.vcf"), "--no-progress"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}/{message}") and "Traceback" not in err


def test_contigs_shorter_than_the_context_warn_once(model, reference):
    import warnings

    rows = records(("chr7", 20, base(20), [other(base(20))]), ("chrM", 10, base(10), [other(base(10))]),
                   ("chrM", 12, base(12), [other(base(12)), "<DEL>"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every contig is at least as long as the context
        score_records(model, reference, rows, ScoringConfig(window=4, context=50, embeddings=False))
    with pytest.warns(UserWarning) as caught:
        score_records(model, reference, rows, ScoringConfig(window=4, context=64, embeddings=False))
    assert [str(w.message).split(":")[0] for w in caught] == [
        "2 of 3 alleles to score are on contigs shorter than the context of 64 bases"]
    assert "chrM (50 bp); most of their prefix is N padding" in str(caught[0].message)


@pytest.mark.parametrize("command", ["score-vcf", "mutagenesis"])
def test_out_of_memory_names_the_scoring_options(model_dir, tmp_path, monkeypatch, capsys, command):
    import dna_mamba.tasks.mutagenesis
    import dna_mamba.tasks.variants

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(dna_mamba.tasks.variants, "score_records", out_of_memory)
    monkeypatch.setattr(dna_mamba.tasks.mutagenesis, "saturation_mutagenesis", out_of_memory)
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">chr7\n" + CONTIG + "\n")
    vcf = tmp_path / "in.vcf"
    vcf.write_text(VCF_HEADER + f"chr7\t5\t.\t{base(5)}\t{other(base(5))}\t.\t.\t.\n")
    options = ["--model", str(model_dir), "--fasta", str(fasta), "--context", "32", "--batch-size", "16",
               "--no-progress"]
    if command == "score-vcf":
        argv = [command, *options, "--vcf", str(vcf), "--out", str(tmp_path / "o.vcf"), "--stream-tokens", "4096"]
        advice = "lower --batch-size (now 16), --stream-tokens (now 4096) or --context (now 32)"
    else:
        argv = [command, *options, "--region", "chr7:10-20", "--out", str(tmp_path / "m"), "--no-plot"]
        advice = "lower --batch-size (now 16) or --context (now 32)"
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert f"error: out of memory while scoring (CUDA out of memory. Tried to allocate 8.00 GiB); {advice}" in err
    assert "trainer." not in err


# ------------------------------------------------------------------------------------------------ inputs and outputs


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the arguments were checked")


@pytest.fixture
def small_inputs(tmp_path):
    """A FASTA and a one-record VCF of the test contig."""
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">chr7\n" + CONTIG + "\n")
    vcf = tmp_path / "in.vcf"
    vcf.write_text(VCF_HEADER + f"chr7\t5\t.\t{base(5)}\t{other(base(5))}\t.\t.\t.\n")
    return fasta, vcf


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("spelling", ["same", "symlink", "dotted"])
def test_cli_refuses_to_overwrite_its_input_before_loading_the_model(small_inputs, tmp_path, monkeypatch, capsys,
                                                                     spelling):
    import dna_mamba.tasks.variants

    monkeypatch.setattr(dna_mamba.tasks.variants, "load_scoring_model", _no_model)
    fasta, vcf = small_inputs
    content = vcf.read_bytes()
    out = {"same": vcf, "dotted": tmp_path / "." / ".." / tmp_path.name / "in.vcf"}.get(spelling)
    if spelling == "symlink":
        out = tmp_path / "link.vcf"
        out.symlink_to(vcf)
    err = _cli_error(["score-vcf", "--fasta", str(fasta), "--vcf", str(vcf), "--out", str(out)], capsys)
    assert f"--out {out}: is the --vcf input {vcf}" in err
    assert vcf.read_bytes() == content
    table = tmp_path / "in.tsv"
    table.write_text("chrom\tpos\tref\talt\nchr7\t5\tA\tC\n")
    err = _cli_error(["score-vcf", "--fasta", str(fasta), "--table", str(table), "--out", str(tmp_path / "o.tsv"),
                      "--tsv", str(table)], capsys)
    assert f"--tsv {table}: is the --table input" in err
    err = _cli_error(["score-vcf", "--fasta", str(fasta), "--vcf", str(vcf), "--out", str(tmp_path / "o.vcf"),
                      "--tsv", str(tmp_path / "o.vcf")], capsys)
    assert "is also the --out output" in err


def test_write_scored_vcf_refuses_its_input_and_never_leaves_half_a_file(model, tmp_path):
    from dna_mamba.tasks.vcf_io import write_scored_vcf

    vcf = tmp_path / "in.vcf"
    vcf.write_text(VCF_HEADER + GOOD_RECORD + "chr7\tabc\t.\tA\tG\t.\t.\t.\n")  # the second record cannot be read
    scores = pd.DataFrame({"record_index": [0], "alt_index": [0], "llr": [0.5]})
    with pytest.raises(ValueError, match="would overwrite the input VCF"):
        write_scored_vcf(vcf, tmp_path / "." / "in.vcf", "", scores)
    out = tmp_path / "out.vcf"
    out.write_text("an earlier run's output\n")
    with pytest.raises(OSError, match="truncated file"):  # htslib, half way through the copy
        write_scored_vcf(vcf, out, VCF_HEADER, scores)
    assert out.read_text() == "an earlier run's output\n"  # not truncated, not half written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.vcf", "out.vcf"]  # no temporary file left


def test_unsorted_bgzip_output_drops_an_earlier_index(tmp_path):
    from dna_mamba.tasks.vcf_io import write_scored_vcf

    vcf = tmp_path / "in.vcf"
    vcf.write_text(VCF_HEADER + "chr7\t9\t.\tA\tC\t.\t.\t.\n" + GOOD_RECORD)  # POS 9 before POS 5: tabix refuses
    header = read_vcf(vcf)[1]
    out = tmp_path / "out.vcf.gz"
    (tmp_path / "out.vcf.gz.tbi").write_bytes(b"index of an earlier output")
    scores = pd.DataFrame({"record_index": [0, 1], "alt_index": [0, 0], "llr": [0.5, -0.5]})
    with pytest.warns(UserWarning, match="not indexed"):
        write_scored_vcf(vcf, out, header, scores)
    assert not (tmp_path / "out.vcf.gz.tbi").exists()  # it would point readers into the old file
    assert [r.info["DNAM_LLR"] for r in pysam.VariantFile(str(out))] == [(0.5,), (-0.5,)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.vcf", "out.vcf.gz"]


@pytest.mark.parametrize("writer", ["scores", "mutagenesis"])
def test_tsv_outputs_are_replaced_only_when_complete(tmp_path, monkeypatch, writer):
    import os
    from contextlib import nullcontext

    from dna_mamba.tasks.mutagenesis import MutagenesisResult, write_mutagenesis_tsv
    from dna_mamba.tasks.vcf_io import write_scores_tsv

    def disk_full(self, path_or_buf, *args, **kwargs):
        """Write the first line, then fail as a full disk does."""
        with open(path_or_buf, "w") if isinstance(path_or_buf, str | os.PathLike) else nullcontext(path_or_buf) as f:
            f.write("chrom\tpos\n")
        raise OSError(28, "No space left on device")

    out = tmp_path / "out.tsv"
    out.write_text("an earlier run's output\n")
    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    with pytest.raises(OSError, match="No space"):
        if writer == "scores":
            write_scores_tsv(pd.DataFrame({"chrom": ["chr7"], "pos": [5], "record_index": [0]}), out)
        else:
            llr = np.full((2, 4), 0.5)
            result = MutagenesisResult("chr7", 4, 6, {"llr": llr, "llr_fwd": llr, "llr_rc": llr}, encode("AC"),
                                       ScoringConfig())
            write_mutagenesis_tsv(result, out)
    assert out.read_text() == "an earlier run's output\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tsv"]


@pytest.mark.parametrize("alt", ["N", "R", "GN", "n", "y"])
def test_alts_with_n_or_iupac_codes_are_skipped_not_scored(model, reference, alt):
    alleles = prepare_alleles(records(("chr7", 10, base(10), [alt, other(base(10))])), reference)
    assert [a.skip for a in alleles] == ["ambiguous_alt", None]
    table = score_variants(model, reference, [("chr7", 10, base(10), alt)], ScoringConfig(window=4, context=8)).table
    assert table.skip_reason[0] == "ambiguous_alt" and np.isnan(table.llr[0])


@pytest.mark.parametrize("command", ["score-vcf", "mutagenesis"])
def test_output_under_a_file_fails_before_loading_the_model(small_inputs, tmp_path, monkeypatch, capsys, command):
    import dna_mamba.tasks.variants

    monkeypatch.setattr(dna_mamba.tasks.variants, "load_scoring_model", _no_model)
    fasta, vcf = small_inputs
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    if command == "score-vcf":
        argv = [command, "--fasta", str(fasta), "--vcf", str(vcf), "--out", str(blocker / "sub" / "out.vcf")]
        shown = f"--out {blocker}/sub/out.vcf"
    else:
        argv = [command, "--fasta", str(fasta), "--region", "chr7:10-20", "--out", str(blocker / "ism")]
        shown = f"--out {blocker}/ism.tsv"
    err = _cli_error(argv, capsys)
    assert f"error: {shown}: cannot create its folder inside {blocker}, which is a file" in err
    (tmp_path / "folder.vcf").mkdir()
    err = _cli_error(["score-vcf", "--fasta", str(fasta), "--vcf", str(vcf), "--out", str(tmp_path / "folder.vcf")],
                     capsys)
    assert "folder.vcf: is a directory" in err


@pytest.mark.parametrize("command", ["score-vcf", "mutagenesis"])
@pytest.mark.parametrize("device, message", [
    ("foo", "--device foo: not a torch device (use cpu, cuda, cuda:1, mps or auto)"),
    ("cuda", "--device cuda: CUDA is not available on this machine"),
    ("cuda:1", "--device cuda:1: CUDA is not available on this machine"),
    ("meta", "--device meta: dna_mamba runs on cpu, cuda or mps, not meta"),
])
def test_bad_device_is_one_line(small_inputs, tmp_path, monkeypatch, capsys, command, device, message):
    import dna_mamba.tasks.variants

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.setattr(dna_mamba.tasks.variants, "load_scoring_model", _no_model)
    fasta, vcf = small_inputs
    if command == "score-vcf":
        argv = [command, "--fasta", str(fasta), "--vcf", str(vcf), "--out", str(tmp_path / "o.vcf")]
    else:
        argv = [command, "--fasta", str(fasta), "--region", "chr7:10-20", "--out", str(tmp_path / "m")]
    assert _cli_error([*argv, "--device", device], capsys).startswith(f"error: {message}")


def test_auto_and_cpu_devices_still_run(small_inputs, model_dir, tmp_path):
    fasta, vcf = small_inputs
    for device in ("auto", "cpu"):
        assert main(["score-vcf", "--model", str(model_dir), "--fasta", str(fasta), "--vcf", str(vcf), "--out",
                     str(tmp_path / f"{device}.vcf"), "--window", "4", "--context", "8", "--no-progress",
                     "--device", device]) == 0


@pytest.mark.parametrize("name, content, message", [
    ("in.tsv", "chrom\tpos\tref\talt\nchr7\t99999999999999999999999\tA\tC\n",
     "in.tsv: column 'pos' row 1 has '99999999999999999999999', a position beyond any contig"),
    ("in.tsv", "chrom\tpos\tref\talt\nchr7\t1e30\tA\tC\n", "in.tsv: column 'pos' row 1 has '1e30', a position beyond"),
    ("in.tsv", "", "in.tsv: empty file, not a variant table"),
    ("in.csv", 'chrom,pos,ref,alt\nchr7,10,A,"C\n', "in.csv: cannot be read as a comma-separated table (Error "
     "tokenizing data"),
    ("in.vcf", VCF_HEADER + GOOD_RECORD, "in.vcf: a VCF/BCF file, not a variant table; pass it with --vcf"),
    ("in.txt", VCF_HEADER + GOOD_RECORD, "in.txt: a VCF/BCF file, not a variant table; pass it with --vcf"),
], ids=["overflow", "float_overflow", "empty", "unclosed_quote", "vcf_by_name", "vcf_by_content"])
def test_bad_variant_tables_are_one_line_naming_the_file(tmp_path, capsys, name, content, message):
    table = tmp_path / name
    table.write_text(content)
    with pytest.raises(ValueError) as info:
        read_variant_table(table)
    assert str(info.value).startswith(f"{tmp_path}/{message}")
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">chr7\n" + CONTIG + "\n")
    err = _cli_error(["score-vcf", "--fasta", str(fasta), "--table", str(table), "--out", str(tmp_path / "o.tsv")],
                     capsys)
    assert err.startswith(f"error: {tmp_path}/{message}")


def test_directories_are_not_reported_as_missing_files(small_inputs, tmp_path, capsys):
    fasta, vcf = small_inputs
    folder = tmp_path / "folder"
    folder.mkdir()
    readers = [(read_vcf, "VCF file"), (ReferenceGenome, "FASTA file"), (read_variant_table, "variant table")]
    for reader, kind in readers:
        with pytest.raises(IsADirectoryError, match=f"^{folder} is a directory, not a {kind}$"):
            reader(folder)
    err = _cli_error(["score-vcf", "--fasta", str(fasta), "--vcf", str(folder), "--out", str(tmp_path / "o.vcf")],
                     capsys)
    assert err.startswith(f"error: {folder} is a directory, not a VCF file")


def test_reference_from_sequences_takes_bytes_and_refuses_other_types():
    assert np.array_equal(ReferenceGenome.from_sequences({"chr7": CONTIG.encode()}).fetch("chr7", 0, 180),
                          encode(CONTIG))
    assert ReferenceGenome.from_sequences({"chr7": encode(CONTIG[:9]).astype(np.int64)}).lengths == {"chr7": 9}
    with pytest.raises(TypeError, match="contig 'chr7': expected a DNA string, ASCII bytes or a token-id array"):
        ReferenceGenome.from_sequences({"chr7": list("ACGT")})
    with pytest.raises(TypeError, match="sequences must map contig names"):
        ReferenceGenome.from_sequences(["ACGT"])
    with pytest.raises(TypeError, match="contig names must be strings, got 7"):
        ReferenceGenome.from_sequences({7: "ACGT"})
    with pytest.raises(ValueError, match="token ids must be 0..4"):
        ReferenceGenome.from_sequences({"chr7": np.array([0, 1, 9])})


def test_variant_api_type_errors_name_the_field(model, reference):
    config = ScoringConfig(window=4, context=8)
    b = base(10)
    with pytest.raises(ValueError, match="column 'alt' row 1 is empty \\(None or NaN\\); write '.' for a record"):
        score_variants(model, reference, [("chr7", 10, b, None)], config)
    with pytest.raises(ValueError, match="column 'ref' row 2 is empty \\(None or NaN\\)$"):
        score_variants(model, reference, [("chr7", 10, b, "A"), ("chr7", 11, None, "A")], config)
    with pytest.raises(TypeError, match="a single variant must still be in a list"):
        score_variants(model, reference, ("chr7", 10, b, "A"), config)
    with pytest.raises(TypeError, match="variant 0: expected a \\(chrom, pos, ref, alt\\) tuple, got \\('chr7', 10\\)"):
        score_variants(model, reference, [("chr7", 10)], config)
    # A list of ALTs is a multi-allelic variant, as a comma-separated ALT is; a position written as text is read
    # as it is in a TSV.
    alts = [a for a in "ACGT" if a != b][:2]
    listed = score_variants(model, reference, [("chr7", 10, b, alts)], config).table
    joined = score_variants(model, reference, [("chr7", "10", b, ",".join(alts))], config).table
    assert list(listed.alt) == alts and listed.llr.notna().all()
    np.testing.assert_array_equal(listed.llr, joined.llr)
    with pytest.raises(TypeError, match="VariantRecord 0 \\(chr7:10\\): pos must be an integer \\(1-based\\), got '1"):
        VariantRecord(0, "chr7", "10", ".", b, ("A",))
    with pytest.raises(TypeError, match="alts must be a tuple of ALT strings"):
        VariantRecord(0, "chr7", 10, ".", b, "A")
    with pytest.raises(TypeError, match="alts must be a tuple of ALT strings"):
        VariantRecord(0, "chr7", 10, ".", b, (None,))
    with pytest.raises(TypeError, match="ref must be a string, got None"):
        score_records(model, reference, [VariantRecord(0, "chr7", 10, ".", None, ("A",))], config)
    with pytest.raises(TypeError, match="start must be an integer \\(0-based\\), got '10'"):
        saturation_mutagenesis(model, reference, "chr7", "10", 20, config)
