"""Triton kernels for fused residual add + RMSNorm (forward and backward).

Rows are the flattened leading dims of ``x``, addressed as (outer, inner) pairs with one stride each,
so a (batch, L, d) view that is strided along batch or L is read in place; the feature dim must have
unit stride. Each program holds a (BLOCK_ROWS, BLOCK_D) tile with BLOCK_D >= d, so a row's sum of
squares is one in-register reduction. Outputs and gradients are written as contiguous (rows, d), except the
backward's dx, which may go into a strided (batch, L, d) slice of a caller's buffer.

Index maths is int64: 2^21 rows x 2048 features is already 2^32 elements.
"""

import triton
import triton.language as tl


@triton.jit
def _row_offsets(rows, n_inner, stride_outer, stride_inner):
    """Element offset of each row's first feature, for a tensor viewed as (outer, inner, d); rows are int64."""
    outer = rows // n_inner
    inner = rows - outer * n_inner
    return outer * stride_outer + inner * stride_inner


@triton.jit
def _add_rms_norm_fwd_kernel(
    # pointers
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    new_residual_ptr,
    rstd_ptr,
    # dims
    n_rows,
    n_inner,
    dim,
    eps,
    # strides
    stride_x_outer,
    stride_x_inner,
    stride_res_outer,
    stride_res_inner,
    stride_w,
    # meta
    HAS_RESIDUAL: tl.constexpr,
    STORE_RESIDUAL: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """new_residual = x + residual; out = new_residual * rstd * w with rstd = rsqrt(mean(new_residual^2) + eps).

    Grid (cdiv(n_rows, BLOCK_ROWS),). out, new_residual (rows, dim) contiguous; rstd (rows,) fp32.
    With STORE_RESIDUAL the sum is rounded to new_residual's dtype before it is normalised, so out is
    a function of the stored new_residual and the backward can recompute everything from it. Without
    it (no residual, no cast) the caller returns x itself as new_residual.
    """
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)  # (BLOCK_ROWS,)
    mask_r = rows < n_rows
    cols = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    mask_d = cols < dim
    mask = mask_r[:, None] & mask_d[None, :]

    x_offs = _row_offsets(rows, n_inner, stride_x_outer, stride_x_inner)
    # Upcast right after the load: fp32 maths everywhere, and the interpreter has no bf16 arithmetic.
    r = tl.load(x_ptr + x_offs[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        res_offs = _row_offsets(rows, n_inner, stride_res_outer, stride_res_inner)
        r += tl.load(residual_ptr + res_offs[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    out_offs = rows[:, None] * dim + cols[None, :]
    if STORE_RESIDUAL:
        r_stored = r.to(new_residual_ptr.dtype.element_ty)
        tl.store(new_residual_ptr + out_offs, r_stored, mask=mask)
        r = r_stored.to(tl.float32)

    # Masked lanes hold 0, so they add nothing to the sum of squares.
    rstd = tl.rsqrt(tl.sum(r * r, axis=1) / dim + eps)  # (BLOCK_ROWS,)
    tl.store(rstd_ptr + rows, rstd, mask=mask_r)
    w = tl.load(weight_ptr + cols * stride_w, mask=mask_d, other=0.0).to(tl.float32)
    out = r * rstd[:, None] * w[None, :]
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_rms_norm_bwd_kernel(
    # pointers
    new_residual_ptr,
    weight_ptr,
    rstd_ptr,
    dout_ptr,
    dnew_residual_ptr,
    dx_ptr,
    dresidual_ptr,
    dweight_partial_ptr,
    # dims
    n_rows,
    n_inner,
    dim,
    rows_per_program,
    # strides
    stride_r_outer,
    stride_r_inner,
    stride_dout_outer,
    stride_dout_inner,
    stride_dres_outer,
    stride_dres_inner,
    stride_dx_outer,
    stride_dx_inner,
    stride_w,
    # meta
    HAS_DNEW_RESIDUAL: tl.constexpr,
    STORE_DX: tl.constexpr,
    STORE_DRESIDUAL: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Gradients of the forward from the saved new_residual r and rstd (out is never saved).

    With y = r * rstd and g = dout (all fp32):
        dr = rstd * (g * w - y * mean(g * w * y)) + dnew_residual,   dx = dresidual = dr
        dw = sum over rows of g * y
    Grid (programs,): program p walks rows [p * rows_per_program, (p + 1) * rows_per_program) and
    writes its dw partial sum to row p of a (programs, dim) fp32 buffer; the host sums the rows in a
    fixed order, so dw is bitwise reproducible (no float atomics). dx is addressed by (outer, inner) row
    strides like the inputs (a caller may hand a slice of a larger buffer); dresidual is (rows, dim)
    contiguous. Each in its own dtype; either may be skipped. A program reads each tile before it writes
    that tile's rows, so dx may share new_residual's memory.
    """
    pid = tl.program_id(0).to(tl.int64)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    cols = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    mask_d = cols < dim
    w = tl.load(weight_ptr + cols * stride_w, mask=mask_d, other=0.0).to(tl.float32)
    # Elementwise dw partial sums, reduced over rows once per program rather than once per tile.
    dw = tl.zeros((BLOCK_ROWS, BLOCK_D), dtype=tl.float32)

    for start in range(row_start, row_end, BLOCK_ROWS):
        rows = start + tl.arange(0, BLOCK_ROWS).to(tl.int64)  # (BLOCK_ROWS,)
        mask_r = rows < row_end
        mask = mask_r[:, None] & mask_d[None, :]
        r_offs = _row_offsets(rows, n_inner, stride_r_outer, stride_r_inner)
        r = tl.load(new_residual_ptr + r_offs[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=mask_r, other=0.0)
        dout_offs = _row_offsets(rows, n_inner, stride_dout_outer, stride_dout_inner)
        g = tl.load(dout_ptr + dout_offs[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)

        y = r * rstd[:, None]
        dw += g * y
        wg = g * w[None, :]
        # Masked lanes have y = 0 and wg = 0, so the mean over dim counts only real features.
        c = tl.sum(wg * y, axis=1) / dim  # (BLOCK_ROWS,)
        dr = (wg - y * c[:, None]) * rstd[:, None]
        if HAS_DNEW_RESIDUAL:
            dres_offs = _row_offsets(rows, n_inner, stride_dres_outer, stride_dres_inner)
            dres_ptrs = dnew_residual_ptr + dres_offs[:, None] + cols[None, :]
            dr += tl.load(dres_ptrs, mask=mask, other=0.0).to(tl.float32)

        if STORE_DX:
            dx_offs = _row_offsets(rows, n_inner, stride_dx_outer, stride_dx_inner)
            tl.store(dx_ptr + dx_offs[:, None] + cols[None, :], dr.to(dx_ptr.dtype.element_ty), mask=mask)
        if STORE_DRESIDUAL:  # (rows, dim) contiguous
            dres_out = dresidual_ptr + rows[:, None] * dim + cols[None, :]
            tl.store(dres_out, dr.to(dresidual_ptr.dtype.element_ty), mask=mask)

    tl.store(dweight_partial_ptr + pid * dim + cols, tl.sum(dw, axis=0), mask=mask_d)
