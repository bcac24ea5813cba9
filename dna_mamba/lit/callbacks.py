"""Training callbacks: throughput and memory logging, per-epoch augmentation seeds."""

from __future__ import annotations

import time

import lightning as L
import torch


class ThroughputMonitor(L.Callback):
    """Logs tokens/s, step time and peak GPU memory every ``every_n_steps`` optimizer steps."""

    def __init__(self, every_n_steps: int = 10):
        super().__init__()
        self.every_n_steps = every_n_steps
        self._tokens = 0
        self._start = None
        self._last_step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._start = time.perf_counter()
            self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens += batch.numel() * trainer.world_size
        steps = trainer.global_step - self._last_step
        if steps < self.every_n_steps:
            return
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._start
        metrics = {
            "perf/tokens_per_s": self._tokens / elapsed,
            "perf/step_time_s": elapsed / steps,
        }
        if pl_module.device.type == "cuda":
            metrics["perf/peak_gpu_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        pl_module.log_dict(metrics, prog_bar=False)
        pl_module.log("tok/s", metrics["perf/tokens_per_s"], prog_bar=True)
        self._tokens, self._start, self._last_step = 0, time.perf_counter(), trainer.global_step


class EpochSeeder(L.Callback):
    """Tells the training dataset the epoch, so its reverse-complement draws differ between epochs.

    Lightning calls ``set_epoch`` on distributed samplers only; the dataset draws its own augmentation.
    """

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        datamodule = trainer.datamodule
        dataset = getattr(datamodule, "datasets", {}).get("train") if datamodule is not None else None
        if dataset is not None and hasattr(dataset, "set_epoch"):
            dataset.set_epoch(trainer.current_epoch)
