"""Public layout copy of (batch, dim, L) tensors: argument checks and backend dispatch.

The selective scan's kernels are fastest on channel-last tensors (unit channel stride: the model's layout, where
u, delta and z are views of a (batch, L, channels) projection). Users who pass (batch, dim, L)-contiguous tensors
get them copied first where that pays (``selective_scan.interface``); this is the copy.
"""

from __future__ import annotations

import torch

from .._launch import LAUNCH_OPTIONS, check_backend, device_guard, new_buffer, use_triton
from .reference import relayout_ref

# A (64 channels, 64 steps) tile per program: 8 KiB of bf16 through shared memory.
_BLOCK_D = 64
_BLOCK_L = 64
# Tests set this to allocate the copy NaN-filled, so an element the kernel does not write shows.
POISON_OUTPUTS = False


def relayout(x: torch.Tensor, channel_last: bool, backend: str = "auto") -> torch.Tensor:
    """A copy of the (batch, dim, L) tensor ``x`` laid out channel-last or time-contiguous.

    Args:
        x: any dtype, any strides.
        channel_last: True for strides (L * dim, 1, dim), the layout of ``x.transpose(1, 2).contiguous()
            .transpose(1, 2)``; False for (dim * L, L, 1), that of ``x.contiguous()``.
        backend: "auto" (Triton for CUDA tensors, torch otherwise), "triton" or "reference".

    Raises:
        ValueError: if ``x`` is not a 3-D tensor, or on an unknown backend.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"relayout: x must be a (batch, dim, L) tensor, got {got}")
    check_backend(backend, x)
    if not use_triton("relayout", x, backend):
        return relayout_ref(x, channel_last)
    import triton

    from . import triton as kernels

    batch, dim, seqlen = x.shape
    if channel_last:
        out = new_buffer((batch, seqlen, dim), x.dtype, x.device, POISON_OUTPUTS).transpose(1, 2)
    else:
        out = new_buffer((batch, dim, seqlen), x.dtype, x.device, POISON_OUTPUTS)
    grid = (triton.cdiv(seqlen, _BLOCK_L), triton.cdiv(dim, _BLOCK_D), batch)
    with device_guard(x):
        kernels._relayout_kernel[grid](
            x, out, dim, seqlen, *x.stride(), *out.stride(), BLOCK_D=_BLOCK_D, BLOCK_L=_BLOCK_L, num_warps=4,
            **LAUNCH_OPTIONS,
        )
    return out
