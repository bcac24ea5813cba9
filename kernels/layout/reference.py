"""Pure-PyTorch layout copy: the CPU path and the definition the Triton kernel is tested against."""

from __future__ import annotations

import torch


def relayout_ref(x: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """A copy of the (batch, dim, L) tensor ``x`` with unit channel stride (``channel_last``) or unit time stride.

    Always a new tensor with strides exactly (L * dim, 1, dim) or (dim * L, L, 1), whatever the strides of ``x``
    (``x.contiguous()`` would return ``x`` itself when its size-1 dims carry odd strides).
    """
    batch, dim, seqlen = x.shape
    if channel_last:
        out = torch.empty(batch, seqlen, dim, dtype=x.dtype, device=x.device).transpose(1, 2)
    else:
        out = torch.empty(batch, dim, seqlen, dtype=x.dtype, device=x.device)
    return out.copy_(x)
