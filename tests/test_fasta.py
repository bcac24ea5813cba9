"""FASTA reader: real files, formats, line layouts, and one clear error per malformed input."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

import numpy as np
import pytest
from Bio import SeqIO, bgzf

from dna_mamba.data.fasta import FastaFormatError, detect_compression, iter_fasta_chunks, read_fasta
from dna_mamba.tokenizer import InvalidSequenceError, encode

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LAMBDA = DATA / "genomes" / "lambda_phage_NC_001416.fa.gz"
ECOLI = DATA / "genomes" / "ecoli_K12_MG1655.fa.gz"
CHRM = DATA / "human" / "rCRS_chrM.fa"
CHR20 = DATA / "human" / "GRCh37_chr20.fa.gz"


def fasta_text(records: dict[str, str], *, width: int = 60, newline: str = "\n") -> str:
    lines = []
    for name, seq in records.items():
        lines.append(f">{name}")
        lines += [seq[i:i + width] for i in range(0, len(seq), width)]
    return newline.join(lines) + newline


def random_bases(n: int, seed: int = 0) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


@pytest.mark.parametrize("path", [LAMBDA, ECOLI, CHRM], ids=["lambda", "ecoli", "chrM"])
def test_real_files_match_biopython(path: Path) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        expected = [(r.id, encode(str(r.seq))) for r in SeqIO.parse(handle, "fasta")]
    records = list(read_fasta(path))
    assert [r.name for r in records] == [name for name, _ in expected]
    for record, (_, ids) in zip(records, expected, strict=True):
        np.testing.assert_array_equal(record.ids, ids)


def test_known_lengths_names_and_descriptions() -> None:
    (phage,) = read_fasta(LAMBDA)
    assert phage.name == "gi|9626243|ref|NC_001416.1|"
    assert phage.description.startswith("gi|9626243|ref|NC_001416.1| Enterobacteria phage lambda")
    assert len(phage.ids) == 48_502
    (ecoli,) = read_fasta(ECOLI)
    assert len(ecoli.ids) == 4_639_675


def test_detects_compression_by_magic_bytes_not_name(tmp_path: Path) -> None:
    text = fasta_text({"a": random_bases(500)}).encode()
    gz_named_plain = tmp_path / "plain.fa.gz"
    gz_named_plain.write_bytes(text)
    gzip_named_fa = tmp_path / "gzip.fa"
    gzip_named_fa.write_bytes(gzip.compress(text))
    assert detect_compression(gz_named_plain) == "plain"
    assert detect_compression(gzip_named_fa) == "gzip"
    assert detect_compression(CHR20) == "bgzip"
    assert detect_compression(ECOLI) == "gzip"
    assert len(next(read_fasta(gzip_named_fa)).ids) == 500


def test_chr20_bgzip_streams_in_blocks() -> None:
    # Only the first blocks: the whole chromosome is covered by test_store's module fixture.
    chunks = iter_fasta_chunks(CHR20, block_size=1 << 20)
    first = next(chunks)
    assert (first.record, first.offset) == ("20", 0)
    assert np.all(first.ids[:60_000] == 4)  # chr20 starts with a 60 kb gap
    second = next(chunks)
    assert second.offset == len(first.ids)
    chunks.close()


def test_lowercase_and_iupac_mapping(tmp_path: Path) -> None:
    path = tmp_path / "mixed.fa"
    path.write_text(">m\nacgtACGT\nRYSWKMBDHVNnryswkmbdhv\n")
    (record,) = read_fasta(path)
    np.testing.assert_array_equal(record.ids[:8], [0, 1, 2, 3, 0, 1, 2, 3])
    assert np.all(record.ids[8:] == 4)


@pytest.mark.parametrize("block_size", [1, 7, 64, 1 << 20])
def test_line_widths_and_crlf_give_identical_records(tmp_path: Path, block_size: int) -> None:
    records = {"first one": random_bases(1000, 1) + "acgtnRY", "second": random_bases(333, 2), "3": "G"}
    expected = {name.split()[0]: encode(seq) for name, seq in records.items()}
    layouts = [(60, "\n"), (1, "\n"), (80, "\r\n"), (10_000, "\n"), (61, "\r\n")]
    for width, newline in layouts:
        path = tmp_path / f"w{width}.fa"
        path.write_text(fasta_text(records, width=width, newline=newline), newline="")
        parsed = {r.name: r.ids for r in read_fasta(path, block_size=block_size)}
        assert parsed.keys() == expected.keys()
        for name, ids in expected.items():
            np.testing.assert_array_equal(parsed[name], ids, err_msg=f"width {width} newline {newline!r}")


def test_blank_lines_bom_and_missing_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "loose.fa"
    path.write_bytes(b"\xef\xbb\xbf\n\r\n>a desc\nAC\n\nGT\n>b\nTTT")
    records = list(read_fasta(path, block_size=3))
    assert [(r.name, r.description, r.ids.tolist()) for r in records] == [
        ("a", "a desc", [0, 1, 2, 3]), ("b", "b", [3, 3, 3])]


def test_chunks_cover_records_in_order(tmp_path: Path) -> None:
    path = tmp_path / "long.fa"
    seq = random_bases(10_000, 3)
    path.write_text(fasta_text({"x": seq, "y": seq[:10]}))
    chunks = list(iter_fasta_chunks(path, block_size=1000))
    x_chunks = [c for c in chunks if c.record == "x"]
    assert len(x_chunks) > 5
    assert [c.offset for c in x_chunks] == list(np.cumsum([0] + [len(c.ids) for c in x_chunks[:-1]]))
    np.testing.assert_array_equal(np.concatenate([c.ids for c in x_chunks]), encode(seq))


MALFORMED = {
    "no_header": (b"ACGT\nACGT\n", FastaFormatError, "line 1: sequence data before the first header"),
    "no_header_after_blank": (b"\n\nACGT\n>a\nAC\n", FastaFormatError, "line 3: sequence data before the first"),
    "empty_record_middle": (b">a\nACGT\n>b\n>c\nAC\n", FastaFormatError, "line 3: record 'b' is empty"),
    "empty_record_last": (b">a\nACGT\n>b\n\n", FastaFormatError, "record 'b' is empty"),
    "duplicate_names": (b">a x\nAC\n>b\nAC\n>a y\nGG\n", FastaFormatError, "line 5: duplicate record name 'a'"),
    "header_without_name": (b">a\nAC\n>  \nAC\n", FastaFormatError, "line 3: header with no name"),
    "invalid_character": (b">a\nACGT\n>b\nACGT\nACXT\n", InvalidSequenceError, "record 'b', position 7: invalid "
                                                                                  "character 'X'"),
    "gt_inside_a_line": (b">a\nAC>GT\n", InvalidSequenceError, "record 'a', position 3"),
    "rna": (b">a\nACGU\n", InvalidSequenceError, "invalid character 'U'"),
    "lone_cr_in_a_line": (b">a\nACGT\rACGT\nAC\n", FastaFormatError, "line 2 (record 'a'): a carriage return"),
    "lone_cr_among_crlf": (b">a\r\nAC\r\nGT\rAC\r\n", FastaFormatError, "line 3 (record 'a'): a carriage return"),
    "cr_only_line_endings": (b">a\rACGT\rAC\r>b\rGG\r", FastaFormatError, "line 1: a carriage return (\\r) inside"),
    "empty_file": (b"", FastaFormatError, "empty file"),
    "only_blank_lines": (b"\n\n", FastaFormatError, "no FASTA records"),
}


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_input_fails_with_one_clear_line(tmp_path: Path, case: str, compressed: bool) -> None:
    content, error, message = MALFORMED[case]
    path = tmp_path / f"{case}.fa"
    path.write_bytes(gzip.compress(content) if compressed else content)
    with pytest.raises(error) as info:
        list(read_fasta(path, block_size=4))
    text = str(info.value)
    assert message in text
    assert str(path) in text
    assert "\n" not in text


def test_empty_and_truncated_and_corrupt_gzip(tmp_path: Path) -> None:
    empty = tmp_path / "empty.fa.gz"
    empty.write_bytes(b"")
    with pytest.raises(FastaFormatError, match="empty file"):
        list(read_fasta(empty))

    payload = gzip.compress(fasta_text({"a": random_bases(50_000)}).encode())
    truncated = tmp_path / "truncated.fa.gz"
    truncated.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(FastaFormatError, match=r"truncated\.fa\.gz: truncated or corrupt gzip data"):
        list(read_fasta(truncated))

    corrupt = bytearray(payload)
    corrupt[len(corrupt) // 2: len(corrupt) // 2 + 64] = bytes(64)
    damaged = tmp_path / "damaged.fa.gz"
    damaged.write_bytes(bytes(corrupt))
    with pytest.raises(FastaFormatError, match="truncated or corrupt gzip data"):
        list(read_fasta(damaged))


def test_bgzip_cut_at_a_block_boundary_warns(tmp_path: Path) -> None:
    path = tmp_path / "cut.fa.gz"
    with bgzf.BgzfWriter(str(path), "wb") as writer:
        writer.write(fasta_text({"a": random_bases(200_000)}).encode())
    data = path.read_bytes()
    path.write_bytes(data[:-28])  # drop the 28-byte BGZF end-of-file block
    with pytest.warns(UserWarning, match="end-of-file marker missing"):
        list(read_fasta(path))


def test_missing_directory_and_unsupported_inputs(tmp_path: Path) -> None:
    with pytest.raises(FastaFormatError, match=r"nope\.fa: no such file"):
        list(read_fasta(tmp_path / "nope.fa"))
    with pytest.raises(FastaFormatError, match="is a directory"):
        list(read_fasta(tmp_path))
    compressed = tmp_path / "genome.fa.bz2"
    compressed.write_bytes(bz2.compress(b">a\nACGT\n"))
    with pytest.raises(FastaFormatError, match="bzip2-compressed files are not supported"):
        list(read_fasta(compressed))


# ------------------------------------------------------------------------------------------- index consistency

def _write_fasta(path: Path, records: dict[str, str], width: int = 60, newline: str = "\n",
                 descriptions: dict[str, str] | None = None) -> None:
    lines = []
    for name, seq in records.items():
        lines.append(f">{name}" + (f" {descriptions[name]}" if descriptions and name in descriptions else ""))
        lines += [seq[i:i + width] for i in range(0, len(seq), width)]
        if newline == "\n":
            lines.append("")  # a blank line between records (pyfaidx refuses them with CRLF)
    path.write_bytes((newline.join(lines) + newline).encode())


def _index_with(tool: str, path: Path) -> None:
    """Build path.fai the way the readers do: htslib (pysam, score-vcf) or pyfaidx (embed)."""
    if tool == "htslib":
        pysam = pytest.importorskip("pysam")
        pysam.faidx(str(path))
    else:
        import pyfaidx

        pyfaidx.Fasta(str(path)).close()


def _touch_newer(index: Path, than: Path) -> None:
    """Give the index a later modification time than the FASTA (as `cp -p` or `tar` of an old pair can)."""
    import os

    stamp = than.stat().st_mtime + 10
    os.utime(index, (stamp, stamp))


RNG_SEQ = "".join(np.random.default_rng(3).choice(list("ACGT"), 500))


@pytest.mark.parametrize("tool", ["htslib", "pyfaidx"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_index_check_accepts_what_the_indexers_build(tmp_path: Path, tool: str, newline: str) -> None:
    from dna_mamba.data.fasta import check_fasta_index

    fasta = tmp_path / "ref.fa"
    records = {"chr1": RNG_SEQ[:300], "chr2": RNG_SEQ[:60], "chrM": RNG_SEQ[:61], "x": RNG_SEQ[:1]}
    _write_fasta(fasta, records, newline=newline, descriptions={"chr1": "a description " + "y" * 5000})
    _index_with(tool, fasta)
    check_fasta_index(fasta)  # no error: the index describes this file
    check_fasta_index(tmp_path / "missing-index.fa")  # no index: nothing to check


def test_index_of_an_empty_record_is_refused_with_the_line(tmp_path: Path) -> None:
    """pyfaidx indexes an empty record as length 0; the readers refuse such a file as the parser does."""
    from dna_mamba.data.fasta import check_fasta_index

    fasta = tmp_path / "ref.fa"
    _write_fasta(fasta, {"chr1": RNG_SEQ[:100], "empty": "", "chr2": RNG_SEQ[:60]})
    _index_with("pyfaidx", fasta)
    with pytest.raises(FastaFormatError, match="ref.fa: line 5: record 'empty' is empty"):
        check_fasta_index(fasta)


@pytest.mark.parametrize("tool", ["htslib", "pyfaidx"])
@pytest.mark.parametrize("change, problem", [
    ("longer", "the sequence goes on past the indexed 100 bases"),
    ("shorter", ".*"),  # which check trips depends on where the old offsets land
    ("renamed", "the line before its offset is not its header"),
])
def test_index_from_another_version_of_the_file_is_refused(tmp_path: Path, tool: str, change: str,
                                                           problem: str) -> None:
    """The scenario of a re-downloaded FASTA next to its old index: the readers would return other bytes."""
    from dna_mamba.data.fasta import check_fasta_index

    fasta = tmp_path / "ref.fa"
    _write_fasta(fasta, {"a": RNG_SEQ[:100], "b": RNG_SEQ[100:180]})
    _index_with(tool, fasta)
    new = {"longer": {"a": RNG_SEQ[:180], "b": RNG_SEQ[100:180]},
           "shorter": {"a": RNG_SEQ[:40], "b": RNG_SEQ[100:180]},
           "renamed": {"z": RNG_SEQ[:100], "b": RNG_SEQ[100:180]}}[change]
    _write_fasta(fasta, new)
    _touch_newer(Path(f"{fasta}.fai"), fasta)
    with pytest.raises(FastaFormatError, match=f"ref.fa.fai does not match ref.fa \\(record '.': ({problem})"):
        check_fasta_index(fasta)


def test_index_with_a_repeated_name_or_garbage_is_refused(tmp_path: Path) -> None:
    from dna_mamba.data.fasta import check_fasta_index

    fasta = tmp_path / "ref.fa"
    fasta.write_text(">a\nACGT\n>a\nTTTT\n")
    Path(f"{fasta}.fai").write_text("a\t4\t3\t4\t5\na\t4\t11\t4\t5\n")
    with pytest.raises(FastaFormatError, match="two records are named 'a'"):
        check_fasta_index(fasta)
    Path(f"{fasta}.fai").write_text("a\tfour\t3\t4\t5\n")
    with pytest.raises(FastaFormatError, match="line 1: not a FASTA index line"):
        check_fasta_index(fasta)


def test_bgzip_index_older_than_the_file_is_refused(tmp_path: Path) -> None:
    from dna_mamba.data.fasta import check_fasta_index

    pysam = pytest.importorskip("pysam")
    plain = tmp_path / "ref.fa"
    _write_fasta(plain, {"a": RNG_SEQ[:100]})
    fasta = tmp_path / "ref.fa.gz"
    with bgzf.BgzfWriter(str(fasta), "wb") as handle:
        handle.write(plain.read_bytes())
    pysam.faidx(str(fasta))
    check_fasta_index(fasta)
    import os

    index_time = Path(f"{fasta}.fai").stat().st_mtime
    os.utime(fasta, (index_time + 30, index_time + 30))  # within the slack of a copy: accepted
    check_fasta_index(fasta)
    os.utime(fasta, (index_time + 3600, index_time + 3600))  # the FASTA replaced an hour after its index was built
    with pytest.raises(FastaFormatError, match="ref.fa.gz.(fai|gzi): older than ref.fa.gz"):
        check_fasta_index(fasta)
