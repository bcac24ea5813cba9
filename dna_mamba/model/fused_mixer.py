"""The Mamba mixer's inner path as one autograd node, for CUDA: conv -> x_proj -> dt_proj -> selective scan.

    xz (B, L, 2 * d_inner) -> x, z;  u = SiLU(conv1d(x));  (dt_low, B, C) = x_proj(u);  delta = dt_proj(dt_low)
    y = selective_scan(u, delta, A, B, C, D, z, dt_bias, softplus)  -> (B, d_inner, L)

Run as separate autograd ops, this path keeps u (the conv output), delta and x_proj's output alive until the
backward: 2 x (B, L, d_inner) activations per layer on top of xz. Here the forward saves only xz, the weights
and the scan's per-chunk states; the backward recomputes u, x_proj and delta (a conv and two thin GEMMs, a few
percent of the layer's time) and feeds the scan's gradients back through them. The pre-gate scan output is
never stored (the scan recomputes it). The backward runs over pieces of the sequence (``BACKWARD_PIECE_TOKENS``),
so its working memory is a piece's rather than the sequence's. Outputs and gradients equal those of the unfused path
(``tests/test_fused_mixer.py``); the unfused path stays as the CPU path and the oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dna_mamba.kernels import causal_conv1d
from dna_mamba.kernels.selective_scan.interface import chunk_range, scan_backward, scan_forward

# The backward runs over pieces of about this many tokens (batch x steps), last piece first, so that its working
# tensors (u and delta recomputed, the scan's gradients and buffers, the conv's gradient) are a piece's size rather
# than the sequence's. Pieces are whole chunks of the scan's forward, which starts each from the state it saved; the
# conv of a piece starts from the last inputs of the one before, and the gradient of that conv state is handed on
# as the earlier piece's conv-final gradient. None: one piece.
BACKWARD_PIECE_TOKENS: int | None = 1 << 18


def pre_scan(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, conv_state, dt_rank: int, d_state: int,
             conv_backend: str = "triton"):
    """xz -> (u, delta, B, C, z, conv_final): everything the scan reads, in xz's dtype.

    Weights are cast to xz's dtype explicitly (what autocast does) and autocast is off, so the backward's
    recomputation is the same arithmetic as the forward's whatever autocast state each runs under. The
    step-by-step path (``MambaMixer``) calls this too, with ``conv_backend="auto"``.
    """
    with torch.autocast(xz.device.type, enabled=False):
        # Split first, then transpose: the backward of chunk concatenates the two gradients along the split
        # dimension, which is then the fastest one of xz's (B, L, 2 * d_inner) memory. Transposing first made that
        # concatenation a strided copy that took 32 ms at d_inner 512, L 2^20 (a third of the block's backward).
        x, z = (half.transpose(1, 2) for half in xz.chunk(2, dim=-1))  # (B, d_inner, L) views
        u, conv_final = causal_conv1d(
            x, conv_weight, conv_bias, activation="silu", initial_state=conv_state, return_final_state=True,
            backend=conv_backend,
        )  # (B, d_inner, L), (B, d_inner, d_conv - 1)
        x_dbl = F.linear(u.transpose(1, 2), x_proj_weight.to(xz.dtype))  # (B, L, dt_rank + 2N)
        dt_low, b, c = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
        delta = F.linear(dt_low, dt_proj_weight.to(xz.dtype)).transpose(1, 2)  # (B, d_inner, L)
        b = b.transpose(1, 2).unsqueeze(1)  # (B, 1, N, L): one group shared by all channels
        c = c.transpose(1, 2).unsqueeze(1)  # (B, 1, N, L)
    return u, delta, b, c, z, conv_final


def _leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().requires_grad_(t.requires_grad)


def _add(total: torch.Tensor | None, part: torch.Tensor | None) -> torch.Tensor | None:
    return part if total is None else total if part is None else total + part


class _MambaInnerFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, conv_state,
                ssm_state, dt_rank, d_state):
        batch, seqlen, _ = xz.shape
        splits = 1 if BACKWARD_PIECE_TOKENS is None else -(-batch * seqlen // BACKWARD_PIECE_TOKENS)
        with torch.no_grad():
            u, delta, b, c, z, conv_final = pre_scan(
                xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, conv_state, dt_rank, d_state
            )
            y, ssm_final, chunk_states, cfg = scan_forward(u, delta, A, b, c, D, z, dt_bias, ssm_state, True, splits)
        del u, delta, b, c, z  # recomputed in the backward: this is the point of the node
        ctx.save_for_backward(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, conv_state,
                              ssm_state, chunk_states)
        ctx.cfg, ctx.splits, ctx.dt_rank, ctx.d_state = cfg, splits, dt_rank, d_state
        return y, conv_final, ssm_final

    @staticmethod
    def backward(ctx, dy, dconv_final, dssm_final):
        (xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, conv_state, ssm_state,
         chunk_states) = ctx.saved_tensors
        cfg, seqlen, d_inner = ctx.cfg, xz.shape[1], xz.shape[2] // 2
        keep = conv_weight.shape[1] - 1  # inputs a conv state holds
        # Leaves for the recomputation, shared by the pieces; None stays None (no bias, no carried state).
        weights = [_leaf(t) for t in (conv_weight, conv_bias, x_proj_weight, dt_proj_weight)]
        wanted_weights = [w for w in weights if w is not None and w.requires_grad]
        dweights = [None] * len(wanted_weights)
        dxz = torch.empty_like(xz) if xz.requires_grad else None
        dA = dD = ddt_bias = dconv_state = None
        per_piece = -(-cfg.n_chunks // ctx.splits)
        d_state_out, d_conv_out = dssm_final, dconv_final  # gradients of what the current piece hands on
        for c0 in reversed(range(0, cfg.n_chunks, per_piece)):
            t0, t1, states, piece_cfg = chunk_range(chunk_states, cfg, seqlen, c0, min(c0 + per_piece, cfg.n_chunks))
            first = c0 == 0
            xz_piece = _leaf(xz[:, t0:t1])
            # The conv state entering the piece: the caller's, or the last inputs of the piece before.
            conv_in = _leaf(conv_state) if first else _leaf(xz[:, t0 - keep : t0, :d_inner].transpose(1, 2))
            with torch.enable_grad():
                u, delta, b, c, z, conv_final = pre_scan(xz_piece, *weights, conv_in, ctx.dt_rank, ctx.d_state)
            # The scan's initial state only says whether its gradient is wanted: the states come from `states`.
            ssm_in = ssm_state if first else states[:, 0, : ctx.d_state].transpose(1, 2)
            du, ddelta, dA_p, dB, dC, dD_p, dz, ddt_bias_p, d_state_in = scan_backward(
                u.detach(), delta.detach(), A, b.detach(), c.detach(), D, z.detach(), dt_bias, ssm_in, states,
                piece_cfg, True, dy[:, :, t0:t1], d_state_out,
            )
            outputs, grads = [u, delta, b, c, z], [du, ddelta, dB, dC, dz]
            if d_conv_out is not None:
                outputs.append(conv_final)
                grads.append(d_conv_out)
            inputs = [*wanted_weights]
            if xz_piece.requires_grad:
                inputs.append(xz_piece)
            if conv_in is not None and conv_in.requires_grad:
                inputs.append(conv_in)
            found = list(torch.autograd.grad(outputs, inputs, grads, allow_unused=True)) if inputs else []
            for i in range(len(wanted_weights)):
                dweights[i] = _add(dweights[i], found[i])
            found = found[len(wanted_weights):]
            if xz_piece.requires_grad:
                dxz[:, t0:t1] = found.pop(0)
            d_conv_in = found.pop(0) if conv_in is not None and conv_in.requires_grad else None
            dA, dD, ddt_bias = _add(dA, dA_p), _add(dD, dD_p), _add(ddt_bias, ddt_bias_p)
            if first:
                dconv_state, dssm_state = d_conv_in, d_state_in
            d_state_out, d_conv_out = d_state_in, d_conv_in
        found = iter(dweights)
        dconv_weight, dconv_bias, dx_proj_weight, ddt_proj_weight = (
            next(found) if w is not None and w.requires_grad else None for w in weights
        )
        return (dxz, dconv_weight, dconv_bias, dx_proj_weight, ddt_proj_weight, ddt_bias, dA, dD, dconv_state,
                dssm_state, None, None)


def mamba_inner(
    xz: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    dt_rank: int,
    d_state: int,
    conv_state: torch.Tensor | None = None,
    ssm_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mixer between in_proj and out_proj, on the Triton kernels, recomputing u and delta in the backward.

    Args:
        xz: in_proj's output; its dtype is the compute dtype of the conv, the GEMMs and the scan's I/O.
        A: -exp(A_log), fp32. D, dt_bias: fp32. dt_bias enters the scan's fused softplus.
        conv_state, ssm_state: the layer's carried state, or None for zeros.

    Shapes:
        xz: (B, L, 2 * d_inner);  conv_weight: (d_inner, d_conv);  x_proj_weight: (dt_rank + 2N, d_inner)
        dt_proj_weight: (d_inner, dt_rank);  A: (d_inner, N)
        returns y (B, d_inner, L) in xz's dtype (gated by SiLU(z)), conv_final (B, d_inner, d_conv - 1),
        ssm_final (B, d_inner, N) fp32
    """
    return _MambaInnerFn.apply(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D,
                               conv_state, ssm_state, dt_rank, d_state)
