"""The k-mer baseline: strand-symmetric k-mer frequencies + logistic regression, on the model's own windows.

The features of a window are the frequencies of its k-mers on both strands (counts of the window plus counts of
its reverse complement), so a window and its reverse complement get the same features, as the model's
both-strand evaluation does. Training windows are drawn by the same :class:`BalancedWindowDataset` (same seed)
the model trains on, and scoring uses the same fixed evaluation windows, so the two rows of a results table differ
only in the classifier.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm  # plain text bars: tqdm.auto warns in notebooks without ipywidgets

from dna_mamba.species.dataset import BalancedWindowDataset, EvalWindowDataset
from dna_mamba.species.metrics import classification_metrics

MAX_K = 8  # 4^8 = 65,536 features: beyond that logistic regression on a few thousand windows only memorises
_CHUNK_ELEMENTS = 1 << 22  # positions per vectorised pass, bounding int64 temporaries to ~32 MB


def kmer_counts(windows: np.ndarray, k: int) -> np.ndarray:
    """Counts of every k-mer in each row of a token matrix; k-mers holding N (or any non-base) are skipped.

    The index of a k-mer is its base-4 code, first base most significant (A = 0, C = 1, G = 2, T = 3), as in
    :func:`dna_mamba.baselines.kmer_frequencies`.

    Shapes:
        windows: (M, L) token ids → (M, 4**k) float32.
    """
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be in [1, {MAX_K}], got {k}")
    windows = np.atleast_2d(np.asarray(windows))
    m, length = windows.shape
    out = np.zeros((m, 4**k), dtype=np.float32)
    if length < k:
        return out
    rows_per_pass = max(1, _CHUNK_ELEMENTS // length)
    for lo in range(0, m, rows_per_pass):
        ids = windows[lo:lo + rows_per_pass].astype(np.int64)  # (R, L)
        base = ids < 4
        n_kmers = length - k + 1
        codes = np.zeros((len(ids), n_kmers), dtype=np.int64)
        valid = np.ones((len(ids), n_kmers), dtype=bool)
        for j in range(k):
            codes = codes * 4 + np.where(base[:, j:j + n_kmers], ids[:, j:j + n_kmers], 0)
            valid &= base[:, j:j + n_kmers]
        flat = (codes + (np.arange(len(ids), dtype=np.int64) * 4**k)[:, None])[valid]
        out[lo:lo + len(ids)] = np.bincount(flat, minlength=len(ids) * 4**k).reshape(len(ids), 4**k)
    return out


def reverse_complement_index(k: int) -> np.ndarray:
    """Permutation mapping each k-mer code to the code of its reverse complement. Shapes: (4**k,) int64."""
    codes = np.arange(4**k, dtype=np.int64)
    rc = np.zeros_like(codes)
    for j in range(k):  # digit j (least significant first) becomes digit k-1-j, complemented (3 - b)
        rc += (3 - (codes // 4**j) % 4) * 4 ** (k - 1 - j)
    return rc


def kmer_features(windows: np.ndarray, k: int) -> np.ndarray:
    """Strand-symmetric k-mer frequencies: (counts + reverse-complement counts), normalised per row.

    Shapes:
        windows: (M, L) → (M, 4**k) float32, rows summing to 1 (all zeros for a window without any N-free k-mer).
    """
    counts = kmer_counts(windows, k)
    both = counts + counts[:, reverse_complement_index(k)]
    total = both.sum(axis=1, keepdims=True)
    return np.divide(both, total, out=np.zeros_like(both), where=total > 0)


@dataclass
class KmerBaselineResult:
    """Held-out metrics of the k-mer + logistic-regression baseline for one k."""

    k: int
    metrics: dict
    train_windows: int
    seconds: float


def _features(batches: Iterable[np.ndarray], ks: Sequence[int], bar: tqdm) -> dict[int, np.ndarray]:
    parts: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    for batch in batches:
        for k in ks:
            parts[k].append(kmer_features(batch, k))
        bar.update(len(batch))
    return {k: np.concatenate(v) for k, v in parts.items()}


def _batches(dataset, indices: Sequence[int], max_tokens: int = 1 << 24) -> Iterable[np.ndarray]:
    window = dataset[0][0].shape[0] if len(dataset) else 1
    size = max(1, max_tokens // window)
    for lo in range(0, len(indices), size):
        yield np.stack([dataset[i][0].numpy().astype(np.uint8) for i in indices[lo:lo + size]])


def kmer_baseline(train: BalancedWindowDataset, test: EvalWindowDataset, classes: Sequence[str], *,
                  ks: Sequence[int] = (4, 5, 6), train_windows: int | None = None, C: float = 1.0,
                  seed: int = 0, progress: bool = False) -> list[KmerBaselineResult]:
    """Fit logistic regression on k-mer features of training windows; score it on the evaluation windows.

    Args:
        train: the model's training dataset; its first ``train_windows`` items (balanced across classes, the same
            draws the model's first steps see) are the baseline's training set.
        test: the fixed evaluation windows.
        classes: class names, index order.
        ks: k-mer sizes, one result each.
        train_windows: training windows (default: ``len(train)``).
        C: inverse L2 regularisation strength of the logistic regression.
        seed: the classifier's random state.
        progress: progress bars over the windows read and the classifiers fit (reading and counting some 2,000
            windows of 1 Mb takes about 20 minutes, which would otherwise pass without a word).

    Returns:
        One :class:`KmerBaselineResult` per k, in ``ks`` order.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_train = len(train) if train_windows is None else min(train_windows, len(train))
    if n_train < len(classes):
        raise ValueError(f"the k-mer baseline needs at least one training window per class, got {n_train}")
    start = time.perf_counter()
    train_idx = list(range(n_train))
    with tqdm(total=n_train + len(test), unit="window", desc=f"k-mer features ({train.window:,} bp)",
              disable=not progress, dynamic_ncols=True) as bar:
        x_train = _features(_batches(train, train_idx), ks, bar)
        x_test = _features(_batches(test, list(range(len(test)))), ks, bar)
    y_train = np.array([train.locate(i).label for i in train_idx])
    y_test = np.asarray(test.windows.label)
    shared = time.perf_counter() - start
    results = []
    for k in tqdm(ks, unit="k", desc="k-mer logistic regression", disable=not progress, dynamic_ncols=True):
        start = time.perf_counter()
        classifier = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
        classifier.fit(x_train[k], y_train)
        predicted = classifier.predict(x_test[k])
        metrics = classification_metrics(y_test, predicted, classes)
        results.append(KmerBaselineResult(k, metrics, n_train, round(shared / len(ks) + time.perf_counter() - start,
                                                                     2)))
    return results
