"""Next-token pretraining of a DnaMambaLM as a LightningModule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import FSDPStrategy

from dna_mamba.errors import RunStopped
from dna_mamba.model import DnaMambaConfig, DnaMambaLM
from dna_mamba.model.segments import segmented_lm_loss
from dna_mamba.tokenizer import N

LN2 = math.log(2.0)


@dataclass
class OptimConfig:
    """AdamW with a cosine schedule, as in the Mamba paper's DNA pretraining."""

    lr: float = 8e-3  # the paper's rate for its small DNA models
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_fraction: float = 0.1  # of the total optimizer steps
    min_lr_fraction: float = 0.1  # the cosine ends at this fraction of lr
    max_bad_steps: int = 5  # consecutive non-finite losses before training stops

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"optim.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.min_lr_fraction <= 1:
            raise ValueError(f"optim.min_lr_fraction must be in [0, 1], got {self.min_lr_fraction}")
        if self.max_bad_steps < 1:
            raise ValueError(f"optim.max_bad_steps must be at least 1, got {self.max_bad_steps}")


def next_token_targets(tokens: torch.Tensor) -> torch.Tensor:
    """Targets for positions 0..L-2: the next token, with N targets ignored (-100).

    Every position whose target is A/C/G/T counts, the same positions the Markov baseline scores.
    """
    targets = tokens[:, 1:].long().clone()  # (B, L - 1)
    targets[targets >= N] = -100
    return targets


def lm_nll_sum(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed natural-log NLL over scored positions, and their count. Shapes: logits (B, L, V), tokens (B, L)."""
    targets = next_token_targets(tokens)
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    return nll, (targets != -100).sum()


class NonFiniteLossError(RunStopped):
    """Training produced too many non-finite losses in a row (``optim.max_bad_steps``): the run diverged."""


def warmup_seq_len(step: int, max_steps: int, seq_len: int, warmup_fraction: float, min_len: int = 1024) -> int:
    """Training window length at optimizer ``step`` under the Mamba paper's sequence-length warm-up.

    Training starts at ``seq_len / 2^k`` (the shortest halving of ``seq_len`` that is still >= ``min_len``; 1k for
    a power-of-two context) and doubles in equal stages over the first ``warmup_fraction * max_steps`` steps, then
    stays at ``seq_len``. Every stage length divides ``seq_len``, so a (B, seq_len) batch reshapes into shorter
    windows with the same tokens per step.
    """
    halvings = 0
    while seq_len % 2 ** (halvings + 1) == 0 and seq_len // 2 ** (halvings + 1) >= min_len:
        halvings += 1
    warmup_steps = int(warmup_fraction * max_steps)
    if halvings == 0 or step >= warmup_steps:
        return seq_len
    stage = step * halvings // warmup_steps  # 0 .. halvings - 1, equal numbers of steps each
    return seq_len >> (halvings - stage)


class PretrainModule(L.LightningModule):
    """Next-token pretraining with optional memory savers and a sequence-length warm-up.

    Args:
        model_config: the model to build.
        optim: AdamW and schedule settings.
        segment_len: when set and shorter than the training windows, the loss is computed by segment checkpointing
            (``dna_mamba.model.segments``): activations for one segment at a time, exact gradients.
        activation_checkpointing: recompute each block's activations in the backward instead of storing them.
        seq_warmup_fraction: fraction of ``max_steps`` spent warming the window length up from ``seq_warmup_min_len``
            (see :func:`warmup_seq_len`); 0 trains at the full length throughout.
        seq_warmup_min_len: the shortest warm-up window (the paper starts at 1k).
    """

    def __init__(
        self,
        model_config: DnaMambaConfig | dict,
        optim: OptimConfig | dict | None = None,
        segment_len: int | None = None,
        activation_checkpointing: bool = False,
        seq_warmup_fraction: float = 0.0,
        seq_warmup_min_len: int = 1024,
    ):
        super().__init__()
        if isinstance(model_config, dict):
            model_config = DnaMambaConfig.from_dict(model_config)
        if optim is None or isinstance(optim, dict):
            optim = OptimConfig(**(optim or {}))
        if segment_len is not None and segment_len < 1:
            raise ValueError(f"trainer.segment_len must be positive or null, got {segment_len}")
        if not 0 <= seq_warmup_fraction < 1:
            raise ValueError(f"trainer.seq_warmup_fraction must be in [0, 1), got {seq_warmup_fraction}")
        # Plain dicts in hparams: checkpoints stay loadable without pickled dataclasses.
        self.save_hyperparameters({
            "model_config": model_config.to_dict(), "optim": vars(optim), "segment_len": segment_len,
            "activation_checkpointing": activation_checkpointing, "seq_warmup_fraction": seq_warmup_fraction,
            "seq_warmup_min_len": seq_warmup_min_len,
        })
        self.model = DnaMambaLM(model_config)
        self.model.gradient_checkpointing = activation_checkpointing
        self.optim = optim
        self.segment_len = segment_len
        self.seq_warmup_fraction = seq_warmup_fraction
        self.seq_warmup_min_len = seq_warmup_min_len
        self._bad_steps = 0
        self._val_nll = 0.0
        self._val_count = 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens).logits

    def training_step(self, batch: torch.Tensor, batch_idx: int):
        if self.seq_warmup_fraction > 0:
            window = warmup_seq_len(self.global_step, self.trainer.max_steps, batch.shape[1],
                                    self.seq_warmup_fraction, self.seq_warmup_min_len)
            # Consecutive sub-windows of each window: the same tokens per step at a shorter context.
            batch = batch.reshape(-1, window)
            self.log("train/seq_len", float(window))
        if self.segment_len is not None and self.segment_len < batch.shape[1]:
            nll, count = segmented_lm_loss(self.model, batch, self.segment_len)
        else:
            nll, count = lm_nll_sum(self.model(batch).logits, batch)
        loss = nll / count.clamp(min=1)
        if not torch.isfinite(loss):
            # Returning None makes Lightning skip this optimizer step (the weights stay as they are, though the step
            # count and schedule move on); checkpoints wait for a finite loss (see LastCheckpoint).
            self._bad_steps += 1
            self.log("train/skipped_steps", float(self._bad_steps))
            print(f"warning: non-finite loss at step {self.global_step}; step skipped ({self._bad_steps} in a row)")
            if self._bad_steps >= self.optim.max_bad_steps:
                # The runner adds what last.ckpt holds and how to go on from it.
                raise NonFiniteLossError(f"{self._bad_steps} non-finite losses in a row at step {self.global_step} "
                                         f"(optim.max_bad_steps={self.optim.max_bad_steps})")
            return None
        self._bad_steps = 0
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/bits_per_base", loss / LN2)
        return loss

    @property
    def bad_steps(self) -> int:
        """Non-finite losses in a row up to now (0 after a finite one)."""
        return self._bad_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A resume restores the optimizer and scheduler as saved, with the optim.lr, weight_decay and betas of the run's
        # first launch: a relaunch that changes them (a lower rate after a diverged run) would be silently ignored.
        # This launch's settings win; the schedule goes on at the same point of its warm-up and cosine.
        changed = apply_optim_settings(checkpoint, self.optim, self.model.param_groups(self.optim.weight_decay))
        if changed:
            print(f"note: resuming with {', '.join(changed)}")

    def on_validation_epoch_start(self) -> None:
        self._val_nll, self._val_count = 0.0, 0

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        nll, count = lm_nll_sum(self.model(batch).logits, batch)
        self._val_nll += float(nll)
        self._val_count += int(count)

    def on_validation_epoch_end(self) -> None:
        totals = torch.tensor([self._val_nll, float(self._val_count)], dtype=torch.float64, device=self.device)
        totals = self.all_gather(totals).reshape(-1, 2).sum(0) if self.trainer.world_size > 1 else totals
        loss = (totals[0] / totals[1].clamp(min=1)).float()
        # sync_dist is not needed: the totals are already gathered across ranks.
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/bits_per_base", loss / LN2, prog_bar=True)

    def configure_optimizers(self):
        return adamw_cosine(self.model.param_groups(self.optim.weight_decay), self.optim, self.trainer, self.device)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)


def clip_gradients(module: L.LightningModule, optimizer, gradient_clip_val, gradient_clip_algorithm) -> None:
    """Lightning's gradient clipping, except under FSDP with clipping by norm, which Lightning's FSDP precision plugin
    refuses (`trainer.gradient_clip_val` would stop `trainer=fsdp` at its first step): there the sharded model's own
    ``clip_grad_norm_`` clips by the norm over every rank's shards."""
    strategy = module.trainer.strategy
    if gradient_clip_val and isinstance(strategy, FSDPStrategy) and gradient_clip_algorithm in (None, "norm"):
        strategy.model.clip_grad_norm_(gradient_clip_val)
        return
    module.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


def apply_optim_settings(checkpoint: dict, optim: OptimConfig, param_groups: list[dict]) -> list[str]:
    """Give the optimizer and scheduler states of a checkpoint made by :func:`adamw_cosine` the learning rate, weight
    decay and betas of ``optim`` (``param_groups``: the model's groups, as ``configure_optimizers`` makes them).

    The rate is rescaled, not reset: each group's current rate and the scheduler's base rates change by the ratio of
    the new ``optim.lr`` to the saved one. Returns the settings that changed, as ``optim.lr=0.002 (was 0.008)``;
    a checkpoint that recorded no optim settings, or a single one of its own, is left alone.
    """
    saved = (checkpoint.get("hyper_parameters") or {}).get("optim") or {}
    optimizer_states, schedulers = checkpoint.get("optimizer_states") or [], checkpoint.get("lr_schedulers") or []
    new = vars(optim)
    changed = [key for key in ("lr", "weight_decay", "beta1", "beta2") if key in saved and saved[key] != new[key]]
    groups = [g for g in param_groups if g["params"]]
    if not changed or len(optimizer_states) != 1 or len(optimizer_states[0]["param_groups"]) != len(groups):
        return []
    ratio = optim.lr / saved.get("lr", optim.lr)
    for state, fresh in zip(optimizer_states[0]["param_groups"], groups, strict=True):
        state["lr"] *= ratio
        state["initial_lr"] = optim.lr
        state["weight_decay"] = fresh["weight_decay"]
        state["betas"] = (optim.beta1, optim.beta2)
    for scheduler in schedulers:
        scheduler["base_lrs"] = [optim.lr] * len(scheduler.get("base_lrs", groups))
        scheduler["_last_lr"] = [lr * ratio for lr in scheduler.get("_last_lr", [])]
    return [f"optim.{key}={new[key]} (was {saved[key]})" for key in changed]


def adamw_cosine(param_groups: list[dict], opt: OptimConfig, trainer: L.Trainer, device: torch.device,
                 total_steps: int | None = None) -> dict:
    """AdamW over ``param_groups`` with linear warm-up then cosine decay, stepped per optimizer step.

    ``total_steps``: the run's optimizer steps, when the caller knows them; else Lightning's estimate. (For a trainer
    counting epochs that estimate sets up the training data loader before a checkpoint is restored, so the loader
    would not be told where a resumed epoch stopped.) Returns what ``LightningModule.configure_optimizers`` returns.
    Empty groups (a frozen backbone) are dropped.
    """
    # Lightning refuses to clip gradients of a fused optimizer under mixed precision; foreach is nearly as fast.
    fused = device.type == "cuda" and not trainer.gradient_clip_val
    optimizer = torch.optim.AdamW(
        [g for g in param_groups if g["params"]], lr=opt.lr, betas=(opt.beta1, opt.beta2), fused=fused
    )
    total = max(1, int(total_steps if total_steps is not None else trainer.estimated_stepping_batches))
    warmup = int(opt.warmup_fraction * total)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return opt.min_lr_fraction + (1 - opt.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
