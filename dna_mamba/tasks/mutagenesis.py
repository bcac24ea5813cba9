"""In-silico saturation mutagenesis: the LLR of all three alternative bases at every position of a region.

Each (position, base) gets exactly the score :func:`dna_mamba.tasks.variants.score_variants` gives that SNV with
the same :class:`~dna_mamba.tasks.variants.ScoringConfig` (grid-anchored prefix, W-token windows, N-masked
positions, forward/reverse-complement mean), computed on cached states:

1. Per strand and grid cell, one reference pass from the cell's anchor to the last window gives the reference
   log-probability of every window position (the reference window of position p given its prefix is simply the
   reference stream) and the recurrent state at S evenly spaced segment starts.
2. The S states then advance together, one base per step (``model.step``), so at each step S positions have their
   prefix state at once; the 3 x S alternative windows of those positions run as one batch.

Memory stays at S states plus one batch of windows, whatever the region's length. Reference positions that are N
have no alternatives and are left out.

Outputs: a TSV (chrom, pos (1-based), ref, alt, llr, llr_fwd, llr_rc), a bedGraph with one value per position (the
mean LLR of the three alternatives by default, or the minimum: the most damaging substitution) and a PNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dna_mamba.model import DnaMambaLM, LayerState
from dna_mamba.outputs import atomic_output
from dna_mamba.tasks.variants import ModelRunner, ScoringConfig, _check_layer
from dna_mamba.tasks.vcf_io import ReferenceGenome
from dna_mamba.tokenizer import COMPLEMENT_TABLE, ID_TO_CHAR, N

BEDGRAPH_STATS = ("mean", "min")


@dataclass
class MutagenesisResult:
    """Scores of every substitution in a region.

    Attributes:
        contig: the FASTA's contig name.
        start, end: the region, 0-based half-open.
        llr: (3 strands-mean / fwd / rc, end - start, 4) float64 arrays in a dict keyed "llr", "llr_fwd",
            "llr_rc": the LLR of substituting base b (A, C, G, T) at each position; NaN for the reference base
            and at N positions ("llr_rc" is all NaN when only the forward strand was scored).
        ref: (end - start,) uint8 reference tokens.
        config: the settings used.
    """

    contig: str
    start: int
    end: int
    llr: dict[str, np.ndarray]
    ref: np.ndarray
    config: ScoringConfig

    def table(self) -> pd.DataFrame:
        """One row per substitution: chrom, pos (1-based), ref, alt, llr, llr_fwd, llr_rc."""
        offsets, bases = np.nonzero(np.isfinite(self.llr["llr_fwd"]))
        return pd.DataFrame({
            "chrom": self.contig,
            "pos": self.start + offsets + 1,
            "ref": [ID_TO_CHAR[t] for t in self.ref[offsets]],
            "alt": [ID_TO_CHAR[b] for b in bases],
            "llr": self.llr["llr"][offsets, bases],
            "llr_fwd": self.llr["llr_fwd"][offsets, bases],
            "llr_rc": self.llr["llr_rc"][offsets, bases],
        })

    def per_position(self, stat: str = "mean") -> np.ndarray:
        """(end - start,) mean or minimum LLR over the three alternatives (NaN at N positions)."""
        if stat not in BEDGRAPH_STATS:
            raise ValueError(f"stat must be one of {BEDGRAPH_STATS}, got {stat!r}")
        values = self.llr["llr"]
        out = np.full(values.shape[0], np.nan)
        scored = np.isfinite(values).any(axis=1)
        reduce = np.nanmean if stat == "mean" else np.nanmin
        out[scored] = reduce(values[scored], axis=1)
        return out


def saturation_mutagenesis(model: DnaMambaLM, reference: ReferenceGenome, contig: str, start: int, end: int,
                           config: ScoringConfig | None = None, *, positions_per_batch: int | None = None,
                           progress: bool | Callable[[int], None] = False) -> MutagenesisResult:
    """Score all three substitutions at every position of ``[start, end)`` (0-based) on a contig.

    Args:
        model: a causal ``DnaMambaLM`` in eval mode.
        reference: the FASTA.
        contig: contig name (harmonised: ``chrM`` finds ``MT``).
        start, end: the region, 0-based half-open.
        config: window, context and strands as for variant scoring (embedding settings are ignored).
        positions_per_batch: S, the positions whose states advance together; default ``config.batch_size // 3``,
            so one batch holds about ``batch_size`` windows.
        progress: True for a tqdm bar over positions, or a callback taking the number of positions just done.

    Raises:
        KeyError: unknown contig.
        TypeError: ``contig`` is not a string, or ``start``/``end`` not integers.
        ValueError: an empty or out-of-range region.
    """
    if not isinstance(contig, str):
        raise TypeError(f"contig must be a string such as 'chr20', got {contig!r} ({type(contig).__name__})")
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, Integral) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer (0-based), got {value!r} ({type(value).__name__})")
    config = config or ScoringConfig()
    _check_layer(model, config.layer)
    name = reference.resolve(contig)
    if name is None:
        raise KeyError(f"unknown contig '{contig}' (the FASTA has: {', '.join(list(reference.lengths)[:10])})")
    length = reference.lengths[name]
    if not 0 <= start < end <= length:
        raise ValueError(f"region {contig}:{start}-{end} (0-based) must be non-empty and inside the contig "
                         f"(length {length})")
    per_batch = max(1, positions_per_batch or config.batch_size // 3)
    runner = ModelRunner(model, config)
    runner.layer = None  # LLRs only
    ref = reference.fetch(name, start, end)
    llr = {key: np.full((end - start, 4), np.nan) for key in ("llr_fwd", "llr_rc")}

    bar, callback = _progress(progress, (end - start) * len(config.strand_list))
    was_training = model.training
    model.eval()
    try:
        for strand in config.strand_list:
            lo, hi = (start, end) if strand == "+" else (length - end, length - start)
            out = np.full((hi - lo, 4), np.nan)
            C = config.context
            for cell in range(lo // C, (hi - 1) // C + 1):
                cell_lo, cell_hi = max(lo, cell * C), min(hi, (cell + 1) * C)
                _mutagenize_cell(runner, reference, name, strand, cell_lo, cell_hi, cell * C - C, per_batch,
                                 out[cell_lo - lo:cell_hi - lo], callback)
            if strand == "+":
                llr["llr_fwd"] = out
            else:
                # Strand position q is forward position length - 1 - q, and base b there is complement(b) forward.
                llr["llr_rc"] = out[::-1][:, COMPLEMENT_TABLE[:4]].copy()
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    with np.errstate(invalid="ignore"):
        stacked = np.stack([llr["llr_fwd"], llr["llr_rc"]]) if config.strands == "both" else llr["llr_fwd"][None]
        llr["llr"] = stacked.mean(axis=0)
    return MutagenesisResult(name, start, end, llr, ref, config)


def _mutagenize_cell(runner: ModelRunner, reference: ReferenceGenome, contig: str, strand: str, lo: int, hi: int,
                     anchor: int, per_batch: int, out: np.ndarray, progress: Callable[[int], None]) -> None:
    """Fill ``out[q - lo, b]`` with the LLR of base b at strand position q, for q in [lo, hi) of one grid cell."""
    W = runner.config.window
    model = runner.model
    stream = reference.fetch_strand(contig, strand, anchor, hi + W)  # prefix, region and the last window
    n_segments = min(per_batch, hi - lo)
    seg_len = math.ceil((hi - lo) / n_segments)
    seg_starts = list(range(lo, hi, seg_len))

    # Reference pass in chunks ending at the segment starts: the state at each start, and the final-norm hidden
    # state at positions lo - 1 .. hi + W - 2, each of which predicts the reference token one position later.
    bounds = [anchor, *seg_starts, hi + W - 1]
    hidden, segment_states, state = [], [], None
    for i in range(len(bounds) - 1):
        chunk = stream[bounds[i] - anchor:bounds[i + 1] - anchor][None]  # (1, chunk)
        keep = 1 if i == 0 else chunk.shape[1]  # before lo only the last position matters
        final, _, state = runner.forward(chunk, state, keep_final=keep, keep_layer=0, return_state=True)
        hidden.append(final[0])
        if i < len(seg_starts):
            segment_states.append(state)
    ref_hidden = torch.cat(hidden)  # (hi + W - lo, D): row i predicts strand position lo + i
    ref_tokens = torch.as_tensor(stream[lo - anchor:], dtype=torch.long, device=runner.device)  # (hi + W - lo,)
    ref_logp = runner.log_probs(ref_hidden[None], ref_tokens[None])[0]
    ref_valid = ref_tokens != N

    batch_state = [
        LayerState(torch.cat([s[i].conv for s in segment_states]), torch.cat([s[i].ssm for s in segment_states]))
        for i in range(len(model.layers))
    ]  # (S, d_inner, d_conv - 1) and (S, d_inner, d_state) per layer
    seg_ends = [*seg_starts[1:], hi]
    for step in range(seg_len):
        active = [(j, s + step) for j, s in enumerate(seg_starts) if s + step < seg_ends[j]]
        _score_positions(runner, stream, anchor, lo, active, batch_state, ref_hidden, ref_logp, ref_valid, out)
        progress(len(active))
        if step + 1 < seg_len:
            # Advance every segment by its reference base; rows whose segment has ended step on harmlessly.
            tokens = [stream[min(s + step - anchor, len(stream) - 1)] for s in seg_starts]
            with runner.autocast():
                _, batch_state = model.step(torch.as_tensor(tokens, dtype=torch.long, device=runner.device),
                                            batch_state)


@torch.no_grad()
def _score_positions(runner: ModelRunner, stream: np.ndarray, anchor: int, lo: int, active: list[tuple[int, int]],
                     batch_state: list[LayerState], ref_hidden: torch.Tensor, ref_logp: torch.Tensor,
                     ref_valid: torch.Tensor, out: np.ndarray) -> None:
    """Run the three alternative windows of each active (segment row, position) pair and store their LLRs."""
    W = runner.config.window
    rows, windows, targets = [], [], []
    for row, q in active:
        base = int(stream[q - anchor])
        if base >= 4:  # N in the reference: no alternatives
            continue
        rest = stream[q + 1 - anchor:q + W - anchor]
        for alt in range(4):
            if alt != base:
                rows.append(row)
                windows.append(np.concatenate([[alt], rest]))
                targets.append((q, alt))
    if not rows:
        return
    index = torch.as_tensor(rows, device=runner.device)
    state = [LayerState(s.conv[index], s.ssm[index]) for s in batch_state]
    final, _, _ = runner.forward(np.stack(windows), state, keep_final=W, keep_layer=0, return_state=False)
    offsets = torch.as_tensor([q - lo for q, _ in targets], device=runner.device)
    window_index = offsets[:, None] + torch.arange(W, device=runner.device)  # (A, W) rows of the reference pass
    # The reference pass's hidden state before q predicts the first window token; the window's own states the rest.
    predictive = torch.cat([ref_hidden[offsets].unsqueeze(1), final[:, :W - 1].to(ref_hidden.dtype)], dim=1)
    tokens = torch.as_tensor(np.stack(windows), dtype=torch.long, device=runner.device)
    alt_logp = runner.log_probs(predictive, tokens)  # (A, W)
    valid = (tokens != N) & ref_valid[window_index]
    llr = torch.where(valid, alt_logp - ref_logp[window_index], 0).sum(-1)
    llr = torch.where(valid.any(-1), llr, torch.nan).cpu().numpy()
    for (q, alt), value in zip(targets, llr, strict=True):
        out[q - lo, alt] = value


def _progress(progress: bool | Callable[[int], None], total: int):
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="pos", desc="mutagenesis", dynamic_ncols=True)
        return bar, bar.update
    if callable(progress):
        return None, progress
    return None, lambda _: None


# ------------------------------------------------------------------------------------------------- output

def write_mutagenesis_tsv(result: MutagenesisResult, path: str | Path) -> Path:
    """The substitution table as TSV."""
    path = Path(path)
    with atomic_output(path) as tmp:
        result.table().to_csv(tmp, sep="\t", index=False, na_rep="NA", float_format="%.6g")
    return path


def write_bedgraph(result: MutagenesisResult, path: str | Path, stat: str = "mean") -> Path:
    """One bedGraph interval per scored position (0-based, half-open) with the mean or minimum LLR."""
    values = result.per_position(stat)
    path = Path(path)
    description = {"mean": "mean LLR of the 3 substitutions", "min": "minimum LLR of the 3 substitutions"}[stat]
    with atomic_output(path) as tmp, open(tmp, "w") as handle:
        handle.write(f'track type=bedGraph name="dna_mamba_ISM" description="{description} (nats)"\n')
        for offset in np.flatnonzero(np.isfinite(values)):
            position = result.start + int(offset)
            handle.write(f"{result.contig}\t{position}\t{position + 1}\t{values[offset]:.6g}\n")
    return path


def plot_mutagenesis(result: MutagenesisResult, path: str | Path | None = None, stat: str = "mean"):
    """A two-panel figure: the per-position LLR track above a base x position heatmap. Saved when ``path`` is given.

    Returns:
        The matplotlib figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    positions = np.arange(result.start, result.end) + 1
    values = result.per_position(stat)
    heat = result.llr["llr"].T  # (4, L)
    limit = float(np.nanmax(np.abs(heat))) if np.isfinite(heat).any() else 1.0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 4.5), sharex=True, height_ratios=[1.2, 1],
                                      constrained_layout=True)
    top.plot(positions, values, lw=0.6, color="0.2")
    top.axhline(0, color="0.6", lw=0.5)
    top.set_ylabel(f"{stat} LLR (nats)")
    top.set_title(f"Saturation mutagenesis, {result.contig}:{result.start + 1:,}-{result.end:,} "
                  f"(window {result.config.window}, {result.config.strands} strands)")
    # Reference bases (no substitution) and N positions in grey, apart from LLR 0 (white).
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="0.8")
    image = bottom.imshow(heat, aspect="auto", cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest",
                          extent=(positions[0] - 0.5, positions[-1] + 0.5, 3.5, -0.5))
    bottom.set_yticks(range(4), list("ACGT"))
    bottom.set_xlabel(f"{result.contig} position (1-based)")
    bottom.set_ylabel("substituted base (grey: reference)")
    fig.colorbar(image, ax=bottom, label="LLR (nats)", pad=0.01)
    if path is not None:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=120)
    return fig
