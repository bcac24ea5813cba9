"""Triton kernels of the selective scan (Mamba-1). Launch logic and shapes live in ``interface.py``.

Layout inside a program: the state is an (N, BLOCK_D) fp32 register tile, one channel per thread and all N
states of that channel in the thread, so sums over N (y, and most of the gradients) are in-thread arithmetic.
Time is walked sequentially; u, delta, z and the gradients are read and written in (T_TILE, BLOCK_D) tiles
whose time axis is in-thread, and the steps of a tile are unrolled, so picking step j of a tile is a register
move. Only dB and dC sum over channels, across threads: on a GPU a warp reduce-scatter in inline PTX
(_lane_sum_ptx), else tl.sum. The layout note below says how the code makes Triton keep to this layout.

The sequence is cut into chunks so that programs = batch x channel blocks x chunks can fill the GPU:
    forward:  1. _fwd_kernel(LOCAL)      each chunk from a zero state -> chunk-end state and sum of dt
              2. _chunk_combine_kernel   short sequential pass over chunks -> the state entering each chunk
              3. _fwd_kernel(OUTPUT)     each chunk from its true start -> y and the final state
    backward: 1. _bwd_forward_kernel     forward in time from the chunk start: dC, dz, dD, dA, beta, and the
                                         chunk's own contribution to its start state's gradient
              2. _chunk_combine_kernel(REVERSE) -> the state gradient leaving each chunk, d initial_state
              3. _bwd_reverse_kernel     backward in time from the chunk end: du, ddelta, dB, d delta_bias
The chunk boundary states saved by the forward are the only activations kept besides the inputs.

Why two backward passes and no stored states: d loss / d dt_t needs sum_n A g_t a_t h_{t-1}, the adjoint g
(computed backwards in time) paired with the state h (computed forwards). Writing p_t = g_t h_t per state,
    p_{t-1} = p_t - g_t x_t + c_{t-1} h_{t-1},    x_t = dt_t u_t B_t,  c_t = C_t dy_t (injected into g_t),
so S_t = sum_n A p_t obeys S_{t-1} = S_t - alpha_t + beta_{t-1} with alpha_t = sum_n A g_t x_t (adjoint-side)
and beta_t = sum_n A c_t h_t (state-side). Pass 1 writes beta per (t, channel), pass 3 carries S from the
known chunk-end value sum_n A g h and reads off sum_n A g_t a_t h_{t-1} = S_t - alpha_t. dA needs the pairing
per state but only summed over time, which pass 1 gets from the moment m_t = a_t (m_{t-1} + dt_t h_{t-1}):
dA = sum_t c_t m_t + (gradient leaving the chunk) m_end.
Pointer offsets are int64 throughout: batch * dim * L crosses 2^31 at 1M tokens.
"""

import triton
import triton.language as tl
from dna_mamba.kernels._ptx import ptx_lg2, ptx_rcp

LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)

# Layout. Each thread should hold whole channels: a channel's N states (so that the sums over N are in-thread
# arithmetic) and its T_TILE steps. Triton picks the register layout from the loads' address patterns: along
# the dimension it knows to be contiguous, vectorised as far as the known alignment allows. So
#  - channel offsets are written d + zero, with `zero` an unspecialised 0: the compiler knows consecutive
#    channels are adjacent (so lanes go along channels) but not how they are aligned (so no thread gets several
#    channels). Left unknown (d * stride), Triton 3.6 put 2 lanes on each channel's states, 8 states per thread,
#    and the sums over N shuffled (Triton 3.9 happened to pick the intended layout);
#  - a unit channel stride of the per-channel tensors (the model's channel-last layout) is never specialised
#    (do_not_specialize, and CHANNEL_LAST uses the d + zero form); a unit time stride is, so that a thread loads
#    its channel's steps as one vector.
_FWD_STRIDES = ["zero", "s_ud", "s_dd", "s_zd", "s_yd"]
_BWD_STRIDES = ["zero", "s_ud", "s_dd", "s_zd", "s_gd", "s_pd", "s_od", "s_qd", "s_yd"]


@triton.jit
def _chan(d, zero, stride, CHANNEL_LAST: tl.constexpr):
    """Channel offsets of a per-channel tensor (see the layout note above)."""
    if CHANNEL_LAST:
        return d + zero
    else:
        return d * stride


@triton.jit
def _softplus(x, FAST_MATH: tl.constexpr):
    """softplus(x) = log1p(exp(x)), accurate to a few fp32 ulps.

    FAST_MATH (a GPU): the hardware's approximate log2, whose absolute error (about 2^-22) would be a large
    relative error of a small log1p, so below e = 1/16 a 5-term series is used (truncation < e^5 / 6 < 2e-7
    relative). About 15 instructions; tl.log (a polynomial) and a division took about 35, paid per (step, channel)
    in each pass, about 1.4 instructions per (l, d, n) at N 16. Otherwise: log1p(e) = log(w) * e / (w - 1),
    w = 1 + e, exact where 1 + e rounds. Triton compiles `/` on fp32 to div.full.f32 (a reciprocal and a multiply,
    2 ulps), not an IEEE division, in both 3.6 and 3.9.
    """
    if FAST_MATH:
        e = tl.exp2(tl.minimum(x, 20.0) * LOG2E)
        series = e * (1.0 + e * (-0.5 + e * (0.3333333333333333 + e * (-0.25 + e * 0.2))))
        log1p = tl.where(e < 0.0625, series, ptx_lg2(1.0 + e) * LN2)
    else:
        e = tl.exp(tl.minimum(x, 20.0))
        w = 1.0 + e
        log1p = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _sigmoid(x, FAST_MATH: tl.constexpr):
    """FAST_MATH (a GPU): 1 / (1 + 2^(-x log2 e)) with the approximate exp2 and reciprocal, 4 instructions where
    tl.sigmoid takes 12 (exp with its denormal handling, div.full.f32 with its range checks)."""
    if FAST_MATH:
        return ptx_rcp(1.0 + tl.exp2(x * -LOG2E))
    else:
        return tl.sigmoid(x)


@triton.jit
def _row(tile, rows, j):
    """Row j (a constexpr) of a tile whose first axis (indices `rows`) is in-thread: the steps of a (T, BLOCK_D)
    tile or the states of an (N, BLOCK_D) one. A register pick; -0.0 when j is past the last row.

    The other rows are replaced by -0.0, not 0.0: x + (-0.0) == x for every x, so the compiler folds the sum
    away; x + 0.0 is not x when x is -0.0, and costs an add per pick.
    """
    return tl.sum(tl.where(rows[:, None] == j, tile, -0.0), axis=0)


def _lane_sum_ptx(k: int) -> str:
    """PTX that sums k values per thread (k a power of two, at most 32) over the 32 lanes of a warp, lane i
    ending with the sum of value i % k: a reduce-scatter.

    Each butterfly round pairs the values up; a lane keeps one of each pair and sends the other to its partner,
    so a round moves half the data of the one before: k - 1 shuffles for k values while more than one is left,
    then plain butterflies. tl.sum over the lanes shuffles every value 5 times; shuffles issue at a quarter of
    the rate of arithmetic, and the backward kernels' dB/dC sums were 10 of their 65 instructions per (l, d, n).
    """
    body = ["mov.u32 lane, %laneid;"]
    values = [f"${i + 1}" for i in range(k)]
    regs = 0
    for r in range(5):
        mask = 1 << r
        if len(values) > 1:
            # A lane whose bit r is set keeps the odd member of each pair: after all rounds, value index = lane % k.
            body += [f"and.b32 bit, lane, {mask};", "setp.ne.b32 odd, bit, 0;"]
            kept = []
            for lo, hi in zip(values[0::2], values[1::2], strict=True):
                send, keep, recv, total = (f"t{regs + i}" for i in range(4))
                regs += 4
                body += [
                    f"selp.f32 {send}, {lo}, {hi}, odd;",
                    f"selp.f32 {keep}, {hi}, {lo}, odd;",
                    f"shfl.sync.bfly.b32 {recv}, {send}, {mask}, 31, 0xffffffff;",
                    f"add.rn.f32 {total}, {keep}, {recv};",
                ]
                kept.append(total)
            values = kept
        else:
            recv, total = f"t{regs}", f"t{regs + 1}"
            regs += 2
            body += [f"shfl.sync.bfly.b32 {recv}, {values[0]}, {mask}, 31, 0xffffffff;",
                     f"add.rn.f32 {total}, {values[0]}, {recv};"]
            values = [total]
    body.append(f"mov.b32 $0, {values[0]};")
    head = ["{", ".reg .pred odd;", ".reg .b32 lane, bit;", f".reg .f32 t<{regs}>;"]
    return "\n".join(head + body + ["}"])


_LANE_SUM16 = tl.constexpr(_lane_sum_ptx(16))
_LANE_SUM16_ARGS = tl.constexpr("=f" + ",f" * 16)


@triton.jit
def _laneid(like):
    """The lane of each thread, shaped like the int tensor `like` (one element per thread)."""
    return tl.inline_asm_elementwise("mov.u32 $0, %laneid;", "=r,r", [like], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _store_channel_sums(ptrs, tile, n, lane, BLOCK_N: tl.constexpr, LANE_SUMS: tl.constexpr):
    """Store tile (BLOCK_N, BLOCK_D) summed over its channels at ptrs[n], in a fixed order (bit-reproducible).

    LANE_SUMS (a GPU, and one warp holding the block's 32 channels, one per lane): the reduce-scatter of
    _lane_sum_ptx, 16 rows at a time, lane i storing row i. Otherwise tl.sum.
    """
    if LANE_SUMS:
        for base in tl.static_range(0, BLOCK_N, 16):
            total = tl.inline_asm_elementwise(
                _LANE_SUM16, _LANE_SUM16_ARGS,
                [_row(tile, n, base + 0), _row(tile, n, base + 1), _row(tile, n, base + 2),
                 _row(tile, n, base + 3), _row(tile, n, base + 4), _row(tile, n, base + 5),
                 _row(tile, n, base + 6), _row(tile, n, base + 7), _row(tile, n, base + 8),
                 _row(tile, n, base + 9), _row(tile, n, base + 10), _row(tile, n, base + 11),
                 _row(tile, n, base + 12), _row(tile, n, base + 13), _row(tile, n, base + 14),
                 _row(tile, n, base + 15)],
                dtype=tl.float32, is_pure=True, pack=1,
            )
            tl.store(ptrs + base + lane, total, mask=(lane < 16) & (base + lane < BLOCK_N))
    else:
        tl.store(ptrs + n, tl.sum(tile, axis=1))


@triton.jit
def _put_row(tile, steps, j, row):
    """Tile with step j replaced by row (a register move, as in ``_row``)."""
    return tl.where(steps[:, None] == j, row[None, :], tile)


@triton.jit
def _prefetch(ptrs, mask):
    """Ask for these addresses to be brought into L1 now, for a tile that is used PREFETCH iterations later.

    Profiling (Nsight Compute, S0 forward) showed the time loops waiting on their global loads for 45-64% of the
    issue cycles: a tile's loads were issued at the top of the iteration that used them. A prefetch costs no
    registers, unlike loading the next tile into registers. GPU only: the interpreter has no inline assembly.
    The per-channel tiles are prefetched only in the channel-last layout (PREFETCH_IO), where a warp's prefetch
    touches one line per step; with time contiguous each lane would touch its own line, 32 L1 requests per
    instruction for lines that are mostly cached already (measured: N 16 forward 12 -> 32 ms).
    """
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L1 [$1]; mov.u32 $0, 0; }",
        "=r,l,r", [ptrs, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1,
    )


@triton.jit
def _prefetch_tile(row_ptrs, lane_step, t_next, s_l, t_lo, t_hi, d_mask):
    """Prefetch the (T_TILE, BLOCK_D) tile from step t_next with one address per thread.

    row_ptrs (BLOCK_D,) point at step lane_step of each channel, lane_step cycling through the tile's steps across
    the threads, so that the threads of a warp between them touch every 128-byte line of the tile, in either
    layout: along channels (channel-last) each warp's channels share one line per step; along time
    (contiguous) a channel's steps share one line.
    """
    t = t_next + lane_step
    _prefetch(row_ptrs + t_next * s_l, (t >= t_lo) & (t < t_hi) & d_mask)


@triton.jit
def _prefetch_bc(bc_ptr, bg, bc_len, t_next, t_lo, t_hi, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                 T_TILE: tl.constexpr):
    """Prefetch the packed B/C rows (2 * BLOCK_N fp32 per step) of batch-group bg for the T_TILE steps from
    t_next: thread i takes 128-byte line i % (lines in the tile)."""
    LINE: tl.constexpr = 32  # fp32 values per line
    N_LINES: tl.constexpr = (T_TILE * 2 * BLOCK_N + LINE - 1) // LINE
    line = tl.arange(0, BLOCK_D) % N_LINES
    t = t_next + (line * LINE) // (2 * BLOCK_N)
    row = bc_ptr + (bg * bc_len + t_next) * (2 * BLOCK_N)
    _prefetch(row + line * LINE, (t >= t_lo) & (t < t_hi))


@triton.jit
def _program_channels(pid, n_dblk, groups, dim_per_group, BLOCK_D: tl.constexpr):
    """(batch, group, channel block, channel indices, channel mask) of a program over batch x groups x blocks."""
    dblk = pid % n_dblk
    bg = pid // n_dblk
    g = bg % groups
    b = bg // groups
    d_local = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d_local < dim_per_group
    d = g * dim_per_group + d_local
    return b.to(tl.int64), g.to(tl.int64), dblk.to(tl.int64), d.to(tl.int64), d_mask


@triton.jit
def _load_dt(delta_ptrs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FAST_MATH: tl.constexpr):
    """dt tile (T, BLOCK_D) in fp32 and its pre-activation; masked steps get dt = 0 (an identity step)."""
    pre = tl.load(delta_ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        pre = pre + bias[None, :]
    dt = pre
    if SOFTPLUS:
        dt = _softplus(pre, FAST_MATH)
    return tl.where(mask, dt, 0.0), pre


@triton.jit
def _load_dyp(dy_ptrs, z_ptrs, mask, HAS_Z: tl.constexpr, FAST_MATH: tl.constexpr):
    """Upstream gradient of the pre-gate output, dy * silu(z), and the z tile and sigmoid(z) for dz."""
    dy = tl.load(dy_ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
        sig_z = _sigmoid(z, FAST_MATH)
        return dy * z * sig_z, dy, z, sig_z
    return dy, dy, dy, dy


@triton.jit(do_not_specialize=_FWD_STRIDES)
def _fwd_kernel(
    # pointers
    u_ptr, delta_ptr, z_ptr, y_ptr, A2T_ptr, D_ptr, bias_ptr, bc_ptr,
    states_ptr,  # (batch, chunks + 1, BLOCK_N, dim): read the state entering each chunk; write the final state
    hloc_ptr,  # (batch, chunks + 1, BLOCK_N, dim): chunk-end state from zero (LOCAL)
    dtsum_ptr,  # (batch, chunks + 1, dim): sum of dt over the chunk (LOCAL)
    final_ptr,  # (batch, dim, N) fp32: state after the last step (OUTPUT)
    # dims
    dim, dstate, seqlen, chunk_len, n_chunks, groups, dim_per_group, n_dblk, bc_len, zero,
    # strides
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_yb, s_yd, s_yl,
    # meta
    LOCAL: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T_TILE: tl.constexpr,
    PREFETCH: tl.constexpr, PREFETCH_IO: tl.constexpr, FAST_MATH: tl.constexpr,
    CHANNEL_LAST: tl.constexpr,
):
    b, g, dblk, d, d_mask = _program_channels(tl.program_id(0), n_dblk, groups, dim_per_group, BLOCK_D)
    c = tl.program_id(1).to(tl.int64)
    n = tl.arange(0, BLOCK_N)
    steps = tl.arange(0, T_TILE)
    nd_mask = d_mask[None, :]
    # A arrives scaled by log2(e) and transposed to (BLOCK_N, dim), zero past N: exp(dt A) = exp2(dt A2).
    dc = d + zero  # internal (N, dim) buffers: see the layout note
    A2 = tl.load(A2T_ptr + n[:, None] * dim + dc[None, :], mask=nd_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0) if HAS_BIAS else None
    Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0) if HAS_D else None

    state_off = (b * (n_chunks + 1) + c) * BLOCK_N * dim + n[:, None] * dim + dc[None, :]
    if LOCAL:
        h = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
        dtsum = tl.zeros((BLOCK_D,), tl.float32)
    else:
        h = tl.load(states_ptr + state_off, mask=nd_mask, other=0.0)

    t_start = c * chunk_len
    t_end = tl.minimum(t_start + chunk_len, seqlen)
    t = t_start + steps
    u_ptrs = u_ptr + b * s_ub + t[:, None] * s_ul + _chan(d, zero, s_ud, CHANNEL_LAST)[None, :]
    delta_ptrs = delta_ptr + b * s_db + t[:, None] * s_dl + _chan(d, zero, s_dd, CHANNEL_LAST)[None, :]
    z_ptrs = z_ptr + b * s_zb + t[:, None] * s_zl + _chan(d, zero, s_zd, CHANNEL_LAST)[None, :]
    y_ptrs = y_ptr + b * s_yb + t[:, None] * s_yl + _chan(d, zero, s_yd, CHANNEL_LAST)[None, :]
    # For the prefetch: one step of the tile per thread (see _prefetch_tile).
    lane_step = tl.arange(0, BLOCK_D) % T_TILE
    u_row = u_ptr + b * s_ub + lane_step * s_ul + _chan(d, zero, s_ud, CHANNEL_LAST)
    delta_row = delta_ptr + b * s_db + lane_step * s_dl + _chan(d, zero, s_dd, CHANNEL_LAST)
    z_row = z_ptr + b * s_zb + lane_step * s_zl + _chan(d, zero, s_zd, CHANNEL_LAST)
    # B and C arrive packed as (batch, groups, bc_len, 2, BLOCK_N) fp32, zero-padded past L and N.
    bc_ptrs = bc_ptr + ((b * groups + g) * bc_len + t_start) * (2 * BLOCK_N) + n

    for t0 in range(t_start, t_end, T_TILE):
        mask = ((t0 + steps) < t_end)[:, None] & d_mask[None, :]
        if PREFETCH:
            t_next = t0 + PREFETCH * T_TILE
            if PREFETCH_IO:
                _prefetch_tile(u_row, lane_step, t_next, s_ul, t_start, t_end, d_mask)
                _prefetch_tile(delta_row, lane_step, t_next, s_dl, t_start, t_end, d_mask)
                if HAS_Z and not LOCAL:
                    _prefetch_tile(z_row, lane_step, t_next, s_zl, t_start, t_end, d_mask)
            _prefetch_bc(bc_ptr, b * groups + g, bc_len, t_next, t_start, t_end, BLOCK_D, BLOCK_N, T_TILE)
        u = tl.load(u_ptrs, mask=mask, other=0.0).to(tl.float32)
        dt, _ = _load_dt(delta_ptrs, mask, bias, HAS_BIAS, SOFTPLUS, FAST_MATH)
        dtu = dt * u
        if LOCAL:
            dtsum += tl.sum(dt, axis=0)
        else:
            y = tl.zeros((T_TILE, BLOCK_D), tl.float32)
        for j in tl.static_range(T_TILE):
            Bj = tl.load(bc_ptrs + j * (2 * BLOCK_N))
            h = tl.exp2(A2 * _row(dt, steps, j)[None, :]) * h + Bj[:, None] * _row(dtu, steps, j)[None, :]
            if not LOCAL:
                Cj = tl.load(bc_ptrs + j * (2 * BLOCK_N) + BLOCK_N)
                y = _put_row(y, steps, j, tl.sum(h * Cj[:, None], axis=0))
        if not LOCAL:
            if HAS_D:
                y += Dv[None, :] * u
            if HAS_Z:
                z = tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
                y *= z * _sigmoid(z, FAST_MATH)
            tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)
        u_ptrs += T_TILE * s_ul
        delta_ptrs += T_TILE * s_dl
        z_ptrs += T_TILE * s_zl
        y_ptrs += T_TILE * s_yl
        bc_ptrs += T_TILE * (2 * BLOCK_N)

    if LOCAL:
        tl.store(hloc_ptr + state_off, h, mask=nd_mask)
        tl.store(dtsum_ptr + (b * (n_chunks + 1) + c) * dim + d, dtsum, mask=d_mask)
    elif c == n_chunks - 1:
        # The backward starts its reverse pass of the last chunk from this state.
        tl.store(states_ptr + state_off + BLOCK_N * dim, h, mask=nd_mask)
        final_off = b * dim * dstate + d[None, :] * dstate + n[:, None]
        tl.store(final_ptr + final_off, h, mask=nd_mask & (n < dstate)[:, None])


@triton.jit
def _chunk_combine_kernel(
    A2T_ptr, dtsum_ptr, loc_ptr, first_ptr, out_ptr, last_ptr,
    dim, n_chunks, dstate,
    s_fb, s_fd, s_fn,  # strides of first_ptr, (batch, dim, N)
    HAS_FIRST: tl.constexpr, REVERSE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PREFETCH: tl.constexpr,
):
    """Carry a state (or a state gradient, REVERSE) across chunks: x <- exp(A sum_dt) * x + loc.

    Forward: x starts as the initial state, out[c] is the state entering chunk c (the last chunk's update is
    skipped: its result is the final state, which the output pass produces). Reverse: x starts as the final
    state's gradient, out[c] is the gradient leaving chunk c, and last_ptr gets the initial state's gradient.
    """
    b = tl.program_id(0).to(tl.int64)
    d0 = tl.program_id(1).to(tl.int64) * BLOCK_D  # the block's first channel
    lane = tl.arange(0, BLOCK_D)
    d = d0 + lane
    n = tl.arange(0, BLOCK_N)
    # Internal buffers hold BLOCK_N rows, zero past dstate; the user's (batch, dim, N) tensors hold dstate.
    mask = (d < dim)[None, :]
    user_mask = mask & (n < dstate)[:, None]
    A2 = tl.load(A2T_ptr + n[:, None] * dim + d[None, :], mask=mask, other=0.0)
    if HAS_FIRST:
        x = tl.load(first_ptr + b * s_fb + d[None, :] * s_fd + n[:, None] * s_fn, mask=user_mask, other=0.0)
        x = x.to(tl.float32)
    else:
        x = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    n_updates = n_chunks if REVERSE else n_chunks - 1
    # The loop is a chain of dependent updates, one per chunk, so each iteration's loads are issued one iteration
    # ahead (masked off past the last update) to keep their latency off that chain.
    c = (n_chunks - 1) if REVERSE else 0
    row = b * (n_chunks + 1) + c
    # Masks built on d's vector: a scalar condition in a load mask is not accepted by the interpreter.
    more = (d < dim) & (d * 0 < n_updates)
    dtsum_next = tl.load(dtsum_ptr + row * dim + d, mask=more, other=0.0)
    loc_next = tl.load(loc_ptr + row * BLOCK_N * dim + n[:, None] * dim + d[None, :], mask=more[None, :], other=0.0)
    # The load one iteration ahead still waits on memory every iteration (about 0.6 us per chunk on an H100, most
    # of it latency): PREFETCH iterations ahead, one thread per 128-byte line asks for the chunk's rows to be
    # brought into L1, so that the load one ahead finds them there. GPU only (inline assembly).
    for i in range(n_chunks):
        c = (n_chunks - 1 - i) if REVERSE else i
        if PREFETCH:
            c_pre = (c - PREFETCH) if REVERSE else (c + PREFETCH)
            row_pre = b * (n_chunks + 1) + c_pre
            # Lanes 0 .. BLOCK_N - 1: the loc rows of states 0 .. BLOCK_N - 1; lane BLOCK_N: the dtsum row.
            pre_ptrs = tl.where(lane < BLOCK_N, loc_ptr + row_pre * BLOCK_N * dim + lane * dim + d0,
                                dtsum_ptr + row_pre * dim + d0)
            _prefetch(pre_ptrs, (lane <= BLOCK_N) & (i + PREFETCH < n_updates))
        off = (b * (n_chunks + 1) + c) * BLOCK_N * dim + n[:, None] * dim + d[None, :]
        tl.store(out_ptr + off, x, mask=mask)
        dtsum, loc = dtsum_next, loc_next
        c_next = (n_chunks - 2 - i) if REVERSE else i + 1
        row_next = b * (n_chunks + 1) + c_next
        more = (d < dim) & (d * 0 + i + 1 < n_updates)
        dtsum_next = tl.load(dtsum_ptr + row_next * dim + d, mask=more, other=0.0)
        loc_next = tl.load(loc_ptr + row_next * BLOCK_N * dim + n[:, None] * dim + d[None, :], mask=more[None, :],
                           other=0.0)
        if i < n_updates:
            x = tl.exp2(A2 * dtsum[None, :]) * x + loc
    if REVERSE:
        tl.store(last_ptr + b * dim * dstate + d[None, :] * dstate + n[:, None], x, mask=user_mask)


@triton.jit(do_not_specialize=_BWD_STRIDES)
def _bwd_forward_kernel(
    # pointers: inputs
    u_ptr, delta_ptr, z_ptr, dy_ptr, A2T_ptr, D_ptr, bias_ptr, bc_ptr,
    states_ptr,  # (batch, chunks + 1, BLOCK_N, dim): state entering each chunk (saved by the forward)
    # pointers: outputs
    dz_ptr,
    y_ptr,  # like u: the gated output y, recomputed on the way (STORE_Y), for a caller that needs it in its backward
    beta_ptr,  # like u, fp32: beta_t = sum_n A2 C_t h_t dyp_t, for the reverse pass
    dbc_ptr,  # (batch, groups, channel blocks per group, bc_len, 2, BLOCK_N): dB, dC summed over a block
    dA_ptr,  # (batch, chunks + 1, BLOCK_N, dim): sum_t c_t m_t
    mom_ptr,  # (batch, chunks + 1, BLOCK_N, dim): the moment m at the chunk end
    gloc_ptr,  # (batch, chunks + 1, BLOCK_N, dim): d loss / d (state entering the chunk) from inside the chunk
    dtsum_ptr,  # (batch, chunks + 1, dim): sum of dt over the chunk
    dD_ptr,  # (batch, chunks + 1, dim)
    # dims
    dim, seqlen, chunk_len, n_chunks, groups, dim_per_group, n_dblk, bc_len, zero,
    # strides of u, delta, z, dy, beta, dz, y
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_gb, s_gd, s_gl, s_pb, s_pd, s_pl, s_ob, s_od, s_ol,
    s_yb, s_yd, s_yl,
    # meta
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, STORE_Y: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T_TILE: tl.constexpr, PREFETCH: tl.constexpr,
    PREFETCH_IO: tl.constexpr, LANE_SUMS: tl.constexpr, FAST_MATH: tl.constexpr, CHANNEL_LAST: tl.constexpr,
):
    b, g, dblk, d, d_mask = _program_channels(tl.program_id(0), n_dblk, groups, dim_per_group, BLOCK_D)
    c = tl.program_id(1).to(tl.int64)
    n = tl.arange(0, BLOCK_N)
    steps = tl.arange(0, T_TILE)
    nd_mask = d_mask[None, :]
    lane = _laneid(d.to(tl.int32)) if LANE_SUMS else None
    dc = d + zero  # internal (N, dim) buffers: see the layout note
    A2 = tl.load(A2T_ptr + n[:, None] * dim + dc[None, :], mask=nd_mask, other=0.0)
    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0) if HAS_BIAS else None
    Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0) if HAS_D else None
    state_off = (b * (n_chunks + 1) + c) * BLOCK_N * dim + n[:, None] * dim + dc[None, :]
    h = tl.load(states_ptr + state_off, mask=nd_mask, other=0.0)
    mom = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dA = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    # The chunk's own contribution to the gradient of its start state, sum_t (prod_{r<=t} a_r) c_t, carried
    # forwards with the running decay product, so that no separate reverse pass is needed before the combine.
    decay = tl.full((BLOCK_N, BLOCK_D), 1.0, tl.float32)
    gloc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dtsum = tl.zeros((BLOCK_D,), tl.float32)
    dD = tl.zeros((BLOCK_D,), tl.float32)

    t_start = c * chunk_len
    t_end = tl.minimum(t_start + chunk_len, seqlen)
    t = t_start + steps
    u_ptrs = u_ptr + b * s_ub + t[:, None] * s_ul + _chan(d, zero, s_ud, CHANNEL_LAST)[None, :]
    delta_ptrs = delta_ptr + b * s_db + t[:, None] * s_dl + _chan(d, zero, s_dd, CHANNEL_LAST)[None, :]
    z_ptrs = z_ptr + b * s_zb + t[:, None] * s_zl + _chan(d, zero, s_zd, CHANNEL_LAST)[None, :]
    dy_ptrs = dy_ptr + b * s_gb + t[:, None] * s_gl + _chan(d, zero, s_gd, CHANNEL_LAST)[None, :]
    dz_ptrs = dz_ptr + b * s_ob + t[:, None] * s_ol + _chan(d, zero, s_od, CHANNEL_LAST)[None, :]
    y_ptrs = y_ptr + b * s_yb + t[:, None] * s_yl + _chan(d, zero, s_yd, CHANNEL_LAST)[None, :]
    beta_ptrs = beta_ptr + b * s_pb + t[:, None] * s_pl + _chan(d, zero, s_pd, CHANNEL_LAST)[None, :]
    bc_ptrs = bc_ptr + ((b * groups + g) * bc_len + t_start) * (2 * BLOCK_N) + n
    lane_step = tl.arange(0, BLOCK_D) % T_TILE  # for the prefetch (see _prefetch_tile)
    u_row = u_ptr + b * s_ub + lane_step * s_ul + _chan(d, zero, s_ud, CHANNEL_LAST)
    delta_row = delta_ptr + b * s_db + lane_step * s_dl + _chan(d, zero, s_dd, CHANNEL_LAST)
    z_row = z_ptr + b * s_zb + lane_step * s_zl + _chan(d, zero, s_zd, CHANNEL_LAST)
    dy_row = dy_ptr + b * s_gb + lane_step * s_gl + _chan(d, zero, s_gd, CHANNEL_LAST)
    dbc_row = dbc_ptr + (((b * groups + g) * n_dblk + dblk) * bc_len + t_start) * (2 * BLOCK_N)

    for t0 in range(t_start, t_end, T_TILE):
        mask = ((t0 + steps) < t_end)[:, None] & d_mask[None, :]
        if PREFETCH:
            t_next = t0 + PREFETCH * T_TILE
            if PREFETCH_IO:
                _prefetch_tile(u_row, lane_step, t_next, s_ul, t_start, t_end, d_mask)
                _prefetch_tile(delta_row, lane_step, t_next, s_dl, t_start, t_end, d_mask)
                _prefetch_tile(dy_row, lane_step, t_next, s_gl, t_start, t_end, d_mask)
                if HAS_Z:
                    _prefetch_tile(z_row, lane_step, t_next, s_zl, t_start, t_end, d_mask)
            _prefetch_bc(bc_ptr, b * groups + g, bc_len, t_next, t_start, t_end, BLOCK_D, BLOCK_N, T_TILE)
        u = tl.load(u_ptrs, mask=mask, other=0.0).to(tl.float32)
        dt, _ = _load_dt(delta_ptrs, mask, bias, HAS_BIAS, SOFTPLUS, FAST_MATH)
        dtsum += tl.sum(dt, axis=0)
        dtu = dt * u
        dyp, dy, z, sig_z = _load_dyp(dy_ptrs, z_ptrs, mask, HAS_Z, FAST_MATH)
        y_pre = tl.zeros((T_TILE, BLOCK_D), tl.float32)
        beta = tl.zeros((T_TILE, BLOCK_D), tl.float32)
        for j in tl.static_range(T_TILE):
            Bj = tl.load(bc_ptrs + j * (2 * BLOCK_N))
            Cj = tl.load(bc_ptrs + j * (2 * BLOCK_N) + BLOCK_N)
            dt_j = _row(dt, steps, j)[None, :]
            dyp_j = _row(dyp, steps, j)[None, :]
            a = tl.exp2(A2 * dt_j)
            mom = a * (mom + dt_j * h)  # h is still h_{t-1} here
            h = a * h + Bj[:, None] * _row(dtu, steps, j)[None, :]
            inject = Cj[:, None] * dyp_j  # c_t: what y_t feeds into the state gradient
            dA += inject * mom
            decay *= a
            gloc += decay * inject
            hC = h * Cj[:, None]
            if HAS_Z or STORE_Y:
                y_pre = _put_row(y_pre, steps, j, tl.sum(hC, axis=0))
            beta = _put_row(beta, steps, j, tl.sum(hC * A2, axis=0) * _row(dyp, steps, j))
            # dC of this step, summed over the block's channels.
            _store_channel_sums(dbc_row + j * (2 * BLOCK_N) + BLOCK_N, h * dyp_j, n, lane, BLOCK_N, LANE_SUMS)
        tl.store(beta_ptrs, beta, mask=mask)
        if HAS_D:
            dD += tl.sum(dyp * u, axis=0)
        if HAS_D and (HAS_Z or STORE_Y):
            y_pre += Dv[None, :] * u
        if HAS_Z:
            dz = dy * y_pre * sig_z * (1.0 + z * (1.0 - sig_z))
            tl.store(dz_ptrs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
        if STORE_Y:
            y_gated = y_pre * z * sig_z if HAS_Z else y_pre
            tl.store(y_ptrs, y_gated.to(y_ptr.dtype.element_ty), mask=mask)
        u_ptrs += T_TILE * s_ul
        delta_ptrs += T_TILE * s_dl
        z_ptrs += T_TILE * s_zl
        dy_ptrs += T_TILE * s_gl
        dz_ptrs += T_TILE * s_ol
        y_ptrs += T_TILE * s_yl
        beta_ptrs += T_TILE * s_pl
        bc_ptrs += T_TILE * (2 * BLOCK_N)
        dbc_row += T_TILE * (2 * BLOCK_N)

    tl.store(dA_ptr + state_off, dA, mask=nd_mask)
    tl.store(mom_ptr + state_off, mom, mask=nd_mask)
    tl.store(gloc_ptr + state_off, gloc, mask=nd_mask)
    tl.store(dtsum_ptr + (b * (n_chunks + 1) + c) * dim + d, dtsum, mask=d_mask)
    if HAS_D:
        tl.store(dD_ptr + (b * (n_chunks + 1) + c) * dim + d, dD, mask=d_mask)


@triton.jit(do_not_specialize=_BWD_STRIDES)
def _bwd_reverse_kernel(
    # pointers: inputs
    u_ptr, delta_ptr, z_ptr, dy_ptr, A2T_ptr, D_ptr, bias_ptr, bc_ptr,
    states_ptr,  # (batch, chunks + 1, BLOCK_N, dim): entry c + 1 is the state leaving chunk c
    carry_ptr,  # (batch, chunks + 1, BLOCK_N, dim): d loss / d (state leaving each chunk)
    beta_ptr,  # written by _bwd_forward_kernel
    # pointers: outputs
    du_ptr, ddelta_ptr,
    dbc_ptr,  # as in _bwd_forward_kernel; this pass writes dB
    dbias_ptr,  # (batch, chunks + 1, dim)
    # dims
    dim, seqlen, chunk_len, n_chunks, groups, dim_per_group, n_dblk, bc_len, zero,
    # strides of u, delta, z, dy, beta, du, ddelta
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_gb, s_gd, s_gl, s_pb, s_pd, s_pl, s_ob, s_od, s_ol,
    s_qb, s_qd, s_ql,
    # meta
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T_TILE: tl.constexpr, PREFETCH: tl.constexpr,
    PREFETCH_IO: tl.constexpr, LANE_SUMS: tl.constexpr, FAST_MATH: tl.constexpr, CHANNEL_LAST: tl.constexpr,
):
    b, g, dblk, d, d_mask = _program_channels(tl.program_id(0), n_dblk, groups, dim_per_group, BLOCK_D)
    c = tl.program_id(1).to(tl.int64)
    n = tl.arange(0, BLOCK_N)
    steps = tl.arange(0, T_TILE)
    nd_mask = d_mask[None, :]
    lane = _laneid(d.to(tl.int32)) if LANE_SUMS else None
    dc = d + zero  # internal (N, dim) buffers: see the layout note
    A2 = tl.load(A2T_ptr + n[:, None] * dim + dc[None, :], mask=nd_mask, other=0.0)
    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0) if HAS_BIAS else None
    Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0) if HAS_D else None
    state_off = (b * (n_chunks + 1) + c) * BLOCK_N * dim + n[:, None] * dim + dc[None, :]
    G = tl.load(carry_ptr + state_off, mask=nd_mask, other=0.0)  # the part of g_t that comes from after t
    h_end = tl.load(states_ptr + state_off + BLOCK_N * dim, mask=nd_mask, other=0.0)
    S_carry = tl.sum(A2 * G * h_end, axis=0)  # S_{t+1} - alpha_{t+1}, starting at the chunk end
    dbias = tl.zeros((BLOCK_D,), tl.float32)

    t_start = c * chunk_len
    t_end = tl.minimum(t_start + chunk_len, seqlen)
    n_tiles = tl.cdiv(t_end - t_start, T_TILE)
    t_last = t_start + (n_tiles - 1) * T_TILE
    t = t_last + steps
    u_ptrs = u_ptr + b * s_ub + t[:, None] * s_ul + _chan(d, zero, s_ud, CHANNEL_LAST)[None, :]
    delta_ptrs = delta_ptr + b * s_db + t[:, None] * s_dl + _chan(d, zero, s_dd, CHANNEL_LAST)[None, :]
    z_ptrs = z_ptr + b * s_zb + t[:, None] * s_zl + _chan(d, zero, s_zd, CHANNEL_LAST)[None, :]
    dy_ptrs = dy_ptr + b * s_gb + t[:, None] * s_gl + _chan(d, zero, s_gd, CHANNEL_LAST)[None, :]
    beta_ptrs = beta_ptr + b * s_pb + t[:, None] * s_pl + _chan(d, zero, s_pd, CHANNEL_LAST)[None, :]
    du_ptrs = du_ptr + b * s_ob + t[:, None] * s_ol + _chan(d, zero, s_od, CHANNEL_LAST)[None, :]
    ddelta_ptrs = ddelta_ptr + b * s_qb + t[:, None] * s_ql + _chan(d, zero, s_qd, CHANNEL_LAST)[None, :]
    bc_ptrs = bc_ptr + ((b * groups + g) * bc_len + t_last) * (2 * BLOCK_N) + n
    lane_step = tl.arange(0, BLOCK_D) % T_TILE  # for the prefetch (see _prefetch_tile)
    u_row = u_ptr + b * s_ub + lane_step * s_ul + _chan(d, zero, s_ud, CHANNEL_LAST)
    delta_row = delta_ptr + b * s_db + lane_step * s_dl + _chan(d, zero, s_dd, CHANNEL_LAST)
    z_row = z_ptr + b * s_zb + lane_step * s_zl + _chan(d, zero, s_zd, CHANNEL_LAST)
    dy_row = dy_ptr + b * s_gb + lane_step * s_gl + _chan(d, zero, s_gd, CHANNEL_LAST)
    beta_row = beta_ptr + b * s_pb + lane_step * s_pl + _chan(d, zero, s_pd, CHANNEL_LAST)
    dbc_row = dbc_ptr + (((b * groups + g) * n_dblk + dblk) * bc_len + t_last) * (2 * BLOCK_N)

    for i in range(n_tiles):
        t0 = t_last - i * T_TILE
        mask = ((t0 + steps) < t_end)[:, None] & d_mask[None, :]
        if PREFETCH:
            t_prev = t0 - PREFETCH * T_TILE
            if PREFETCH_IO:
                _prefetch_tile(u_row, lane_step, t_prev, s_ul, t_start, t_end, d_mask)
                _prefetch_tile(delta_row, lane_step, t_prev, s_dl, t_start, t_end, d_mask)
                _prefetch_tile(dy_row, lane_step, t_prev, s_gl, t_start, t_end, d_mask)
                _prefetch_tile(beta_row, lane_step, t_prev, s_pl, t_start, t_end, d_mask)
                if HAS_Z:
                    _prefetch_tile(z_row, lane_step, t_prev, s_zl, t_start, t_end, d_mask)
            _prefetch_bc(bc_ptr, b * groups + g, bc_len, t_prev, t_start, t_end, BLOCK_D, BLOCK_N, T_TILE)
        u = tl.load(u_ptrs, mask=mask, other=0.0).to(tl.float32)
        dt, pre = _load_dt(delta_ptrs, mask, bias, HAS_BIAS, SOFTPLUS, FAST_MATH)
        dtu = dt * u
        dyp, _, _, _ = _load_dyp(dy_ptrs, z_ptrs, mask, HAS_Z, FAST_MATH)
        beta = tl.load(beta_ptrs, mask=mask, other=0.0)
        sgB = tl.zeros((T_TILE, BLOCK_D), tl.float32)
        dlog = tl.zeros((T_TILE, BLOCK_D), tl.float32)  # sum_n A2 g_t a_t h_{t-1}
        for jj in tl.static_range(T_TILE):
            j = T_TILE - 1 - jj
            Bj = tl.load(bc_ptrs + j * (2 * BLOCK_N))
            Cj = tl.load(bc_ptrs + j * (2 * BLOCK_N) + BLOCK_N)
            dt_j = _row(dt, steps, j)[None, :]
            dtu_j = _row(dtu, steps, j)
            gj = G + Cj[:, None] * _row(dyp, steps, j)[None, :]  # d loss / d h_t
            gB = gj * Bj[:, None]
            sgB = _put_row(sgB, steps, j, tl.sum(gB, axis=0))
            alpha = tl.sum(gB * A2, axis=0) * dtu_j
            S = S_carry + _row(beta, steps, j)
            dlog = _put_row(dlog, steps, j, S - alpha)
            S_carry = S - alpha
            # dB of this step, summed over the block's channels.
            _store_channel_sums(dbc_row + j * (2 * BLOCK_N), gj * dtu_j[None, :], n, lane, BLOCK_N, LANE_SUMS)
            G = tl.exp2(A2 * dt_j) * gj  # d loss / d h_{t-1}, through step t
        du = dt * sgB
        if HAS_D:
            du += Dv[None, :] * dyp
        tl.store(du_ptrs, du.to(du_ptr.dtype.element_ty), mask=mask)
        ddt = u * sgB + LN2 * dlog
        if SOFTPLUS:
            ddt = ddt * _sigmoid(pre, FAST_MATH)
        ddt = tl.where(mask, ddt, 0.0)
        if HAS_BIAS:
            dbias += tl.sum(ddt, axis=0)
        tl.store(ddelta_ptrs, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)
        u_ptrs -= T_TILE * s_ul
        delta_ptrs -= T_TILE * s_dl
        z_ptrs -= T_TILE * s_zl
        dy_ptrs -= T_TILE * s_gl
        beta_ptrs -= T_TILE * s_pl
        du_ptrs -= T_TILE * s_ol
        ddelta_ptrs -= T_TILE * s_ql
        bc_ptrs -= T_TILE * (2 * BLOCK_N)
        dbc_row -= T_TILE * (2 * BLOCK_N)

    if HAS_BIAS:
        tl.store(dbias_ptr + (b * (n_chunks + 1) + c) * dim + d, dbias, mask=d_mask)
