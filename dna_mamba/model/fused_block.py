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
from dna_mamba.kernels.causal_conv1d.interface import causal_conv1d_backward, causal_conv1d_forward
from dna_mamba.kernels.rmsnorm.interface import rms_norm_backward, rms_norm_forward
from dna_mamba.kernels.selective_scan.interface import ScanParams, prepare_params, scan_backward, scan_forward

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

    The step-by-step path's (``MambaMixer``, through autograd); the fused node runs the same operations in
    ``_mixer_inputs``. Weights are cast to x's dtype explicitly (what autocast does) and autocast is off.
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


def _sum_fp32(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The sum of a gradient's per-piece parts in fp32 (parts in the compute dtype are widened exactly, as
    ``.float()`` would), in a fixed order: bitwise reproducible."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0].float()
    return torch.stack(parts).sum(0, dtype=torch.float32)


@dataclass
class _Weights:
    """The node's parameters, with what every piece reads prepared once per call rather than once per piece: the
    GEMM weights in the compute dtype and the scan's per-channel parameters in its kernels' form. (On a slow host
    each piece's casts and small buffers cost about a millisecond of Python and launches, which decided the speed
    of short pieces.)"""

    norm: torch.Tensor
    conv: torch.Tensor
    conv_bias: torch.Tensor | None
    in_proj: torch.Tensor  # (2 * d_inner, d_model), compute dtype
    in_bias: torch.Tensor | None
    x_proj: torch.Tensor  # (dt_rank + 2N, d_inner), compute dtype
    dt_proj: torch.Tensor  # (d_inner, dt_rank), compute dtype
    out_proj: torch.Tensor  # (d_model, d_inner), compute dtype
    out_bias: torch.Tensor | None
    dt_bias: torch.Tensor
    A: torch.Tensor
    D: torch.Tensor
    scan: ScanParams

    @classmethod
    def prepare(cls, spec: _Spec, norm, conv, conv_bias, in_proj, in_bias, x_proj, dt_proj, out_proj, out_bias,
                dt_bias, A, D) -> _Weights:
        def cast(t):
            return None if t is None else t.detach().to(spec.dtype)

        return cls(norm.detach(), conv.detach(), None if conv_bias is None else conv_bias.detach(), cast(in_proj),
                   cast(in_bias), cast(x_proj), cast(dt_proj), cast(out_proj), cast(out_bias), dt_bias.detach(),
                   A.detach(), D.detach(), prepare_params(A.detach(), D.detach(), dt_bias.detach()))


def _mixer_inputs(x_piece, w: _Weights, spec: _Spec, conv_in):
    """A piece of the block input -> what the scan reads: (h, rstd, conv_x, z, u, dt_low, delta, B, C, conv_final).

    RMSNorm, in_proj, the conv and x_proj / dt_proj, with autocast off: the backward's recomputation is then the
    same arithmetic as the forward's whatever autocast state each runs under.
    """
    h, rstd = _norm(x_piece, w.norm, spec)  # (B, l, d_model), (B * l,)
    xz = F.linear(h, w.in_proj, w.in_bias)  # (B, l, 2 * d_inner)
    conv_x, z = split_xz(xz)  # (B, d_inner, l) each
    u, conv_final = causal_conv1d_forward(conv_x, w.conv, w.conv_bias, conv_in, True, True)  # (B, d_inner, l)
    dt_low, delta, b, c = _project(u, w.x_proj, w.dt_proj, spec.dt_rank, spec.d_state)
    return h, rstd, conv_x, z, u, dt_low, delta, b, c, conv_final


class _MambaBlockFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_weight, in_weight, in_bias, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                dt_bias, A, D, out_weight, out_bias, conv_state, ssm_state, spec: _Spec):
        batch, seqlen, d_model = x.shape
        w = _Weights.prepare(spec, norm_weight, conv_weight, conv_bias, in_weight, in_bias, x_proj_weight,
                             dt_proj_weight, out_weight, out_bias, dt_bias, A, D)
        # Block._add's dtype: an fp32 residual sum, or x's dtype promoted with the mixer's.
        out_dtype = torch.float32 if spec.residual_in_fp32 else torch.promote_types(x.dtype, spec.dtype)
        out = x.new_empty(batch, seqlen, d_model, dtype=out_dtype)
        conv_in, ssm_in = conv_state, ssm_state
        pieces = []  # per piece: (t0, t1, conv state entering it (None for the first), scan chunk states, config)
        with torch.autocast(x.device.type, enabled=False):
            for t0, t1 in _pieces(batch, seqlen):
                x_piece = x[:, t0:t1]
                _, _, _, z, u, _, delta, b, c, conv_final = _mixer_inputs(x_piece, w, spec, conv_in)
                y, ssm_final, states, cfg = scan_forward(u, delta, w.A, b, c, w.D, z, w.dt_bias, ssm_in, True,
                                                         params=w.scan)
                del z, u, delta, b, c
                mixed = F.linear(y.transpose(1, 2), w.out_proj, w.out_bias)  # (B, l, d_model)
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
        saved = ctx.saved_tensors
        (x, norm_weight, in_weight, in_bias, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D,
         out_weight, out_bias, conv_state, ssm_state) = saved
        spec = ctx.spec
        w = _Weights.prepare(spec, norm_weight, conv_weight, conv_bias, in_weight, in_bias, x_proj_weight,
                             dt_proj_weight, out_weight, out_bias, dt_bias, A, D)
        # Which gradients to compute, by the inputs' names below (the parts of _backward_piece).
        wants = {name for name, want in zip(_INPUTS, ctx.needs_input_grad, strict=False) if want}
        dx = None
        if "x" in wants:
            # Piece by piece, x[:, t0:t1] is last read before dx[:, t0:t1] is written, so the two can share a buffer.
            dx = x.detach() if spec.reuse_input else torch.empty_like(x)
        k = _BackwardInputs(x.detach(), dout, dx, conv_state, ssm_state, w, spec, wants)
        parts_by_name: dict[str, list[torch.Tensor]] = {}
        d_state_out, d_conv_out = dssm_final, dconv_final  # gradients of what the current piece hands on
        for t0, t1, conv_in, states, cfg in reversed(ctx.pieces):
            # One call per piece: its working tensors are freed before the next piece allocates its own (kept alive
            # by the loop's variables, they raised the peak by about a piece's worth).
            parts, d_state_out, d_conv_out = _backward_piece(k, t0, t1, conv_in, states, cfg, d_state_out, d_conv_out)
            for name, part in parts.items():
                parts_by_name.setdefault(name, []).append(part)
        # Each parameter's pieces summed in one fp32 reduction (two launches, not one add and one cast per piece).
        totals = {name: _sum_fp32(parts) for name, parts in parts_by_name.items()}
        # The states entering the first piece are the caller's.
        totals["conv_state"], totals["ssm_state"] = d_conv_out, d_state_out
        totals["x"] = dx
        return (*(totals.get(name) if name in wants else None for name in _INPUTS), None)


# The node's tensor inputs, in _MambaBlockFn.forward's order.
_INPUTS = ("x", "norm_weight", "in_weight", "in_bias", "conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight",
           "dt_bias", "A", "D", "out_weight", "out_bias", "conv_state", "ssm_state")


@dataclass
class _BackwardInputs:
    """What every piece's backward reads: the input x, dout, the dx being written, the caller's initial states, the
    prepared weights, and the names of the inputs whose gradients are wanted."""

    x: torch.Tensor
    dout: torch.Tensor
    dx: torch.Tensor | None
    conv_state: torch.Tensor | None
    ssm_state: torch.Tensor | None
    w: _Weights
    spec: _Spec
    wants: set


def _backward_piece(k: _BackwardInputs, t0, t1, conv_in, states, cfg, d_state_out, d_conv_out):
    """The backward of one piece [t0, t1): writes k.dx[:, t0:t1] and returns the piece's parameter gradients (by
    input name, those wanted) and the gradients of the scan and conv states entering it. A function of its own so
    that the piece's working tensors are freed when it returns."""
    x, dout, dx, w, spec, wants = k.x, k.dout, k.dx, k.w, k.spec, k.wants
    d_model, d_inner = w.out_proj.shape
    first = t0 == 0
    x_piece = x[:, t0:t1]
    # The conv state entering the piece: the caller's, or the last conv inputs of the piece before.
    conv_in = k.conv_state if first else conv_in
    with torch.autocast(x.device.type, enabled=False):
        h, rstd, conv_x, z, u, dt_low, delta, b, c, _ = _mixer_inputs(x_piece, w, spec, conv_in)
    parts = {}
    dmixed = dout[:, t0:t1].to(spec.dtype)  # out_proj's output gradient, (B, l, d_model)
    dy = dmixed @ w.out_proj  # (B, l, d_inner)
    y = torch.empty_like(dy)  # the scan's output, which its backward recomputes: out_proj's weight gradient
    # The scan's initial state only says whether its gradient is wanted: the states come from `states`.
    want_ssm_in = not first or "ssm_state" in k.wants
    ssm_in = (k.ssm_state if first else states[:, 0, : spec.d_state].transpose(1, 2)) if want_ssm_in else None
    du, ddelta, dA, dB, dC, dD, dz, ddt_bias, d_state_in = scan_backward(
        u, delta, w.A, b, c, w.D, z, w.dt_bias, ssm_in, states, cfg, True, dy.transpose(1, 2), d_state_out,
        y_out=y.transpose(1, 2), params=w.scan,
    )
    parts["A"], parts["D"], parts["dt_bias"] = dA, dD, ddt_bias
    if "out_weight" in wants:
        parts["out_weight"] = dmixed.reshape(-1, d_model).t() @ y.reshape(-1, d_inner)
    if "out_bias" in wants:
        parts["out_bias"] = dmixed.float().sum((0, 1))
    del dy, y, z
    # dt_proj and x_proj by hand, in the compute dtype as autograd would: delta = dt_low @ W_dt^T and
    # x_dbl = (dt_low, B, C) = u^T @ W_x^T.
    ddelta_rows = _rows(ddelta)  # (B * l, d_inner)
    ddt_low = ddelta_rows @ w.dt_proj  # (B * l, dt_rank)
    dx_dbl = torch.cat([ddt_low, _rows(dB[:, 0]), _rows(dC[:, 0])], dim=1)  # (B * l, dt_rank + 2N)
    if "dt_proj_weight" in wants:
        parts["dt_proj_weight"] = ddelta_rows.t() @ dt_low.reshape(-1, spec.dt_rank)
    del ddelta_rows, ddt_low, ddelta, dB, dC, delta, b, c, dt_low
    du_rows = du.transpose(1, 2).view(-1, du.shape[1])  # a view (raises otherwise): the scan's du is channel-last
    if "x_proj_weight" in wants:
        parts["x_proj_weight"] = dx_dbl.t() @ _rows(u)
    # du += dx_dbl @ W_x: u's gradient through x_proj, one GEMM into the scan's du instead of a tensor of its own.
    du_rows.addmm_(dx_dbl, w.x_proj)
    del dx_dbl, du_rows, u
    # The conv: its input, weight, bias and the conv state entering the piece (whose gradient the piece before
    # needs; the first piece's goes to the caller, if wanted).
    dconv_x, dconv_w, dconv_b, d_conv_in = causal_conv1d_backward(conv_x, w.conv, w.conv_bias, conv_in, du,
                                                                  d_conv_out, True)
    del du, conv_x
    if first and "conv_state" not in wants:
        d_conv_in = None
    if "conv_weight" in wants:
        parts["conv_weight"] = dconv_w
    if "conv_bias" in wants:
        parts["conv_bias"] = dconv_b
    # in_proj by hand, its two output halves separately: (B * l, d_inner) each, rows of xz's positions.
    dxz_x, dxz_z = _rows(dconv_x), _rows(dz)
    h_rows = h.reshape(-1, d_model)
    if "in_weight" in wants:
        parts["in_weight"] = torch.cat([dxz_x.t() @ h_rows, dxz_z.t() @ h_rows])  # (2 * d_inner, d_model)
    if "in_bias" in wants:
        parts["in_bias"] = torch.cat([dxz_x.float().sum(0), dxz_z.float().sum(0)])
    # In place: torch.addmm into a new tensor would first copy its addend there (a device-to-device copy per piece).
    dh = (dxz_x @ w.in_proj[:d_inner]).addmm_(dxz_z, w.in_proj[d_inner:]).view_as(h)
    del dconv_x, dz, dxz_x, dxz_z, h_rows, h
    # RMSNorm and the residual: dx = the norm's input gradient + dout, written into dx in the same pass.
    if dx is not None or "norm_weight" in wants:
        _, dnorm = rms_norm_backward(
            x_piece, w.norm, rstd, dh, dout[:, t0:t1] if dx is not None else None,
            dx_out=None if dx is None else dx[:, t0:t1], want_dx=dx is not None,
        )
        parts["norm_weight"] = dnorm
    return parts, d_state_in, d_conv_in


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
    _check_states(x, config, conv_state, ssm_state)
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else mixer.in_proj.weight.dtype
    spec = _Spec(config.dt_rank, config.d_state, block.norm.eps, dtype, block.residual_in_fp32, reuse_input)
    A = -torch.exp(mixer.A_log.float())  # (d_inner, N)
    return _MambaBlockFn.apply(
        x, block.norm.weight, mixer.in_proj.weight, mixer.in_proj.bias, mixer.conv_weight, mixer.conv_bias,
        mixer.x_proj.weight, mixer.dt_proj.weight, mixer.dt_proj.bias.float(), A, mixer.D.float(),
        mixer.out_proj.weight, mixer.out_proj.bias, conv_state, ssm_state, spec,
    )


def _check_states(x: torch.Tensor, config, conv_state: torch.Tensor | None, ssm_state: torch.Tensor | None) -> None:
    """ValueError for carried states of the wrong shape, before anything runs (the kernels read them unchecked)."""
    batch = x.shape[0]
    for name, state, shape in (("conv_state", conv_state, (batch, config.d_inner, config.d_conv - 1)),
                               ("ssm_state", ssm_state, (batch, config.d_inner, config.d_state))):
        if state is not None and tuple(state.shape) != shape:
            raise ValueError(f"{name} must be (batch, d_inner, {'d_conv - 1' if name == 'conv_state' else 'd_state'})"
                             f" = {shape} for x of shape {tuple(x.shape)}, got {tuple(state.shape)}")
