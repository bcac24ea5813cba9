"""Order-k Markov (k-mer) baseline, so a user can see what the language model adds over k-mer statistics.

Which positions count, exactly as for the language model's ``val/bits_per_base``: every position whose *target* is
a base (A, C, G or T; token id < 4) is scored, from ``score_from`` on (default 1: the model reads ``window[:-1]``
and predicts ``window[1:]``, so the first base of a window has no prediction). Positions whose target is N (or any
other non-base token, e.g. padding) are skipped. Where the k preceding bases hold an N or run past the start of
the sequence, the model falls back to the longest N-free context it has (order ``j < k``), so the scored set does
not depend on k or on where the Ns are.

Probabilities are additive-smoothed counts, ``P(b | c) = (n(c, b) + alpha) / (n(c) + 4 alpha)``, per order;
:func:`choose_order` picks k so that contexts are well estimated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from dna_mamba.data.splits import Segment
from dna_mamba.data.store import GenomeStore
from dna_mamba.data.windows import window_arrays

MAX_ORDER = 12  # 4^13 counts: 0.5 GB of int64 during fitting
_OBSERVATIONS_PER_CELL = 30  # see choose_order
_CHUNK = 1 << 22  # positions per vectorised pass, bounding temporaries to some tens of MB

Sequences = np.ndarray | Iterable[np.ndarray]


def choose_order(train_length: int, *, max_order: int = MAX_ORDER) -> int:
    """Largest k with ``4^(k+1) <= train_length / 30`` (about 30 observations per (context, base) cell).

    Returns 0 when even order 0 is short of that, and at most ``max_order``. The factor 30 was set on real genomes
    (held-out tail, 1 kb windows): E. coli K-12 (4.4 Mb of training bases) gives k = 7 at 1.941 bits/base against
    the best order's 1.938 (k = 6), where a factor of 10 would pick k = 8 at 1.960; human chr20 (58 Mb) gives
    k = 9, the best order (1.826).
    """
    order = 0
    while order < max_order and 4 ** (order + 2) <= train_length / _OBSERVATIONS_PER_CELL:
        order += 1
    return order


def kmer_frequencies(ids: np.ndarray, k: int) -> np.ndarray:
    """Normalised counts of the k-mers of a token sequence, k-mers containing N (or any non-base) dropped.

    Index of a k-mer is its base-4 code with the first base most significant (AA..A = 0, AA..C = 1, ..., TT..T).

    Shapes:
        ids: (L,) token ids → (4**k,) float64 summing to 1, or all zeros when no N-free k-mer exists.
    """
    if not 1 <= k <= MAX_ORDER:
        raise ValueError(f"k must be in [1, {MAX_ORDER}], got {k}")
    counts = np.zeros(4**k, dtype=np.int64)
    for chunk, skip in _chunks(np.asarray(ids), overlap=k - 1):
        codes, run = _rolling_codes(chunk, k)
        ends = np.arange(skip, len(chunk))
        valid = ends[run[ends] >= k]  # the k bases ending here are all A/C/G/T
        counts += np.bincount(codes[valid], minlength=4**k)
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


class MarkovModel:
    """Order-k Markov chain over A, C, G, T with additive smoothing and lower-order fallback at N.

    Args:
        order: context length k (0 = base composition only).
        alpha: pseudocount added to every (context, base) count; 0.5 is the Krichevsky–Trofimov estimator.
    """

    def __init__(self, order: int, alpha: float = 0.5):
        if not 0 <= order <= MAX_ORDER:
            raise ValueError(f"order must be in [0, {MAX_ORDER}], got {order}")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive (zero would give unseen bases probability 0), got {alpha}")
        self.order = order
        self.alpha = alpha
        self.trained_positions = 0
        # Orders 0..k share one flat table; order j's (context, base) cells start at _offsets[j].
        self._offsets = np.cumsum([0] + [4 ** (j + 1) for j in range(order)], dtype=np.int64)
        self._log_probs: np.ndarray | None = None

    def fit(self, sequences: Sequences) -> MarkovModel:
        """Count (context, base) pairs of every order 0..k over the sequences (replacing any earlier fit).

        Args:
            sequences: one uint8 token array or an iterable of them (e.g. :func:`segment_arrays`); contexts do
                not cross from one array to the next.
        """
        k = self.order
        # A position trains order j when its j previous bases exist and are N-free (available >= j). Most positions
        # have the full k: count those at order k only and derive their lower-order counts by marginalising the
        # earliest context bases away at the end; count the few short-context positions directly.
        full = np.zeros(4 ** (k + 1), dtype=np.int64)
        partial = [np.zeros(4 ** (j + 1), dtype=np.int64) for j in range(k)]
        for array in _as_arrays(sequences):
            for chunk, skip in _chunks(array, overlap=k):
                _, available, context, base = self._positions(chunk, skip)
                is_full = available == k
                full += np.bincount(context[is_full] * 4 + base[is_full], minlength=4 ** (k + 1))
                short = ~is_full
                available, context, base = available[short], context[short], base[short]
                for j, order_counts in enumerate(partial):
                    use = available >= j
                    order_counts += np.bincount((context[use] & (4**j - 1)) * 4 + base[use], minlength=4 ** (j + 1))
        # Order-k cell index is (context * 4 + base) with the earliest context base most significant, so the
        # leading 4^(k-j) blocks are the contexts that differ only in their earliest k-j bases.
        counts = [partial[j] + full.reshape(4 ** (k - j), -1).sum(axis=0) for j in range(k)] + [full]
        self.trained_positions = int(counts[0].sum())
        tables = []
        for order_counts in counts:
            cells = order_counts.reshape(-1, 4) + self.alpha
            tables.append((np.log(cells) - np.log(cells.sum(axis=1, keepdims=True))).ravel())
        self._log_probs = np.concatenate(tables).astype(np.float32)  # float32 halves a 90M-entry order-12 table
        return self

    def log_prob_per_position(self, ids: np.ndarray) -> np.ndarray:
        """Natural-log probability of each base given up to k previous bases (lower orders where N interferes).

        Shapes:
            ids: (L,) token ids → (L,) float64; NaN where the target is not a base.
        """
        log_probs = self._table()
        ids = np.asarray(ids)
        out = np.full(len(ids), np.nan)
        done = 0
        for chunk, skip in _chunks(ids, overlap=self.order):
            targets, available, context, base = self._positions(chunk, skip)
            out[done + targets - skip] = self._lookup(log_probs, available, context, base)
            done += len(chunk) - skip
        return out

    def bits_per_base(self, sequences: Sequences, *, score_from: int = 1) -> float:
        """Mean bits per scored base over one or more sequences (see the module docstring for which count).

        Args:
            sequences: one token array or an iterable of them, e.g. validation windows.
            score_from: first scored position of each sequence (1 matches next-token LM scoring of a window).
        """
        total, count = self.score(sequences, score_from=score_from)
        if count == 0:
            raise ValueError("no scored position: every target is N or lies before score_from")
        return total / count / math.log(2)

    def score(self, sequences: Sequences, *, score_from: int = 1) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) and number of scored positions; see :meth:`bits_per_base`."""
        if score_from < 0:
            raise ValueError(f"score_from must be non-negative, got {score_from}")
        log_probs = self._table()
        total, count = 0.0, 0
        for array in _as_arrays(sequences):
            for chunk, skip in _chunks(array, overlap=self.order, first=score_from):
                _, available, context, base = self._positions(chunk, skip)
                values = self._lookup(log_probs, available, context, base)
                total -= float(values.sum(dtype=np.float64))
                count += len(values)
        return total, count

    def _table(self) -> np.ndarray:
        if self._log_probs is None:
            raise RuntimeError("MarkovModel is not fitted: call fit() first")
        return self._log_probs

    def _positions(self, chunk: np.ndarray, skip: int) -> tuple[np.ndarray, ...]:
        """Scored positions of a chunk (from ``skip`` on), their usable context length, context code and base."""
        codes, run = _rolling_codes(chunk, self.order)
        targets = np.flatnonzero(chunk[skip:] < 4) + skip
        previous = targets - 1
        # Usable context: the run of bases just before the target, capped at k (0 at the sequence start, where
        # previous is -1 and the lookups below wrap harmlessly before being overwritten).
        available = np.minimum(run[previous], self.order)
        context = codes[previous] & (4**self.order - 1)  # order 0: no context
        if len(targets) and targets[0] == 0:
            available[0] = context[0] = 0
        return targets, available, context, chunk[targets].astype(np.int64)

    def _lookup(self, log_probs: np.ndarray, available: np.ndarray, context: np.ndarray,
                base: np.ndarray) -> np.ndarray:
        mask = (np.int64(1) << (2 * available)) - 1  # keep the `available` most recent bases of the context
        return log_probs[self._offsets[available] + (context & mask) * 4 + base]


def segment_arrays(store: GenomeStore, segments: Sequence[Segment]) -> Iterator[np.ndarray]:
    """Token ids of each segment as memory-mapped slices (no copy), e.g. to :meth:`MarkovModel.fit`."""
    for segment in segments:
        yield store.array(segment.contig)[segment.start:segment.end]


@dataclass(frozen=True)
class MarkovBaselineResult:
    """What :func:`markov_baseline` measured."""

    order: int
    alpha: float
    bits_per_base: float
    scored_positions: int
    trained_positions: int


def markov_baseline(train_store: GenomeStore, train_segments: Sequence[Segment], eval_store: GenomeStore,
                    eval_windows: np.ndarray, window: int, *, order: int | None = None, alpha: float = 0.5,
                    score_from: int = 1) -> MarkovBaselineResult:
    """Fit a Markov model on training segments and score the same evaluation windows the language model sees.

    Args:
        train_store, train_segments: training data (e.g. ``split.store("train")``, ``split.train``).
        eval_store, eval_windows: the evaluation store and its ``(contig_index, start)`` windows.
        window: window length.
        order: Markov order; None picks :func:`choose_order` of the N-free training length.
        alpha: pseudocount.
        score_from: first scored position of each window (see :meth:`MarkovModel.bits_per_base`).
    """
    if order is None:
        bases = sum(s.length - int(train_store.count_n(s.contig, s.start, s.end)) for s in train_segments)
        order = choose_order(bases)
    model = MarkovModel(order, alpha).fit(segment_arrays(train_store, train_segments))
    total, count = model.score(window_arrays(eval_store, eval_windows, window), score_from=score_from)
    if count == 0:
        raise ValueError("no scored position in the evaluation windows")
    return MarkovBaselineResult(order, alpha, total / count / math.log(2), count, model.trained_positions)


def _as_arrays(sequences: Sequences) -> Iterator[np.ndarray]:
    if isinstance(sequences, np.ndarray):
        yield sequences
    else:
        yield from (np.asarray(s) for s in sequences)


def _chunks(ids: np.ndarray, *, overlap: int, first: int = 0) -> Iterator[tuple[np.ndarray, int]]:
    """Pieces of ``ids[first:]`` of about ``_CHUNK`` positions, each preceded by up to ``overlap`` earlier ones.

    Yields ``(piece, skip)``: the positions ``piece[skip:]`` are new; ``piece[:skip]`` is context only.
    """
    for start in range(first, len(ids), _CHUNK):
        low = max(0, start - overlap)
        yield np.asarray(ids[low:start + _CHUNK]), start - low


def _rolling_codes(chunk: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Base-4 codes of the ``k`` tokens ending at each position, and the run of bases ending there.

    ``codes[p] = sum_m chunk[p - m] * 4**m`` for ``m < k`` (earliest base most significant, non-bases as 0);
    ``run[p]`` counts consecutive bases ending at ``p`` (0 where ``chunk[p]`` is not a base). A code is an
    N-free k-mer exactly where ``run >= k``; its low ``2j`` bits are the last ``j`` bases for any ``j <= k``.
    """
    is_base = chunk < 4
    positions = np.arange(1, len(chunk) + 1, dtype=np.int64)
    if is_base.all():  # the common case in assembled genomes: skip the gap bookkeeping
        digits, run = chunk.astype(np.int64), positions
    else:
        digits = np.where(is_base, chunk, 0).astype(np.int64)
        run = positions - np.maximum.accumulate(np.where(is_base, 0, positions))
    codes = digits.copy()
    for m in range(1, min(k, len(chunk))):
        codes[m:] += digits[:-m] << (2 * m)
    return codes, run
