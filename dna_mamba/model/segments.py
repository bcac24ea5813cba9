"""Segment checkpointing: the next-token loss of a long sequence with activations for one segment at a time.

The sequence is processed in segments of ``segment_len`` positions; each layer carries its recurrent state
(conv_state, ssm_state) across segment boundaries, so the forward equals one pass. Only the boundary states are
kept. The backward walks the segments in reverse: it re-runs a segment from its saved start state, back-propagates
the segment's loss together with the gradient arriving at the segment's end state, and hands the gradient of the
start state to the previous segment. Gradients are exact (the scan and conv kernels differentiate through
``initial_state`` and ``final_state``), at the cost of a second forward.

Memory: activations of one segment plus ``n_segments x n_layer`` states of ``B x d_inner x (d_conv - 1 + d_state)``
numbers, instead of activations for the whole sequence. On CUDA each fused block of a segment keeps only its input;
on the step-by-step path, ``model.gradient_checkpointing`` does the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dna_mamba.model.mamba import DnaMambaLM, LayerState
from dna_mamba.tokenizer import N


def next_token_nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed natural-log NLL of ``targets``; ids >= N (N and the special tokens) are not scored.

    Shapes:
        logits: (B, l, V); targets: (B, l) the token following each position -> scalar.
    """
    targets = targets.long().masked_fill(targets >= N, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")


def segmented_lm_loss(
    model: DnaMambaLM, tokens: torch.Tensor, segment_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL of ``tokens`` and the number of scored positions, computed segment by segment.

    The value and the gradients of every parameter equal those of ``lm_nll_sum(model(tokens).logits, tokens)``;
    peak activation memory is that of one segment. Works in fp32 and under autocast (the backward re-enters the
    forward's autocast state, as ``torch.utils.checkpoint`` does). The model must be deterministic between the
    forward and the recomputation (DnaMambaLM has no dropout).

    Args:
        model: the language model; its parameters receive gradients when the returned NLL is back-propagated.
        tokens: token ids; position t is scored on token t + 1 unless that token is N or special.
        segment_len: positions per segment; any value >= 1 (the last segment may be shorter).

    Shapes:
        tokens: (B, L) -> nll: scalar fp32, count: scalar int64.
    """
    if segment_len < 1:
        raise ValueError(f"segment_len must be at least 1, got {segment_len}")
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be (B, L) with L >= 2, got shape {tuple(tokens.shape)}")
    # The last position has no target, and causality means no scored logit depends on it: drop it, so each
    # segment's targets are exactly the tokens one step ahead of its own inputs.
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    count = (targets < N).sum()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or not torch.is_grad_enabled():
        with torch.no_grad():
            return _forward_segments(model, inputs, targets, segment_len)[0], count
    nll = _SegmentedNLL.apply(model, inputs, targets, segment_len, *params)
    return nll, count


def _segment_bounds(length: int, segment_len: int) -> list[tuple[int, int]]:
    return [(start, min(start + segment_len, length)) for start in range(0, length, segment_len)]


def _forward_segments(
    model: DnaMambaLM, inputs: torch.Tensor, targets: torch.Tensor, segment_len: int
) -> tuple[torch.Tensor, list[list[LayerState] | None]]:
    """Run all segments carrying state; return the summed NLL and the start state of each segment."""
    nll = torch.zeros((), dtype=torch.float32, device=inputs.device)
    state, starts = None, []
    for start, end in _segment_bounds(inputs.shape[1], segment_len):
        starts.append(state)
        out = model(inputs[:, start:end], state=state, return_state=True)
        nll = nll + next_token_nll_sum(out.logits, targets[:, start:end])
        state = out.state
    return nll, starts


class _SegmentedNLL(torch.autograd.Function):
    """Summed NLL over segments; backward recomputes segments in reverse, carrying state gradients.

    The parameters are inputs of the Function and their gradients are its outputs, rather than being accumulated
    into ``.grad`` from inside the backward: the autograd engine then accumulates them once per step, which keeps
    DDP's gradient hooks (one per parameter per backward) and gradient accumulation working unchanged.
    """

    @staticmethod
    def forward(ctx, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, segment_len: int,
                *params: torch.Tensor) -> torch.Tensor:
        ctx.model, ctx.segment_len, ctx.n_params = model, segment_len, len(params)
        device_type = inputs.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        with torch.no_grad():
            nll, starts = _forward_segments(model, inputs, targets, segment_len)
        # Only the boundary states are saved (the first segment starts from zero, stored as None).
        ctx.n_layers = len(model.layers)
        flat = [t for state in starts[1:] for layer in state for t in (layer.conv, layer.ssm)]
        ctx.save_for_backward(inputs, targets, *flat)
        return nll

    @staticmethod
    def backward(ctx, grad_nll: torch.Tensor):
        inputs, targets, *flat = ctx.saved_tensors
        model, n_layers = ctx.model, ctx.n_layers
        params = [p for p in model.parameters() if p.requires_grad]
        if len(params) != ctx.n_params:
            raise RuntimeError("the model's trainable parameters changed between forward and backward")
        param_grads: list[torch.Tensor | None] = [None] * len(params)
        end_grads: list[torch.Tensor] | None = None  # d loss / d (end state of the current segment), flattened
        device_type, autocast_on, autocast_dtype = ctx.autocast
        bounds = _segment_bounds(inputs.shape[1], ctx.segment_len)
        for index in reversed(range(len(bounds))):
            start, end = bounds[index]
            if index == 0:
                start_leaves: list[torch.Tensor] = []
                state = None
            else:
                saved = flat[(index - 1) * 2 * n_layers : index * 2 * n_layers]
                start_leaves = [t.detach().requires_grad_() for t in saved]
                state = [LayerState(start_leaves[2 * i], start_leaves[2 * i + 1]) for i in range(n_layers)]
            last = index == len(bounds) - 1
            with torch.enable_grad(), torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_on):
                out = model(inputs[:, start:end], state=state, return_state=not last)
                nll = next_token_nll_sum(out.logits, targets[:, start:end]) * grad_nll
            outputs, grad_outputs = [nll], [None]
            if not last:
                ends = [t for layer in out.state for t in (layer.conv, layer.ssm)]
                for tensor, grad in zip(ends, end_grads, strict=True):
                    if tensor.requires_grad:
                        outputs.append(tensor)
                        grad_outputs.append(grad)
            grads = torch.autograd.grad(outputs, [*params, *start_leaves], grad_outputs, allow_unused=True)
            for i, grad in enumerate(grads[: len(params)]):
                if grad is not None:
                    param_grads[i] = grad if param_grads[i] is None else param_grads[i] + grad
            end_grads = [torch.zeros_like(leaf) if g is None else g
                         for leaf, g in zip(start_leaves, grads[len(params):], strict=True)]
        return None, None, None, None, *param_grads
