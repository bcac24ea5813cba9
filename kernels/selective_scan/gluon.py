"""The selective scan's forward in one pass over the sequence, written in Gluon (GPU only).

Why a second forward: the Triton forward (``triton.py``) keeps one channel per thread, with all N states of
the channel in the thread. At batch x dim = 1,536 channels that is only 48 warps, so it cuts the sequence into
chunks and pays for two passes over each chunk: a chunk-local pass from a zero state, then the output pass,
each computing exp(dt A) again. The exponentials alone of two passes take about 15 ms at S0 on an H100
(benchmarks/RESULTS.md, "Where the scan stands").

Here each lane of a warp holds one (channel, state) pair, so the same 1,536 channels fill 768 warps and one
pass over the whole sequence keeps the GPU busy: every (l, d, n) is computed once. The price is that
per-channel values (dt, dt u) and per-state values (B, C) are shared between lanes, and y sums over states,
i.e. across lanes. Triton picks register layouts itself, so this layout needs Gluon's explicit ones.

A program owns BLOCK_D channels (TPW_D per warp) and walks the sequence in tiles of T_TILE steps:
  1. the tile's u, delta and z are read in IO_LAYOUT, (T_TILE, BLOCK_D) with channels along lanes (the
     model's channel-last layout makes each step's channels one contiguous row); dt = softplus(delta + bias)
     and dt u are computed once per (step, channel) and put in shared memory, with the tile's B/C rows;
  2. the steps are unrolled: each lane reads its channel's dt, dt u and its state's B, C (broadcast reads of
     shared memory), updates its state, and writes h C to shared memory;
  3. the tile's h C is read back with a thread holding all N states of one (step, channel) (IO_LAYOUT is
     that layout with the states summed away), summed in-thread, and the D skip and z gate applied.
Gluon kernels do not run in the interpreter, so this path is tested in the GPU tier only; ``triton.py``
computes the same thing and is what CI checks.

Measured (H100, Triton 3.6): slower than the chunked forward at every shape, S0 43.3 ms against 23.7, so the
interface runs it only when asked (_TUNING["lanes"] = 1). With one warp per scheduler the warp waits about 3
cycles per instruction on its own dependencies (ncu); benchmarks/RESULTS.md has the numbers.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

# The CTA barrier: thread_barrier in Triton 3.6, barrier in 3.9.
_barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier

LN2 = gl.constexpr(0.6931471805599453)
LOG2E = gl.constexpr(1.4426950408889634)


@gluon.jit
def _lg2(x):
    return gl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=gl.float32, is_pure=True,
                                     pack=1)


@gluon.jit
def _rcp(x):
    return gl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=gl.float32, is_pure=True,
                                     pack=1)


@gluon.jit
def _softplus(x):
    """log1p(exp(x)) as in triton._softplus (FAST_MATH): a series below e = 1/16, the approximate lg2 above."""
    e = gl.exp2(gl.minimum(x, 20.0) * LOG2E)
    series = e * (1.0 + e * (-0.5 + e * (0.3333333333333333 + e * (-0.25 + e * 0.2))))
    log1p = gl.where(e < 0.0625, series, _lg2(1.0 + e) * LN2)
    return gl.where(x > 20.0, x, log1p)


@gluon.jit
def _load_tile(u_ptrs, delta_ptrs, z_ptrs, bc_ptrs, t0, t_end, steps, bc_t, dmask_io, s_ul, s_dl, s_zl,
               HAS_Z: gl.constexpr, BLOCK_N: gl.constexpr):
    """The raw u, delta, z (T_TILE, BLOCK_D) and B/C (T_TILE, 2, BLOCK_N) of the tile from step t0; zero past t_end."""
    mask = gl.expand_dims((t0 + steps) < t_end, 1) & dmask_io
    u = gl.load(u_ptrs + t0 * s_ul, mask=mask, other=0.0)
    pre = gl.load(delta_ptrs + t0 * s_dl, mask=mask, other=0.0)
    z = u
    if HAS_Z:
        z = gl.load(z_ptrs + t0 * s_zl, mask=mask, other=0.0)
    bc = gl.load(bc_ptrs + t0 * (2 * BLOCK_N), mask=(t0 + bc_t) < t_end, other=0.0)
    return u, pre, z, bc


@gluon.jit
def _stage_tile(u, pre, bc, mask, bias, dt_smem, dtu_smem, bc_smem, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
                T_TILE: gl.constexpr, BLOCK_N: gl.constexpr):
    """dt, dt u and the B/C rows of a tile into shared memory, where the steps read them."""
    pre = pre.to(gl.float32)
    if HAS_BIAS:
        pre = pre + bias
    dt = pre
    if SOFTPLUS:
        dt = _softplus(pre)
    dt = gl.where(mask, dt, 0.0)  # a step past the end is an identity step
    dt_smem.permute([1, 0]).store(dt)
    dtu_smem.permute([1, 0]).store(dt * u.to(gl.float32))
    bc_smem.store(gl.reshape(bc, [2 * T_TILE, BLOCK_N]))


@gluon.jit
def _store_y(p_smem, u, z, mask, Dv, y_ptrs, R_LAYOUT: gl.constexpr, HAS_D: gl.constexpr, HAS_Z: gl.constexpr):
    """y of a tile: its h C summed over states, plus the D skip, times silu(z)."""
    y = gl.sum(p_smem.load(R_LAYOUT), axis=2)  # (T_TILE, BLOCK_D) in IO_LAYOUT
    if HAS_D:
        y = y + Dv * u.to(gl.float32)
    if HAS_Z:
        zf = z.to(gl.float32)
        y = y * zf * _rcp(1.0 + gl.exp2(zf * -LOG2E))
    gl.store(y_ptrs, y.to(y_ptrs.dtype.element_ty), mask=mask)


# The steps of a tile, unrolled, in two phases. One warp per scheduler is all the GPU has room for at S0, so the
# warp's own instructions must hide each other's latency: first exp(dt A) and dt u B of every step of the tile
# (independent of each other, so the MUFU and shared-memory latencies overlap), then the recurrence, whose chain
# is one multiply and one FMA per step. Written step by step (load, exp, update), the compiled loop waited
# about 3.8 cycles per instruction (ncu). The per-step values are joined into (BLOCK_D, BLOCK_N, 2, ..., 2)
# tensors (registers), the last axis the highest bit of the step, and split again in the same order. Each
# step's h C stays in registers too and is written to shared memory by one store after the tile: stored step
# by step into slices of one buffer, Triton 3.6 put a CTA barrier before every step's store (its barrier
# analysis does not tell the slices apart).
@gluon.jit
def _decay_and_input(A2, dt_smem, dtu_smem, bc_smem, j: gl.constexpr, COUNT: gl.constexpr, S_LAYOUT: gl.constexpr):
    """exp(dt A) and dt u B of steps j .. j + COUNT - 1 (COUNT a power of two), joined."""
    if COUNT == 1:
        dt_j = dt_smem.slice(j, 1, dim=1).load(S_LAYOUT)  # (BLOCK_D, 1)
        dtu_j = dtu_smem.slice(j, 1, dim=1).load(S_LAYOUT)
        b_j = bc_smem.slice(2 * j, 1).load(S_LAYOUT)  # (1, BLOCK_N)
        return gl.exp2(dt_j * A2), dtu_j * b_j
    else:
        a_lo, x_lo = _decay_and_input(A2, dt_smem, dtu_smem, bc_smem, j, COUNT // 2, S_LAYOUT)
        a_hi, x_hi = _decay_and_input(A2, dt_smem, dtu_smem, bc_smem, j + COUNT // 2, COUNT // 2, S_LAYOUT)
        return gl.join(a_lo, a_hi), gl.join(x_lo, x_hi)


@gluon.jit
def _recurrence(h, a, x, bc_smem, j: gl.constexpr, COUNT: gl.constexpr, S_LAYOUT: gl.constexpr, SPN: gl.constexpr):
    """h_t = a_t h_{t-1} + x_t over steps j .. j + COUNT - 1: the last state and every step's h C, joined."""
    if COUNT == 1:
        # split's layout is join's inverse: the same registers as S_LAYOUT, which the checks want spelled out
        a = gl.convert_layout(a, S_LAYOUT, assert_trivial=True)
        x = gl.convert_layout(x, S_LAYOUT, assert_trivial=True)
        h = a * h + x
        hc = h * bc_smem.slice(2 * j + 1, 1).load(S_LAYOUT)
        if SPN > 1:  # a lane's states summed first: SPN times fewer values to store and sum over lanes
            hc = gl.sum(gl.reshape(hc, [hc.shape[0], hc.shape[1] // SPN, SPN]), axis=2)
        return h, hc
    else:
        a_lo, a_hi = gl.split(a)
        x_lo, x_hi = gl.split(x)
        h, lo = _recurrence(h, a_lo, x_lo, bc_smem, j, COUNT // 2, S_LAYOUT, SPN)
        h, hi = _recurrence(h, a_hi, x_hi, bc_smem, j + COUNT // 2, COUNT // 2, S_LAYOUT, SPN)
        return h, gl.join(lo, hi)


@gluon.jit
def _steps_interleaved(h, A2, dt_smem, dtu_smem, bc_smem, j: gl.constexpr, COUNT: gl.constexpr,
                       S_LAYOUT: gl.constexpr, SPN: gl.constexpr):
    """The same as _tile_steps, step by step."""
    if COUNT == 1:
        a, x = _decay_and_input(A2, dt_smem, dtu_smem, bc_smem, j, 1, S_LAYOUT)
        return _recurrence(h, a, x, bc_smem, j, 1, S_LAYOUT, SPN)
    else:
        h, lo = _steps_interleaved(h, A2, dt_smem, dtu_smem, bc_smem, j, COUNT // 2, S_LAYOUT, SPN)
        h, hi = _steps_interleaved(h, A2, dt_smem, dtu_smem, bc_smem, j + COUNT // 2, COUNT // 2, S_LAYOUT, SPN)
        return h, gl.join(lo, hi)


@gluon.jit
def _tile_steps(h, A2, dt_smem, dtu_smem, bc_smem, T_TILE: gl.constexpr, S_LAYOUT: gl.constexpr, SPN: gl.constexpr,
                PHASES: gl.constexpr):
    """The state after the tile's steps and their h C, joined as (BLOCK_D, BLOCK_N // SPN, 2, ..., 2)."""
    if PHASES == 2:
        a, x = _decay_and_input(A2, dt_smem, dtu_smem, bc_smem, 0, T_TILE, S_LAYOUT)
        return _recurrence(h, a, x, bc_smem, 0, T_TILE, S_LAYOUT, SPN)
    else:
        return _steps_interleaved(h, A2, dt_smem, dtu_smem, bc_smem, 0, T_TILE, S_LAYOUT, SPN)


@gluon.jit
def _steps_first(p, T_TILE: gl.constexpr):
    """(BLOCK_D, BLOCK_N, 2, ..., 2) from _tile_steps as (T_TILE, BLOCK_D, BLOCK_N)."""
    if T_TILE == 8:
        p = gl.permute(p, [4, 3, 2, 0, 1])
    elif T_TILE == 16:
        p = gl.permute(p, [5, 4, 3, 2, 0, 1])
    else:
        gl.static_assert(T_TILE == 32, "T_TILE must be 8, 16 or 32")
        p = gl.permute(p, [6, 5, 4, 3, 2, 0, 1])
    return gl.reshape(p, [T_TILE, p.shape[-2], p.shape[-1]])


@gluon.jit
def _fwd_lanes_kernel(
    u_ptr, delta_ptr, z_ptr, y_ptr, A2T_ptr, D_ptr, bias_ptr, bc_ptr,
    init_ptr,  # (batch, dim, N) fp32 initial state (HAS_INIT)
    states_ptr,  # (batch, n_chunks + 1, BLOCK_N, dim): the state entering each chunk, read (READ_STATES) / written
    final_ptr,  # (batch, dim, N) fp32
    dim, dstate, seqlen, chunk_len, n_chunks, chunks_per_prog, groups, dim_per_group, n_dblk, bc_len,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_yb, s_yd, s_yl, s_ib, s_id, s_in,
    HAS_INIT: gl.constexpr, READ_STATES: gl.constexpr, HAS_D: gl.constexpr, HAS_Z: gl.constexpr,
    HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
    BLOCK_D: gl.constexpr, BLOCK_N: gl.constexpr, T_TILE: gl.constexpr,
    SPN: gl.constexpr,  # states per lane
    PHASES: gl.constexpr,  # 2: a tile's exponentials before its recurrence (_tile_steps); 1: step by step
    S3_LAYOUT: gl.constexpr,  # (1, BLOCK_D, BLOCK_N): SPN states of one channel per lane
    R_LAYOUT: gl.constexpr,  # (T_TILE, BLOCK_D, BLOCK_N // SPN): a thread holds all lane sums of one (step, channel)
    BC_LAYOUT: gl.constexpr,  # (T_TILE, 2, BLOCK_N): the tile's packed B/C rows, read once
    P_SMEM: gl.constexpr,  # shared layout of the (T_TILE, BLOCK_D, BLOCK_N) h C buffer (swizzled)
):
    S_LAYOUT: gl.constexpr = gl.SliceLayout(0, S3_LAYOUT)  # (BLOCK_D, BLOCK_N)
    IO_LAYOUT: gl.constexpr = gl.SliceLayout(2, R_LAYOUT)  # (T_TILE, BLOCK_D)
    D_OF_S: gl.constexpr = gl.SliceLayout(1, S_LAYOUT)  # (BLOCK_D,) broadcast over the state lanes
    N_OF_S: gl.constexpr = gl.SliceLayout(0, S_LAYOUT)  # (BLOCK_N,) broadcast over the channel lanes
    PLAIN: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])

    pid = gl.program_id(0)
    dblk = pid % n_dblk
    bg = pid // n_dblk
    g = (bg % groups).to(gl.int64)
    b = (bg // groups).to(gl.int64)
    c = gl.program_id(1).to(gl.int64)

    # Per-(channel, state) values in S_LAYOUT.
    d_s = dblk * BLOCK_D + gl.arange(0, BLOCK_D, layout=D_OF_S)
    n_s = gl.arange(0, BLOCK_N, layout=N_OF_S)
    dmask_s = gl.expand_dims(d_s < dim_per_group, 1)
    chan_s = gl.expand_dims(g * dim_per_group + d_s, 1)  # int64
    state_mask = dmask_s & gl.expand_dims(n_s < dstate, 0)
    A2 = gl.load(A2T_ptr + gl.expand_dims(n_s, 0) * dim + chan_s, mask=dmask_s, other=0.0)  # (BLOCK_D, BLOCK_N)

    # Per-(step, channel) values in IO_LAYOUT.
    steps = gl.arange(0, T_TILE, layout=gl.SliceLayout(1, IO_LAYOUT))
    d_io = dblk * BLOCK_D + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, IO_LAYOUT))
    dmask_io = gl.expand_dims(d_io < dim_per_group, 0)
    chan_io = (g * dim_per_group + d_io).to(gl.int64)
    bias = gl.expand_dims(gl.load(bias_ptr + chan_io, mask=(d_io < dim_per_group) & HAS_BIAS, other=0.0), 0)
    Dv = gl.expand_dims(gl.load(D_ptr + chan_io, mask=(d_io < dim_per_group) & HAS_D, other=0.0), 0)

    t_start = c * chunks_per_prog * chunk_len
    t_end = gl.minimum(t_start + chunks_per_prog * chunk_len, seqlen)
    chunk0 = c * chunks_per_prog
    state_ptrs = states_ptr + (b * (n_chunks + 1) + chunk0) * BLOCK_N * dim + gl.expand_dims(n_s, 0) * dim + chan_s
    if READ_STATES:
        h = gl.load(state_ptrs, mask=state_mask, other=0.0)
    elif HAS_INIT:
        h = gl.load(init_ptr + b * s_ib + chan_s * s_id + gl.expand_dims(n_s, 0) * s_in, mask=state_mask, other=0.0)
    else:
        h = gl.zeros([BLOCK_D, BLOCK_N], gl.float32, layout=S_LAYOUT)

    io_t = gl.expand_dims(steps, 1).to(gl.int64)
    u_ptrs = u_ptr + b * s_ub + io_t * s_ul + gl.expand_dims(chan_io * s_ud, 0)
    delta_ptrs = delta_ptr + b * s_db + io_t * s_dl + gl.expand_dims(chan_io * s_dd, 0)
    z_ptrs = z_ptr + b * s_zb + io_t * s_zl + gl.expand_dims(chan_io * s_zd, 0)
    y_ptrs = y_ptr + b * s_yb + io_t * s_yl + gl.expand_dims(chan_io * s_yd, 0)
    # B and C arrive packed as (batch, groups, bc_len, 2, BLOCK_N) fp32, zero-padded past L and N.
    bc_t = gl.arange(0, T_TILE, layout=gl.SliceLayout(1, gl.SliceLayout(2, BC_LAYOUT)))
    bc_w = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(2, BC_LAYOUT)))
    bc_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, gl.SliceLayout(1, BC_LAYOUT)))
    bc_off = (gl.expand_dims(gl.expand_dims(bc_t, 1), 2) * (2 * BLOCK_N) + gl.expand_dims(gl.expand_dims(bc_w, 0), 2)
              * BLOCK_N + gl.expand_dims(gl.expand_dims(bc_n, 0), 1))
    bc_ptrs = bc_ptr + bg.to(gl.int64) * bc_len * (2 * BLOCK_N) + bc_off
    bc_t = gl.expand_dims(gl.expand_dims(bc_t, 1), 2)

    # dt and dt u are kept channel-major, (BLOCK_D, T_TILE), so that a step is a (BLOCK_D, 1) column that broadcasts
    # over the state lanes; the step index is XORed with the channel so that a warp's channels hit other banks.
    DT_SMEM: gl.constexpr = gl.SwizzledSharedLayout(1, 1, BLOCK_D, [1, 0])
    dt_smem = gl.allocate_shared_memory(gl.float32, [BLOCK_D, T_TILE], DT_SMEM)
    dtu_smem = gl.allocate_shared_memory(gl.float32, [BLOCK_D, T_TILE], DT_SMEM)
    bc_smem = gl.allocate_shared_memory(gl.float32, [2 * T_TILE, BLOCK_N], PLAIN)  # rows B_0, C_0, B_1, ...
    p_smem = gl.allocate_shared_memory(gl.float32, [T_TILE, BLOCK_D, BLOCK_N // SPN], P_SMEM)

    # Software pipeline, two barriers per tile. While tile i's steps run, tile i + 1's inputs are in flight in
    # registers (loaded a whole tile ahead: a single warp per scheduler cannot hide a global load's latency
    # otherwise), and tile i - 1's y is summed from p_smem, both in the same barrier-free stretch of code so
    # that the compiler interleaves them with the steps. After the steps: h C of tile i to p_smem, and tile
    # i + 1's dt, dt u and B/C to shared memory.
    boundary = t_start  # the next chunk boundary, where the backward will start from the state
    u_cur, pre, z_cur, bc = _load_tile(u_ptrs, delta_ptrs, z_ptrs, bc_ptrs, t_start, t_end, steps, bc_t, dmask_io,
                                       s_ul, s_dl, s_zl, HAS_Z, BLOCK_N)
    mask_cur = gl.expand_dims((t_start + steps) < t_end, 1) & dmask_io
    _stage_tile(u_cur, pre, bc, mask_cur, bias, dt_smem, dtu_smem, bc_smem, HAS_BIAS, SOFTPLUS, T_TILE, BLOCK_N)
    u_nxt, pre_nxt, z_nxt, bc_nxt = _load_tile(u_ptrs, delta_ptrs, z_ptrs, bc_ptrs, t_start + T_TILE, t_end, steps,
                                               bc_t, dmask_io, s_ul, s_dl, s_zl, HAS_Z, BLOCK_N)
    # No tile before the first: its y store is masked off. (New values, not aliases of u_cur / t_start: the loop's
    # carried values are found by object identity, and an alias made Triton carry one of the two names only.)
    u_prv = gl.zeros_like(u_cur)
    z_prv = gl.zeros_like(z_cur)
    mask_prv = mask_cur & False
    t_prv = t_start - T_TILE
    _barrier()
    for t0 in range(t_start, t_end, T_TILE):
        if t0 == boundary:
            gl.store(state_ptrs, h, mask=dmask_s)  # every BLOCK_N row: the padding rows stay 0
            state_ptrs += BLOCK_N * dim
            boundary += chunk_len
        _store_y(p_smem, u_prv, z_prv, mask_prv, Dv, y_ptrs + t_prv * s_yl, R_LAYOUT, HAS_D, HAS_Z)
        h, p = _tile_steps(h, A2, dt_smem, dtu_smem, bc_smem, T_TILE, S_LAYOUT, SPN, PHASES)
        _barrier()
        p_smem.store(_steps_first(p, T_TILE))
        u_prv = u_cur
        z_prv = z_cur
        mask_prv = mask_cur
        t_prv = t0
        u_cur = u_nxt
        z_cur = z_nxt
        mask_cur = gl.expand_dims((t0 + T_TILE + steps) < t_end, 1) & dmask_io
        _stage_tile(u_cur, pre_nxt, bc_nxt, mask_cur, bias, dt_smem, dtu_smem, bc_smem, HAS_BIAS, SOFTPLUS, T_TILE,
                    BLOCK_N)
        u_nxt, pre_nxt, z_nxt, bc_nxt = _load_tile(u_ptrs, delta_ptrs, z_ptrs, bc_ptrs, t0 + 2 * T_TILE, t_end,
                                                   steps, bc_t, dmask_io, s_ul, s_dl, s_zl, HAS_Z, BLOCK_N)
        _barrier()
    _store_y(p_smem, u_prv, z_prv, mask_prv, Dv, y_ptrs + t_prv * s_yl, R_LAYOUT, HAS_D, HAS_Z)

    if t_end == seqlen:
        gl.store(state_ptrs, h, mask=dmask_s)
        gl.store(final_ptr + b * dim * dstate + chan_s * dstate + gl.expand_dims(n_s, 0), h, mask=state_mask)


def lane_layouts(block_n: int, num_warps: int, t_tile: int, states_per_lane: int = 1) -> dict:
    """BLOCK_D and the layouts of ``_fwd_lanes_kernel`` for N padded to block_n (8 to 64), num_warps warps and
    states_per_lane states of a channel in each lane."""
    spn = max(states_per_lane, block_n // 32)
    tpw_n = block_n // spn
    tpw_d = 32 // tpw_n
    block_d = tpw_d * num_warps
    if not 8 <= block_n <= 64 or block_d > 32 or tpw_n < 4:
        raise ValueError(f"no lane layout for N {block_n} with {num_warps} warps and {spn} states per lane")
    r_tpw_d = block_d
    r_tpw_t = 32 // r_tpw_d
    if t_tile % (r_tpw_t * num_warps):
        raise ValueError(f"T_TILE {t_tile} must be a multiple of {r_tpw_t * num_warps}")
    vec = min(4, block_n)
    bc_lanes_n = block_n // vec
    bc_lanes_w = min(2, 32 // bc_lanes_n) if bc_lanes_n < 32 else 1
    bc_lanes_t = 32 // (bc_lanes_n * bc_lanes_w)
    # Rows of tpw_n lane sums, read 16 bytes per lane: the 16-byte column chunk is XORed with the row so that the
    # 8 lanes of a shared-memory phase hit 8 different bank groups.
    chunks = tpw_n // 4
    per_phase = max(1, 8 // chunks)
    max_phase = min(8, chunks)
    return dict(
        BLOCK_D=block_d,
        SPN=spn,
        S3_LAYOUT=gl.BlockedLayout([1, 1, spn], [1, tpw_d, tpw_n], [1, num_warps, 1], [2, 1, 0]),
        R_LAYOUT=gl.BlockedLayout([1, 1, tpw_n], [r_tpw_t, r_tpw_d, 1], [num_warps, 1, 1], [2, 1, 0]),
        BC_LAYOUT=gl.BlockedLayout([1, 1, vec], [bc_lanes_t, bc_lanes_w, bc_lanes_n], [num_warps, 1, 1], [2, 1, 0]),
        P_SMEM=gl.SwizzledSharedLayout(4, per_phase, max_phase, [2, 1, 0]),
    )
