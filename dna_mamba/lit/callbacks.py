"""Training callbacks: throughput and memory logging, per-epoch augmentation seeds, the resumable last checkpoint,
checkpoints that never hold diverged weights, and a Ctrl-C that stops a run with its progress saved."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


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


def weights_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter of ``module`` is finite (one device sync for all of them)."""
    flags = [torch.isfinite(p).all() for p in module.parameters() if p.numel()]
    return bool(torch.stack(flags).all()) if flags else True


def healthy_state(trainer: L.Trainer) -> bool:
    """Whether the model may be checkpointed: finite weights, and no run of non-finite losses going on (a module's
    ``bad_steps``), on every rank (a sharded save needs them all)."""
    module = trainer.lightning_module
    healthy = getattr(module, "bad_steps", 0) == 0 and weights_finite(module)
    return trainer.strategy.reduce_boolean_decision(healthy, all=True)


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that it never keeps a state with non-finite weights or a non-finite score
    as the best (with no best yet, Lightning's would)."""

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        finite_score = current is None or bool(torch.isfinite(current))
        if not finite_score or not healthy_state(trainer):
            return False
        return super().check_monitor_top_k(trainer, current)


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

    A save never writes diverged weights: while the loss is not finite (a module's ``bad_steps``) or a weight is
    not, last.ckpt keeps the last good state. Stops from outside are saved too: a SIGTERM (a cluster scheduler;
    Lightning stops at the end of the batch), a :meth:`request_stop` (:func:`stop_on_ctrl_c`: at the end of the
    optimizer step) and a KeyboardInterrupt (at once, wherever it came: the resumed run redoes the micro-batches of
    that step); ``stop_reason`` then says which.
    """

    def __init__(self, path: str | Path, every_n_steps: int | None = None, every_epoch: bool = False):
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.every_epoch = every_epoch
        self.saved_step = 0  # the optimizer step last.ckpt holds (at the start: the step the run starts from)
        self.unhealthy_step: int | None = None  # the last step whose save was skipped for non-finite weights or loss
        self.stop_reason: str | None = None  # "Ctrl-C" or "SIGTERM" when a signal stopped the run
        self.training = False  # between the start and the end of fit's training
        self.stop_requested = False
        self._epoch_complete = False
        self._save_after_validation = False
        self._step_at_batch_start = 0

    def request_stop(self) -> None:
        """Stop the run at the end of the current optimizer step (or validation), saving it: what Ctrl-C asks."""
        self.stop_requested = True
        self.stop_reason = "Ctrl-C"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts_epochs = trainer.max_epochs is not None and trainer.max_epochs >= 0
        if counts_epochs and trainer.max_steps >= 0 and not trainer.fast_dev_run:
            raise ValueError(f"LastCheckpoint needs a trainer that counts epochs or steps, not both (max_epochs="
                             f"{trainer.max_epochs}, max_steps={trainer.max_steps}): a resume would skip epochs")
        self.saved_step = trainer.global_step
        self._save_after_validation = False
        self.training = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.received_sigterm:
            self.stop_reason = "SIGTERM"  # Lightning stops the run right after this hook
        if trainer.global_step > self._step_at_batch_start and self._stop_wanted(trainer):
            trainer.should_stop = True  # at the end of an optimizer step, so the resume starts with the next one
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
        if trainer.sanity_checking:
            return
        if self._save_after_validation:
            self._save(trainer, again=True)
        if self.training and self._stop_wanted(trainer):
            # Ctrl-C during a validation: stop after it (Lightning resumes from this state as from its own saves).
            trainer.should_stop = True
            self._save(trainer)
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
        self.training = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.stop_reason = "Ctrl-C"
        elif isinstance(exception, SIGTERMException):
            self.stop_reason = "SIGTERM"
        else:
            self.training = False  # a failure (a diverged loss: no save then anyway) keeps the last good save
            return
        if self.training:  # an interrupt before training started has no progress to save
            self._save(trainer)
        self.training = False

    def _stop_wanted(self, trainer: L.Trainer) -> bool:
        if trainer.world_size > 1:  # every rank stops at the same step, however the signal reached them
            return trainer.strategy.reduce_boolean_decision(self.stop_requested, all=False)
        return self.stop_requested

    def _periodic(self, trainer: L.Trainer) -> bool:
        return bool(self.every_n_steps) and trainer.global_step % self.every_n_steps == 0

    @staticmethod
    def _stops(trainer: L.Trainer, epoch_end: bool = False) -> bool:
        """Whether fit ends after this batch (or, with ``epoch_end``, after this epoch)."""
        if trainer.should_stop or trainer.received_sigterm or 0 <= trainer.max_steps <= trainer.global_step:
            return True
        max_epochs = trainer.max_epochs
        return epoch_end and max_epochs is not None and 0 <= max_epochs <= trainer.current_epoch + 1

    def _save(self, trainer: L.Trainer, again: bool = False) -> None:
        # One save per optimizer step (unless ``again``): the micro-batches that accumulate into the next step share
        # its global_step, and the first of them to end is the one that stepped.
        if trainer.fast_dev_run or (self.saved_step == trainer.global_step and not again):
            return
        if not healthy_state(trainer):
            self.unhealthy_step = trainer.global_step  # last.ckpt keeps the last good state
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume from (and no log line)
        self.saved_step = trainer.global_step


@contextlib.contextmanager
def stop_on_ctrl_c(last: LastCheckpoint) -> Iterator[None]:
    """Within the block, a first Ctrl-C during training asks ``last`` to stop the run at the end of the optimizer step
    and save it (:meth:`LastCheckpoint.request_stop`); a second one, or one outside training, interrupts at once as
    usual. A process that ignores Ctrl-C (or handles it itself), or a thread other than the main one, is left alone.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    owner = os.getpid()

    def on_ctrl_c(signum, frame) -> None:
        if os.getpid() != owner:
            return  # a forked data loader worker: it keeps serving batches until the run is done with it
        if not last.training or last.stop_requested:
            raise KeyboardInterrupt
        last.request_stop()
        # os.write, not print: a signal handler may run in the middle of a print to the same stream.
        os.write(2, b"\nCtrl-C: stopping at the end of this optimizer step to save it (Ctrl-C again stops at once)\n")

    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
