"""A single-nucleotide Mamba-1 language model, readable top to bottom.

    tokens (B, L) -> embedding (B, L, D)
      -> n_layer x [ x = x + MambaMixer(RMSNorm(x)) ]
      -> RMSNorm -> tied LM head -> logits (B, L, V)

MambaMixer (the block of Gu & Dao 2023):
    in_proj -> (x, z);  x -> causal depthwise conv1d (width 4) -> SiLU -> x_proj -> (dt_low, B, C)
    dt = dt_proj(dt_low);  y = selective_scan(x, dt, A, B, C, D, z, softplus(dt + dt_bias));  out_proj(y)

The scan, the conv and the norm come from ``dna_mamba.kernels``: fused Triton on CUDA tensors, the pure-PyTorch
reference elsewhere, so this file never changes when kernels do. On CUDA a whole block runs as one autograd node
that keeps only its input and recomputes the rest in the backward, over pieces of the sequence
(``fused_block.py``); the step-by-step path below is the CPU path and its test oracle, and runs on CUDA too where
hooks or replaced modules inside a block need their modules called (``Block.uses_fused``). Every layer can start from
and return its recurrent state (conv_state: the last d_conv - 1 conv inputs; ssm_state: h), which gives streaming
over chunks and ``step()``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dna_mamba.kernels import add_rms_norm, selective_scan
from dna_mamba.model.config import DnaMambaConfig
from dna_mamba.model.fused_block import mamba_block, pre_scan, split_xz

logger = logging.getLogger(__name__)


@dataclass
class LayerState:
    """Recurrent state of one Mamba block.

    Shapes:
        conv: (B, d_inner, d_conv - 1), the last conv inputs, in the activation dtype
        ssm: (B, d_inner, d_state), fp32
    """

    conv: torch.Tensor
    ssm: torch.Tensor


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, L, V), fp32
    state: list[LayerState] | None = None  # one per layer, when asked for
    hidden_states: list[torch.Tensor] | None = None  # n_layer + 1 tensors (B, L, D), when asked for


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalised in fp32 (the residual stream of a 1M-token sequence has a wide dynamic range), output in the
        # weight dtype, or straight in the autocast dtype, which the next matmul would cast to anyway. On CUDA one
        # Triton kernel, which saves only a per-row scale for the backward.
        out_dtype = self.weight.dtype
        if torch.is_autocast_enabled(x.device.type):
            out_dtype = torch.get_autocast_dtype(x.device.type)
        out, _ = add_rms_norm(x, self.weight, None, eps=self.eps, residual_in_fp32=False, out_dtype=out_dtype)
        return out


def _no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    param._no_weight_decay = True  # read by DnaMambaLM.param_groups
    return param


class MambaMixer(nn.Module):
    """The Mamba-1 mixer: (B, L, d_model) -> (B, L, d_model), optionally carrying a LayerState."""

    def __init__(self, config: DnaMambaConfig):
        super().__init__()
        self.config = config
        d_model, d_inner, n = config.d_model, config.d_inner, config.d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=config.proj_bias)
        # Depthwise conv weights as a plain (d_inner, d_conv) matrix: the layout the conv kernel takes.
        bound = 1.0 / math.sqrt(config.d_conv)  # nn.Conv1d's default init for fan_in = d_conv
        self.conv_weight = nn.Parameter(torch.empty(d_inner, config.d_conv).uniform_(-bound, bound))
        self.conv_bias = (
            _no_weight_decay(nn.Parameter(torch.empty(d_inner).uniform_(-bound, bound))) if config.conv_bias else None
        )
        self.x_proj = nn.Linear(d_inner, config.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(config.dt_rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, d_model, bias=config.proj_bias)

        # dt_proj: weights scaled so dt starts O(1) before the bias; the bias is the inverse softplus of a
        # log-uniform dt in [dt_min, dt_max], so softplus(bias) reproduces that dt at init.
        std = config.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(d_inner) * (math.log(config.dt_max) - math.log(config.dt_min)) + math.log(config.dt_min)
        ).clamp(min=config.dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        _no_weight_decay(self.dt_proj.bias)
        self.dt_proj.bias._skip_reinit = True

        # S4D-real init: A[d, n] = -(n + 1), stored as log(-A) in fp32 (it decays toward 0 otherwise).
        a = torch.arange(1, n + 1, dtype=torch.float32).repeat(d_inner, 1)  # (d_inner, N)
        self.A_log = _no_weight_decay(nn.Parameter(torch.log(a)))
        self.D = _no_weight_decay(nn.Parameter(torch.ones(d_inner, dtype=torch.float32)))

    def forward(
        self, hidden: torch.Tensor, state: LayerState | None = None, return_state: bool = False
    ) -> tuple[torch.Tensor, LayerState | None]:
        """Shapes: hidden (B, L, d_model) -> (B, L, d_model); state as in LayerState."""
        _check_weight_only_projections(self)
        xz = self.in_proj(hidden)  # (B, L, 2 * d_inner)
        A = -torch.exp(self.A_log.float())  # (d_inner, N)
        conv_state, ssm_state = (None, None) if state is None else (state.conv, state.ssm)
        y, conv_state, ssm_state = self._inner_step_by_step(xz, A, conv_state, ssm_state)
        # y: (B, d_inner, L); conv_state: (B, d_inner, d_conv - 1); ssm_state: (B, d_inner, N)
        out = self.out_proj(y.transpose(1, 2))  # (B, L, d_model)
        return out, (LayerState(conv_state, ssm_state) if return_state else None)

    def _inner_step_by_step(self, xz, A, conv_state, ssm_state):
        """in_proj output -> gated scan output, op by op (the CPU path, and the fused node's oracle)."""
        cfg = self.config
        x, z = split_xz(xz)  # (B, d_inner, L) each
        u, delta, b, c, conv_state = pre_scan(
            x, self.conv_weight, self.conv_bias, self.x_proj.weight, self.dt_proj.weight, conv_state, cfg.dt_rank,
            cfg.d_state, conv_backend="auto",
        )  # (B, d_inner, L) for u, delta; (B, 1, N, L) for b, c; (B, d_inner, d_conv - 1)
        y, ssm_state = selective_scan(
            u, delta, A, b, c, D=self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            initial_state=ssm_state, return_final_state=True,
        )  # (B, d_inner, L), (B, d_inner, N); dt_proj's bias and the softplus are fused in the scan
        return y, conv_state, ssm_state

    def step(self, hidden: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """One token through the recurrence. Shapes: hidden (B, d_model) -> (B, d_model)."""
        _check_weight_only_projections(self)
        cfg = self.config
        n = cfg.d_state
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, d_inner) each
        window = torch.cat([state.conv, x.unsqueeze(-1).to(state.conv.dtype)], dim=-1)  # (B, d_inner, d_conv)
        x = (window.float() * self.conv_weight.float()).sum(-1)
        if self.conv_bias is not None:
            x = x + self.conv_bias.float()
        x = F.silu(x).to(hidden.dtype)  # (B, d_inner)

        dt_low, b, c = torch.split(self.x_proj(x), [cfg.dt_rank, n, n], dim=-1)
        dt = F.softplus(F.linear(dt_low, self.dt_proj.weight).float() + self.dt_proj.bias.float())  # (B, d_inner)
        A = -torch.exp(self.A_log.float())  # (d_inner, N)
        decay = torch.exp(dt.unsqueeze(-1) * A)  # (B, d_inner, N)
        h = decay * state.ssm + (dt * x.float()).unsqueeze(-1) * b.float().unsqueeze(1)  # (B, d_inner, N)
        y = (h * c.float().unsqueeze(1)).sum(-1) + self.D.float() * x.float()  # (B, d_inner)
        y = y * F.silu(z.float())
        out = self.out_proj(y.to(hidden.dtype))  # (B, d_model)
        return out, LayerState(window[..., 1:], h)

    def allocate_state(self, batch_size: int, device=None, dtype=torch.float32) -> LayerState:
        cfg = self.config
        return LayerState(
            conv=torch.zeros(batch_size, cfg.d_inner, cfg.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, cfg.d_inner, cfg.d_state, device=device, dtype=torch.float32),
        )


def _hooked(module: nn.Module) -> bool:
    """Whether forward or backward hooks are registered on this module."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _global_hooks() -> bool:
    """Whether forward or backward hooks are registered for every module (``nn.modules.module.register_module_*``)."""
    m = nn.modules.module
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks
                or m._global_backward_pre_hooks)


def _check_weight_only_projections(mixer: MambaMixer) -> None:
    """x_proj and dt_proj are read as weight matrices on both paths, never called: refuse a replaced module (a LoRA
    wrapper, a quantised layer), whose contribution would be silently dropped, and warn once that hooks there do
    not fire."""
    for name in ("x_proj", "dt_proj"):
        module = getattr(mixer, name)
        if type(module) is not nn.Linear:
            raise ValueError(
                f"mixer.{name} is a {type(module).__name__}, not an nn.Linear: the scan reads its weight matrix "
                f"directly, so the module's own computation would be skipped. Wrap in_proj or out_proj instead "
                f"(both paths call those as modules), or fold the change into {name}.weight."
            )
        if _hooked(module):
            _warn_once(f"hooks on mixer.{name} do not fire in a forward over a sequence: its weight is read directly "
                       f"(hook the mixer, in_proj or out_proj instead)")


def _unfusable(block: Block) -> str | None:
    """Why the fused node cannot stand in for this block, or None. The node reads the weights of norm, in_proj
    and out_proj directly and never calls those modules (nor the mixer), so hooks or replaced modules there are
    honoured only by the step-by-step path."""
    mixer = block.mixer
    if type(block.norm) is not RMSNorm or type(mixer) is not MambaMixer:
        return f"the block's norm or mixer was replaced ({type(block.norm).__name__}, {type(mixer).__name__})"
    for name in ("in_proj", "out_proj"):
        if type(getattr(mixer, name)) is not nn.Linear:
            return f"mixer.{name} is a {type(getattr(mixer, name)).__name__}, not an nn.Linear"
    hooked = [name for name, m in (("norm", block.norm), ("mixer", mixer), ("mixer.in_proj", mixer.in_proj),
                                   ("mixer.out_proj", mixer.out_proj)) if _hooked(m)]
    if hooked:
        return f"hooks are registered on {', '.join(hooked)}"
    if _global_hooks():
        return "global module hooks are registered (nn.modules.module.register_module_forward_hook or similar)"
    return None


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning("%s", message)


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x))."""

    # The fused node (fused_block.py): None = on CUDA tensors; True forces it (tests run it on CPU through the
    # Triton interpreter), False keeps the step-by-step path. Set on an instance, or on the class to pin every
    # block (benchmark scripts that route the scan to the reference do).
    fused: bool | None = None

    def __init__(self, config: DnaMambaConfig):
        super().__init__()
        self.norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.mixer = MambaMixer(config)
        self.residual_in_fp32 = config.residual_in_fp32

    def uses_fused(self, x: torch.Tensor) -> bool:
        """Whether this forward runs as the fused node. On CUDA it does unless hooks or replaced modules inside the
        block need the step-by-step path (logged once); ``fused=True`` raises instead."""
        if self.fused is False or (self.fused is None and not x.is_cuda):
            return False
        reason = _unfusable(self)
        if reason is None:
            return True
        if self.fused:
            raise ValueError(f"Block.fused is True, but {reason}: the fused node would skip them. Set fused = None "
                             f"to run such blocks step by step.")
        _warn_once(f"running blocks step by step (more memory, slower) because {reason}: the fused node would "
                   f"skip them")
        return False

    def forward(self, x, state: LayerState | None = None, return_state: bool = False, reuse_input: bool = False):
        """reuse_input: nothing reads x after the backward, whose fused path may then overwrite it (mamba_block)."""
        if self.uses_fused(x):
            _check_weight_only_projections(self.mixer)
            conv_state, ssm_state = (None, None) if state is None else (state.conv, state.ssm)
            out, conv_state, ssm_state = mamba_block(self, x, conv_state, ssm_state, reuse_input)
            return out, (LayerState(conv_state, ssm_state) if return_state else None)
        out, new_state = self.mixer(self.norm(x), state, return_state)
        return self._add(x, out), new_state

    def step(self, x, state: LayerState):
        out, new_state = self.mixer.step(self.norm(x), state)
        return self._add(x, out), new_state

    def _add(self, residual: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.residual_in_fp32:
            return residual.float() + out.float()
        return residual + out


class DnaMambaLM(nn.Module):
    """Mamba language model over single nucleotides with a tied embedding / LM head."""

    def __init__(self, config: DnaMambaConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight  # tied
        # Recompute each block's activations in the backward instead of storing them (per-layer checkpointing).
        # Only the step-by-step blocks: a fused block (CUDA) keeps nothing but its input already, which is what a
        # checkpoint would keep, so checkpointing it would only run its forward twice.
        self.gradient_checkpointing = False
        self.apply(self._init_weights)
        _no_weight_decay(self.embedding.weight)

    def _init_weights(self, module: nn.Module) -> None:
        cfg = self.config
        keep_bias = getattr(getattr(module, "bias", None), "_skip_reinit", False)  # dt_proj's bias is its init
        if isinstance(module, nn.Linear) and module.bias is not None and not keep_bias:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=cfg.initializer_range)
        if isinstance(module, MambaMixer) and cfg.rescale_prenorm_residual:
            # Each block adds to the residual stream; scale its output projection so the sum stays O(1) at init.
            nn.init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                module.out_proj.weight /= math.sqrt(cfg.n_layer)

    def forward(
        self,
        input_ids: torch.Tensor,
        state: list[LayerState] | None = None,
        return_state: bool = False,
        output_hidden_states: bool = False,
    ) -> LMOutput:
        """Parallel forward over a (chunk of a) sequence.

        Args:
            input_ids: (B, L) token ids.
            state: per-layer states carried from the previous chunk (streaming); None starts from zero.
            return_state: also return the per-layer states after the last position.
            output_hidden_states: also return the residual stream after the embedding and after each block
                (n_layer + 1 tensors; the last one is after the final norm).

        Shapes:
            logits: (B, L, vocab_size) fp32.
        """
        if state is not None and len(state) != len(self.layers):
            raise ValueError(f"state has {len(state)} layers, the model has {len(self.layers)}")
        x = self.embedding(input_ids)  # (B, L, D)
        hidden_states = [x] if output_hidden_states else None
        new_states = [] if return_state else None
        # The residual stream between blocks is the model's own unless hidden states or hooks hand it out: then a
        # fused block's backward may write its input gradient over its input (mamba_block's reuse_input).
        private = torch.is_grad_enabled() and not output_hidden_states and not self._stream_is_observed()
        for i, layer in enumerate(self.layers):
            layer_state = None if state is None else state[i]
            if self.gradient_checkpointing and torch.is_grad_enabled() and not layer.uses_fused(x):
                x, layer_state = checkpoint(layer, x, layer_state, return_state, use_reentrant=False)
            else:
                x, layer_state = layer(x, layer_state, return_state, reuse_input=private)
            if return_state:
                new_states.append(layer_state)
            if output_hidden_states:
                hidden_states.append(x)
        x = self.norm_f(x)
        if output_hidden_states:
            hidden_states[-1] = x
        logits = self.lm_head(x).float()  # (B, L, V)
        return LMOutput(logits=logits, state=new_states, hidden_states=hidden_states)

    def _stream_is_observed(self) -> bool:
        """Whether a forward hook (global, or on the embedding or a block) may keep a residual-stream tensor."""
        modules = [self.embedding, *self.layers]
        return bool(nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
                    or any(m._forward_hooks or m._forward_pre_hooks for m in modules))

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, state: list[LayerState]) -> tuple[torch.Tensor, list[LayerState]]:
        """One token per sequence through the recurrence. Shapes: input_ids (B,) -> logits (B, V)."""
        x = self.embedding(input_ids)  # (B, D)
        new_states = []
        for layer, layer_state in zip(self.layers, state, strict=True):
            x, s = layer.step(x, layer_state)
            new_states.append(s)
        logits = self.lm_head(self.norm_f(x)).float()
        return logits, new_states

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> list[LayerState]:
        """Zero states for ``step()`` or streaming; conv state in ``dtype`` (default: the weights' dtype)."""
        p = self.embedding.weight
        return [
            layer.mixer.allocate_state(batch_size, device=device or p.device, dtype=dtype or p.dtype)
            for layer in self.layers
        ]

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: no decay on A_log, D, biases, norms and embeddings (A_log is 2-D, so rank is no guide)."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            skip = getattr(param, "_no_weight_decay", False) or "norm" in name or name.endswith("bias")
            (no_decay if skip else decay).append(param)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once by parameters()

    # Saving and loading live in dna_mamba.model.io; these are the conventional entry points.
    def save_pretrained(self, directory) -> None:
        from dna_mamba.model.io import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory, device=None) -> DnaMambaLM:
        from dna_mamba.model.io import load_pretrained

        return load_pretrained(directory, device=device)
