"""Pure-PyTorch selective scan (Mamba-1): the CPU path and the oracle for the Triton kernels.

Memory is linear in L at any length, and the backward is written by hand rather than left to autograd:

- The forward walks the sequence in chunks of T steps and keeps only the state entering each chunk (and nothing
  when no input needs a gradient). Within a chunk it is a plain recurrence, h_t = exp(dt_t A) * h_{t-1} +
  dt_t B_t u_t: one in-place ``addcmul_`` per step over a contiguous (batch, dim, N) slice. On a CPU this
  sequential form moves the fewest bytes, and it never forms exp(-cumsum(dt A)), which overflows for
  fast-decaying channels.
- The backward walks the chunks in reverse, recomputes a chunk's states from its stored start state, runs the
  adjoint recurrence g_t = dy_t C_t + exp(dt_{t+1} A) g_{t+1} (one ``add_`` and one ``mul`` per step), and reads
  every input gradient off g and the states with whole-chunk tensor ops. The gradient of the state entering a
  chunk is carried into the previous chunk, starting from the final-state gradient, so a sequence split into
  segments with carried states backpropagates exactly.

Work tensors are time-major, (T, batch, groups, dim / groups, N), so each step touches one contiguous block, and
B and C stay (T, batch, groups, 1, N) broadcasts rather than per-channel copies. Sums over the states (y, the
gradient through B) and over a group's channels (dB, dC) are batched matrix products, which form no temporary of
the work tensors' size. T is chosen from an element budget, so peak memory is a few such tensors whatever L is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Elements of one (T, batch, dim, N) fp32 work tensor (2 MiB): small enough that the passes the backward makes over
# a chunk stay in cache, large enough that per-chunk Python overhead is noise.
_CHUNK_ELEMENTS = 1 << 19
# ...but at least this many steps: with wide batches (embedding or scoring many windows at once) the budget alone
# gave 1-2 steps per chunk, where per-chunk overhead dominated and the saved chunk-start states approached the
# size of all the states.
_MIN_CHUNK_STEPS = 8


def default_chunk_len(batch: int, dim: int, dstate: int, seqlen: int) -> int:
    """Steps per chunk: as many as the element budget allows, at least ``_MIN_CHUNK_STEPS``, at most ``seqlen``."""
    budget = _CHUNK_ELEMENTS // max(1, batch * dim * dstate)
    return max(1, min(seqlen, max(_MIN_CHUNK_STEPS, budget)))


def _time_major(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(batch, dim, l) -> (l, batch, groups, dim // groups, 1) fp32, contiguous.

    Contiguous first: elementwise results follow their inputs' layout, and each step of a work tensor must be
    one contiguous block."""
    steps = t.shape[-1]
    return t.float().permute(2, 0, 1).contiguous().view(steps, t.shape[0], groups, -1, 1)


def _time_major_rows(t: torch.Tensor) -> torch.Tensor:
    """B or C (batch, groups, N, l) -> (l, batch, groups, 1, N) fp32, contiguous: one row per group, broadcast
    over its channels."""
    return t.float().permute(3, 0, 1, 2).contiguous().unsqueeze(3)


def _channel_major(t: torch.Tensor) -> torch.Tensor:
    """(l, batch, groups, dim // groups, 1) -> (batch, dim, l) (a view)."""
    steps, batch = t.shape[:2]
    return t.view(steps, batch, -1).permute(1, 2, 0)


def _group_rows(t: torch.Tensor) -> torch.Tensor:
    """(l, batch, groups, 1, N) -> (batch, groups, N, l) (a view)."""
    return t.squeeze(3).permute(1, 2, 3, 0)


def _dt(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """dt and the pre-activation it came from, both (batch, dim, l) fp32."""
    pre = delta if delta_bias is None else delta + delta_bias[:, None]
    return (F.softplus(pre) if softplus else pre), pre


class _Buffers:
    """Work tensors of one chunk's shape, (T, batch, groups, dpg, N) fp32, allocated once per call and sliced to
    each chunk's length. Fresh multi-MiB allocations cost more than the arithmetic on a CPU (the allocator hands
    large blocks back to the OS, so each new one page-faults): 8 MiB took 1-2 ms to allocate and 0.3 ms to fill."""

    def __init__(self, count: int, shape: tuple[int, ...], device: torch.device):
        self._all = [torch.empty(shape, device=device) for _ in range(count)]

    def take(self, steps: int) -> list[torch.Tensor]:
        return [t[:steps] for t in self._all]


def _chunk_states(dt, dtu, A, Bt, h, decay, states):
    """Run the recurrence over one chunk, filling ``decay`` with exp(dt_t A) and ``states`` with h_t.

    Shapes: dt, dtu (= dt * u): (l, batch, groups, dpg, 1);  A: (groups, dpg, N);  Bt: (l, batch, groups, 1, N);
    h: (batch, groups, dpg, N), the state entering the chunk (left unchanged);  decay, states: (l, batch, groups,
    dpg, N).
    """
    torch.mul(dt, A, out=decay).exp_()
    torch.mul(dtu, Bt, out=states)  # x_t = dt_t u_t B_t, overwritten step by step with h_t = x_t + a_t h_{t-1}
    for x_t, a_t in zip(states.unbind(0), decay.unbind(0), strict=True):
        h = x_t.addcmul_(a_t, h)


def _like_layout(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An empty (batch, dim, l) tensor laid out as t: channel-last (time-major chunks copy into it row by row, and
    the model's next GEMM reads rows) unless t is time-contiguous."""
    batch, dim, steps = t.shape
    if t.stride(-1) == 1:
        return torch.empty(batch, dim, steps, dtype=dtype, device=t.device)
    return torch.empty(batch, steps, dim, dtype=dtype, device=t.device).transpose(1, 2)


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


class _SelectiveScanRef(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk_len):
        batch, dim, seqlen = u.shape
        groups, dstate = B.shape[1], A.shape[1]
        A32, D32, bias32 = A.float().reshape(groups, -1, dstate), _f32(D), _f32(delta_bias)
        if initial_state is None:
            h = torch.zeros(batch, groups, dim // groups, dstate, device=u.device)
        else:
            h = initial_state.float().reshape(batch, groups, -1, dstate)
        y = _like_layout(u, u.dtype)
        keep_starts = any(ctx.needs_input_grad)
        starts = []  # the state entering each chunk: all the backward needs besides the inputs
        buffers = _Buffers(2, (min(chunk_len, seqlen), *h.shape), u.device)
        for s in range(0, seqlen, chunk_len):
            e = min(seqlen, s + chunk_len)
            if keep_starts:
                starts.append(h)
            uc = u[..., s:e].float()
            dt, _ = _dt(delta[..., s:e].float(), bias32, delta_softplus)
            decay, states = buffers.take(e - s)
            _chunk_states(_time_major(dt, groups), _time_major(dt * uc, groups), A32, _time_major_rows(B[..., s:e]),
                          h, decay, states)
            h = states[-1].clone()  # the buffers are the next chunk's
            yc = _channel_major(torch.matmul(states, _time_major_rows(C[..., s:e]).transpose(-1, -2)))
            if D32 is not None:
                yc = yc + D32[:, None] * uc
            if z is not None:
                yc = yc * F.silu(z[..., s:e].float())
            y[..., s:e] = yc
        if keep_starts:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, torch.stack(starts))
            ctx.delta_softplus, ctx.chunk_len = delta_softplus, chunk_len
        return y, h.view(batch, dim, dstate)

    @staticmethod
    def backward(ctx, dy, dfinal):
        u, delta, A, B, C, D, z, delta_bias, initial_state, starts = ctx.saved_tensors
        batch, dim, seqlen = u.shape
        groups, dstate = B.shape[1], A.shape[1]
        chunk_len = ctx.chunk_len
        A32, D32, bias32 = A.float().reshape(groups, -1, dstate), _f32(D), _f32(delta_bias)
        dev = u.device

        du, ddelta = _like_layout(u, torch.float32), _like_layout(delta, torch.float32)
        dB = torch.empty(batch, groups, dstate, seqlen, device=dev)
        dC = torch.empty(batch, groups, dstate, seqlen, device=dev)
        dz = None if z is None else _like_layout(z, torch.float32)
        dA = torch.zeros_like(A32)
        dD = None if D is None else torch.zeros(dim, device=dev)
        # g: gradient of the loss with respect to the state h_t, walked backwards from the final state's.
        g = starts.new_zeros(starts.shape[1:]) if dfinal is None else dfinal.float().reshape(starts.shape[1:]).clone()
        buffers = _Buffers(3, (min(chunk_len, seqlen), *starts.shape[1:]), dev)

        for c in range(starts.shape[0] - 1, -1, -1):
            s = c * chunk_len
            e = min(seqlen, s + chunk_len)
            uc = u[..., s:e].float()
            dt, pre = _dt(delta[..., s:e].float(), bias32, ctx.delta_softplus)
            dt_t, dtu_t = _time_major(dt, groups), _time_major(dt * uc, groups)  # (l, batch, groups, dpg, 1)
            Bt, Ct = _time_major_rows(B[..., s:e]), _time_major_rows(C[..., s:e])  # (l, batch, groups, 1, N)
            decay, states, ga = buffers.take(e - s)
            _chunk_states(dt_t, dtu_t, A32, Bt, starts[c], decay, states)

            dyc = dy[..., s:e].float()  # gradient of the gated output
            if z is not None:
                zc = z[..., s:e].float()
                y_pre = _channel_major(torch.matmul(states, Ct.transpose(-1, -2)))
                if D32 is not None:
                    y_pre = y_pre + D32[:, None] * uc
                sig = torch.sigmoid(zc)
                dz[..., s:e] = dyc * y_pre * sig * (1 + zc * (1 - sig))
                dyc = dyc * zc * sig  # gradient of the pre-gate output
            if D32 is not None:
                dD += (dyc * uc).sum((0, 2))
            dyt = _time_major(dyc, groups)  # (l, batch, groups, dpg, 1)
            dC[..., s:e] = _group_rows(torch.matmul(dyt.transpose(-1, -2), states))

            # Adjoint recurrence: ga_t = dy_t C_t + decay_t+1 g_t+1. g leaves the chunk as decay_0 ga_0 = dL/dh_start.
            torch.mul(dyt, Ct, out=ga)
            for ga_t, a_t in zip(reversed(ga.unbind(0)), reversed(decay.unbind(0)), strict=True):
                torch.mul(ga_t.add_(g), a_t, out=g)

            # dL/d(dt_t * A) per (t, batch, channel, n): ga_t * h_{t-1} * decay_t, written over the decays; the
            # states' buffer then holds its products with A and with dt in turn.
            g_log_decay = decay
            g_log_decay[1:].mul_(ga[1:]).mul_(states[:-1])
            g_log_decay[0].mul_(ga[0]).mul_(starts[c])
            ddt = _channel_major(torch.mul(g_log_decay, A32, out=states).sum(-1, keepdim=True))
            dA += torch.mul(g_log_decay, dt_t, out=states).sum((0, 1))
            gB = _channel_major(torch.matmul(ga, Bt.transpose(-1, -2)))  # sum_n g B: (batch, dim, l)
            ddt = ddt + gB * uc
            dB[..., s:e] = _group_rows(torch.matmul(dtu_t.transpose(-1, -2), ga))
            du_c = gB * dt
            du[..., s:e] = du_c if D32 is None else du_c + D32[:, None] * dyc
            ddelta[..., s:e] = ddt * torch.sigmoid(pre) if ctx.delta_softplus else ddt

        dbias = None if delta_bias is None else ddelta.sum((0, 2))
        return (
            du.to(u.dtype),
            ddelta.to(delta.dtype),
            dA.view(dim, dstate).to(A.dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            None if D is None else dD.to(D.dtype),
            None if z is None else dz.to(z.dtype),
            None if delta_bias is None else dbias.to(delta_bias.dtype),
            None if initial_state is None else g.view(batch, dim, dstate).to(initial_state.dtype),
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
