"""A whole Mamba block as one autograd node, for CUDA: x -> RMSNorm -> in_proj -> conv -> x_proj / dt -> scan ->
out_proj -> + x.

    h = RMSNorm(x);  xz = in_proj(h) -> x, z;  u = SiLU(conv1d(x));  (dt_low, B, C) = x_proj(u)
    delta = dt_proj(dt_low);  y = selective_scan(u, delta, A, B, C, D, z, dt_bias, softplus);  out = x + out_proj(y)

Run op by op, a block keeps for its backward the normed input, xz, the conv output, delta, x_proj's output and
y: about 4.5 (B, L, d_model)-sized fp32 tensors' worth per layer. This node keeps only its input x (which the
block before produced anyway), the weights, and per piece the conv and scan states entering it. Both passes run
over pieces of the sequence (``PIECE_TOKENS``), carrying the conv state and the scan state from piece to piece, so
the working memory is a piece's whatever the length. The backward walks the pieces last first: it recomputes
RMSNorm, in_proj, the conv, x_proj and delta (two GEMMs, a conv and thin GEMMs: a few percent of the block's
time), takes y from the scan's backward (which recomputes it anyway), and hands each piece's state gradients to
the piece before. Outputs and gradients equal the step-by-step path's (``tests/test_fused_block.py``), which stays
as the CPU path and the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dna_mamba.kernels import add_rms_norm, causal_conv1d
from dna_mamba.kernels.selective_scan.interface import scan_backward, scan_forward

# Both passes run over pieces of about this many tokens (batch x steps): the working tensors (xz, u, delta, the
# scan's gradients and buffers) are a piece's size rather than the sequence's. None: one piece.
PIECE_TOKENS: int | None = 1 << 18


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



@dataclass(frozen=True)
class _Spec:
    """What the node needs besides tensors."""

    dt_rank: int
    d_state: int
    eps: float  # RMSNorm's
    dtype: torch.dtype  # of the GEMMs, the conv and the scan's I/O: the autocast dtype, else in_proj's weights'
    residual_in_fp32: bool


def _pieces(batch: int, seqlen: int) -> list[tuple[int, int]]:
    steps = seqlen if PIECE_TOKENS is None else max(1, PIECE_TOKENS // batch)
    return [(t0, min(t0 + steps, seqlen)) for t0 in range(0, seqlen, steps)]


def _project_in(x, norm_weight, in_weight, in_bias, spec: _Spec):
    """(B, l, d_model) block input -> xz (B, l, 2 * d_inner) in spec.dtype: RMSNorm then in_proj."""
    h, _ = add_rms_norm(x, norm_weight, None, eps=spec.eps, residual_in_fp32=False, out_dtype=spec.dtype)
    return F.linear(h, in_weight.to(spec.dtype), None if in_bias is None else in_bias.to(spec.dtype))


def _leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().requires_grad_(t.requires_grad)


def _add(total: torch.Tensor | None, part: torch.Tensor | None) -> torch.Tensor | None:
    return part if total is None else total if part is None else total + part


class _MambaBlockFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_weight, in_weight, in_bias, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                dt_bias, A, D, out_weight, out_bias, conv_state, ssm_state, spec: _Spec):
        batch, seqlen, d_model = x.shape
        out_weight_c = out_weight.to(spec.dtype)
        out_bias_c = None if out_bias is None else out_bias.to(spec.dtype)
        out = None
        conv_in, ssm_in = conv_state, ssm_state
        pieces = []  # per piece: (t0, t1, conv state entering it (None for the first), scan chunk states, config)
        with torch.autocast(x.device.type, enabled=False):
            for t0, t1 in _pieces(batch, seqlen):
                xz = _project_in(x[:, t0:t1], norm_weight, in_weight, in_bias, spec)  # (B, l, 2 * d_inner)
                u, delta, b, c, z, conv_final = pre_scan(
                    xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, conv_in, spec.dt_rank, spec.d_state
                )
                del xz
                y, ssm_final, states, cfg = scan_forward(u, delta, A, b, c, D, z, dt_bias, ssm_in, True)
                del u, delta, b, c, z
                mixed = F.linear(y.transpose(1, 2), out_weight_c, out_bias_c)  # (B, l, d_model)
                del y
                part = x[:, t0:t1].float() + mixed.float() if spec.residual_in_fp32 else x[:, t0:t1] + mixed
                if out is None:
                    out = part.new_empty(batch, seqlen, d_model)
                out[:, t0:t1] = part
                pieces.append((t0, t1, None if t0 == 0 else conv_in, states, cfg))
                conv_in, ssm_in = conv_final, ssm_final
        ctx.save_for_backward(x, norm_weight, in_weight, in_bias, conv_weight, conv_bias, x_proj_weight,
                              dt_proj_weight, dt_bias, A, D, out_weight, out_bias, conv_state, ssm_state)
        ctx.pieces, ctx.spec = pieces, spec
        return out, conv_in, ssm_in

    @staticmethod
    def backward(ctx, dout, dconv_final, dssm_final):
        (x, norm_weight, in_weight, in_bias, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D,
         out_weight, out_bias, conv_state, ssm_state) = ctx.saved_tensors
        spec = ctx.spec
        d_model, d_inner = out_weight.shape
        out_weight_c = out_weight.to(spec.dtype)
        # Leaves of the recomputation, shared by the pieces; None stays None (no bias).
        weights = [_leaf(t) for t in (norm_weight, in_weight, in_bias, conv_weight, conv_bias, x_proj_weight,
                                      dt_proj_weight)]
        wanted = [w for w in weights if w is not None and w.requires_grad]
        dweights = [None] * len(wanted)
        dx = torch.empty_like(x) if x.requires_grad else None
        dout_weight = dout_bias = dA = dD = ddt_bias = dconv_state = dssm_state = None
        d_state_out, d_conv_out = dssm_final, dconv_final  # gradients of what the current piece hands on
        for t0, t1, conv_in, states, cfg in reversed(ctx.pieces):
            first = t0 == 0
            x_piece = _leaf(x[:, t0:t1])
            # The conv state entering the piece: the caller's, or the last conv inputs of the piece before.
            conv_in = _leaf(conv_state) if first else conv_in.detach().requires_grad_()
            with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
                xz = _project_in(x_piece, *weights[:3], spec)
                u, delta, b, c, z, conv_final = pre_scan(xz, *weights[3:], conv_in, spec.dt_rank, spec.d_state)
            dmixed = dout[:, t0:t1].to(spec.dtype)  # out_proj's output gradient, (B, l, d_model)
            dy = dmixed @ out_weight_c  # (B, l, d_inner)
            y = torch.empty_like(dy)  # the scan's output, which its backward recomputes: out_proj's weight gradient
            # The scan's initial state only says whether its gradient is wanted: the states come from `states`.
            ssm_in = ssm_state if first else states[:, 0, : spec.d_state].transpose(1, 2)
            du, ddelta, dA_p, dB, dC, dD_p, dz, ddt_bias_p, d_state_in = scan_backward(
                u.detach(), delta.detach(), A, b.detach(), c.detach(), D, z.detach(), dt_bias, ssm_in, states, cfg,
                True, dy.transpose(1, 2), d_state_out, y_out=y.transpose(1, 2),
            )
            if out_weight.requires_grad:
                dout_weight = _add(dout_weight, (dmixed.reshape(-1, d_model).t() @ y.reshape(-1, d_inner)).float())
            if out_bias is not None and out_bias.requires_grad:
                dout_bias = _add(dout_bias, dmixed.float().sum((0, 1)))
            del dy, y
            outputs, grads = [u, delta, b, c, z], [du, ddelta, dB, dC, dz]
            if d_conv_out is not None:
                outputs.append(conv_final)
                grads.append(d_conv_out)
            inputs = [*wanted]
            if x_piece.requires_grad:
                inputs.append(x_piece)
            if conv_in is not None and conv_in.requires_grad:
                inputs.append(conv_in)
            found = list(torch.autograd.grad(outputs, inputs, grads, allow_unused=True)) if inputs else []
            for i in range(len(wanted)):
                dweights[i] = _add(dweights[i], found[i])
            found = found[len(wanted):]
            if x_piece.requires_grad:
                dx[:, t0:t1] = dout[:, t0:t1] + found.pop(0)  # the residual's gradient plus the norm's
            d_conv_in = found.pop(0) if conv_in is not None and conv_in.requires_grad else None
            dA, dD, ddt_bias = _add(dA, dA_p), _add(dD, dD_p), _add(ddt_bias, ddt_bias_p)
            if first:
                dconv_state, dssm_state = d_conv_in, d_state_in
            d_state_out, d_conv_out = d_state_in, d_conv_in
        found = iter(dweights)
        dnorm, din_weight, din_bias, dconv_weight, dconv_bias, dx_proj, ddt_proj = (
            next(found) if w is not None and w.requires_grad else None for w in weights
        )
        return (dx, dnorm, din_weight, din_bias, dconv_weight, dconv_bias, dx_proj, ddt_proj, ddt_bias, dA, dD,
                dout_weight, dout_bias, dconv_state, dssm_state, None)


def mamba_block(block, x: torch.Tensor, conv_state: torch.Tensor | None = None,
                ssm_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x + mixer(norm(x)) for a ``dna_mamba.model.mamba.Block``, on the Triton kernels, keeping only x.

    The compute dtype is autocast's when it is on, else in_proj's weights'; the residual sum is fp32 when the block
    says ``residual_in_fp32``, as in ``Block.forward``.

    Shapes:
        x: (B, L, d_model);  conv_state: (B, d_inner, d_conv - 1);  ssm_state: (B, d_inner, N) fp32, or None
        returns out (B, L, d_model), conv_final (B, d_inner, d_conv - 1) in the compute dtype, ssm_final fp32
    """
    mixer, config = block.mixer, block.mixer.config
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else mixer.in_proj.weight.dtype
    spec = _Spec(config.dt_rank, config.d_state, block.norm.eps, dtype, block.residual_in_fp32)
    A = -torch.exp(mixer.A_log.float())  # (d_inner, N)
    return _MambaBlockFn.apply(
        x, block.norm.weight, mixer.in_proj.weight, mixer.in_proj.bias, mixer.conv_weight, mixer.conv_bias,
        mixer.x_proj.weight, mixer.dt_proj.weight, mixer.dt_proj.bias.float(), A, mixer.D.float(),
        mixer.out_proj.weight, mixer.out_proj.bias, conv_state, ssm_state, spec,
    )
