"""Tokenizer: the id layout, case and IUPAC handling, errors that say where, reverse complement."""

import numpy as np
import pytest
import torch

from dna_mamba import tokenizer as tk


def test_ids_and_round_trip():
    assert (tk.A, tk.C, tk.G, tk.T, tk.N) == (0, 1, 2, 3, 4)
    assert len({tk.PAD, tk.BOS, tk.EOS, tk.MASK}) == 4 and min(tk.PAD, tk.BOS, tk.EOS, tk.MASK) > tk.N
    assert tk.VOCAB_SIZE >= tk.MASK + 1
    ids = tk.encode("ACGTN")
    assert ids.dtype == np.uint8 and ids.tolist() == [0, 1, 2, 3, 4]
    assert tk.decode(ids) == "ACGTN"
    assert tk.decode(torch.tensor([3, 2, 1, 0])) == "TGCA"


def test_lowercase_is_soft_masking_and_maps_to_upper_case():
    assert tk.encode("acgtn").tolist() == tk.encode("ACGTN").tolist()


@pytest.mark.parametrize("code", list("RYSWKMBDHVN") + list("ryswkmbdhvn"))
def test_iupac_ambiguity_codes_map_to_n(code):
    assert tk.encode(f"A{code}T").tolist() == [tk.A, tk.N, tk.T]


@pytest.mark.parametrize("bad", ["X", "U", "-", "*", " ", "1", "\n"])
def test_other_characters_are_errors_naming_file_record_and_position(bad):
    with pytest.raises(tk.InvalidSequenceError) as err:
        tk.encode(f"ACGT{bad}A", source="genome.fa", record="chr7", offset=100)
    message = str(err.value)
    assert "genome.fa" in message and "chr7" in message and "position 105" in message and repr(bad) in message


def test_non_ascii_is_an_error():
    with pytest.raises(tk.InvalidSequenceError, match="non-ASCII"):
        tk.encode("ACGÅT", source="x.fa")


def test_empty_sequence():
    assert tk.encode("").size == 0 and tk.decode(np.array([], dtype=np.uint8)) == ""


def test_reverse_complement_numpy_and_torch_agree_and_are_involutions():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, size=(3, 257)).astype(np.uint8)
    rc = tk.reverse_complement(ids)
    assert tk.decode(rc[0]) == tk.decode(ids[0])[::-1].translate(str.maketrans("ACGTN", "TGCAN"))
    np.testing.assert_array_equal(tk.reverse_complement(rc), ids)
    as_torch = tk.reverse_complement(torch.as_tensor(ids, dtype=torch.long))
    assert as_torch.dtype == torch.long
    np.testing.assert_array_equal(as_torch.numpy(), rc)


def test_reverse_complement_keeps_special_tokens():
    ids = np.array([tk.BOS, tk.A, tk.C, tk.PAD], dtype=np.uint8)
    assert tk.reverse_complement(ids).tolist() == [tk.PAD, tk.G, tk.T, tk.BOS]


def test_encoding_is_vectorised_on_a_large_sequence():
    seq = "ACGTacgtNRYK" * 200_000  # 2.4 Mb: a per-base Python loop would take seconds
    ids = tk.encode(seq)
    assert ids.shape == (len(seq),) and int((ids == tk.N).sum()) == 4 * 200_000  # N, R, Y, K per repeat
