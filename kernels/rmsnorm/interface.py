"""Public fused residual add + RMSNorm: argument checks, backend dispatch and the Triton autograd Function."""

from __future__ import annotations

import torch

from .._launch import (
    LAUNCH_OPTIONS,
    check_backend,
    cuda_sm_count,
    device_guard,
    new_buffer,
    next_power_of_2,
    shape_of,
    use_triton,
)
from .reference import add_rms_norm_ref

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# A row is one register tile; past this width it would spill (the model's d_model is 64..2048).
MAX_TRITON_DIM = 8192

# Debug hook: when True, every buffer the Triton path returns or reduces starts out as NaN, so an
# element a kernel forgot to write fails any comparison. Tests switch it on; it costs a fill per buffer.
POISON_OUTPUTS = False


def add_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    residual_in_fp32: bool = True,
    out_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add fused with RMSNorm: the pre-norm step between Mamba blocks, in one pass over memory.

    ``new_residual = x + residual`` is computed in fp32 and stored in fp32 (``residual_in_fp32``) or
    in ``x.dtype``; with ``residual=None`` it is ``x`` itself (upcast to fp32 if ``residual_in_fp32``).
    ``out = new_residual * rsqrt(mean(new_residual^2, -1) + eps) * weight`` is computed in fp32 from
    the stored ``new_residual`` (so after its rounding, as ``Block._add`` then ``RMSNorm`` do today)
    and returned in ``out_dtype``. Gradients reach ``x``, ``residual`` and ``weight`` through both
    outputs: the residual stream goes on to the next block, so ``new_residual`` gets its own gradient.

    The Triton path saves only ``new_residual`` (or ``x`` when that is the same tensor) and an fp32
    rstd per row for the backward, never ``out``; ``dweight`` is reduced in a fixed order, so it is
    bitwise reproducible on one device. Leading dims may have any strides: a 3-D ``x`` is read in
    place, more leading dims are merged by ``reshape`` (a copy only when they cannot be merged). A
    last dim with non-unit stride is copied by ``.contiguous()`` first; that includes an upstream
    gradient broadcast by ``expand`` (e.g. from ``out.sum()``). Outputs and gradients are contiguous.

    Args:
        x: Block input (the mixer output, or the embedding before the first block); fp16, bf16,
            fp32 or fp64 (fp64 is computed in fp32 like the rest).
        weight: RMSNorm gain.
        residual: The residual stream so far, any float dtype, or None before the first block.
        eps: Added to the mean square inside the rsqrt.
        residual_in_fp32: Store ``new_residual`` in fp32 rather than ``x.dtype``.
        out_dtype: dtype of ``out``; ``weight.dtype`` when None (fp32 under autocast, where the next
            matmul casts; bf16 for a bf16 model).
        backend: ``"auto"`` (Triton for CUDA tensors, the PyTorch reference otherwise), ``"triton"``
            (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``) or ``"reference"``.

    Returns:
        ``(out, new_residual)``.

    Raises:
        ValueError: On a wrong shape, dtype, device, eps or backend, before any launch; also for
            ``backend="triton"`` with ``d > MAX_TRITON_DIM`` (``"auto"`` then uses the reference).

    Shapes:
        x: (..., d)
        weight: (d,)
        residual: (..., d), the shape of x
        out: (..., d), out_dtype or weight.dtype
        new_residual: (..., d), float32 if residual_in_fp32 else x.dtype
    """
    _check_args(x, weight, residual, eps, out_dtype, backend)
    too_wide = f"d = {x.shape[-1]} > {MAX_TRITON_DIM}" if x.shape[-1] > MAX_TRITON_DIM else None
    if use_triton("add_rms_norm", x, backend, unsupported=too_wide):
        return _AddRMSNormFn.apply(x, weight, residual, float(eps), residual_in_fp32, out_dtype or weight.dtype)
    return add_rms_norm_ref(x, weight, residual, eps, residual_in_fp32, out_dtype)


def _check_args(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype | None,
    backend: str,
) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"x must be a (..., d) tensor with at least one dim, got shape {shape_of(x)}")
    dim = x.shape[-1]
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (dim,):
        raise ValueError(f"weight must have shape ({dim},) for x shape {tuple(x.shape)}, got {shape_of(weight)}")
    if residual is not None and (not isinstance(residual, torch.Tensor) or residual.shape != x.shape):
        raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got {shape_of(residual)}")
    for name, tensor in {"x": x, "weight": weight, "residual": residual}.items():
        if tensor is not None and tensor.dtype not in _FLOAT_DTYPES:
            raise ValueError(
                f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype} (shape {shape_of(tensor)})"
            )
        if tensor is not None and tensor.device != x.device:
            raise ValueError(f"{name} is on {tensor.device} (shape {shape_of(tensor)}) but x is on {x.device}")
    if out_dtype is not None and out_dtype not in _FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be None, float16, bfloat16, float32 or float64, got {out_dtype!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    check_backend(backend, x)
    if backend == "triton" and dim > MAX_TRITON_DIM:
        raise ValueError(
            f"backend='triton' supports d <= {MAX_TRITON_DIM}, got x shape {tuple(x.shape)}; use backend='reference'"
        )


def _new_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return new_buffer(shape, dtype, device, POISON_OUTPUTS)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """A (outer, inner, d) view of t with unit stride along d, which the kernels address per row.

    Copies only when the last dim is not unit-stride, or when more than two leading dims cannot be merged.
    """
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        t = t.contiguous()
    if t.dim() == 1:
        return t.view(1, 1, -1)
    if t.dim() == 2:
        return t.unsqueeze(0)
    return t.reshape(-1, t.shape[-2], t.shape[-1])


def _row_strides(t: torch.Tensor | None) -> tuple[int, int]:
    return (0, 0) if t is None else (t.stride(0), t.stride(1))


GPU_TILE_ELEMENTS = {"fwd": 4096, "bwd": 2048}
# The backward runs a fixed number of programs per SM, each over a contiguous run of rows, so the dw
# partial buffer stays (programs, d) however many rows there are.
GPU_BWD_PROGRAMS_PER_SM = 8
# Under the CPU interpreter each tile operation costs about the same whatever its size, so bigger tiles
# keep tests fast; three backward programs make the tests cover several dw partials and a short last run.
INTERPRETER_TILE_ELEMENTS = {"fwd": 8192, "bwd": 4096}
INTERPRETER_BWD_PROGRAMS = 3


def _tile_config(dim: int, device: torch.device) -> dict[str, int]:
    block_d = next_power_of_2(dim)
    elements = GPU_TILE_ELEMENTS if device.type == "cuda" else INTERPRETER_TILE_ELEMENTS
    return {
        "BLOCK_D": block_d,
        "ROWS_FWD": max(1, elements["fwd"] // block_d),
        "ROWS_BWD": max(1, elements["bwd"] // block_d),
        "num_warps": 4 if block_d <= 1024 else 8,
    }


def _bwd_rows_per_program(n_rows: int, block_rows: int, device: torch.device) -> int:
    """A whole number of tiles per program, so only the last program ends in a partial tile."""
    tiles = -(-n_rows // block_rows)
    wanted = GPU_BWD_PROGRAMS_PER_SM * cuda_sm_count(device) if device.type == "cuda" else INTERPRETER_BWD_PROGRAMS
    return -(-tiles // max(1, min(tiles, wanted))) * block_rows


def _forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor | None,
    eps: float,
    residual_in_fp32: bool,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton import _add_rms_norm_fwd_kernel

    dim = x.shape[-1]
    x_rows = _as_rows(x)
    n_inner = x_rows.shape[1]
    n_rows = x_rows.shape[0] * n_inner
    res_rows = None if residual is None else _as_rows(residual)
    residual_dtype = torch.float32 if residual_in_fp32 else x.dtype
    # Before the first block with no cast, new_residual is x: returning it saves a full write.
    store_residual = residual is not None or residual_dtype != x.dtype
    cfg = _tile_config(dim, x.device)

    out = _new_buffer((n_rows, dim), out_dtype, x.device)
    new_residual = _new_buffer((n_rows, dim), residual_dtype, x.device) if store_residual else x_rows
    rstd = _new_buffer((n_rows,), torch.float32, x.device)
    grid = (-(-n_rows // cfg["ROWS_FWD"]),)
    # An absent residual is replaced by x as a never-dereferenced placeholder pointer.
    _add_rms_norm_fwd_kernel[grid](
        x_rows, x_rows if res_rows is None else res_rows, weight, out, new_residual, rstd,
        n_rows, n_inner, dim, eps,
        *_row_strides(x_rows), *_row_strides(res_rows), weight.stride(0),
        HAS_RESIDUAL=res_rows is not None, STORE_RESIDUAL=store_residual,
        BLOCK_ROWS=cfg["ROWS_FWD"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"], **LAUNCH_OPTIONS,
    )  # fmt: skip
    new_residual = new_residual.view(x.shape) if store_residual else x
    return out.view(x.shape), new_residual, rstd


def _backward(
    new_residual: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    dout: torch.Tensor,
    dnew_residual: torch.Tensor | None,
    dx_dtype: torch.dtype | None,
    dresidual_dtype: torch.dtype | None,
    dx_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """dx in dx_dtype, dweight, dresidual in dresidual_dtype; a None dtype skips that gradient.

    dx_out: where dx goes instead of a new buffer (new_residual's shape, unit last stride, any row strides;
    it may be new_residual itself); its dtype is dx's.
    """
    from .triton import _add_rms_norm_bwd_kernel

    dim = new_residual.shape[-1]
    r_rows = _as_rows(new_residual)
    dout_rows = _as_rows(dout)
    dres_rows = None if dnew_residual is None else _as_rows(dnew_residual)
    n_inner = r_rows.shape[1]
    n_rows = r_rows.shape[0] * n_inner
    cfg = _tile_config(dim, new_residual.device)
    rows_per_program = _bwd_rows_per_program(n_rows, cfg["ROWS_BWD"], new_residual.device)
    n_programs = -(-n_rows // rows_per_program)

    device = new_residual.device
    if dx_out is not None:
        dx = _as_rows(dx_out)
        if dx.data_ptr() != dx_out.data_ptr() or dx.shape[1] != n_inner:
            raise ValueError(f"dx_out must be viewable as rows in place, got shape {tuple(dx_out.shape)}, "
                             f"strides {dx_out.stride()}")
        dx_dtype = dx_out.dtype
    else:
        dx = None if dx_dtype is None else _new_buffer((n_rows, dim), dx_dtype, device).view(r_rows.shape)
    # dx and dresidual are the same values; one buffer serves both when their dtypes agree.
    share = dx is not None and dresidual_dtype == dx_dtype
    dresidual = None if dresidual_dtype is None or share else _new_buffer((n_rows, dim), dresidual_dtype, device)
    dweight_partial = _new_buffer((n_programs, dim), torch.float32, device)
    _add_rms_norm_bwd_kernel[(n_programs,)](
        r_rows, weight, rstd, dout_rows, dout_rows if dres_rows is None else dres_rows,
        dweight_partial if dx is None else dx, dweight_partial if dresidual is None else dresidual, dweight_partial,
        n_rows, n_inner, dim, rows_per_program,
        *_row_strides(r_rows), *_row_strides(dout_rows), *_row_strides(dres_rows), *_row_strides(dx),
        weight.stride(0),
        HAS_DNEW_RESIDUAL=dres_rows is not None, STORE_DX=dx is not None, STORE_DRESIDUAL=dresidual is not None,
        BLOCK_ROWS=cfg["ROWS_BWD"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"], **LAUNCH_OPTIONS,
    )  # fmt: skip
    # A plain sum over the partial rows: fixed order, so dweight is bitwise reproducible.
    dweight = dweight_partial.sum(dim=0).to(weight.dtype)
    if share:
        dresidual = dx
    shape = new_residual.shape
    return (
        dx_out if dx_out is not None else None if dx is None else dx.view(shape),
        dweight,
        None if dresidual is None else dresidual.view(shape),
    )


def rms_norm_forward(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x (no residual) on the Triton kernel, outside autograd: ``(out, rstd)``, rstd fp32 per row.

    For a caller that runs its own backward (the fused Mamba block): with rstd kept, ``rms_norm_backward`` can add
    the residual stream's gradient in the same pass. x as for ``add_rms_norm`` (CUDA, or the interpreter).
    """
    _check_args(x, weight, None, eps, out_dtype, "triton")
    with device_guard(x):
        out, _, rstd = _forward(x, weight, None, float(eps), False, out_dtype)
    return out, rstd


def rms_norm_backward(
    x: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    dout: torch.Tensor,
    dresidual: torch.Tensor | None = None,
    dx_out: torch.Tensor | None = None,
    want_dx: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Backward of ``rms_norm_forward`` with the residual stream's gradient added: ``(dx, dweight)``.

    dx = d(norm)/dx^T dout + dresidual, in one pass over the rows (the residual add costs no pass of its own).
    dx goes into ``dx_out`` when given (x's shape, unit last stride, any row strides; it may be x's own buffer,
    since each row is read before it is written), else into a new tensor of x's dtype; ``want_dx=False`` skips it.
    dweight is reduced in a fixed order (bitwise reproducible).

    Shapes: x, dout, dresidual, dx_out: (..., d);  weight: (d,);  rstd: (rows,) fp32 from ``rms_norm_forward``
    """
    for name, t in {"dout": dout, "dresidual": dresidual, "dx_out": dx_out}.items():
        if t is not None and t.shape != x.shape:
            raise ValueError(f"{name} must have x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
    with device_guard(x):
        dx, dweight, _ = _backward(
            x, weight, rstd, dout, dresidual, x.dtype if want_dx else None, None, dx_out if want_dx else None
        )
    return dx, dweight


class _AddRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, residual, eps, residual_in_fp32, out_dtype):
        with device_guard(x):
            out, new_residual, rstd = _forward(x, weight, residual, eps, residual_in_fp32, out_dtype)
        # out is not saved: the backward recomputes the normalised rows from new_residual and rstd.
        ctx.save_for_backward(new_residual, weight, rstd)
        ctx.x_dtype = x.dtype
        ctx.residual_dtype = None if residual is None else residual.dtype
        # Either output may get no gradient (e.g. the last block's residual stream); keep those None.
        ctx.set_materialize_grads(False)
        return out, new_residual

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dnew_residual):
        new_residual, weight, rstd = ctx.saved_tensors
        needs_dx, needs_dweight, needs_dresidual = ctx.needs_input_grad[:3]
        dx_dtype = ctx.x_dtype if needs_dx else None
        dresidual_dtype = ctx.residual_dtype if needs_dresidual else None
        if dout is None:
            # Only the residual stream carries a gradient: it passes straight through the add.
            if dnew_residual is None:
                return None, None, None, None, None, None
            dx = None if dx_dtype is None else dnew_residual.to(dx_dtype)
            dresidual = None if dresidual_dtype is None else dnew_residual.to(dresidual_dtype)
            return dx, None, dresidual, None, None, None
        with device_guard(new_residual):
            dx, dweight, dresidual = _backward(
                new_residual, weight, rstd, dout, dnew_residual, dx_dtype, dresidual_dtype
            )
        return dx, dweight if needs_dweight else None, dresidual, None, None, None
