"""Markov (k-mer) baseline: known entropies, N handling, agreement with brute-force counting, real genome."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dna_mamba.baselines import MarkovModel, choose_order, kmer_frequencies, markov_baseline, segment_arrays
from dna_mamba.data.splits import split_by_fraction
from dna_mamba.data.store import build_store
from dna_mamba.data.windows import plan_windows, window_arrays

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ECOLI = DATA / "genomes" / "ecoli_K12_MG1655.fa.gz"


def markov_chain(order: int, length: int, seed: int) -> tuple[np.ndarray, float]:
    """A sequence drawn from a random order-k chain, and the chain's entropy rate in bits per base."""
    rng = np.random.default_rng(seed)
    transition = rng.dirichlet(np.full(4, 0.3), size=4**order)  # peaked rows: entropy well below 2 bits
    cumulative = transition.cumsum(axis=1)
    uniforms = rng.random(length)
    seq = np.zeros(length, dtype=np.uint8)
    context = 0
    for i in range(length):
        base = min(int(np.searchsorted(cumulative[context], uniforms[i])), 3)
        seq[i] = base
        context = (context * 4 + base) % 4**order
    # Entropy rate = sum over contexts of stationary probability x row entropy; the empirical context
    # frequencies of a long sample estimate the stationary distribution.
    codes = np.zeros(length - order, dtype=np.int64)
    for m in range(order):
        codes = codes * 4 + seq[m:length - order + m]
    stationary = np.bincount(codes, minlength=4**order) / len(codes)
    row_entropy = -(transition * np.log2(transition)).sum(axis=1)
    return seq, float(stationary @ row_entropy)


def test_order_zero_on_uniform_random_sequence_is_two_bits() -> None:
    rng = np.random.default_rng(0)
    train, held_out = rng.integers(0, 4, 200_000, dtype=np.uint8), rng.integers(0, 4, 100_000, dtype=np.uint8)
    assert MarkovModel(0).fit(train).bits_per_base(held_out) == pytest.approx(2.0, abs=0.005)


def test_order_k_approaches_the_entropy_of_a_k_order_chain() -> None:
    seq, entropy = markov_chain(order=2, length=150_000, seed=1)
    train, held_out = seq[:100_000], seq[100_000:]
    bits = {k: MarkovModel(k).fit(train).bits_per_base(held_out) for k in (0, 1, 2, 3)}
    assert entropy < 1.6
    assert bits[2] == pytest.approx(entropy, abs=0.02)
    assert bits[0] > bits[1] > bits[2] + 0.05  # too short a context misses structure
    assert bits[3] == pytest.approx(bits[2], abs=0.02)  # a longer one adds nothing but estimation noise


def brute_force_log_probs(train: np.ndarray, test: np.ndarray, order: int, alpha: float) -> np.ndarray:
    """Per-position log-probabilities by explicit loops: the specification the vectorised model must meet."""
    counts = [np.zeros((4**j, 4)) for j in range(order + 1)]
    for i, base in enumerate(train):
        if base >= 4:
            continue
        for j in range(order + 1):
            if i >= j and np.all(train[i - j:i] < 4):
                counts[j][int(sum(int(b) * 4 ** (j - 1 - m) for m, b in enumerate(train[i - j:i]))), base] += 1
    out = np.full(len(test), np.nan)
    for i, base in enumerate(test):
        if base >= 4:
            continue
        j = 0  # longest N-free context available, up to the order
        while j < order and i - j - 1 >= 0 and test[i - j - 1] < 4:
            j += 1
        context = int(sum(int(b) * 4 ** (j - 1 - m) for m, b in enumerate(test[i - j:i])))
        row = counts[j][context] + alpha
        out[i] = math.log(row[base] / row.sum())
    return out


def test_matches_brute_force_counting_with_n_and_fallback() -> None:
    rng = np.random.default_rng(2)
    train = rng.integers(0, 5, 3000, dtype=np.uint8)  # N (4) about one base in five
    test = rng.integers(0, 5, 500, dtype=np.uint8)
    test[100:110] = 4
    model = MarkovModel(3, alpha=0.7).fit([train[:1500], train[1500:]])
    # Contexts never span two training arrays: for the loops, joining them with an N between is equivalent.
    joined = np.concatenate([train[:1500], [4], train[1500:]]).astype(np.uint8)
    got = model.log_prob_per_position(test)
    np.testing.assert_allclose(got, brute_force_log_probs(joined, test, 3, 0.7), rtol=1e-5, equal_nan=True)
    assert np.isnan(got[test == 4]).all() and np.isfinite(got[test < 4]).all()


def test_scored_positions_are_exactly_the_base_targets() -> None:
    rng = np.random.default_rng(3)
    model = MarkovModel(4).fit(rng.integers(0, 4, 50_000, dtype=np.uint8))
    window = rng.integers(0, 4, 1000, dtype=np.uint8)
    window[[0, 5, 6, 7, 500]] = 4
    window[990:] = 5  # padding tokens are not bases either
    total, count = model.score(window, score_from=1)
    assert count == int(np.sum(window[1:] < 4))  # independent of the order and of where N lies
    log_probs = model.log_prob_per_position(window)
    assert total == pytest.approx(-np.nansum(log_probs[1:]))
    assert model.bits_per_base([window, window]) == pytest.approx(total / count / math.log(2))
    assert model.score(window, score_from=0)[1] == int(np.sum(window < 4))
    with pytest.raises(ValueError, match="no scored position"):
        model.bits_per_base(np.full(10, 4, dtype=np.uint8))


def test_long_inputs_are_chunked_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    seq = rng.integers(0, 5, 5000, dtype=np.uint8)
    whole = MarkovModel(3).fit(seq)
    expected = whole.log_prob_per_position(seq)
    monkeypatch.setattr("dna_mamba.baselines._CHUNK", 97)  # many chunk seams, each needing carried context
    chunked = MarkovModel(3).fit(seq)
    np.testing.assert_array_equal(chunked._log_probs, whole._log_probs)
    np.testing.assert_allclose(chunked.log_prob_per_position(seq), expected, equal_nan=True)


def test_kmer_frequencies() -> None:
    ids = np.array([0, 1, 2, 3, 4, 0, 1], dtype=np.uint8)  # AC CG GT (TN NA dropped) AC
    expected = np.zeros(16)
    expected[[0 * 4 + 1, 1 * 4 + 2, 2 * 4 + 3]] = [0.5, 0.25, 0.25]
    np.testing.assert_allclose(kmer_frequencies(ids, 2), expected)
    random = np.random.default_rng(5).integers(0, 4, 100_000, dtype=np.uint8)
    freqs = kmer_frequencies(random, 3)
    assert freqs.shape == (64,) and freqs.sum() == pytest.approx(1.0)
    assert np.abs(freqs - 1 / 64).max() < 0.003
    np.testing.assert_array_equal(kmer_frequencies(np.full(5, 4, dtype=np.uint8), 2), np.zeros(16))


def test_choose_order() -> None:
    assert choose_order(10) == 0
    assert choose_order(480) == 1  # 4^2 = 16 cells, thirty observations each
    assert choose_order(479) == 0
    assert choose_order(4_639_675) == 7
    assert choose_order(58_000_000) == 9
    assert choose_order(3_000_000_000) == 12
    assert choose_order(3_000_000_000, max_order=10) == 10


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="order must be in"):
        MarkovModel(13)
    with pytest.raises(ValueError, match="alpha must be positive"):
        MarkovModel(2, alpha=0)
    with pytest.raises(RuntimeError, match="not fitted"):
        MarkovModel(2).bits_per_base(np.zeros(10, dtype=np.uint8))


def test_baseline_on_ecoli_validation_windows(tmp_path: Path) -> None:
    store = build_store(ECOLI, tmp_path / "ecoli", progress=False)
    split = split_by_fraction(store, 0.02)
    windows = plan_windows(store, split.val, 2048)
    result = markov_baseline(store, split.train, store, windows, 2048)
    assert result.order == choose_order(split.lengths()["train"])
    assert result.scored_positions == len(windows) * 2047
    assert result.trained_positions == split.lengths()["train"]
    assert 1.85 < result.bits_per_base < 1.97  # bacterial DNA: k-mer statistics buy a little over 2 bits
    order2 = MarkovModel(2).fit(segment_arrays(store, split.train))
    assert result.bits_per_base < order2.bits_per_base(window_arrays(store, windows, 2048))
