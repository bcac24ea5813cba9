"""Pure-PyTorch selective scan (Mamba-1): the CPU path and the oracle for the Triton kernels.

Memory is linear in L at any length, and the backward is written by hand rather than left to autograd:

- The forward walks the sequence in chunks of T steps under ``no_grad`` and keeps only the state entering each
  chunk. Within a chunk it is a plain recurrence, h_t = exp(dt_t A) * h_{t-1} + dt_t B_t u_t, one fused
  ``addcmul`` per step over a contiguous (batch, dim, N) slice: on a CPU this sequential form moves the fewest
  bytes, and it never forms exp(-cumsum(dt A)), which overflows for fast-decaying channels.
- The backward walks the chunks in reverse, recomputes a chunk's states from its stored start state, runs the
  adjoint recurrence g_t = dy_t C_t + exp(dt_{t+1} A) g_{t+1} (one ``add`` and one ``mul`` per step), and reads
  every input gradient off g and the states with whole-chunk tensor ops. The gradient of the state entering a
  chunk is carried into the previous chunk, starting from the final-state gradient, so a sequence split into
  segments with carried states backpropagates exactly.

Work tensors are time-major, (T, batch, dim, N), so each step touches one contiguous block. T is chosen from an
element budget, so peak memory is a few such tensors whatever L is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Elements of one (T, batch, dim, N) fp32 work tensor (2 MiB): small enough that the dozen passes the backward
# makes over a chunk stay in cache, large enough that per-chunk Python overhead is noise.
_CHUNK_ELEMENTS = 1 << 19


def default_chunk_len(batch: int, dim: int, dstate: int, seqlen: int) -> int:
    """Steps per chunk: as many as the element budget allows (at least 1, at most ``seqlen``)."""
    return max(1, min(seqlen, _CHUNK_ELEMENTS // max(1, batch * dim * dstate)))


def _time_major_groups(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, groups, N, l) -> (l, batch, dim, N), each group's row shared by its dim // groups channels."""
    batch, groups, n, steps = t.shape
    t = t.permute(3, 0, 1, 2).unsqueeze(3)  # (l, batch, groups, 1, N)
    return t.expand(steps, batch, groups, dim // groups, n).reshape(steps, batch, dim, n)


def _sum_groups(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(l, batch, dim, N) -> (batch, groups, N, l): the sum over the channels of each group."""
    steps, batch, dim, n = t.shape
    return t.reshape(steps, batch, groups, dim // groups, n).sum(3).permute(1, 2, 3, 0)


def _dt(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """dt and the pre-activation it came from, both (batch, dim, l) fp32."""
    pre = delta if delta_bias is None else delta + delta_bias[:, None]
    return (F.softplus(pre) if softplus else pre), pre


def _chunk_states(u, dt, A, Bt, h, out):
    """Run the recurrence over one chunk, writing h_t into ``out``; returns the decays and the end state.

    Shapes: u, dt (batch, dim, l);  A (dim, N);  Bt (l, batch, dim, N);  h (batch, dim, N);  out (l, batch, dim, N).
    """
    # Time-major copies first: elementwise results keep their inputs' layout, and each step must be contiguous.
    dt_t = dt.permute(2, 0, 1).contiguous().unsqueeze(-1)  # (l, batch, dim, 1)
    decay = torch.exp(dt_t * A)  # (l, batch, dim, N)
    x = (dt_t * u.permute(2, 0, 1).unsqueeze(-1)) * Bt  # (l, batch, dim, N)
    for t in range(u.shape[-1]):
        h = torch.addcmul(x[t], decay[t], h, out=out[t])
    return decay, h


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


class _SelectiveScanRef(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk_len):
        batch, dim, seqlen = u.shape
        dstate = A.shape[1]
        A32, D32, bias32 = A.float(), _f32(D), _f32(delta_bias)
        h = torch.zeros(batch, dim, dstate, device=u.device) if initial_state is None else initial_state.float()
        y = torch.empty(batch, dim, seqlen, dtype=u.dtype, device=u.device)
        states = torch.empty(min(chunk_len, seqlen), batch, dim, dstate, device=u.device)
        starts = []  # the state entering each chunk: all the backward needs besides the inputs
        for s in range(0, seqlen, chunk_len):
            e = min(seqlen, s + chunk_len)
            starts.append(h)
            uc = u[..., s:e].float()
            dt, _ = _dt(delta[..., s:e].float(), bias32, delta_softplus)
            hc = states[: e - s]
            _, h = _chunk_states(uc, dt, A32, _time_major_groups(B[..., s:e].float(), dim), h, hc)
            h = h.clone()  # hc is reused by the next chunk
            yc = (hc * _time_major_groups(C[..., s:e].float(), dim)).sum(-1).permute(1, 2, 0)  # (batch, dim, l)
            if D32 is not None:
                yc = yc + D32[:, None] * uc
            if z is not None:
                yc = yc * F.silu(z[..., s:e].float())
            y[..., s:e] = yc
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, torch.stack(starts))
        ctx.delta_softplus, ctx.chunk_len = delta_softplus, chunk_len
        return y, h

    @staticmethod
    def backward(ctx, dy, dfinal):
        u, delta, A, B, C, D, z, delta_bias, initial_state, starts = ctx.saved_tensors
        batch, dim, seqlen = u.shape
        groups, dstate = B.shape[1], A.shape[1]
        chunk_len = ctx.chunk_len
        A32, D32, bias32 = A.float(), _f32(D), _f32(delta_bias)
        dev = u.device

        du = torch.empty(batch, dim, seqlen, device=dev)
        ddelta = torch.empty(batch, dim, seqlen, device=dev)
        dB = torch.empty(batch, groups, dstate, seqlen, device=dev)
        dC = torch.empty(batch, groups, dstate, seqlen, device=dev)
        dz = None if z is None else torch.empty(batch, dim, seqlen, device=dev)
        dA = torch.zeros(dim, dstate, device=dev)
        dD = None if D is None else torch.zeros(dim, device=dev)
        # g: gradient of the loss with respect to the state h_t, walked backwards from the final state's.
        g = torch.zeros(batch, dim, dstate, device=dev) if dfinal is None else dfinal.float().clone()
        states = torch.empty(min(chunk_len, seqlen), batch, dim, dstate, device=dev)
        adjoint = torch.empty_like(states)

        for c in range(starts.shape[0] - 1, -1, -1):
            s = c * chunk_len
            e = min(seqlen, s + chunk_len)
            steps = e - s
            uc = u[..., s:e].float()
            dt, pre = _dt(delta[..., s:e].float(), bias32, ctx.delta_softplus)
            Bt = _time_major_groups(B[..., s:e].float(), dim)  # (l, batch, dim, N)
            Ct = _time_major_groups(C[..., s:e].float(), dim)
            hc = states[:steps]
            decay, _ = _chunk_states(uc, dt, A32, Bt, starts[c], hc)

            dyc = dy[..., s:e].float()  # gradient of the gated output
            if z is not None:
                zc = z[..., s:e].float()
                y_pre = (hc * Ct).sum(-1).permute(1, 2, 0)
                if D32 is not None:
                    y_pre = y_pre + D32[:, None] * uc
                sig = torch.sigmoid(zc)
                dz[..., s:e] = dyc * y_pre * sig * (1 + zc * (1 - sig))
                dyc = dyc * zc * sig  # gradient of the pre-gate output
            if D32 is not None:
                dD += (dyc * uc).sum((0, 2))
            dyt = dyc.permute(2, 0, 1).contiguous().unsqueeze(-1)  # (l, batch, dim, 1)
            dC[..., s:e] = _sum_groups(dyt * hc, groups)

            # Adjoint recurrence: g_t = dy_t C_t + decay_{t+1} g_{t+1}; g leaves as decay_0 g_0 = dL/dh_start.
            inject = dyt * Ct
            ga = adjoint[:steps]
            for t in range(steps - 1, -1, -1):
                g = torch.add(inject[t], g, out=ga[t])
                g = g * decay[t]

            h_prev = torch.cat([starts[c].unsqueeze(0), hc[:-1]])  # (l, batch, dim, N)
            g_log_decay = ga * h_prev * decay  # dL/d(dt_t * A) per (t, b, d, n)
            dt_t = dt.permute(2, 0, 1).contiguous().unsqueeze(-1)  # (l, batch, dim, 1)
            dA += (g_log_decay * dt_t).sum((0, 1))
            gB = (ga * Bt).sum(-1).permute(1, 2, 0)  # (batch, dim, l)
            ddt = (g_log_decay * A32).sum(-1).permute(1, 2, 0) + gB * uc
            dB[..., s:e] = _sum_groups(ga * (dt_t * uc.permute(2, 0, 1).unsqueeze(-1)), groups)
            du_c = gB * dt
            du[..., s:e] = du_c if D32 is None else du_c + D32[:, None] * dyc
            ddelta[..., s:e] = ddt * torch.sigmoid(pre) if ctx.delta_softplus else ddt

        dbias = None if delta_bias is None else ddelta.sum((0, 2))
        return (
            du.to(u.dtype),
            ddelta.to(delta.dtype),
            dA.to(A.dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            None if D is None else dD.to(D.dtype),
            None if z is None else dz.to(z.dtype),
            None if delta_bias is None else dbias.to(delta_bias.dtype),
            None if initial_state is None else g.to(initial_state.dtype),
            None,
            None,
        )


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    *,
    chunk_len: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan in fp32 PyTorch with memory linear in L (see the module docstring).

    Arguments as in ``selective_scan``; they are not validated here (``selective_scan`` does that).
    ``chunk_len`` (keyword only) overrides the steps per chunk.

    Shapes:
        u, delta, z: (batch, dim, L);  A: (dim, N);  B, C: (batch, groups, N, L);  D, delta_bias: (dim,)
        initial_state: (batch, dim, N).  Returns y (batch, dim, L) in u's dtype, and the final state
        (batch, dim, N) fp32 when ``return_final_state``.
    """
    batch, dim, seqlen = u.shape
    if chunk_len is None:
        chunk_len = default_chunk_len(batch, dim, A.shape[1], seqlen)
    y, final_state = _SelectiveScanRef.apply(
        u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, max(1, min(chunk_len, seqlen))
    )
    return (y, final_state) if return_final_state else y
