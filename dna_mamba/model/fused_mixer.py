"""The Mamba mixer's inner path as one autograd node, for CUDA: conv -> x_proj -> dt_proj -> selective scan.

    xz (B, L, 2 * d_inner) -> x, z;  u = SiLU(conv1d(x));  (dt_low, B, C) = x_proj(u);  delta = dt_proj(dt_low)
    y = selective_scan(u, delta, A, B, C, D, z, dt_bias, softplus)  -> (B, d_inner, L)

Run as separate autograd ops, this path keeps u (the conv output), delta and x_proj's output alive until the
backward: 2 x (B, L, d_inner) activations per layer on top of xz. Here the forward saves only xz, the weights
and the scan's per-chunk states; the backward recomputes u, x_proj and delta (a conv and two thin GEMMs, a few
percent of the layer's time) and feeds the scan's gradients back through them. The pre-gate scan output is
never stored (the scan recomputes it). Outputs and gradients equal those of the unfused path
(``tests/test_fused_mixer.py``); the unfused path stays as the CPU path and the oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dna_mamba.kernels import causal_conv1d
from dna_mamba.kernels.selective_scan.interface import scan_backward, scan_forward


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


class _MambaInnerFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, conv_state,
                ssm_state, dt_rank, d_state):
        with torch.no_grad():
            u, delta, b, c, z, conv_final = pre_scan(
                xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, conv_state, dt_rank, d_state
            )
            y, ssm_final, chunk_states, cfg = scan_forward(u, delta, A, b, c, D, z, dt_bias, ssm_state, True)
        del u, delta, b, c, z  # recomputed in the backward: this is the point of the node
        ctx.save_for_backward(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, conv_state,
                              ssm_state, chunk_states)
        ctx.cfg, ctx.dt_rank, ctx.d_state = cfg, dt_rank, d_state
        return y, conv_final, ssm_final

    @staticmethod
    def backward(ctx, dy, dconv_final, dssm_final):
        (xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, conv_state, ssm_state,
         chunk_states) = ctx.saved_tensors
        # Leaves for the recomputation; None stays None (no bias, no carried state).
        leaves = [None if t is None else t.detach().requires_grad_(t.requires_grad)
                  for t in (xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, conv_state)]
        xz_, conv_weight_, conv_bias_, x_proj_weight_, dt_proj_weight_, conv_state_ = leaves
        with torch.enable_grad():
            u, delta, b, c, z, conv_final = pre_scan(
                xz_, conv_weight_, conv_bias_, x_proj_weight_, dt_proj_weight_, conv_state_, ctx.dt_rank, ctx.d_state
            )
        du, ddelta, dA, dB, dC, dD, dz, ddt_bias, dssm_state = scan_backward(
            u.detach(), delta.detach(), A, b.detach(), c.detach(), D, z.detach(), dt_bias, ssm_state, chunk_states,
            ctx.cfg, True, dy, dssm_final,
        )
        outputs, grads = [u, delta, b, c, z], [du, ddelta, dB, dC, dz]
        if dconv_final is not None:
            outputs.append(conv_final)
            grads.append(dconv_final)
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        found = iter(torch.autograd.grad(outputs, wanted, grads, allow_unused=True)) if wanted else iter(())
        dxz, dconv_weight, dconv_bias, dx_proj_weight, ddt_proj_weight, dconv_state = (
            next(found) if t is not None and t.requires_grad else None for t in leaves
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
