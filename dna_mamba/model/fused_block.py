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

from dna_mamba.kernels import causal_conv1d
from dna_mamba.kernels.rmsnorm.interface import rms_norm_backward, rms_norm_forward
from dna_mamba.kernels.selective_scan.interface import scan_backward, scan_forward

# Both passes run over pieces of about this many tokens (batch x steps): the working tensors (xz, u, delta, the
# scan's gradients and buffers) are a piece's size rather than the sequence's. None: one piece.
PIECE_TOKENS: int | None = 1 << 18


def split_xz(xz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """in_proj's output (B, L, 2 * d_inner) -> the conv input x and the gate z, as (B, d_inner, L) views."""
    # Split first, then transpose: the backward of chunk concatenates the two gradients along the split dimension,
    # which is then the fastest one of xz's memory. Transposing first made that concatenation a strided copy that
    # took 32 ms at d_inner 512, L 2^20 (a third of the block's backward).
    x, z = (half.transpose(1, 2) for half in xz.chunk(2, dim=-1))
    return x, z


def pre_scan(x, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, conv_state, dt_rank: int, d_state: int,
             conv_backend: str = "triton"):
    """The conv input x (B, d_inner, L) -> (u, delta, B, C, conv_final): what the scan reads besides z, in x's dtype.

    Weights are cast to x's dtype explicitly (what autocast does) and autocast is off, so the backward's
    recomputation is the same arithmetic as the forward's whatever autocast state each runs under. The
    step-by-step path (``MambaMixer``) calls this too, with ``conv_backend="auto"``.
    """
    with torch.autocast(x.device.type, enabled=False):
        u, conv_final = causal_conv1d(
            x, conv_weight, conv_bias, activation="silu", initial_state=conv_state, return_final_state=True,
            backend=conv_backend,
        )  # (B, d_inner, L), (B, d_inner, d_conv - 1)
        _, delta, b, c = _project(u, x_proj_weight, dt_proj_weight, dt_rank, d_state)
    return u, delta, b, c, conv_final


def _project(u, x_proj_weight, dt_proj_weight, dt_rank: int, d_state: int):
    """The conv output u (B, d_inner, L) -> (dt_low (B, L, dt_rank), delta (B, d_inner, L), B, C (B, 1, N, L))."""
    x_dbl = F.linear(u.transpose(1, 2), x_proj_weight.to(u.dtype))  # (B, L, dt_rank + 2N)
    dt_low, b, c = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    delta = F.linear(dt_low, dt_proj_weight.to(u.dtype)).transpose(1, 2)  # (B, d_inner, L)
    b = b.transpose(1, 2).unsqueeze(1)  # (B, 1, N, L): one group shared by all channels
    c = c.transpose(1, 2).unsqueeze(1)  # (B, 1, N, L)
    return dt_low, delta, b, c


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B, C, L) -> (B * L, C), the GEMMs' row form; a view when t is channel-last."""
    return t.transpose(1, 2).reshape(-1, t.shape[1])


@dataclass(frozen=True)
class _Spec:
    """What the node needs besides tensors."""

    dt_rank: int
    d_state: int
    eps: float  # RMSNorm's
    dtype: torch.dtype  # of the GEMMs, the conv and the scan's I/O: the autocast dtype, else in_proj's weights'
    residual_in_fp32: bool
    reuse_input: bool = False  # the backward writes dx into x's buffer (see mamba_block)


def _pieces(batch: int, seqlen: int) -> list[tuple[int, int]]:
    steps = seqlen if PIECE_TOKENS is None else max(1, PIECE_TOKENS // batch)
    return [(t0, min(t0 + steps, seqlen)) for t0 in range(0, seqlen, steps)]


def _norm(x, norm_weight, spec: _Spec):
    """The block's RMSNorm: (B, l, d_model) -> ((B, l, d_model) in spec.dtype, rstd (B * l,) fp32)."""
    return rms_norm_forward(x, norm_weight, spec.eps, spec.dtype)


def _leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().requires_grad_(t.requires_grad)


def _add(total: torch.Tensor | None, part: torch.Tensor | None) -> torch.Tensor | None:
    return part if total is None else total if part is None else total + part


class _MambaBlockFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_weight, in_weight, in_bias, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                dt_bias, A, D, out_weight, out_bias, conv_state, ssm_state, spec: _Spec):
        batch, seqlen, d_model = x.shape
        in_weight_c, out_weight_c = in_weight.to(spec.dtype), out_weight.to(spec.dtype)
        in_bias_c = None if in_bias is None else in_bias.to(spec.dtype)
        out_bias_c = None if out_bias is None else out_bias.to(spec.dtype)
        # Block._add's dtype: an fp32 residual sum, or x's dtype promoted with the mixer's.
        out_dtype = torch.float32 if spec.residual_in_fp32 else torch.promote_types(x.dtype, spec.dtype)
        out = x.new_empty(batch, seqlen, d_model, dtype=out_dtype)
        conv_in, ssm_in = conv_state, ssm_state
        pieces = []  # per piece: (t0, t1, conv state entering it (None for the first), scan chunk states, config)
        with torch.autocast(x.device.type, enabled=False):
            for t0, t1 in _pieces(batch, seqlen):
                x_piece = x[:, t0:t1]
                xz = F.linear(_norm(x_piece, norm_weight, spec)[0], in_weight_c, in_bias_c)  # (B, l, 2 * d_inner)
                conv_x, z = split_xz(xz)  # (B, d_inner, l) each
                u, delta, b, c, conv_final = pre_scan(
                    conv_x, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, conv_in, spec.dt_rank, spec.d_state
                )
                y, ssm_final, states, cfg = scan_forward(u, delta, A, b, c, D, z, dt_bias, ssm_in, True)
                del xz, conv_x, z, u, delta, b, c
                mixed = F.linear(y.transpose(1, 2), out_weight_c, out_bias_c)  # (B, l, d_model)
                del y
                # Written in place: no piece-sized temporaries for the sum or its copy into `out`. (addmm with x as
                # its input would first copy x into `out`, then read it back: more traffic, measured no faster.)
                torch.add(x_piece.float() if spec.residual_in_fp32 else x_piece, mixed, out=out[:, t0:t1])
                del mixed
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
        in_weight_c, out_weight_c = in_weight.to(spec.dtype), out_weight.to(spec.dtype)
        in_bias_c = None if in_bias is None else in_bias.to(spec.dtype)
        # Leaves of the recomputation, shared by the pieces; None stays None (no bias). in_proj and out_proj are
        # differentiated by hand (_backward_piece): autograd through in_proj would concatenate the conv's and the gate's
        # gradients into a (B, l, 2 * d_inner) tensor first.
        weights = [_leaf(t) for t in (norm_weight, conv_weight, conv_bias, x_proj_weight, dt_proj_weight)]
        wanted = [w for w in weights if w is not None and w.requires_grad]
        dweights = [None] * len(wanted)
        dx = None
        if x.requires_grad:
            # Piece by piece, x[:, t0:t1] is last read before dx[:, t0:t1] is written, so the two can share a buffer.
            dx = x.detach() if spec.reuse_input else torch.empty_like(x)
        din_weight = din_bias = dout_weight = dout_bias = None
        dA = dD = ddt_bias = dconv_state = dssm_state = None
        k = _BackwardInputs(x, dout, dx, conv_state, ssm_state, weights, in_weight, in_bias, in_weight_c, in_bias_c,
                            out_weight, out_bias, out_weight_c, dt_bias, A, D, spec)
        d_state_out, d_conv_out = dssm_final, dconv_final  # gradients of what the current piece hands on
        for t0, t1, conv_in, states, cfg in reversed(ctx.pieces):
            # One call per piece: its working tensors are freed before the next piece allocates its own (kept alive
            # by the loop's variables, they raised the peak by about a piece's worth).
            dparts, din_w, din_b, dout_w, dout_b, dA_p, dD_p, ddt_bias_p, d_state_in, d_conv_in = _backward_piece(
                k, t0, t1, conv_in, states, cfg, d_state_out, d_conv_out
            )
            dweights = [_add(total, part) for total, part in zip(dweights, dparts, strict=True)]
            din_weight, din_bias = _add(din_weight, din_w), _add(din_bias, din_b)
            dout_weight, dout_bias = _add(dout_weight, dout_w), _add(dout_bias, dout_b)
            dA, dD, ddt_bias = _add(dA, dA_p), _add(dD, dD_p), _add(ddt_bias, ddt_bias_p)
            if t0 == 0:
                dconv_state, dssm_state = d_conv_in, d_state_in
            d_state_out, d_conv_out = d_state_in, d_conv_in
        found = iter(dweights)
        dnorm, dconv_weight, dconv_bias, dx_proj, ddt_proj = (
            next(found) if w is not None and w.requires_grad else None for w in weights
        )
        return (dx, dnorm, din_weight, din_bias, dconv_weight, dconv_bias, dx_proj, ddt_proj, ddt_bias, dA, dD,
                dout_weight, dout_bias, dconv_state, dssm_state, None)


@dataclass
class _BackwardInputs:
    """What every piece's backward reads: the node's saved tensors, the weights in the compute dtype, the leaves of
    the recomputation (``weights``: the norm's, the conv's weight and bias, x_proj's, dt_proj's), dout and the dx
    being written."""

    x: torch.Tensor
    dout: torch.Tensor
    dx: torch.Tensor | None
    conv_state: torch.Tensor | None
    ssm_state: torch.Tensor | None
    weights: list
    in_weight: torch.Tensor
    in_bias: torch.Tensor | None
    in_weight_c: torch.Tensor
    in_bias_c: torch.Tensor | None
    out_weight: torch.Tensor
    out_bias: torch.Tensor | None
    out_weight_c: torch.Tensor
    dt_bias: torch.Tensor
    A: torch.Tensor
    D: torch.Tensor
    spec: _Spec


def _backward_piece(k: _BackwardInputs, t0, t1, conv_in, states, cfg, d_state_out, d_conv_out):
    """The backward of one piece [t0, t1): writes k.dx[:, t0:t1] and returns the piece's parameter gradients
    (those of ``k.weights`` that want one, in order, then in_proj's, out_proj's, A's, D's and dt_bias's) and the
    gradients of the conv and scan states entering it. A function of its own so that the piece's working tensors
    are freed when it returns."""
    x, dout, dx, weights, spec = k.x, k.dout, k.dx, k.weights, k.spec
    in_weight, in_bias, in_weight_c, in_bias_c = k.in_weight, k.in_bias, k.in_weight_c, k.in_bias_c
    out_weight, out_bias, out_weight_c = k.out_weight, k.out_bias, k.out_weight_c
    conv_state, ssm_state, dt_bias, A, D = k.conv_state, k.ssm_state, k.dt_bias, k.A, k.D
    d_model, d_inner = out_weight.shape
    first = t0 == 0
    x_piece = x.detach()[:, t0:t1]
    # The conv state entering the piece: the caller's, or the last conv inputs of the piece before.
    conv_in = _leaf(conv_state) if first else conv_in.detach().requires_grad_()
    with torch.autocast(x.device.type, enabled=False):
        h, rstd = _norm(x_piece, weights[0].detach(), spec)  # (B, l, d_model), (B * l,)
        xz = F.linear(h, in_weight_c, in_bias_c)  # (B, l, 2 * d_inner)
        conv_x, z = split_xz(xz)
        conv_x = conv_x.detach().requires_grad_()
        conv_weight, conv_bias, x_proj_weight, dt_proj_weight = weights[1:]
        with torch.enable_grad():
            u, conv_final = causal_conv1d(
                conv_x, conv_weight, conv_bias, activation="silu", initial_state=conv_in, return_final_state=True,
                backend="triton",
            )  # (B, d_inner, l)
        # x_proj and dt_proj are differentiated by hand below, so that their gradient to u lands in the scan's du
        # (one GEMM with beta = 1) instead of a separate tensor that autograd then adds to it.
        dt_low, delta, b, c = _project(u.detach(), x_proj_weight, dt_proj_weight, spec.dt_rank, spec.d_state)
    dmixed = dout[:, t0:t1].to(spec.dtype)  # out_proj's output gradient, (B, l, d_model)
    dy = dmixed @ out_weight_c  # (B, l, d_inner)
    y = torch.empty_like(dy)  # the scan's output, which its backward recomputes: out_proj's weight gradient
    # The scan's initial state only says whether its gradient is wanted: the states come from `states`.
    ssm_in = ssm_state if first else states[:, 0, : spec.d_state].transpose(1, 2)
    du, ddelta, dA, dB, dC, dD, dz, ddt_bias, d_state_in = scan_backward(
        u.detach(), delta.detach(), A, b.detach(), c.detach(), D, z, dt_bias, ssm_in, states, cfg,
        True, dy.transpose(1, 2), d_state_out, y_out=y.transpose(1, 2),
    )
    dout_weight = dout_bias = din_weight = din_bias = None
    if out_weight.requires_grad:
        dout_weight = (dmixed.reshape(-1, d_model).t() @ y.reshape(-1, d_inner)).float()
    if out_bias is not None and out_bias.requires_grad:
        dout_bias = dmixed.float().sum((0, 1))
    del dy, y, xz, z
    # dt_proj and x_proj by hand, in the compute dtype as autograd would: delta = dt_low @ W_dt^T and
    # x_dbl = (dt_low, B, C) = u^T @ W_x^T.
    ddelta_rows = _rows(ddelta)  # (B * l, d_inner)
    ddt_low = ddelta_rows @ dt_proj_weight.to(ddelta.dtype)  # (B * l, dt_rank)
    dx_dbl = torch.cat([ddt_low, _rows(dB[:, 0]), _rows(dC[:, 0])], dim=1)  # (B * l, dt_rank + 2N)
    ddt_proj = dx_proj = None
    if dt_proj_weight.requires_grad:
        ddt_proj = (ddelta_rows.t() @ dt_low.reshape(-1, spec.dt_rank)).float()
    del ddelta_rows, ddt_low, ddelta, dB, dC, delta, b, c, dt_low
    du_rows = du.transpose(1, 2).view(-1, du.shape[1])  # a view (raises otherwise): the scan's du is channel-last
    if x_proj_weight.requires_grad:
        dx_proj = (dx_dbl.t() @ _rows(u.detach())).float()
    du_rows.addmm_(dx_dbl, x_proj_weight.to(du.dtype))  # du += dx_dbl @ W_x: u's gradient through x_proj
    del dx_dbl, du_rows
    # The conv, by autograd: to its weight and bias, its input and the conv state.
    outputs, grads = [u], [du]
    if d_conv_out is not None:
        outputs.append(conv_final)
        grads.append(d_conv_out)
    wants = [w is not None and w.requires_grad for w in weights[1:]]  # conv weight, conv bias, x_proj, dt_proj
    inputs = [w for w, want in zip(weights[1:3], wants[:2], strict=True) if want] + [conv_x]
    if conv_in is not None and conv_in.requires_grad:
        inputs.append(conv_in)
    conv_grads = list(torch.autograd.grad(outputs, inputs, grads, allow_unused=True))
    del outputs, grads, u, du
    d_conv_in = conv_grads.pop() if conv_in is not None and conv_in.requires_grad else None
    dconv_x = conv_grads.pop()
    found = conv_grads + [g for g, want in zip((dx_proj, ddt_proj), wants[2:], strict=True) if want]  # weights' order
    # in_proj by hand, its two output halves separately: (B * l, d_inner) each, rows of xz's positions.
    dxz_x, dxz_z = _rows(dconv_x), _rows(dz)
    h_rows = h.detach().reshape(-1, d_model)
    if in_weight.requires_grad:
        din_weight = torch.cat([dxz_x.t() @ h_rows, dxz_z.t() @ h_rows]).float()  # (2 * d_inner, d_model)
    if in_bias is not None and in_bias.requires_grad:
        din_bias = torch.cat([dxz_x.float().sum(0), dxz_z.float().sum(0)])
    # In place: torch.addmm into a new tensor would first copy its addend there (a device-to-device copy per piece).
    dh = (dxz_x @ in_weight_c[:d_inner]).addmm_(dxz_z, in_weight_c[d_inner:]).view_as(h)
    del dconv_x, dz, dxz_x, dxz_z, h_rows, h
    # RMSNorm and the residual: dx = the norm's input gradient + dout, written into dx in the same pass.
    dparts = found
    if dx is not None or weights[0].requires_grad:
        _, dnorm = rms_norm_backward(
            x_piece, weights[0].detach(), rstd, dh, dout[:, t0:t1] if dx is not None else None,
            dx_out=None if dx is None else dx[:, t0:t1], want_dx=dx is not None,
        )
        if weights[0].requires_grad:
            dparts = [dnorm] + found  # in the caller's `wanted` order
    return dparts, din_weight, din_bias, dout_weight, dout_bias, dA, dD, ddt_bias, d_state_in, d_conv_in


def mamba_block(block, x: torch.Tensor, conv_state: torch.Tensor | None = None,
                ssm_state: torch.Tensor | None = None, reuse_input: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x + mixer(norm(x)) for a ``dna_mamba.model.mamba.Block``, on the Triton kernels, keeping only x.

    The compute dtype is autocast's when it is on, else in_proj's weights'; the residual sum is fp32 when the block
    says ``residual_in_fp32``, as in ``Block.forward``. ``reuse_input``: the caller promises that nothing reads x
    after this block's backward (x is an intermediate of its own, like the residual stream between the model's
    blocks), so the backward writes the input gradient into x's buffer instead of a new one: one (B, L, d_model)
    buffer less at the peak of a training step, 1 GiB at 2^20 x 256 in fp32.

    Shapes:
        x: (B, L, d_model);  conv_state: (B, d_inner, d_conv - 1);  ssm_state: (B, d_inner, N) fp32, or None
        returns out (B, L, d_model), conv_final (B, d_inner, d_conv - 1) in the compute dtype, ssm_final fp32
    """
    mixer, config = block.mixer, block.mixer.config
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else mixer.in_proj.weight.dtype
    spec = _Spec(config.dt_rank, config.d_state, block.norm.eps, dtype, block.residual_in_fp32, reuse_input)
    A = -torch.exp(mixer.A_log.float())  # (d_inner, N)
    return _MambaBlockFn.apply(
        x, block.norm.weight, mixer.in_proj.weight, mixer.in_proj.bias, mixer.conv_weight, mixer.conv_bias,
        mixer.x_proj.weight, mixer.dt_proj.weight, mixer.dt_proj.bias.float(), A, mixer.D.float(),
        mixer.out_proj.weight, mixer.out_proj.bias, conv_state, ssm_state, spec,
    )
