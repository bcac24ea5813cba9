"""Pure-PyTorch residual add + RMSNorm: the CPU fallback and the readable definition of the op."""

from __future__ import annotations

import torch


def add_rms_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    residual_in_fp32: bool = True,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adds ``x`` to the residual stream and RMS-normalises the sum, computed in fp32.

    ``new_residual = x + residual`` (in fp32, then stored in ``x.dtype`` unless ``residual_in_fp32``);
    ``out = new_residual * rsqrt(mean(new_residual^2, -1) + eps) * weight``, normalising the stored
    ``new_residual``, i.e. after that rounding, as ``Block._add`` followed by ``RMSNorm`` does.
    Autograd-native: gradients reach ``x``, ``residual`` and ``weight`` through both outputs.
    Arguments are not validated here; ``add_rms_norm`` does that.

    Args:
        x: The block input (a mixer output, or the embedding for the first block), any float dtype.
        weight: The RMSNorm gain.
        residual: The residual stream so far, or None for the first block.
        eps: Added to the mean square inside the rsqrt.
        residual_in_fp32: Keep ``new_residual`` in fp32 instead of ``x.dtype``.
        out_dtype: dtype of ``out``; ``weight.dtype`` when None.

    Returns:
        ``(out, new_residual)``.

    Shapes:
        x: (..., d)
        weight: (d,)
        residual: (..., d), like x
        out: (..., d), out_dtype or weight.dtype
        new_residual: (..., d), float32 if residual_in_fp32 else x.dtype
    """
    new_residual = x.float() if residual is None else x.float() + residual.float()
    if not residual_in_fp32:
        new_residual = new_residual.to(x.dtype)
    r32 = new_residual.float()
    out = r32 * torch.rsqrt(r32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return out.to(out_dtype or weight.dtype), new_residual
