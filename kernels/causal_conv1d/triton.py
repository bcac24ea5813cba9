"""Triton kernels for causal depthwise conv1d (forward and backward).

Both kernels work on (BLOCK_D channels) x (BLOCK_L positions) tiles and read
``xpad = concat(initial_state, x)`` by masked loads from the two tensors, so x is never copied or
padded. Each tap is a shifted masked tile load; the shifted tiles overlap, so after the first one
they come from L1/L2 and each input byte crosses HBM about once.

Index maths is int64 throughout: a (1, 2048, 2^20) tensor already has 2^31 elements.
"""

import triton
import triton.language as tl

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
    loads and WIDTH sigmoids per element): simple, but it makes this kernel issue-bound rather than
    HBM-bound; computing dpre once per position and shifting it is the known next step.
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

    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * stride_bias, mask=mask_d, other=0.0).to(tl.float32)
    # The taps, loaded once per program; taps past WIDTH stay zero and are never used.
    w0 = tl.load(weight_ptr + offs_d * stride_w_d, mask=mask_d, other=0.0).to(tl.float32)
    w1 = tl.load(weight_ptr + offs_d * stride_w_d + stride_w_k, mask=mask_d, other=0.0).to(tl.float32)
    w2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    w3 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if WIDTH > 2:
        w2 = tl.load(weight_ptr + offs_d * stride_w_d + 2 * stride_w_k, mask=mask_d, other=0.0).to(tl.float32)
    if WIDTH > 3:
        w3 = tl.load(weight_ptr + offs_d * stride_w_d + 3 * stride_w_k, mask=mask_d, other=0.0).to(tl.float32)
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
