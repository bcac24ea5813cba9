"""Pure-PyTorch causal depthwise conv1d: the CPU fallback and the readable definition of the op."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv1d with optional bias, SiLU and carried state, computed in fp32.

    ``out[b, d, t] = bias[d] + sum_k weight[d, k] * xpad[b, d, t + k]`` with
    ``xpad = concat(initial_state, x)`` along the sequence, then SiLU if ``activation == "silu"``.
    Autograd-native: gradients reach ``x``, ``weight``, ``bias`` and ``initial_state``, also through
    the returned final state. Arguments are not validated here; ``causal_conv1d`` does that.

    Args:
        x: Input sequence, fp32/fp16/bf16, any strides.
        weight: Per-channel filter taps; tap ``width - 1`` multiplies the current position.
        bias: Optional per-channel bias.
        activation: ``None`` or ``"silu"``.
        initial_state: The last ``width - 1`` inputs of the previous segment; zeros when ``None``.
        return_final_state: Also return the last ``width - 1`` entries of ``xpad``, the state that
            continues this segment into the next one.

    Returns:
        ``out`` in ``x.dtype``, or ``(out, final_state)`` when ``return_final_state``.

    Shapes:
        x: (batch, dim, L)
        weight: (dim, width)
        bias: (dim,)
        initial_state: (batch, dim, width - 1)
        out: (batch, dim, L)
        final_state: (batch, dim, width - 1), in x.dtype
    """
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    x32 = x.float()
    if initial_state is None:
        state = x32.new_zeros(batch, dim, width - 1)
    else:
        state = initial_state.float()
    if x.stride(1) == 1 and dim > 1:
        # Channel-last memory (the model's conv input is a view of in_proj's (B, L, 2 * D) output): a sum of W
        # shifted products in that layout. Concatenating into F.conv1d's (B, D, L) layout is a transposing copy,
        # which on a CPU took longer than the conv itself.
        xpad = torch.cat([state.transpose(1, 2), x32.transpose(1, 2)], dim=1)  # (B, L + W - 1, D)
        w = weight.float().t()  # (W, D)
        out = xpad[:, :seqlen] * w[0]
        for k in range(1, width):
            out.addcmul_(xpad[:, k:k + seqlen], w[k])  # in place: a fresh buffer per tap costs page faults
        if bias is not None:
            out.add_(bias.float())
        out, xpad = out.transpose(1, 2), xpad.transpose(1, 2)  # (B, D, L), (B, D, L + W - 1)
    else:
        xpad = torch.cat([state, x32], dim=-1)  # (B, D, L + W - 1)
        out = F.conv1d(xpad, weight.float().unsqueeze(1), None if bias is None else bias.float(), groups=dim)
    if activation == "silu":
        out = F.silu(out)
    out = out.to(x.dtype)
    if not return_final_state:
        return out
    # Slicing xpad (not x) keeps this right when L < width - 1: part of the state then comes from initial_state.
    final_state = xpad[..., seqlen:].to(x.dtype)  # (B, D, W - 1)
    return out, final_state
