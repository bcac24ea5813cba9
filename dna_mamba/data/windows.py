"""Training windows over genome segments, as in the Mamba paper's HG38 setup, and datasets that read them.

Planning (:func:`plan_windows`) turns segments into a compact ``(M, 2)`` int64 array of ``(contig_index, start)``
rows once; datasets then read ``store.fetch(contig, start, start + window)`` per item. Reverse-complement
augmentation is decided per item from ``(seed, epoch, index)``, so an epoch is reproducible whatever the worker
layout.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dna_mamba.data.splits import Segment
from dna_mamba.data.store import GenomeStore
from dna_mamba.tokenizer import reverse_complement


def plan_windows(store: GenomeStore, segments: Sequence[Segment], window: int, *, max_n_fraction: float = 0.1,
                 segment_length: int | None = None, pad: bool = False, stride: int | None = None) -> np.ndarray:
    """Lay fixed-length windows over segments.

    Each segment is cut into sub-segments of ``segment_length`` bases (the last may be shorter; default: the whole
    segment). A sub-segment ``[s, e)`` at least ``window`` long gets windows ``[s, s + window), [s + stride,
    s + stride + window), ...`` as long as they end inside it: non-overlapping tiles by default (``stride`` =
    ``window``, dropping the incomplete tail), overlapping ones with a shorter stride. A shorter sub-segment gets two
    windows anchored at its start ``[s, s + window)`` and at its end ``[e - window, e)``, shifted to lie inside the
    contig (so they extend past the sub-segment into neighbouring sequence); the two coincide, and one is kept, when
    the contig is exactly ``window`` long. Windows with more than ``max_n_fraction`` N are then dropped, and so are
    segments on contigs shorter than ``window`` unless ``pad`` (such a contig holds no window: think of a plasmid
    beside a chromosome), so the result may be empty.

    Args:
        store: the genome.
        segments: segments to cover, e.g. ``split.train``.
        window: window length in bases.
        max_n_fraction: drop windows whose fraction of N exceeds this (1.0 keeps all).
        segment_length: sub-segment length; None uses each segment whole.
        pad: give contigs shorter than ``window`` windows too: their anchored windows overhang the contig and read
            as N there (which counts towards ``max_n_fraction``).
        stride: bases between the starts of consecutive windows of a sub-segment, from 1 to ``window``; None is
            ``window``. A shorter stride gives more, overlapping (so correlated) windows from the same sequence,
            e.g. to evaluate on a small held-out region; windows still never leave their sub-segment.

    Returns:
        ``(M, 2)`` int64 array of ``(contig_index, start)`` rows (``contig_index`` into ``store.names``), in
        segment order, then sub-segment order (tiles by position; the start-anchored window before the end-anchored
        one).

    Raises:
        ValueError: bad arguments, or a segment past the end of its contig.
    """
    if window < 1:
        raise ValueError(f"window must be positive, got {window}")
    if not 0.0 <= max_n_fraction <= 1.0:
        raise ValueError(f"max_n_fraction must be in [0, 1], got {max_n_fraction}")
    if segment_length is not None and segment_length < 1:
        raise ValueError(f"segment_length must be positive or None, got {segment_length}")
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, numbers.Integral)
                               or not 1 <= stride <= window):
        raise ValueError(f"stride must be an integer from 1 to the window ({window:,}), got {stride!r}")
    planned = [np.empty((0, 2), dtype=np.int64)]
    for segment in segments:
        length = store.length(segment.contig)
        if segment.end > length:
            raise ValueError(f"segment {segment} extends past the end of contig '{segment.contig}' ({length} bp)")
        if length < window and not pad:
            continue
        starts = _segment_starts(segment, window, segment_length or segment.length, length, stride or window)
        n_count = store.count_n(segment.contig, starts, starts + window)
        starts = starts[n_count <= max_n_fraction * window]
        rows = np.empty((len(starts), 2), dtype=np.int64)
        rows[:, 0] = store.index_of(segment.contig)
        rows[:, 1] = starts
        planned.append(rows)
    return np.concatenate(planned)


def _segment_starts(segment: Segment, window: int, piece: int, contig_length: int, stride: int) -> np.ndarray:
    """Window starts of one segment cut into pieces of ``piece`` bases, in position order."""
    piece_starts = np.arange(segment.start, segment.end, piece, dtype=np.int64)
    piece_ends = np.minimum(piece_starts + piece, segment.end)
    # Windows that fit in each piece (0 when it is shorter than one window); length // window when stride = window.
    tiles = np.maximum((piece_ends - piece_starts - window) // stride + 1, 0)
    # Tiled windows: piece start + k * stride for k < tiles, for every piece at once.
    first_tile = np.repeat(np.cumsum(tiles) - tiles, tiles)
    tiled = np.repeat(piece_starts, tiles) + (np.arange(tiles.sum(), dtype=np.int64) - first_tile) * stride
    short = tiles == 0
    head, tail = piece_starts[short], piece_ends[short] - window
    if contig_length >= window:  # keep anchored windows inside the contig; otherwise they are N-padded
        head = np.minimum(head, contig_length - window)
        tail = np.maximum(tail, 0)
    # Order by piece: every piece contributes its tiles, or its head then (if different) its tail.
    keys = np.concatenate([np.repeat(np.flatnonzero(~short), tiles[~short]), np.flatnonzero(short),
                           np.flatnonzero(short)])
    starts = np.concatenate([tiled, head, tail])
    order = np.argsort(keys, kind="stable")
    keys, starts = keys[order], starts[order]
    duplicate = np.zeros(len(starts), dtype=bool)
    duplicate[1:] = (keys[1:] == keys[:-1]) & (starts[1:] == starts[:-1])
    return starts[~duplicate]


def window_arrays(store: GenomeStore, windows: np.ndarray, window: int) -> Iterator[np.ndarray]:
    """Token ids (uint8) of planned windows, in order; for evaluation code outside a DataLoader."""
    names = store.names
    for contig_index, start in np.asarray(windows, dtype=np.int64):
        yield store.fetch(names[contig_index], int(start), int(start) + window)


class _GenomeWindowDataset(Dataset):
    """Shared epoch handling and reverse-complement augmentation."""

    def __init__(self, store: GenomeStore, window: int, reverse_complement_prob: float, seed: int):
        if window < 1:
            raise ValueError(f"window must be positive, got {window}")
        if not 0.0 <= reverse_complement_prob <= 1.0:
            raise ValueError(f"reverse_complement_prob must be in [0, 1], got {reverse_complement_prob}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.store = store
        self.window = window
        self.reverse_complement_prob = reverse_complement_prob
        self.seed = seed
        self._names = store.names
        # Shared memory, so set_epoch in the main process reaches persistent DataLoader workers too.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of an epoch; call before creating the epoch's DataLoader iterator."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self._epoch[0] = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))

    def _finish(self, ids: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.reverse_complement_prob and rng.random() < self.reverse_complement_prob:
            ids = reverse_complement(ids)
        return torch.from_numpy(ids.astype(np.int64))


class WindowDataset(_GenomeWindowDataset):
    """Planned windows as ``(window,)`` LongTensors of token ids, optionally reverse-complemented.

    Args:
        store: the genome the windows index.
        windows: ``(M, 2)`` int64 ``(contig_index, start)`` rows from :func:`plan_windows`.
        window: window length.
        reverse_complement_prob: probability that an item is reverse-complemented.
        seed: base seed of the augmentation draws.

    Shapes:
        item: (window,) int64.
    """

    def __init__(self, store: GenomeStore, windows: np.ndarray, window: int, *, reverse_complement_prob: float = 0.0,
                 seed: int = 0):
        super().__init__(store, window, reverse_complement_prob, seed)
        windows = np.ascontiguousarray(windows, dtype=np.int64)
        if windows.ndim != 2 or windows.shape[1] != 2:
            raise ValueError(f"windows must have shape (M, 2), got {windows.shape}")
        if len(windows) and not 0 <= windows[:, 0].min() <= windows[:, 0].max() < len(self._names):
            raise ValueError(f"window contig indices must lie in [0, {len(self._names)})")
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> torch.Tensor:
        contig_index, start = self.windows[index]
        ids = self.store.fetch(self._names[contig_index], int(start), int(start) + self.window)
        return self._finish(ids, self._rng(index))


class RandomWindowDataset(_GenomeWindowDataset):
    """Windows at random offsets inside segments: ``num_samples`` items, each drawn from ``(seed, epoch, index)``.

    A segment is picked with probability proportional to its length, then a start uniformly among the windows that
    lie inside it; for a segment shorter than the window, among the windows that contain it (inside the contig, or
    N-padded when ``pad`` and the contig is shorter than the window). Without ``pad``, segments on contigs shorter
    than the window are left out, as in :func:`plan_windows`. Draws with more than ``max_n_fraction`` N are redrawn,
    up to ``max_tries`` times.

    Shapes:
        item: (window,) int64.
    """

    def __init__(self, store: GenomeStore, segments: Sequence[Segment], window: int, *, num_samples: int,
                 seed: int = 0, max_n_fraction: float = 0.1, reverse_complement_prob: float = 0.0, pad: bool = False,
                 max_tries: int = 100):
        super().__init__(store, window, reverse_complement_prob, seed)
        if num_samples < 0:
            raise ValueError(f"num_samples must be non-negative, got {num_samples}")
        if not segments:
            raise ValueError("RandomWindowDataset needs at least one segment")
        segments = [s for s in segments if pad or store.length(s.contig) >= window]
        if not segments:
            raise ValueError(f"every segment is on a contig shorter than the {window} bp window; use a shorter "
                             f"window or pad=True to pad them with N")
        if not 0.0 <= max_n_fraction <= 1.0:
            raise ValueError(f"max_n_fraction must be in [0, 1], got {max_n_fraction}")
        self.num_samples = num_samples
        self.max_n_fraction = max_n_fraction
        self.max_tries = max_tries
        self.segments = list(segments)
        self._low = np.empty(len(segments), dtype=np.int64)  # inclusive range of starts per segment
        self._high = np.empty(len(segments), dtype=np.int64)
        for i, segment in enumerate(segments):
            length = store.length(segment.contig)
            if segment.length >= window:
                self._low[i], self._high[i] = segment.start, segment.end - window
            elif length >= window:
                self._low[i], self._high[i] = max(segment.end - window, 0), min(segment.start, length - window)
            else:
                self._low[i], self._high[i] = segment.end - window, segment.start
        self._cumulative = np.cumsum([s.length for s in segments], dtype=np.int64)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = self._rng(index)
        for _ in range(self.max_tries):
            i = int(np.searchsorted(self._cumulative, rng.integers(self._cumulative[-1]), side="right"))
            start = int(rng.integers(self._low[i], self._high[i], endpoint=True))
            contig = self.segments[i].contig
            if self.store.count_n(contig, start, start + self.window) <= self.max_n_fraction * self.window:
                return self._finish(self.store.fetch(contig, start, start + self.window), rng)
        raise RuntimeError(f"no window with at most {self.max_n_fraction:.0%} N found in {self.max_tries} draws "
                           f"(item {index}); the segments are mostly N: raise max_n_fraction or change segments")
