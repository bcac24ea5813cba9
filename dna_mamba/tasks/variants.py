"""Zero-shot variant-effect scores from a causal DNA language model, with cached prefix states.

The score, precisely. Take a variant whose trimmed REF ``r`` (length m, '' for an insertion) starts at 0-based
position ``p`` of a contig, with trimmed ALT ``a`` (VCF anchor bases are removed first, so ``p`` is the first
changed base). With ``C = context`` and ``W = window``:

* Prefix: the reference on ``[anchor, p)`` with ``anchor = (p // C) * C - C``, i.e. between C and 2C - 1 bases,
  anchored on a fixed grid of multiples of C. Positions before the contig start read as N. The grid (rather than
  exactly C bases) is what lets variants in the same C-sized cell share one reference pass: their scores depend
  only on the variant and (C, W), never on which other variants are in the file or on how they are batched.
* Windows: the next W tokens from ``p`` on each haplotype, ``ref_win = ref[p : p + W]`` and
  ``alt_win = (a + ref[p + m :])[:W]``, N past the contig end. Both are exactly W tokens, so an indel's score is
  not biased by the alleles' lengths: a deletion's window reads m - len(a) bases further into the reference, an
  insertion's window reaches fewer reference bases.
* LLR: ``sum_t [log p(alt_win[t] | prefix, alt_win[:t]) - log p(ref_win[t] | prefix, ref_win[:t])]`` over the
  window indices t where neither window holds N (so both sums have the same number of terms), with
  ``log p`` the model's log-softmax over its whole vocabulary, in natural log units (nats).
* Reverse-complement strand: the same construction on the reverse-complement contig, where the variant starts at
  ``q = length - p - m`` with alleles ``revcomp(r)``, ``revcomp(a)``: the window runs leftwards (in forward
  coordinates) from the variant's end and the prefix comes from the right flank. ``llr`` is the mean of the
  forward and reverse-complement LLRs (just the forward one with ``strands="forward"``). A strand with no
  index to score (an N at every index in one window or the other, e.g. a deletion of a contig's last bases on
  the forward strand) has no LLR (NaN) and the mean is over the other strand; with none at all the allele is
  skipped as ``all_n_window``. ``n_scored`` counts the scored positions summed over strands.
* Embedding distance: the hidden state of layer ``layer`` (0 = token embedding, i = after block i, -1 = after the
  final norm, as in ``output_hidden_states``) averaged over the W window positions, for each haplotype;
  ``emb_cos = 1 - cosine(ref, alt)`` and ``emb_l2 = ||alt - ref||``, averaged over the scored strands.

Cached prefix states. Each grid cell (per contig and strand) is one reference pass from its anchor, carrying the
recurrent state and keeping it at every multiple of ``snapshot_stride`` that has a variant after it; cells run
side by side as rows of one batch. Each site then runs only the few reference bases from its snapshot to the
variant plus its W-token windows, batched over alleles and sites. The naive path runs prefix + window in one
forward per site. Both compute the same function: tests compare them, and both against an explicit haplotype
computation, to float round-off.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dna_mamba.model import DnaMambaLM, LayerState, load_pretrained
from dna_mamba.tasks.vcf_io import Allele, ReferenceGenome, VariantRecord, prepare_alleles
from dna_mamba.tokenizer import N, encode, reverse_complement

HUMAN_MODEL_DIR = Path(__file__).resolve().parents[1] / "resources" / "human_model"


@dataclass
class ScoringConfig:
    """How variants are scored (see the module docstring for the exact definitions).

    Attributes:
        window: scored tokens per haplotype, from the variant onwards.
        context: grid size C of the reference prefix: each variant sees between C and 2C - 1 prefix bases.
        strands: "both" (forward and reverse complement, averaged) or "forward".
        embeddings: also compute the REF/ALT embedding distances (one extra hidden-state capture, no extra pass).
        layer: hidden-state layer for embeddings (0 = token embedding, -1 = after the final norm).
        keep_embedding_diffs: return each allele's (alt - ref) embedding, averaged over strands, for
            supervised features (``ScoreResult.embedding_diffs``).
        cached: use cached prefix states (same scores, far fewer tokens); False runs prefix + window per site.
        batch_size: haplotype windows per forward pass.
        snapshot_stride: spacing of the cached states within a cell; a window pass also reads the reference from
            the snapshot to its variant (on average half the stride), in exchange for far fewer reference passes.
        stream_tokens: prefix tokens per batched reference pass (cells run side by side up to this budget).
        autocast: bf16 autocast on CUDA (ignored on CPU, where the model runs in its own dtype).
    """

    window: int = 256  # long enough for a change to propagate through the recurrent state, short enough to stay cheap
    context: int = 8192
    strands: str = "both"
    embeddings: bool = True
    layer: int = -1
    keep_embedding_diffs: bool = False
    cached: bool = True
    batch_size: int = 64
    snapshot_stride: int = 512
    stream_tokens: int = 1 << 21
    autocast: bool = True

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")
        if self.context < 1:
            raise ValueError(f"context must be at least 1 (the first window base needs a prediction), "
                             f"got {self.context}")
        if self.strands not in ("both", "forward"):
            raise ValueError(f"strands must be 'both' or 'forward', got {self.strands!r}")
        for name in ("batch_size", "snapshot_stride", "stream_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def strand_list(self) -> tuple[str, ...]:
        return ("+", "-") if self.strands == "both" else ("+",)


def prefix_anchor(position: int, context: int) -> int:
    """First prefix position for a variant starting at ``position`` (0-based; negative means N padding)."""
    return (position // context) * context - context


def default_human_model() -> Path | None:
    """The human model shipped in ``dna_mamba/resources/human_model``, or None when it is not there."""
    if (HUMAN_MODEL_DIR / "config.json").is_file() and (HUMAN_MODEL_DIR / "model.safetensors").is_file():
        return HUMAN_MODEL_DIR
    return None


def load_scoring_model(model_dir: str | Path | None = None, device: str | torch.device | None = None) -> DnaMambaLM:
    """Load a saved model for scoring (default: the shipped human model), in eval mode.

    Raises:
        FileNotFoundError: no ``model_dir`` was given and no human model is shipped with this installation.
    """
    if model_dir is None:
        model_dir = default_human_model()
        if model_dir is None:
            raise FileNotFoundError(f"no --model given and no shipped human model in {HUMAN_MODEL_DIR}")
    return load_pretrained(model_dir, device=device)


# ------------------------------------------------------------------------------------------------- engine

@dataclass
class _Site:
    """Alleles sharing a start and a REF on one strand: one prefix, one reference window, one window per ALT."""

    contig: str
    strand: str
    start: int  # in the strand's coordinates
    ref: np.ndarray  # trimmed REF tokens on this strand
    alts: list[np.ndarray]
    allele_ids: list[int]  # index of each ALT's allele in the caller's list

    @property
    def n_windows(self) -> int:
        return 1 + len(self.alts)

    def windows(self, after: np.ndarray, window: int) -> np.ndarray:
        """(1 + n_alts, window) token windows: the reference, then each ALT haplotype.

        Args:
            after: reference tokens from ``start`` on this strand, at least ``len(ref) + window`` of them.
        """
        rest = after[len(self.ref):len(self.ref) + window]
        rows = [after[:window]] + [np.concatenate([alt, rest])[:window] for alt in self.alts]
        return np.stack(rows)


@dataclass
class _Accumulator:
    """Per-allele, per-strand results collected by the runner."""

    n: int
    strands: tuple[str, ...]
    llr: dict[str, np.ndarray] = field(default_factory=dict)
    n_scored: dict[str, np.ndarray] = field(default_factory=dict)
    emb_cos: dict[str, np.ndarray] = field(default_factory=dict)
    emb_l2: dict[str, np.ndarray] = field(default_factory=dict)
    emb_diff: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for strand in self.strands:
            self.llr[strand] = np.full(self.n, np.nan)
            self.n_scored[strand] = np.zeros(self.n, dtype=np.int64)
            self.emb_cos[strand] = np.full(self.n, np.nan)
            self.emb_l2[strand] = np.full(self.n, np.nan)
            self.emb_diff[strand] = [None] * self.n


class _HiddenCapture:
    """Forward hooks keeping the last positions of the final-norm output and of one chosen layer.

    Capturing through hooks (instead of ``output_hidden_states``) keeps one layer, and only the positions needed,
    so a 131,072-token prefix never materialises n_layer + 1 full hidden-state tensors.
    """

    def __init__(self, model: DnaMambaLM, layer: int | None, keep_final: int, keep_layer: int):
        self.final: torch.Tensor | None = None
        self.layer: torch.Tensor | None = None
        self._handles = []
        n_layer = len(model.layers)
        self._handles.append(model.norm_f.register_forward_hook(self._keep("final", keep_final)))
        if layer is not None:
            index = layer % (n_layer + 1)
            if index == n_layer:
                self._handles.append(model.norm_f.register_forward_hook(self._keep("layer", keep_layer)))
            elif index == 0:
                self._handles.append(model.embedding.register_forward_hook(self._keep("layer", keep_layer)))
            else:
                self._handles.append(model.layers[index - 1].register_forward_hook(self._keep("layer", keep_layer)))

    def _keep(self, name: str, keep: int) -> Callable:
        def hook(module, inputs, output):
            tensor = output[0] if isinstance(output, tuple) else output  # blocks return (hidden, state)
            setattr(self, name, tensor[:, -keep:].detach().clone() if keep > 0 else None)

        return hook

    def __enter__(self) -> _HiddenCapture:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


def _check_layer(model: DnaMambaLM, layer: int) -> None:
    n_layer = len(model.layers)
    if not -(n_layer + 1) <= layer <= n_layer:
        raise ValueError(f"layer must be in [{-(n_layer + 1)}, {n_layer}] for a model of {n_layer} blocks, got {layer}")


class ModelRunner:
    """Forward passes that keep only the hidden states scoring needs, and log-probabilities from them.

    Shared by variant scoring and saturation mutagenesis; ``acc`` collects per-allele results for the former.
    """

    def __init__(self, model: DnaMambaLM, config: ScoringConfig, acc: _Accumulator | None = None):
        self.model = model
        self.config = config
        self.acc = acc
        param = next(model.parameters())
        self.device = param.device
        # Log-probs in float64 for a float64 model (the equality tests), else float32 whatever autocast did.
        self.score_dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
        self.layer = config.layer if config.embeddings or config.keep_embedding_diffs else None

    def autocast(self):
        if self.config.autocast and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, ids: np.ndarray, state: list[LayerState] | None, keep_final: int, keep_layer: int,
                return_state: bool):
        """One forward pass; returns (final-norm hidden of the last keep_final positions, layer hidden, state)."""
        tokens = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        with _HiddenCapture(self.model, self.layer if keep_layer else None, keep_final, keep_layer) as capture:
            with torch.no_grad(), self.autocast():
                out = self.model(tokens, state=state, return_state=return_state)
        return capture.final, capture.layer, out.state

    @torch.no_grad()
    def log_probs(self, predictive: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Log-probability of each target token given the hidden state that predicts it.

        Shapes:
            predictive: (B, W, D) final-norm hidden states; targets: (B, W) -> (B, W) in score_dtype.
        """
        weight = self.model.lm_head.weight.to(self.score_dtype)
        logits = predictive.to(self.score_dtype) @ weight.T  # (B, W, V)
        return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def record(self, sites: Sequence[_Site], windows: torch.Tensor, predictive: torch.Tensor,
               layer_hidden: torch.Tensor | None) -> None:
        """Store the scores of a batch whose rows are each site's windows in order (ref first).

        Shapes:
            windows: (B, W) tokens; predictive: (B, W, D); layer_hidden: (B, W, D) or None.
        """
        ref_rows, alt_rows, strands, allele_ids = [], [], [], []
        row = 0
        for site in sites:
            for k, allele_id in enumerate(site.allele_ids):
                ref_rows.append(row)
                alt_rows.append(row + 1 + k)
                strands.append(site.strand)
                allele_ids.append(allele_id)
            row += site.n_windows
        ref_idx = torch.as_tensor(ref_rows, device=windows.device)
        alt_idx = torch.as_tensor(alt_rows, device=windows.device)

        logp = self.log_probs(predictive, windows)  # (B, W)
        valid = (windows[ref_idx] != N) & (windows[alt_idx] != N)  # (A, W), A = alleles in the batch
        llr = torch.where(valid, logp[alt_idx] - logp[ref_idx], 0).sum(-1)  # (A,)
        counts = valid.sum(-1)
        results = {"llr": llr, "n": counts}
        if layer_hidden is not None:
            emb = layer_hidden.to(self.score_dtype).mean(dim=1)  # (B, D)
            diff = emb[alt_idx] - emb[ref_idx]  # (A, D)
            results["cos"] = 1.0 - F.cosine_similarity(emb[ref_idx], emb[alt_idx], dim=-1, eps=1e-12)
            results["l2"] = torch.linalg.vector_norm(diff, dim=-1)
            if self.config.keep_embedding_diffs:
                results["diff"] = diff.float()
        # One device-to-host copy per batch instead of a sync per allele.
        host = {key: value.cpu().numpy() for key, value in results.items()}
        for i, (strand, allele_id) in enumerate(zip(strands, allele_ids, strict=True)):
            self.acc.n_scored[strand][allele_id] = host["n"][i]
            self.acc.llr[strand][allele_id] = host["llr"][i] if host["n"][i] else np.nan
            if "cos" in host:
                self.acc.emb_cos[strand][allele_id] = host["cos"][i]
                self.acc.emb_l2[strand][allele_id] = host["l2"][i]
            if "diff" in host:
                self.acc.emb_diff[strand][allele_id] = host["diff"][i]


def _cell_sites(sites: Iterable[_Site], context: int) -> dict[tuple[str, str, int], list[_Site]]:
    """Sites grouped by (contig, strand, grid cell), each group sorted by start."""
    groups: dict[tuple[str, str, int], list[_Site]] = defaultdict(list)
    for site in sites:
        groups[(site.contig, site.strand, site.start // context)].append(site)
    for group in groups.values():
        group.sort(key=lambda s: s.start)
    return dict(sorted(groups.items()))


def _run_naive(runner: ModelRunner, reference: ReferenceGenome, sites: Sequence[_Site],
               progress: Callable[[int], None]) -> None:
    """Prefix + window in one forward per site (all of a site's haplotypes in one batch)."""
    W, C = runner.config.window, runner.config.context
    for site in sites:
        anchor = prefix_anchor(site.start, C)
        prefix = reference.fetch_strand(site.contig, site.strand, anchor, site.start)
        after = reference.fetch_strand(site.contig, site.strand, site.start, site.start + len(site.ref) + W)
        windows = site.windows(after, W)  # (k, W)
        ids = np.concatenate([np.broadcast_to(prefix, (len(windows), len(prefix))), windows], axis=1)
        final, layer_hidden, _ = runner.forward(ids, None, keep_final=W + 1, keep_layer=W if runner.layer is not None
                                                else 0, return_state=False)
        predictive = final[:, :W]  # position P - 1 + t predicts window token t
        runner.record([site], torch.as_tensor(windows, device=runner.device, dtype=torch.long), predictive,
                      layer_hidden)
        progress(1)


@dataclass
class _Snapshot:
    """A site waiting for its windows: the state at grid point g <= start and the tokens from g on."""

    site: _Site
    rows: np.ndarray  # (n_windows, offset + W) reference[g:start] + each haplotype window
    offset: int  # start - g: the window's first token sits at this index of each row
    state: list[LayerState]  # batch 1
    last_hidden: torch.Tensor  # (1, D): final-norm hidden state at g - 1, which predicts token g


def _run_cached(runner: ModelRunner, reference: ReferenceGenome, sites: Sequence[_Site],
                progress: Callable[[int], None]) -> None:
    """Reference passes with state snapshots on a fine grid; each site's windows run from the snapshot before it.

    Every grid cell (per contig and strand) is one row of a batched reference pass: first its C prefix tokens, then
    chunks of ``stride`` tokens, all rows in lockstep, keeping the state at each multiple of the stride that has a
    variant after it. A site at ``start`` then runs ``reference[g:start]`` followed by its W-token windows from the
    state at ``g = start - (start - cell start) % stride``, right-padded to the longest row of its batch (padding
    after a causal model's last scored token changes nothing). The recurrence makes this the same function as the
    naive pass; batching cells and sites keeps the GPU busy where splitting at every variant would launch one
    small pass per variant.
    """
    W, C = runner.config.window, runner.config.context
    stride = min(runner.config.snapshot_stride, C)
    pending: list[_Snapshot] = []
    pending_windows = 0

    def flush() -> None:
        nonlocal pending, pending_windows
        if not pending:
            return
        counts = [snap.site.n_windows for snap in pending]
        width = max(snap.rows.shape[1] for snap in pending)
        ids = np.full((sum(counts), width), N, dtype=np.uint8)  # (B, width), right-padded with N
        offsets = np.concatenate([np.full(k, snap.offset) for snap, k in zip(pending, counts, strict=True)])
        row = 0
        for snap in pending:
            ids[row:row + len(snap.rows), :snap.rows.shape[1]] = snap.rows
            row += len(snap.rows)
        state = [
            LayerState(torch.cat([s.state[i].conv.expand(k, -1, -1) for s, k in zip(pending, counts, strict=True)]),
                       torch.cat([s.state[i].ssm.expand(k, -1, -1) for s, k in zip(pending, counts, strict=True)]))
            for i in range(len(pending[0].state))
        ]  # (B, d_inner, d_conv - 1) and (B, d_inner, d_state) per layer
        first = torch.cat([s.last_hidden.expand(k, -1) for s, k in zip(pending, counts, strict=True)])  # (B, D)
        final, layer_hidden, _ = runner.forward(ids, state, keep_final=width,
                                                keep_layer=width if runner.layer is not None else 0,
                                                return_state=False)
        # Row position t - 1 predicts token t; the snapshot's hidden state predicts position 0.
        predictive = torch.cat([first.unsqueeze(1).to(final.dtype), final[:, :-1]], dim=1)  # (B, width, D)
        index = torch.as_tensor(offsets[:, None] + np.arange(W), device=runner.device)  # (B, W): the window
        windows = torch.as_tensor(ids, device=runner.device, dtype=torch.long).gather(1, index)
        gather = index.unsqueeze(-1).expand(-1, -1, final.shape[-1])
        runner.record([snap.site for snap in pending], windows, predictive.gather(1, gather),
                      None if layer_hidden is None else layer_hidden.gather(1, gather))
        progress(len(pending))
        pending, pending_windows = [], 0

    for rows in _lockstep_batches(_cell_sites(sites, C), C, stride, runner.config.stream_tokens):
        # rows: (contig, strand, cell, group, n_chunks), sorted by n_chunks descending
        streams = []
        for contig, strand, cell, group, _ in rows:
            end = max(s.start + len(s.ref) for s in group) + W
            streams.append(reference.fetch_strand(contig, strand, cell * C - C, end))
        by_grid = [_sites_by_grid(group, cell * C, stride) for _, _, cell, group, _ in rows]
        state = None
        for step in range(max(r[4] for r in rows) + 1):
            active = sum(1 for r in rows if r[4] >= step)  # rows are sorted, so the active ones come first
            # Step 0 reads the C prefix tokens up to the cell start; step j the j-th stride after it.
            lo, hi = (0, C) if step == 0 else (C + (step - 1) * stride, C + step * stride)
            ids = np.stack([streams[i][lo:hi] for i in range(active)])  # (active, chunk)
            if state is not None:
                state = [LayerState(s.conv[:active], s.ssm[:active]) for s in state]
            last, _, state = runner.forward(ids, state, keep_final=1, keep_layer=0, return_state=True)
            for i in range(active):
                for site in by_grid[i].get(step, ()):
                    rel = site.start - (rows[i][2] * C - C)  # position of the site in its stream
                    rows_tokens = site.windows(streams[i][rel:], W)
                    prefix = np.broadcast_to(streams[i][hi:rel], (len(rows_tokens), rel - hi))
                    snapshot_state = [LayerState(s.conv[i:i + 1], s.ssm[i:i + 1]) for s in state]
                    pending.append(_Snapshot(site, np.concatenate([prefix, rows_tokens], axis=1), rel - hi,
                                             snapshot_state, last[i:i + 1, -1]))
                    pending_windows += site.n_windows
                    if pending_windows >= runner.config.batch_size:
                        flush()
    flush()


def _sites_by_grid(group: Sequence[_Site], cell_start: int, stride: int) -> dict[int, list[_Site]]:
    """Sites keyed by the lockstep step after which their grid point's state exists (0: the cell start)."""
    out: dict[int, list[_Site]] = defaultdict(list)
    for site in group:
        out[(site.start - cell_start) // stride].append(site)
    return out


def _lockstep_batches(cells: dict[tuple[str, str, int], list[_Site]], context: int, stride: int,
                      stream_tokens: int):
    """Cells grouped into batches of reference-pass rows of at most ``stream_tokens`` prefix tokens each.

    Yields lists of ``(contig, strand, cell, sites, n_chunks)`` sorted by ``n_chunks`` (stride chunks after the
    prefix that the row needs) descending, so the rows still running at any step are a prefix of the batch.
    """
    rows = [(contig, strand, cell, group, (group[-1].start - cell * context) // stride)
            for (contig, strand, cell), group in cells.items()]
    rows.sort(key=lambda r: -r[4])
    per_batch = max(1, stream_tokens // context)
    for i in range(0, len(rows), per_batch):
        yield rows[i:i + per_batch]


# ------------------------------------------------------------------------------------------------- public

@dataclass
class ScoreResult:
    """Scores of a set of alleles.

    Attributes:
        table: one row per allele: ``record_index, alt_index, chrom, pos, id, ref, alt, contig, start, llr_fwd,
            llr_rc, llr, emb_cos, emb_l2, n_scored, skip_reason`` (scores NaN for skipped alleles; no ``llr_rc``
            with ``strands="forward"``, no ``emb_*`` without embeddings).
        embedding_diffs: (n_alleles, D) float32 (alt - ref) window embeddings averaged over strands, NaN rows
            for skipped alleles; None unless ``keep_embedding_diffs``.
        config: the settings used.
    """

    table: pd.DataFrame
    embedding_diffs: np.ndarray | None
    config: ScoringConfig

    def skipped(self) -> pd.Series:
        """Number of skipped alleles per reason."""
        return self.table["skip_reason"].dropna().value_counts()


def score_alleles(model: DnaMambaLM, reference: ReferenceGenome, alleles: Sequence[Allele],
                  config: ScoringConfig | None = None, *, progress: bool | Callable[[int], None] = False
                  ) -> ScoreResult:
    """Score checked alleles (from :func:`dna_mamba.tasks.vcf_io.prepare_alleles`).

    Args:
        model: a causal ``DnaMambaLM`` (eval mode; its device and dtype are used).
        reference: the FASTA the alleles were checked against.
        alleles: alleles; those with a skip reason are carried through unscored.
        config: scoring settings.
        progress: True for a tqdm bar over sites, or a callback taking the number of sites just done.

    Returns:
        A :class:`ScoreResult`.
    """
    config = config or ScoringConfig()
    _check_layer(model, config.layer)
    _warn_short_contigs(reference, alleles, config.context)
    strands = config.strand_list
    acc = _Accumulator(len(alleles), strands)
    sites = _build_sites(reference, alleles, strands)
    runner = ModelRunner(model, config, acc)
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sites), unit="site", desc="scoring", dynamic_ncols=True)
        callback = bar.update
    elif callable(progress):
        callback = progress
    else:
        callback = _ignore
    was_training = model.training
    model.eval()
    try:
        (_run_cached if config.cached else _run_naive)(runner, reference, sites, callback)
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return _assemble(alleles, acc, config)


def _ignore(_: int) -> None:
    return None


def _warn_short_contigs(reference: ReferenceGenome, alleles: Sequence[Allele], context: int) -> None:
    """Warn once when alleles lie on contigs shorter than the context: most of their prefix is N padding."""
    short = {contig: length for contig, length in reference.lengths.items() if length < context}
    scored = [a.contig for a in alleles if a.skip is None]
    affected = [contig for contig in scored if contig in short]
    if affected:
        contigs = ", ".join(f"{contig} ({short[contig]:,} bp)" for contig in sorted(set(affected)))
        warnings.warn(f"{len(affected):,} of {len(scored):,} alleles to score are on contigs shorter than the "
                      f"context of {context:,} bases: {contigs}; most of their prefix is N padding, so their scores "
                      "depend on it (a context no longer than the contig avoids that)", stacklevel=3)


def _build_sites(reference: ReferenceGenome, alleles: Sequence[Allele], strands: Sequence[str]) -> list[_Site]:
    by_key: dict[tuple, _Site] = {}
    for allele_id, allele in enumerate(alleles):
        if allele.skip is not None:
            continue
        ref, alt = encode(allele.ref_bases), encode(allele.alt_bases)
        length = reference.lengths[allele.contig]
        for strand in strands:
            if strand == "+":
                start, ref_s, alt_s = allele.start, ref, alt
            else:
                start = length - allele.start - len(ref)
                ref_s = np.ascontiguousarray(reverse_complement(ref))
                alt_s = np.ascontiguousarray(reverse_complement(alt))
            key = (allele.contig, strand, start, ref_s.tobytes())
            site = by_key.get(key)
            if site is None:
                site = by_key[key] = _Site(allele.contig, strand, start, ref_s, [], [])
            site.alts.append(alt_s)
            site.allele_ids.append(allele_id)
    return list(by_key.values())


def _assemble(alleles: Sequence[Allele], acc: _Accumulator, config: ScoringConfig) -> ScoreResult:
    strands = config.strand_list
    rows = {
        "record_index": [a.record.index for a in alleles],
        "alt_index": [a.alt_index for a in alleles],
        "chrom": [a.record.chrom for a in alleles],
        "pos": [a.record.pos for a in alleles],
        "id": [a.record.id for a in alleles],
        "ref": [a.record.ref for a in alleles],
        "alt": [a.alt for a in alleles],
        "contig": [a.contig for a in alleles],
        "start": [a.start for a in alleles],
    }
    table = pd.DataFrame(rows)
    with np.errstate(invalid="ignore"), _quiet_nanmean():
        table["llr_fwd"] = acc.llr["+"]
        if "-" in strands:
            table["llr_rc"] = acc.llr["-"]
        table["llr"] = np.nanmean(np.stack([acc.llr[s] for s in strands]), axis=0)
        if config.embeddings:
            table["emb_cos"] = np.nanmean(np.stack([acc.emb_cos[s] for s in strands]), axis=0)
            table["emb_l2"] = np.nanmean(np.stack([acc.emb_l2[s] for s in strands]), axis=0)
    table["n_scored"] = np.sum(np.stack([acc.n_scored[s] for s in strands]), axis=0)
    skip = [a.skip for a in alleles]
    for i, allele in enumerate(alleles):
        if allele.skip is None and not np.isfinite(table.at[i, "llr"]):
            skip[i] = "all_n_window"
    table["skip_reason"] = pd.Series(skip, dtype=object)
    diffs = None
    if config.keep_embedding_diffs:
        width = next((d.shape[0] for s in strands for d in acc.emb_diff[s] if d is not None), 0)
        diffs = np.full((len(alleles), width), np.nan, dtype=np.float32)
        for i in range(len(alleles)):
            parts = [acc.emb_diff[s][i] for s in strands if acc.emb_diff[s][i] is not None]
            if parts:
                diffs[i] = np.mean(parts, axis=0)
    return ScoreResult(table, diffs, config)


@contextlib.contextmanager
def _quiet_nanmean():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
        yield


def markov_llr(markov, reference: ReferenceGenome, alleles: Sequence[Allele], config: ScoringConfig | None = None
               ) -> pd.DataFrame:
    """The k-mer baseline: the same LLR definition (windows, N masking, strands) under an order-k Markov model.

    Args:
        markov: a fitted :class:`dna_mamba.baselines.MarkovModel` (anything with ``order`` and
            ``log_prob_per_position(ids)`` returning natural-log probabilities, NaN where not scored).
        reference: the FASTA.
        alleles: checked alleles; skipped ones get NaN.
        config: window and strands (the Markov model reads only ``order`` prefix bases, so ``context`` is moot).

    Returns:
        One row per allele with ``llr_fwd``, ``llr_rc`` (both strands only) and ``llr``.
    """
    config = config or ScoringConfig()
    strands = config.strand_list
    W, k = config.window, markov.order
    llr = {strand: np.full(len(alleles), np.nan) for strand in strands}
    for site in _build_sites(reference, alleles, strands):
        prefix = reference.fetch_strand(site.contig, site.strand, site.start - k, site.start)
        after = reference.fetch_strand(site.contig, site.strand, site.start, site.start + len(site.ref) + W)
        windows = site.windows(after, W)
        logp = np.stack([markov.log_prob_per_position(np.concatenate([prefix, w]))[k:] for w in windows])  # (1+a, W)
        for i, allele_id in enumerate(site.allele_ids):
            valid = (windows[0] != N) & (windows[i + 1] != N) & np.isfinite(logp[0]) & np.isfinite(logp[i + 1])
            if valid.any():
                llr[site.strand][allele_id] = float((logp[i + 1] - logp[0])[valid].sum())
    table = pd.DataFrame({"llr_fwd": llr["+"]})
    if "-" in strands:
        table["llr_rc"] = llr["-"]
    with _quiet_nanmean():
        table["llr"] = np.nanmean(np.stack([llr[s] for s in strands]), axis=0)
    return table


def score_records(model: DnaMambaLM, reference: ReferenceGenome, records: Sequence[VariantRecord],
                  config: ScoringConfig | None = None, *, progress: bool | Callable[[int], None] = False
                  ) -> ScoreResult:
    """Check and score input records (split into alleles); see :func:`score_alleles`."""
    return score_alleles(model, reference, prepare_alleles(records, reference), config, progress=progress)


def score_variants(model: DnaMambaLM, reference: ReferenceGenome, variants: pd.DataFrame | Sequence[tuple],
                   config: ScoringConfig | None = None, *, progress: bool = False) -> ScoreResult:
    """Score variants given as a table (columns chrom, pos, ref, alt; pos 1-based) or (chrom, pos, ref, alt) tuples.

    ALT may be comma-separated or a list of ALTs (a multi-allelic variant), '.' when missing.

    Example:
        >>> result = score_variants(model, ReferenceGenome("hg19.fa"), [("chr20", 82176, "T", "C")])
        >>> result.table[["chrom", "pos", "ref", "alt", "llr"]]

    Raises:
        TypeError: ``variants`` is neither a DataFrame nor a sequence of 4-tuples, or a cell holds a container where
            text belongs.
        ValueError: a missing column, a position that is not an integer, or an empty (None/NaN) cell.
    """
    from dna_mamba.tasks.vcf_io import read_variant_table

    if not isinstance(variants, pd.DataFrame):
        variants = pd.DataFrame(_variant_rows(variants), columns=["chrom", "pos", "ref", "alt"])
    records, _ = read_variant_table(variants)
    return score_records(model, reference, records, config, progress=progress)


def _variant_rows(variants: object) -> list[tuple]:
    """The (chrom, pos, ref, alt) tuples of ``score_variants``, checked for shape before pandas sees them."""
    if isinstance(variants, str | bytes) or not isinstance(variants, Iterable):
        raise TypeError(f"variants must be a DataFrame or a list of (chrom, pos, ref, alt) tuples, "
                        f"got {type(variants).__name__}")
    rows = list(variants)
    for index, row in enumerate(rows):
        if isinstance(row, str | bytes) or not isinstance(row, Sequence) or len(row) != 4:
            # A lone tuple instead of a list of them fails here on its first item, the chrom string.
            single = index == 0 and isinstance(row, str)
            hint = " (a single variant must still be in a list: [(chrom, pos, ref, alt)])" if single else ""
            raise TypeError(f"variant {index}: expected a (chrom, pos, ref, alt) tuple, got {row!r}{hint}")
    return rows


def summarize_skips(result: ScoreResult) -> str:
    """One line per skip reason with its count, for the CLI summary."""
    from dna_mamba.tasks.vcf_io import SKIP_REASONS

    counts = result.skipped()
    if counts.empty:
        return "no alleles skipped"
    return "\n".join(f"  {reason}: {count} ({SKIP_REASONS.get(reason, '')})" for reason, count in counts.items())

