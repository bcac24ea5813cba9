"""Training callbacks: throughput and memory logging, per-epoch augmentation seeds, the resumable last checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint


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

    Lightning calls ``set_epoch`` on distributed samplers only; the dataset draws its own augmentation. A run resumed
    mid-epoch gets no epoch-start hook for that epoch, so the epoch is also set when training starts.
    """

    def on_train_start(self, trainer, pl_module) -> None:
        self._set_epoch(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._set_epoch(trainer)

    @staticmethod
    def _set_epoch(trainer) -> None:
        datamodule = trainer.datamodule
        dataset = getattr(datamodule, "datasets", {}).get("train") if datamodule is not None else None
        if dataset is not None and hasattr(dataset, "set_epoch"):
            dataset.set_epoch(trainer.current_epoch)


class LastCheckpoint(Checkpoint):
    """Keeps ``last.ckpt``: every ``every_n_steps`` optimizer steps, at the end of every epoch (``every_epoch``) and
    where the run stops (``max_steps``, ``max_epochs``, or a stop such as ``trainer.max_time``'s), so that it holds
    the weights the run exports, in a state from which Lightning (2.6) resumes exactly where the run left off.

    Where it saves matters, because Lightning's restart reads the loop counters of the checkpoint:

    - Never after fit: by then the last epoch is counted as finished, whether it was or was cut short. With
      ``max_steps`` set the restart then carries that epoch's batch counts into the next epoch, which ends at once (an
      epoch-based run loses an epoch, a step-based one gets a stray one-batch epoch); without it, a run stopped
      mid-epoch loses the rest of that epoch.
    - Within an epoch: at the end of the batch, as Lightning's own periodic checkpoints are; the resume goes on
      with the next batch.
    - On an epoch's last batch the right state depends on how the trainer counts. Counting epochs: at the end of the
      epoch (after its validation). Counting steps: at the end of the batch, and again after a validation that runs
      on it; from an epoch's end the restart would train one stray batch.

    The trainer must therefore count epochs or steps, not both (``max_epochs`` with ``max_steps=-1``, or
    ``max_steps`` with ``max_epochs=-1``). A ``Checkpoint`` callback, so that Lightning calls it after the others (a
    Timer decides to stop in the same hook) and adds no default ModelCheckpoint beside it. Every rank calls it (a
    sharded save gathers).
    """

    def __init__(self, path: str | Path, every_n_steps: int | None = None, every_epoch: bool = False):
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.every_epoch = every_epoch
        self.saved_step = 0  # the optimizer step last.ckpt holds (at the start: the step the run starts from)
        self._epoch_complete = False
        self._save_after_validation = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts_epochs = trainer.max_epochs is not None and trainer.max_epochs >= 0
        if counts_epochs and trainer.max_steps >= 0 and not trainer.fast_dev_run:
            raise ValueError(f"LastCheckpoint needs a trainer that counts epochs or steps, not both (max_epochs="
                             f"{trainer.max_epochs}, max_steps={trainer.max_steps}): a resume would skip epochs")
        self.saved_step = trainer.global_step
        self._save_after_validation = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self._epoch_complete = batch_idx + 1 >= trainer.num_training_batches
        if not self._epoch_complete:
            if self._stops(trainer) or self._periodic(trainer):
                self._save(trainer)
        elif trainer.max_steps >= 0 and (self._stops(trainer, epoch_end=True) or self._periodic(trainer)
                                         or self.every_epoch):
            self._save(trainer)
            # Unless it is only the validation Lightning adds when a run is stopped, which a resume does not repeat.
            self._save_after_validation = not trainer.should_stop

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._save_after_validation and not trainer.sanity_checking:
            self._save(trainer, again=True)
        self._save_after_validation = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_after_validation = False
        # An epoch cut short (by a Timer) was saved at its last batch: saving here would mark it finished.
        if self._epoch_complete and trainer.max_steps < 0 and (
                self.every_epoch or self._periodic(trainer) or self._stops(trainer, epoch_end=True)):
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A stop that no batch announced (a callback stopping the run from validation; ours do not) still leaves the
        # exported weights in last.ckpt, though a resume from this state may not follow the plan exactly.
        self._save(trainer)

    def _periodic(self, trainer: L.Trainer) -> bool:
        return bool(self.every_n_steps) and trainer.global_step % self.every_n_steps == 0

    @staticmethod
    def _stops(trainer: L.Trainer, epoch_end: bool = False) -> bool:
        """Whether fit ends after this batch (or, with ``epoch_end``, after this epoch)."""
        if trainer.should_stop or 0 <= trainer.max_steps <= trainer.global_step:
            return True
        max_epochs = trainer.max_epochs
        return epoch_end and max_epochs is not None and 0 <= max_epochs <= trainer.current_epoch + 1

    def _save(self, trainer: L.Trainer, again: bool = False) -> None:
        # One save per optimizer step (unless ``again``): the micro-batches that accumulate into the next step share
        # its global_step, and the first of them to end is the one that stepped.
        if trainer.fast_dev_run or (self.saved_step == trainer.global_step and not again):
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume from (and no log line)
        self.saved_step = trainer.global_step
