"""Triton kernels for causal depthwise conv1d (forward and backward).

The forward and the general backward work on (BLOCK_D channels) x (BLOCK_L positions) tiles and read
``xpad = concat(initial_state, x)`` by masked loads from the two tensors, so x is never copied or
padded. Each tap is a shifted masked tile load; the shifted tiles overlap, so after the first one
they come from L1/L2 and each input byte crosses HBM about once.

The channel-last backward (the model's layout: x, dout and dx with unit channel stride) instead walks
time sequentially, one channel per lane, and computes the SiLU derivative once per (position, channel),
carrying the last WIDTH - 1 values of x and of it in registers. See its docstring and the layout note
above it.

Index maths is int64 throughout: a (1, 2048, 2^20) tensor already has 2^31 elements.
"""

import triton
import triton.language as tl
from dna_mamba.kernels._ptx import ptx_ex2, ptx_rcp

# Tile width for the (width - 1)-long state vectors; width <= 4, so 4 covers every case.
STATE_BLOCK = tl.constexpr(4)


@triton.jit
def _load_xpad(
    x_base,
    state_base,
    offs_d,
    mask_d,
    pos,
    first_pos,
    seqlen,
    stride_x_d,
    stride_x_l,
    stride_state_d,
    stride_state_l,
    WIDTH: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr,
):
    """Loads xpad[offs_d, pos] as fp32; zero outside 0 <= pos < seqlen + WIDTH - 1.

    offs_d is (BLOCK_D, 1), pos is (1, N), both int64; first_pos is the smallest position in pos.
    """
    x_pos = pos - (WIDTH - 1)
    in_x = (x_pos >= 0) & (x_pos < seqlen)
    # Upcast right after the load: fp32 maths everywhere, and the interpreter has no bf16 arithmetic.
    vals = tl.load(x_base + offs_d * stride_x_d + x_pos * stride_x_l, mask=mask_d & in_x, other=0.0).to(tl.float32)
    if HAS_INITIAL_STATE:
        # Only the first tile of a sequence overlaps the state: the others skip a load that is all masked.
        if first_pos < WIDTH - 1:
            in_state = (pos >= 0) & (pos < WIDTH - 1)
            state_ptrs = state_base + offs_d * stride_state_d + pos * stride_state_l
            vals += tl.load(state_ptrs, mask=mask_d & in_state, other=0.0).to(tl.float32)
    return vals


@triton.jit
def _causal_conv1d_fwd_kernel(
    # pointers
    x_ptr,
    weight_ptr,
    bias_ptr,
    initial_state_ptr,
    out_ptr,
    final_state_ptr,
    # dims
    seqlen,
    dim,
    # strides
    stride_x_b,
    stride_x_d,
    stride_x_l,
    stride_w_d,
    stride_w_k,
    stride_bias,
    stride_state_b,
    stride_state_d,
    stride_state_l,
    stride_out_b,
    stride_out_d,
    stride_out_l,
    stride_final_b,
    stride_final_d,
    stride_final_l,
    # meta
    WIDTH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr,
    HAS_FINAL_STATE: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """out[b, d, t] = act(bias[d] + sum_k w[d, k] * xpad[b, d, t + k]); grid (L blocks, D blocks, batch)."""
    pid_l = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    pid_b = tl.program_id(2).to(tl.int64)

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)  # (BLOCK_D,)
    mask_d = offs_d < dim
    start = pid_l * BLOCK_L
    offs_t = start + tl.arange(0, BLOCK_L).to(tl.int64)  # (BLOCK_L,)
    x_base = x_ptr + pid_b * stride_x_b
    state_base = initial_state_ptr + pid_b * stride_state_b

    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * stride_bias, mask=mask_d, other=0.0).to(tl.float32)
        acc += bias[:, None]
    for k in tl.static_range(WIDTH):
        w_k = tl.load(weight_ptr + offs_d * stride_w_d + k * stride_w_k, mask=mask_d, other=0.0).to(tl.float32)
        x_k = _load_xpad(
            x_base, state_base, offs_d[:, None], mask_d[:, None], offs_t[None, :] + k, start + k, seqlen,
            stride_x_d, stride_x_l, stride_state_d, stride_state_l, WIDTH, HAS_INITIAL_STATE,
        )  # fmt: skip
        acc += w_k[:, None] * x_k
    if SILU:
        acc = acc * tl.sigmoid(acc)
    out_ptrs = out_ptr + pid_b * stride_out_b + offs_d[:, None] * stride_out_d + offs_t[None, :] * stride_out_l
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_d[:, None] & (offs_t[None, :] < seqlen))

    if HAS_FINAL_STATE:
        # The final state is the last WIDTH - 1 entries of xpad; one program per channel block writes it.
        if pid_l == 0:
            offs_s = tl.arange(0, STATE_BLOCK).to(tl.int64)  # (STATE_BLOCK,)
            state = _load_xpad(
                x_base, state_base, offs_d[:, None], mask_d[:, None], seqlen + offs_s[None, :], seqlen, seqlen,
                stride_x_d, stride_x_l, stride_state_d, stride_state_l, WIDTH, HAS_INITIAL_STATE,
            )  # fmt: skip
            final_ptrs = (
                final_state_ptr
                + pid_b * stride_final_b
                + offs_d[:, None] * stride_final_d
                + offs_s[None, :] * stride_final_l
            )
            mask = mask_d[:, None] & (offs_s[None, :] < WIDTH - 1)
            tl.store(final_ptrs, state.to(final_state_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_taps(weight_ptr, bias_ptr, d, mask_d, stride_w_d, stride_w_k, stride_bias, WIDTH: tl.constexpr,
               HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr):
    """The bias and the WIDTH taps of channels d as fp32 (BLOCK_D,) vectors, once per backward program; the bias
    without HAS_BIAS and the taps past WIDTH are zero (the callers never use those taps)."""
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d * stride_bias, mask=mask_d, other=0.0).to(tl.float32)
    w0 = tl.load(weight_ptr + d * stride_w_d, mask=mask_d, other=0.0).to(tl.float32)
    w1 = tl.load(weight_ptr + d * stride_w_d + stride_w_k, mask=mask_d, other=0.0).to(tl.float32)
    w2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    w3 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if WIDTH > 2:
        w2 = tl.load(weight_ptr + d * stride_w_d + 2 * stride_w_k, mask=mask_d, other=0.0).to(tl.float32)
    if WIDTH > 3:
        w3 = tl.load(weight_ptr + d * stride_w_d + 3 * stride_w_k, mask=mask_d, other=0.0).to(tl.float32)
    return bias, w0, w1, w2, w3


@triton.jit
def _causal_conv1d_bwd_kernel(
    # pointers
    x_ptr,
    weight_ptr,
    bias_ptr,
    initial_state_ptr,
    dout_ptr,
    dfinal_state_ptr,
    dx_ptr,
    dinitial_state_ptr,
    dweight_partial_ptr,
    dbias_partial_ptr,
    # dims
    seqlen,
    dim,
    n_chunks,
    chunk_len,
    # strides
    stride_x_b,
    stride_x_d,
    stride_x_l,
    stride_w_d,
    stride_w_k,
    stride_bias,
    stride_state_b,
    stride_state_d,
    stride_state_l,
    stride_dout_b,
    stride_dout_d,
    stride_dout_l,
    stride_dfinal_b,
    stride_dfinal_d,
    stride_dfinal_l,
    stride_dx_b,
    stride_dx_d,
    stride_dx_l,
    stride_dstate_b,
    stride_dstate_d,
    stride_dstate_l,
    # meta
    WIDTH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr,
    HAS_DFINAL_STATE: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Gradients of the forward, working in xpad coordinates j in [0, L + WIDTH - 1).

    With dpre[s] = dout[s] * act'(pre[s]) for 0 <= s < L (pre recomputed from x, not saved):
        dxpad[j] = sum_k w[k] * dpre[j - k]  +  dfinal[j - L]  (second term for L <= j)
        dx[t] = dxpad[t + WIDTH - 1],  dinitial_state[j] = dxpad[j] for j < WIDTH - 1
        dw[k] = sum_t dpre[t] * xpad[t + k],  dbias = sum_t dpre[t]
    Grid (chunks, D blocks, batch). Each program walks the chunk_len positions of its chunk and
    writes its dw/dbias partial sums to its own row; the host sums the rows in a fixed order, so no
    float atomics. With SiLU, dpre at the WIDTH shifts j - k is recomputed per shift (WIDTH^2 tile
    loads and WIDTH sigmoids per element), which makes this kernel issue-bound rather than HBM-bound.
    It serves every stride; the model's channel-last layout takes _causal_conv1d_bwd_channel_last_kernel,
    which computes dpre once per position.
    """
    pid_c = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    pid_b = tl.program_id(2).to(tl.int64)

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)  # (BLOCK_D,)
    mask_d = offs_d < dim
    padded_len = seqlen + WIDTH - 1
    chunk_start = pid_c * chunk_len
    chunk_end = tl.minimum(chunk_start + chunk_len, padded_len)
    x_base = x_ptr + pid_b * stride_x_b
    state_base = initial_state_ptr + pid_b * stride_state_b
    dout_base = dout_ptr + pid_b * stride_dout_b

    bias, w0, w1, w2, w3 = _load_taps(weight_ptr, bias_ptr, offs_d, mask_d, stride_w_d, stride_w_k, stride_bias,
                                      WIDTH, HAS_BIAS, BLOCK_D)
    # Elementwise partial sums of dweight[:, k] (dw_k) and dbias, reduced over L once per chunk: a
    # cross-thread reduction per tile would cost more than the multiply-adds themselves.
    dw0 = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    dw1 = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    dw2 = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    dw3 = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    db = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)

    for start in range(chunk_start, chunk_end, BLOCK_L):
        offs_j = start + tl.arange(0, BLOCK_L).to(tl.int64)  # (BLOCK_L,)
        dxpad = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        for k in tl.static_range(WIDTH):
            # Output position s = j - k reads xpad[j] through tap k.
            s = offs_j - k
            valid_s = (s >= 0) & (s < seqlen)
            dout_ptrs = dout_base + offs_d[:, None] * stride_dout_d + s[None, :] * stride_dout_l
            dpre = tl.load(dout_ptrs, mask=mask_d[:, None] & valid_s[None, :], other=0.0).to(tl.float32)
            if SILU:
                # Recompute the pre-activation at s instead of saving it: one more pass over cached x
                # is cheaper than writing and re-reading a (B, D, L) fp32 tensor.
                pre = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32) + bias[:, None]
                for k2 in tl.static_range(WIDTH):
                    w_k2 = w0 if k2 == 0 else (w1 if k2 == 1 else (w2 if k2 == 2 else w3))
                    x_k2 = _load_xpad(
                        x_base, state_base, offs_d[:, None], mask_d[:, None], s[None, :] + k2, start - k + k2,
                        seqlen, stride_x_d, stride_x_l, stride_state_d, stride_state_l, WIDTH, HAS_INITIAL_STATE,
                    )  # fmt: skip
                    pre += w_k2[:, None] * x_k2
                sig = tl.sigmoid(pre)
                dpre = dpre * sig * (1.0 + pre * (1.0 - sig))
            w_k = w0 if k == 0 else (w1 if k == 1 else (w2 if k == 2 else w3))
            dxpad += w_k[:, None] * dpre
            if k == 0:
                # At shift 0 the tiles cover each output position exactly once (j = s), so the
                # weight and bias gradients are accumulated here and nowhere else.
                db += dpre
                for k2 in tl.static_range(WIDTH):
                    x_k2 = _load_xpad(
                        x_base, state_base, offs_d[:, None], mask_d[:, None], offs_j[None, :] + k2, start + k2,
                        seqlen, stride_x_d, stride_x_l, stride_state_d, stride_state_l, WIDTH, HAS_INITIAL_STATE,
                    )  # fmt: skip
                    if k2 == 0:
                        dw0 += dpre * x_k2
                    if k2 == 1:
                        dw1 += dpre * x_k2
                    if k2 == 2:
                        dw2 += dpre * x_k2
                    if k2 == 3:
                        dw3 += dpre * x_k2

        if HAS_DFINAL_STATE:
            # The final state is xpad[L:], so its gradient lands on the last WIDTH - 1 positions of xpad.
            if start + BLOCK_L > seqlen:
                f = offs_j - seqlen
                in_final = (f >= 0) & (f < WIDTH - 1)
                dfinal_ptrs = (
                    dfinal_state_ptr
                    + pid_b * stride_dfinal_b
                    + offs_d[:, None] * stride_dfinal_d
                    + f[None, :] * stride_dfinal_l
                )
                dxpad += tl.load(dfinal_ptrs, mask=mask_d[:, None] & in_final[None, :], other=0.0).to(tl.float32)

        t = offs_j - (WIDTH - 1)
        dx_ptrs = dx_ptr + pid_b * stride_dx_b + offs_d[:, None] * stride_dx_d + t[None, :] * stride_dx_l
        dx_mask = mask_d[:, None] & ((t >= 0) & (t < seqlen))[None, :]
        tl.store(dx_ptrs, dxpad.to(dx_ptr.dtype.element_ty), mask=dx_mask)
        if HAS_INITIAL_STATE:
            if start < WIDTH - 1:
                dstate_ptrs = (
                    dinitial_state_ptr
                    + pid_b * stride_dstate_b
                    + offs_d[:, None] * stride_dstate_d
                    + offs_j[None, :] * stride_dstate_l
                )
                dstate_mask = mask_d[:, None] & (offs_j < WIDTH - 1)[None, :]
                tl.store(dstate_ptrs, dxpad.to(dinitial_state_ptr.dtype.element_ty), mask=dstate_mask)

    # Partial rows are (batch * n_chunks, dim, WIDTH) and (batch * n_chunks, dim), contiguous fp32.
    row = pid_b * n_chunks + pid_c
    dweight_base = dweight_partial_ptr + (row * dim + offs_d) * WIDTH
    tl.store(dweight_base, tl.sum(dw0, axis=1), mask=mask_d)
    tl.store(dweight_base + 1, tl.sum(dw1, axis=1), mask=mask_d)
    if WIDTH > 2:
        tl.store(dweight_base + 2, tl.sum(dw2, axis=1), mask=mask_d)
    if WIDTH > 3:
        tl.store(dweight_base + 3, tl.sum(dw3, axis=1), mask=mask_d)
    tl.store(dbias_partial_ptr + row * dim + offs_d, tl.sum(db, axis=1), mask=mask_d)


# Layout of the channel-last backward. Each thread should hold one channel and all T_TILE positions of a tile,
# so that the walk along time is in-thread arithmetic and putting position i into the dx tile (a tl.where with
# a constant row) is a register move. Triton picks the register layout from the loads' address patterns: lanes
# go along the dimension it knows to be contiguous, with as many elements per thread as the known alignment
# allows. So channel offsets are written d + zero, with `zero` an unspecialised 0 (do_not_specialize): the
# compiler knows that consecutive channels are adjacent (lanes go along channels) but not how they are aligned
# (no thread gets several channels, which would leave lanes over for the time axis). With BLOCK_D equal to
# 32 * num_warps every thread then has exactly one channel (the interface picks it so). Channel strides are
# therefore not arguments: every per-channel tensor of this kernel has unit channel stride.
#
# Positions are read as (BLOCK_D,) rows, one load per position, rather than as a (T_TILE, BLOCK_D) tile and
# picked apart: on a GPU the two are the same loads (one element per thread and position) and no store sits
# between them, so they are issued together; under the interpreter a pick costs a reduction. The time strides
# of x, dout and dx are constexprs (one compilation per row width, which is fixed in a model): each row's
# address is then the tile's address plus an immediate, where a runtime stride cost about 7 instructions per
# element, a sixth of the kernel. For the interpreter, the steps are written out inline: a jit-function call
# re-patches triton.language there (~1.5 ms), and masks on a scalar condition are tl.where(cond, mask_d, False)
# because its `vector & scalar` returns integers, which tl.load rejects as a mask.

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _silu_dpre(dout, x_0, x_m1, x_m2, x_m3, bias, w0, w1, w2, w3, WIDTH: tl.constexpr, FAST_MATH: tl.constexpr):
    """dpre[s] = dout[s] * silu'(pre[s]), pre[s] recomputed from x[s] = x_0 and the carried x_m_r = x[s - r].

    The one place the channel-last backward computes it (its warm-up and _walk_tile), so that a chunk's carried
    values are bit-identical to those its predecessor computed at the same positions.
    """
    # The tap that multiplies x[s - r] is w[WIDTH - 1 - r].
    pre = bias + (w1 if WIDTH == 2 else (w2 if WIDTH == 3 else w3)) * x_0
    pre += (w0 if WIDTH == 2 else (w1 if WIDTH == 3 else w2)) * x_m1
    if WIDTH > 2:
        pre += (w0 if WIDTH == 3 else w1) * x_m2
    if WIDTH > 3:
        pre += w0 * x_m3
    if FAST_MATH:
        sig = ptx_rcp(1.0 + ptx_ex2(pre * -LOG2E))
    else:
        sig = 1.0 / (1.0 + tl.exp(-pre))
    return dout * sig * (1.0 + pre * (1.0 - sig))


@triton.jit
def _walk_tile(
    x_ptrs,
    dout_ptrs,
    mask_d,
    n_x,
    n_g,
    bias,
    w0,
    w1,
    w2,
    w3,
    x_m1,
    x_m2,
    x_m3,
    dp_m1,
    dp_m2,
    dp_m3,
    dw_lag0,
    dw_lag1,
    dw_lag2,
    dw_lag3,
    db,
    stride_x_l: tl.constexpr,
    stride_dout_l: tl.constexpr,
    WIDTH: tl.constexpr,
    SILU: tl.constexpr,
    ROW_MASKS: tl.constexpr,
    EVEN_D: tl.constexpr,
    FAST_MATH: tl.constexpr,
    BLOCK_D: tl.constexpr,
    T_TILE: tl.constexpr,
):
    """T_TILE steps of the walk of _causal_conv1d_bwd_channel_last_kernel (see its docstring).

    x_ptrs and dout_ptrs (BLOCK_D,) point at the tile's first position. With ROW_MASKS only the first n_x
    rows of x and n_g rows of dout are read (int32 counts, so the row masks are compares with constants) and
    the others are zero; without, every row exists, which spares the masks in all but a chunk's edge tiles
    (and, with EVEN_D, every channel of the block exists too). Returns the carried values x_m_r = x[s - r] and
    dp_m_r = dpre[s - r] for the next step s, the updated sums and the (T_TILE, BLOCK_D) tile of xpad's
    gradient at the tile's positions.
    """
    # dw_lag_r accumulates dpre[s] * x[s - r], the gradient of the tap that multiplies x[s - r] in pre[s].
    rows = tl.arange(0, T_TILE)[:, None]
    dxpad = tl.zeros((T_TILE, BLOCK_D), dtype=tl.float32)
    for i in tl.static_range(T_TILE):
        if ROW_MASKS:
            x_0 = tl.load(x_ptrs + i * stride_x_l, mask=tl.where(i < n_x, mask_d, False), other=0.0)
            dp = tl.load(dout_ptrs + i * stride_dout_l, mask=tl.where(i < n_g, mask_d, False), other=0.0)
        elif EVEN_D:
            x_0 = tl.load(x_ptrs + i * stride_x_l)
            dp = tl.load(dout_ptrs + i * stride_dout_l)
        else:
            x_0 = tl.load(x_ptrs + i * stride_x_l, mask=mask_d, other=0.0)
            dp = tl.load(dout_ptrs + i * stride_dout_l, mask=mask_d, other=0.0)
        x_0 = x_0.to(tl.float32)
        dp = dp.to(tl.float32)
        if SILU:
            dp = _silu_dpre(dp, x_0, x_m1, x_m2, x_m3, bias, w0, w1, w2, w3, WIDTH, FAST_MATH)
        db += dp
        dw_lag0 += dp * x_0
        dw_lag1 += dp * x_m1
        grad = w0 * dp + w1 * dp_m1
        if WIDTH > 2:
            dw_lag2 += dp * x_m2
            grad += w2 * dp_m2
        if WIDTH > 3:
            dw_lag3 += dp * x_m3
            grad += w3 * dp_m3
        dxpad = tl.where(rows == i, grad[None, :], dxpad)
        x_m3 = x_m2
        x_m2 = x_m1
        x_m1 = x_0
        dp_m3 = dp_m2
        dp_m2 = dp_m1
        dp_m1 = dp
    return x_m1, x_m2, x_m3, dp_m1, dp_m2, dp_m3, dw_lag0, dw_lag1, dw_lag2, dw_lag3, db, dxpad


@triton.jit(do_not_specialize=["zero"])
def _causal_conv1d_bwd_channel_last_kernel(
    # pointers
    x_ptr,
    weight_ptr,
    bias_ptr,
    initial_state_ptr,
    dout_ptr,
    dfinal_state_ptr,
    dx_ptr,
    dinitial_state_ptr,
    dweight_partial_ptr,
    dbias_partial_ptr,
    # dims
    seqlen,
    dim,
    n_chunks,
    chunk_len,
    zero,
    # strides (channel strides are 1 and time strides of x, dout and dx constexprs: see the layout note)
    stride_x_b,
    stride_w_d,
    stride_w_k,
    stride_bias,
    stride_state_b,
    stride_state_l,
    stride_dout_b,
    stride_dfinal_b,
    stride_dfinal_l,
    stride_dx_b,
    stride_dstate_b,
    stride_dstate_l,
    stride_x_l: tl.constexpr,
    stride_dout_l: tl.constexpr,
    stride_dx_l: tl.constexpr,
    # meta
    WIDTH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr,
    HAS_DFINAL_STATE: tl.constexpr,
    SILU: tl.constexpr,
    EVEN_D: tl.constexpr,
    FAST_MATH: tl.constexpr,
    BLOCK_D: tl.constexpr,
    T_TILE: tl.constexpr,
):
    """The gradients of _causal_conv1d_bwd_kernel, with dpre computed once per (position, channel).

    The same maths, written with x's positions (xpad[j] is x[j - WIDTH + 1], and x[s] for s < 0 is
    initial_state[s + WIDTH - 1]):
        pre[s] = bias + sum_r w[WIDTH - 1 - r] * x[s - r],  dpre[s] = dout[s] * act'(pre[s]) (0 for s >= L)
        dxpad[j] = sum_k w[k] * dpre[j - k]  +  dfinal[j - L]  (second term for L <= j)
        dx[t] = dxpad[t + WIDTH - 1],  dinitial_state[j] = dxpad[j] for j < WIDTH - 1
        dw[WIDTH - 1 - r] = sum_s dpre[s] * x[s - r],  dbias = sum_s dpre[s]
    Walking forward in time, step s loads x[s] and dout[s], and everything else it needs lies in the past:
    pre[s] needs x[s - WIDTH + 1 .. s] and dxpad[s] needs dpre[s - WIDTH + 1 .. s]. So the last WIDTH - 1
    values of x and of dpre are carried in registers, each x and dout element is loaded once, each dpre is
    computed once and serves all WIDTH taps, and step s writes dxpad[s], that is dx[s - WIDTH + 1]: dx comes
    out WIDTH - 1 positions behind the loads. (Walking backwards, pre[s] would need x values not loaded yet.)

    Layout: x, dout, dx and the state tensors have unit channel stride (the channel slice of a (B, L, C)
    projection, transposed). Grid (D blocks, chunks, batch), channel blocks fastest, so the programs running
    together read whole rows of x and dout. A program owns BLOCK_D channels, one per thread (see the layout
    note), and the positions [chunk_start, chunk_start + chunk_len) of xpad's gradient. Its loads are rows of
    BLOCK_D adjacent channels, coalesced across the lanes, and it stores dx in (T_TILE, BLOCK_D) tiles. It
    first rebuilds the carried values from the 2 * (WIDTH - 1) positions before its chunk, and writes its
    dw/dbias sums to its own partial row, which the host sums in a fixed order: no float atomics.
    EVEN_D: dim is a multiple of BLOCK_D. FAST_MATH (a GPU): the sigmoid from the approximate exp2 and
    reciprocal (inline PTX, which the interpreter lacks).
    """
    pid_d = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    pid_b = tl.program_id(2).to(tl.int64)

    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)  # (BLOCK_D,)
    mask_d = d < dim
    # Channel offsets of the channel-last tensors (see the layout note), int32: offsets inside a dx tile are
    # int32 from an int64 tile start; the interface checks that they fit (T_TILE * dim + dim < 2^31).
    dc = (pid_d * BLOCK_D).to(tl.int32) + tl.arange(0, BLOCK_D) + zero
    steps = tl.arange(0, T_TILE)
    padded_len = seqlen + WIDTH - 1
    chunk_start = pid_c * chunk_len
    chunk_end = tl.minimum(chunk_start + chunk_len, padded_len)
    # dpre is zero past L, and positions past the chunk are the next program's: their dout is never read.
    grad_end = tl.minimum(chunk_end, seqlen)
    x_base = x_ptr + pid_b * stride_x_b
    dout_base = dout_ptr + pid_b * stride_dout_b
    state_base = initial_state_ptr + pid_b * stride_state_b

    bias, w0, w1, w2, w3 = _load_taps(weight_ptr, bias_ptr, d, mask_d, stride_w_d, stride_w_k, stride_bias,
                                      WIDTH, HAS_BIAS, BLOCK_D)

    # The carried values: x_m_r = x[s - r] and dp_m_r = dpre[s - r] before step s. Warm-up over the
    # 2 * (WIDTH - 1) positions before the chunk: the first WIDTH - 1 only fill the x window (their dpre would
    # lack x values and is shifted out unused), the last WIDTH - 1 give the dpre window.
    x_m1 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    x_m2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    x_m3 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dp_m1 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dp_m2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dp_m3 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for r in tl.static_range(2 * (WIDTH - 1)):
        s = chunk_start - 2 * (WIDTH - 1) + r
        in_x = (s >= 0) & (s < seqlen)
        x_ptrs = x_base + s * stride_x_l + dc
        x_0 = tl.load(x_ptrs, mask=tl.where(in_x, mask_d, False), other=0.0).to(tl.float32)
        if HAS_INITIAL_STATE:
            in_state = (s < 0) & (s >= -(WIDTH - 1))
            state_ptrs = state_base + (s + WIDTH - 1) * stride_state_l + dc
            x_0 += tl.load(state_ptrs, mask=tl.where(in_state, mask_d, False), other=0.0).to(tl.float32)
        dp = tl.zeros((BLOCK_D,), dtype=tl.float32)
        if r >= WIDTH - 1:
            dout_ptrs = dout_base + s * stride_dout_l + dc
            dp = tl.load(dout_ptrs, mask=tl.where(in_x, mask_d, False), other=0.0).to(tl.float32)
            if SILU:
                # The same helper as _walk_tile's, so a chunk's carried values equal its predecessor's.
                dp = _silu_dpre(dp, x_0, x_m1, x_m2, x_m3, bias, w0, w1, w2, w3, WIDTH, FAST_MATH)
        x_m3 = x_m2
        x_m2 = x_m1
        x_m1 = x_0
        dp_m3 = dp_m2
        dp_m2 = dp_m1
        dp_m1 = dp

    dw_lag0 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dw_lag1 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dw_lag2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dw_lag3 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    db = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dx_base = dx_ptr + pid_b * stride_dx_b
    dx_offs = steps[:, None] * stride_dx_l + dc[None, :]  # (T_TILE, BLOCK_D) int32
    for start in range(chunk_start, chunk_end, T_TILE):
        x_ptrs = x_base + start * stride_x_l + dc
        dout_ptrs = dout_base + start * stride_dout_l + dc
        # dx lags the loads by WIDTH - 1 positions: position j of xpad is x's position j - WIDTH + 1.
        dx_ptrs = dx_base + (start - (WIDTH - 1)) * stride_dx_l + dx_offs
        if (start >= WIDTH - 1) & (start + T_TILE <= grad_end):
            # Every row of the tile is in x, dout and dx, and in the chunk.
            x_m1, x_m2, x_m3, dp_m1, dp_m2, dp_m3, dw_lag0, dw_lag1, dw_lag2, dw_lag3, db, dxpad = _walk_tile(
                x_ptrs, dout_ptrs, mask_d, T_TILE, T_TILE, bias, w0, w1, w2, w3,
                x_m1, x_m2, x_m3, dp_m1, dp_m2, dp_m3, dw_lag0, dw_lag1, dw_lag2, dw_lag3, db,
                stride_x_l, stride_dout_l, WIDTH, SILU, False, EVEN_D, FAST_MATH, BLOCK_D, T_TILE,
            )  # fmt: skip
            if EVEN_D:
                tl.store(dx_ptrs, dxpad.to(dx_ptr.dtype.element_ty))
            else:
                tl.store(dx_ptrs, dxpad.to(dx_ptr.dtype.element_ty), mask=mask_d[None, :])
        else:
            n_x = tl.minimum(seqlen - start, T_TILE).to(tl.int32)
            n_g = tl.minimum(grad_end - start, T_TILE).to(tl.int32)
            x_m1, x_m2, x_m3, dp_m1, dp_m2, dp_m3, dw_lag0, dw_lag1, dw_lag2, dw_lag3, db, dxpad = _walk_tile(
                x_ptrs, dout_ptrs, mask_d, n_x, n_g, bias, w0, w1, w2, w3,
                x_m1, x_m2, x_m3, dp_m1, dp_m2, dp_m3, dw_lag0, dw_lag1, dw_lag2, dw_lag3, db,
                stride_x_l, stride_dout_l, WIDTH, SILU, True, EVEN_D, FAST_MATH, BLOCK_D, T_TILE,
            )  # fmt: skip
            j = start + steps  # (T_TILE,) positions of xpad's gradient
            if HAS_DFINAL_STATE:
                # The final state is xpad[L:], so its gradient lands on the last WIDTH - 1 positions of xpad.
                if start + T_TILE > seqlen:
                    f = j - seqlen
                    dfinal_ptrs = dfinal_state_ptr + pid_b * stride_dfinal_b + f[:, None] * stride_dfinal_l
                    in_final = (f >= 0) & (f < WIDTH - 1)
                    dfinal = tl.load(dfinal_ptrs + dc[None, :], mask=in_final[:, None] & mask_d[None, :], other=0.0)
                    dxpad += dfinal.to(tl.float32)
            in_chunk = j < chunk_end
            dx_mask = (in_chunk & (j >= WIDTH - 1))[:, None] & mask_d[None, :]
            tl.store(dx_ptrs, dxpad.to(dx_ptr.dtype.element_ty), mask=dx_mask)
            if HAS_INITIAL_STATE:
                if start < WIDTH - 1:
                    dstate_ptrs = dinitial_state_ptr + pid_b * stride_dstate_b + j[:, None] * stride_dstate_l
                    dstate_mask = (in_chunk & (j < WIDTH - 1))[:, None] & mask_d[None, :]
                    dstate = dxpad.to(dinitial_state_ptr.dtype.element_ty)
                    tl.store(dstate_ptrs + dc[None, :], dstate, mask=dstate_mask)

    # Partial rows are (batch * n_chunks, dim, WIDTH) and (batch * n_chunks, dim), contiguous fp32.
    row = pid_b * n_chunks + pid_c
    dweight_base = dweight_partial_ptr + (row * dim + d) * WIDTH
    tl.store(dweight_base + WIDTH - 1, dw_lag0, mask=mask_d)
    tl.store(dweight_base + WIDTH - 2, dw_lag1, mask=mask_d)
    if WIDTH > 2:
        tl.store(dweight_base + WIDTH - 3, dw_lag2, mask=mask_d)
    if WIDTH > 3:
        tl.store(dweight_base, dw_lag3, mask=mask_d)
    tl.store(dbias_partial_ptr + row * dim + d, db, mask=mask_d)
