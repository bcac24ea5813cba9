"""Public causal depthwise conv1d: argument checks, backend dispatch and the Triton autograd Function."""

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
from .reference import causal_conv1d_ref

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ACTIVATIONS = (None, "silu")

# Debug hook: when True, every buffer the Triton path returns or reduces starts out as NaN, so an
# element a kernel forgot to write fails any comparison. Tests switch it on; it costs a fill per buffer.
POISON_OUTPUTS = False


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv1d with fused bias, optional SiLU and a carried state.

    ``out[b, d, t] = bias[d] + sum_{k<width} weight[d, k] * xpad[b, d, t + k]`` where
    ``xpad = concat(initial_state, x)`` along the sequence (zeros when ``initial_state`` is None),
    then SiLU if ``activation == "silu"``. Accumulation is fp32; outputs are in ``x.dtype``.
    Gradients reach ``x``, ``weight``, ``bias`` and ``initial_state``, including through the final
    state, so segments of one sequence processed one after another backpropagate exactly.

    ``x`` may have any strides. The channel slice of a (batch, L, 2 * dim) projection, transposed
    (stride 1 along dim), is read in place, and ``out`` and the gradient of ``x`` then get that
    channels-last layout too, so writes stay coalesced.

    Args:
        x: Input, fp32, fp16 or bf16.
        weight: Filter taps, width 2 to 4; tap ``width - 1`` multiplies the current position.
        bias: Optional per-channel bias.
        activation: ``None`` or ``"silu"``.
        initial_state: The last ``width - 1`` inputs of the previous segment, or None for zeros.
        return_final_state: Also return the state to pass as ``initial_state`` to the next segment.
        backend: ``"auto"`` (Triton for CUDA tensors, the PyTorch reference otherwise), ``"triton"``
            (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``) or ``"reference"``.

    Returns:
        ``out``, or ``(out, final_state)`` when ``return_final_state``.

    Raises:
        ValueError: On a wrong rank, shape, dtype, device, activation or backend, before any launch.

    Shapes:
        x: (batch, dim, L)
        weight: (dim, width), width in 2..4
        bias: (dim,)
        initial_state: (batch, dim, width - 1)
        out: (batch, dim, L), x.dtype
        final_state: (batch, dim, width - 1), x.dtype; the last width - 1 entries of xpad, so it is
            defined for L < width - 1 too (on the Triton path, in x's memory order)
    """
    _check_args(x, weight, bias, activation, initial_state, backend)
    if use_triton("causal_conv1d", x, backend):
        return _CausalConv1dFn.apply(x, weight, bias, initial_state, activation == "silu", return_final_state)
    return causal_conv1d_ref(x, weight, bias, activation, initial_state, return_final_state)


def _check_args(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
    initial_state: torch.Tensor | None,
    backend: str,
) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a (batch, dim, L) tensor, got shape {shape_of(x)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be a (dim, width) tensor, got shape {shape_of(weight)}")
    batch, dim, _ = x.shape
    width = weight.shape[1]
    if not 2 <= width <= 4:
        raise ValueError(f"weight width must be in 2..4, got weight shape {tuple(weight.shape)}")
    if weight.shape[0] != dim:
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match dim {dim} of x shape {tuple(x.shape)}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (dim,)):
        raise ValueError(f"bias must have shape ({dim},) for x shape {tuple(x.shape)}, got {shape_of(bias)}")
    if initial_state is not None:
        expected = (batch, dim, width - 1)
        if not isinstance(initial_state, torch.Tensor) or tuple(initial_state.shape) != expected:
            raise ValueError(
                f"initial_state must have shape {expected} (batch, dim, width - 1) for x shape {tuple(x.shape)} "
                f"and weight shape {tuple(weight.shape)}, got {shape_of(initial_state)}"
            )
    named = {"x": x, "weight": weight, "bias": bias, "initial_state": initial_state}
    for name, tensor in named.items():
        if tensor is not None and tensor.dtype not in _FLOAT_DTYPES:
            raise ValueError(
                f"{name} must be float32, float16 or bfloat16, got {tensor.dtype} (shape {shape_of(tensor)})"
            )
        if tensor is not None and tensor.device != x.device:
            raise ValueError(f"{name} is on {tensor.device} (shape {shape_of(tensor)}) but x is on {x.device}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    check_backend(backend, x)


def _new_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return new_buffer(shape, dtype, device, POISON_OUTPUTS)


def _is_channels_last(x: torch.Tensor) -> bool:
    """True for the (batch, L, dim)-major layout the model produces by transposing its projection."""
    return x.stride(1) == 1 and x.stride(2) != 1


def _buffer_like_layout(x: torch.Tensor) -> torch.Tensor:
    """A (batch, dim, L) buffer in x's dtype whose memory order follows x, so tiles store coalesced."""
    batch, dim, seqlen = x.shape
    if _is_channels_last(x):
        return _new_buffer((batch, seqlen, dim), x.dtype, x.device).transpose(1, 2)
    return _new_buffer((batch, dim, seqlen), x.dtype, x.device)


def _state_in_layout_of(x: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor | None:
    """A (batch, dim, width - 1) state in x's memory order, copying at most width - 1 values per channel.

    The kernels load state and x tiles into one register layout; Triton derives a load's layout from
    which stride is 1, so a state laid out unlike x would cost a layout conversion in every tile.
    """
    if state is None:
        return None
    if _is_channels_last(x):
        return state.transpose(1, 2).contiguous().transpose(1, 2)
    return state.contiguous()


def _state_buffer(x: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """A new (batch, dim, width - 1) buffer in x's memory order (see _state_in_layout_of)."""
    batch, dim, _ = x.shape
    if _is_channels_last(x):
        return _new_buffer((batch, width - 1, dim), dtype, x.device).transpose(1, 2)
    return _new_buffer((batch, dim, width - 1), dtype, x.device)


# BLOCK_D_FWD: the forward's channel block where it differs from the tiled backward's BLOCK_D. Channel-last, the
# forward's (128 channels x 32 steps) tile measured 0.86 ms at 512 x 2^20 bf16 (the model's in_proj slice) on an
# H100, against 1.12 ms for (64 x 64), the tile it shared with the backward before (``bench_conv1d.py --sweep``).
GPU_TILES = {
    "channels_last": {"BLOCK_D": 64, "BLOCK_D_FWD": 128, "BLOCK_L_FWD": 32, "BLOCK_L_BWD": 16, "num_warps": 4},
    "sequence_contiguous": {"BLOCK_D": 8, "BLOCK_L_FWD": 512, "BLOCK_L_BWD": 64, "num_warps": 4},
}
# Under the CPU interpreter each tile operation costs about the same whatever its size, so longer
# tiles keep the test suite fast; the kernel code is the same.
INTERPRETER_TILES = {"BLOCK_D": 16, "BLOCK_L_FWD": 128, "BLOCK_L_BWD": 128, "num_warps": 4}


# The channel-last backward (_causal_conv1d_bwd_channel_last_kernel): T_TILE positions per tile, chunks of at
# most MAX_CHUNK_TILES tiles. On a GPU BLOCK_D is 32 * num_warps, one channel per thread (see the layout note in
# triton.py); T_TILE 8 keeps it near 100 registers (16: about 3% fewer instructions, 130-170 registers). The
# interpreter has no lanes, and its narrower block makes the tests cross channel blocks. The kernel is compiled
# once per set of time strides (the row widths of x, dout and dx), which a model keeps fixed.
GPU_BWD_CHANNEL_LAST = {"T_TILE": 8, "num_warps": 4, "MAX_CHUNK_TILES": 512}
INTERPRETER_BWD_CHANNEL_LAST = {"BLOCK_D": 16, "T_TILE": 8, "num_warps": 1, "MAX_CHUNK_TILES": 32}


def _tile_config(x: torch.Tensor) -> dict[str, int]:
    if not x.is_cuda:
        cfg = INTERPRETER_TILES
    else:
        cfg = GPU_TILES["channels_last" if _is_channels_last(x) else "sequence_contiguous"]
    dims = next_power_of_2(x.shape[1])
    block_d_fwd = cfg.get("BLOCK_D_FWD", cfg["BLOCK_D"])
    return {**cfg, "BLOCK_D": min(cfg["BLOCK_D"], dims), "BLOCK_D_FWD": min(block_d_fwd, dims)}


def _channel_last_bwd_config(x: torch.Tensor, dout: torch.Tensor) -> dict[str, int] | None:
    """Tiles of the channel-last backward, or None where it does not apply.

    It needs unit channel strides (dx and the state buffers follow x's layout, so x and dout decide; a single
    channel has any stride) and dx offsets within a tile that fit int32 (dx's time stride is dim).
    """
    dim = x.shape[1]
    if not (_is_channels_last(x) and (dout.stride(1) == 1 or dim == 1)):
        return None
    if x.is_cuda:
        cfg = GPU_BWD_CHANNEL_LAST
        # Fewer warps for narrow tensors rather than masked lanes; a warp still needs 32 channels, one per lane.
        num_warps = max(1, min(cfg["num_warps"], next_power_of_2(dim) // 32))
        cfg = {**cfg, "BLOCK_D": 32 * num_warps, "num_warps": num_warps}
    else:
        cfg = INTERPRETER_BWD_CHANNEL_LAST
        cfg = {**cfg, "BLOCK_D": min(cfg["BLOCK_D"], next_power_of_2(dim))}
    if cfg["T_TILE"] * dim + dim >= 2**31:
        return None
    return cfg


def _chunk_length(
    padded_len: int, block_l: int, programs_per_chunk: int, device: torch.device, max_tiles: int = 32
) -> int:
    """Positions per backward program: long enough to amortise the dweight partial rows (at most
    max_tiles tiles each), short enough to give every SM about 8 programs."""
    tiles = -(-padded_len // block_l)
    wanted_chunks = -(-8 * (cuda_sm_count(device) if device.type == "cuda" else 1) // programs_per_chunk)
    tiles_per_chunk = max(1, min(max_tiles, tiles // wanted_chunks))
    return tiles_per_chunk * block_l


def _state_strides(state: torch.Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if state is None else state.stride()


def _batch_time_strides(state: torch.Tensor | None) -> tuple[int, int]:
    return (0, 0) if state is None else (state.stride(0), state.stride(2))


def _forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    silu: bool,
    return_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    from .triton import _causal_conv1d_fwd_kernel

    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    cfg = _tile_config(x)
    out = _buffer_like_layout(x)
    initial_state = _state_in_layout_of(x, initial_state)
    final_state = _state_buffer(x, width, x.dtype) if return_final_state else None
    grid = (-(-seqlen // cfg["BLOCK_L_FWD"]), -(-dim // cfg["BLOCK_D_FWD"]), batch)
    # Absent optional tensors are replaced by x as a never-dereferenced placeholder pointer.
    _causal_conv1d_fwd_kernel[grid](
        x, weight, x if bias is None else bias, x if initial_state is None else initial_state,
        out, out if final_state is None else final_state,
        seqlen, dim,
        *x.stride(), *weight.stride(), 0 if bias is None else bias.stride(0),
        *_state_strides(initial_state), *out.stride(), *_state_strides(final_state),
        WIDTH=width, HAS_BIAS=bias is not None, HAS_INITIAL_STATE=initial_state is not None,
        HAS_FINAL_STATE=final_state is not None, SILU=silu,
        BLOCK_D=cfg["BLOCK_D_FWD"], BLOCK_L=cfg["BLOCK_L_FWD"], num_warps=cfg["num_warps"], **LAUNCH_OPTIONS,
    )  # fmt: skip
    return out, final_state


def _backward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    dout: torch.Tensor,
    dfinal_state: torch.Tensor | None,
    silu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    from .triton import _causal_conv1d_bwd_channel_last_kernel, _causal_conv1d_bwd_kernel

    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    cfg = _channel_last_bwd_config(x, dout)
    channel_last = cfg is not None
    if channel_last:
        block_l, max_tiles = cfg["T_TILE"], cfg["MAX_CHUNK_TILES"]
    else:
        cfg = _tile_config(x)
        block_l, max_tiles = cfg["BLOCK_L_BWD"], 32
    n_dblocks = -(-dim // cfg["BLOCK_D"])
    padded_len = seqlen + width - 1
    chunk_len = _chunk_length(padded_len, block_l, n_dblocks * batch, x.device, max_tiles)
    n_chunks = -(-padded_len // chunk_len)

    dx = _buffer_like_layout(x)
    initial_state = _state_in_layout_of(x, initial_state)
    dfinal_state = _state_in_layout_of(x, dfinal_state)
    dstate = None if initial_state is None else _state_buffer(x, width, initial_state.dtype)
    dweight_partial = _new_buffer((batch * n_chunks, dim, width), torch.float32, x.device)
    dbias_partial = _new_buffer((batch * n_chunks, dim), torch.float32, x.device)
    # Absent optional tensors are replaced by x, dout or dx as never-dereferenced placeholder pointers.
    pointers = (
        x, weight, x if bias is None else bias, x if initial_state is None else initial_state,
        dout, dout if dfinal_state is None else dfinal_state, dx, dx if dstate is None else dstate,
        dweight_partial, dbias_partial,
    )  # fmt: skip
    meta = {
        "WIDTH": width, "HAS_BIAS": bias is not None, "HAS_INITIAL_STATE": initial_state is not None,
        "HAS_DFINAL_STATE": dfinal_state is not None, "SILU": silu, "BLOCK_D": cfg["BLOCK_D"],
        "num_warps": cfg["num_warps"], **LAUNCH_OPTIONS,
    }  # fmt: skip
    bias_stride = 0 if bias is None else bias.stride(0)
    if channel_last:
        # Every channel stride is 1 (checked by _channel_last_bwd_config): only batch and time strides go in.
        _causal_conv1d_bwd_channel_last_kernel[(n_dblocks, n_chunks, batch)](
            *pointers,
            seqlen, dim, n_chunks, chunk_len, 0,
            x.stride(0), *weight.stride(), bias_stride, *_batch_time_strides(initial_state),
            dout.stride(0), *_batch_time_strides(dfinal_state), dx.stride(0), *_batch_time_strides(dstate),
            stride_x_l=x.stride(2), stride_dout_l=dout.stride(2), stride_dx_l=dx.stride(2),
            EVEN_D=dim % cfg["BLOCK_D"] == 0, FAST_MATH=x.is_cuda, T_TILE=block_l, **meta,
        )  # fmt: skip
    else:
        _causal_conv1d_bwd_kernel[(n_chunks, n_dblocks, batch)](
            *pointers,
            seqlen, dim, n_chunks, chunk_len,
            *x.stride(), *weight.stride(), bias_stride,
            *_state_strides(initial_state), *dout.stride(), *_state_strides(dfinal_state),
            *dx.stride(), *_state_strides(dstate),
            BLOCK_L=block_l, **meta,
        )  # fmt: skip
    # A plain sum over the partial rows: fixed order, so dweight and dbias are bitwise reproducible.
    dweight = dweight_partial.sum(dim=0).to(weight.dtype)
    dbias = None if bias is None else dbias_partial.sum(dim=0).to(bias.dtype)
    return dx, dweight, dbias, dstate


def causal_conv1d_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    silu: bool,
    return_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The Triton forward outside autograd, unchecked: ``(out, final_state or None)``.

    For a caller that runs its own backward (the fused Mamba block, which calls this once per piece of a
    sequence): arguments as for ``causal_conv1d`` with ``backend="triton"``, already checked by the caller.
    """
    with device_guard(x):
        return _forward(x, weight, bias, initial_state, silu, return_final_state)


def causal_conv1d_backward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    dout: torch.Tensor,
    dfinal_state: torch.Tensor | None,
    silu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``causal_conv1d_forward``'s (out, final_state): ``(dx, dweight, dbias, dinitial_state)``, None
    for an absent bias or initial state. ``dfinal_state`` None: the final state gets no gradient."""
    with device_guard(x):
        return _backward(x, weight, bias, initial_state, dout, dfinal_state, silu)


class _CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, silu, return_final_state):
        with device_guard(x):
            out, final_state = _forward(x, weight, bias, initial_state, silu, return_final_state)
        # x is saved as the caller's (possibly strided) view; the backward recomputes the pre-activation from it.
        ctx.save_for_backward(x, weight, bias, initial_state)
        ctx.silu = silu
        if return_final_state:
            return out, final_state
        return out

    @staticmethod
    def backward(ctx, dout, dfinal_state=None):
        x, weight, bias, initial_state = ctx.saved_tensors
        with device_guard(x):
            dx, dweight, dbias, dstate = _backward(x, weight, bias, initial_state, dout, dfinal_state, ctx.silu)
        return dx, dweight, dbias, dstate, None, None
