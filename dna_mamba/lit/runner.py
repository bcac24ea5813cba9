"""The pretraining run as a library call: data, model, Lightning trainer, evaluation, export, plots.

``dna_mamba.train`` (Hydra) builds these dataclasses from the command line; notebooks can call
:func:`run_pretraining` directly.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, Timer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy

from dna_mamba.errors import EXIT_CTRL_C, EXIT_SIGTERM, RunStopped
from dna_mamba.export import export_checkpoint, load_model_source
from dna_mamba.lit.callbacks import BestCheckpoint, EpochSeeder, LastCheckpoint, ThroughputMonitor, stop_on_ctrl_c
from dna_mamba.lit.checkpoint_io import AtomicCheckpointIO
from dna_mamba.lit.datamodule import GenomeDataConfig, GenomeDataModule
from dna_mamba.lit.plots import plot_training_curves
from dna_mamba.lit.pretrain import NonFiniteLossError, OptimConfig, PretrainModule
from dna_mamba.lit.resume import (
    RunCSVLogger,
    RunRecord,
    check_same_context,
    check_same_data,
    check_same_genome,
    check_same_model,
    config_group_choice,
    find_resume_point,
    genome_fingerprint,
    model_overrides,
    model_settings_apart,
    record_settings,
    refuse_to_overwrite,
)
from dna_mamba.model import DnaMambaConfig, DnaMambaLM, fused_block, save_pretrained
from dna_mamba.model.io import load_weights
from dna_mamba.outputs import atomic_output


@dataclass
class BatchPlan:
    """How a context length becomes micro-batches: tokens per optimizer step stay constant across contexts."""

    seq_len: int
    tokens_per_step: int  # target tokens per optimizer step (all devices together)
    micro_batch_tokens: int  # what one device processes per forward/backward
    devices: int = 1
    batch_size: int = field(init=False)
    accumulate_grad_batches: int = field(init=False)

    def __post_init__(self) -> None:
        for name in ("seq_len", "tokens_per_step", "micro_batch_tokens", "devices"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        self.batch_size = max(1, self.micro_batch_tokens // self.seq_len)
        per_pass = self.batch_size * self.seq_len * self.devices
        self.accumulate_grad_batches = max(1, round(self.tokens_per_step / per_pass))

    @property
    def effective_tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.devices * self.accumulate_grad_batches


@dataclass
class TrainerConfig:
    """The subset of Lightning Trainer options a run needs, plus where it writes."""

    out_dir: str = "runs/default"
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = 1000
    max_time: str | None = None  # "DD:HH:MM:SS": a safety net; the schedule is planned on max_steps
    val_check_interval: int = 100  # training batches between validations
    log_every_n_steps: int = 10
    gradient_clip_val: float = 1.0
    checkpoint_every_n_steps: int = 100
    num_sanity_val_steps: int = 0
    fast_dev_run: bool = False
    enable_progress_bar: bool = True
    limit_val_batches: int | float | None = None
    deterministic: bool = False
    # Memory savers for long contexts (see PretrainModule); both recompute in the backward and give exact gradients.
    segment_len: int | None = None  # positions per checkpointed segment; None: the whole window in one pass
    # Recompute each step-by-step block (the CPU path) in the backward; fused blocks keep only their input anyway.
    activation_checkpointing: bool = False
    # Tokens per piece of the fused block's forward and backward on CUDA (dna_mamba.model.fused_block): smaller
    # pieces, less working memory per layer for a little speed; None: one piece.
    piece_tokens: int | None = 262144
    seq_warmup_fraction: float = 0.0  # of max_steps, doubling the window from 1k up to the context (Mamba paper)

    def __post_init__(self) -> None:
        for name in ("segment_len", "piece_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"trainer.{name} must be positive or null, got {value}")


def require_accelerator(config: TrainerConfig) -> None:
    """Fail in one line before any data is prepared when the settings ask for a GPU that is not there (Lightning
    would stop at the Trainer with a long traceback)."""
    if config.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={config.accelerator} (trainer=gpu, ddp, fsdp and the GPU experiments) "
                         "needs a CUDA GPU, and PyTorch sees none; on this machine add trainer=cpu")


def require_steps(config: TrainerConfig) -> None:
    """Refuse a pretraining run planned to train nothing, which would evaluate and export an untrained model."""
    if not config.fast_dev_run and (config.max_steps == 0 or config.max_steps < -1):
        raise ValueError(f"trainer.max_steps={config.max_steps} trains nothing (and would export an untrained model): "
                         "set trainer.max_steps to the optimizer steps to train, e.g. trainer.max_steps=1000, or use "
                         "trainer.fast_dev_run=true for a one-step check")


def run_loggers(out_dir: Path, resume_step: int | None = None) -> list:
    """CSV metrics (what the plots read; a resumed run keeps its earlier rows) and TensorBoard, when it is installed,
    under out_dir."""
    loggers = [RunCSVLogger(out_dir, resume_step)]
    try:
        loggers.append(TensorBoardLogger(out_dir, name="tensorboard", version=""))
    except ModuleNotFoundError:  # tensorboard is optional on machines that only run sweeps
        pass
    return loggers


class _LightningNoise(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger, which newer releases print at every Trainer start, and its
    line on Ctrl-C (the run says itself what it saved)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "Tip: For seamless" not in message and "Detected KeyboardInterrupt" not in message


def quiet_lightning() -> None:
    """Keep the run's output to what the user can act on (idempotent)."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _LightningNoise) for f in rank_zero.filters):
        rank_zero.addFilter(_LightningNoise())
    # Lightning 2.6's own use of a torch API that torch 2.10+ deprecates: nothing a user can change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Logging counts optimizer steps across epochs here, so a short epoch loses no logged step: the advice is moot.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
    # Windows are slices of a memory-mapped store, cheap to batch in the main process; data.num_workers is the
    # setting where that is not so (Lightning's advice names its own DataLoader argument).
    warnings.filterwarnings("ignore", message=r"The '\w+_dataloader' does not have many workers")


def build_trainer(config: TrainerConfig, out_dir: Path, accumulate_grad_batches: int, callbacks: list,
                  resume_step: int | None = None, **overrides) -> L.Trainer:
    """A Lightning Trainer with what every run of ours shares (devices, precision, clipping, logging, atomic
    checkpoint writes, a Timer); ``resume_step``: the step a resumed run continues from; ``overrides`` are the
    caller's own Trainer options and win."""
    if not any(isinstance(c, Timer) for c in callbacks):
        # Every run has a Timer, not only those with a trainer.max_time (Lightning adds one for max_time alone): a
        # checkpoint holds the state of each callback, and Lightning warns on resume about any whose callback is
        # missing, so resuming a capped run with max_time=null would ask for a Timer. With duration None it only
        # counts time, so the cap of a later resume still covers every part of the run.
        callbacks = [*callbacks, Timer(duration=config.max_time, interval="step")]
    quiet_lightning()
    options = dict(
        default_root_dir=out_dir,
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        precision=config.precision,
        max_steps=config.max_steps,
        log_every_n_steps=config.log_every_n_steps,
        gradient_clip_val=config.gradient_clip_val,
        accumulate_grad_batches=accumulate_grad_batches,
        num_sanity_val_steps=config.num_sanity_val_steps,
        fast_dev_run=config.fast_dev_run,
        enable_progress_bar=config.enable_progress_bar,
        limit_val_batches=config.limit_val_batches,
        deterministic=config.deterministic,
        callbacks=callbacks,
        logger=run_loggers(out_dir, resume_step),
        plugins=[AtomicCheckpointIO()],
    )
    return L.Trainer(**(options | overrides))


def last_checkpoint(out_dir: Path, every_n_steps: int | None = None, every_epoch: bool = False) -> LastCheckpoint:
    """The callback that keeps ``out_dir/checkpoints/last.ckpt``, what ``resume=auto`` reads and users export: saved
    periodically and where training ends, so that it holds the exported weights and a resume follows the plan
    exactly. The checkpoint IO writes it atomically."""
    return LastCheckpoint(out_dir / "checkpoints" / "last.ckpt", every_n_steps=every_n_steps, every_epoch=every_epoch)


def early_stop_note(trainer: L.Trainer, planned_steps: int, max_time: str | None) -> str | None:
    """Why fit ended before ``planned_steps`` optimizer steps, or None when it ran them all."""
    if trainer.global_step >= planned_steps:
        return None
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if remaining is not None and remaining <= 0:
        if trainer.global_step == 0:
            # The limit ran out within the first step's micro-batches: no step to checkpoint, nothing to resume.
            return (f"the time limit trainer.max_time={max_time} stopped the run before its first optimizer step, so "
                    "nothing was trained or checkpointed; raise it (or set it to null) and start the run again")
        # The timer's state is in the checkpoint, so a resumed run counts the time of its earlier parts too.
        return (f"the time limit trainer.max_time={max_time} stopped the run; raise it (or set it to null) and add "
                "resume=auto to run the rest")
    return "the run stopped before the planned steps"


# The settings that shape a model's weights: a saved model starts a run only of the same.
SIZE_SETTINGS = ("d_model", "n_layer", "d_state", "d_conv", "expand", "dt_rank", "vocab_size", "conv_bias", "proj_bias")


def check_initial_sizes(saved: DnaMambaConfig, configured: DnaMambaConfig, init_from: str) -> None:
    """Refuse, in one line that names the ``model.*`` settings apart and the fix, to start a model from a saved one of
    another size (``load_state_dict`` would stop with a traceback of shapes)."""
    saved_dict, configured_dict = saved.to_dict(), configured.to_dict()
    keys = model_settings_apart(saved_dict, configured_dict, SIZE_SETTINGS)
    if not keys:
        return
    group = config_group_choice("model", saved_dict)
    fix = f"add model={group}" if group else f"set {model_overrides(saved_dict, keys, ' ')}"
    raise ValueError(f"init_from={init_from} holds a model with {model_overrides(saved_dict, keys)}, and this run's "
                     f"model has {model_overrides(configured_dict, keys)}: {fix} to start from it")


def load_initial_weights(module: L.LightningModule, init_from: str, source: DnaMambaLM | None = None) -> None:
    """Copy weights from a saved model directory or a Lightning checkpoint into ``module.model``.

    ``source``: the model already loaded from ``init_from`` (:func:`load_model_source`), if it was.
    """
    source = source or load_model_source(init_from)
    check_initial_sizes(source.config, module.model.config, init_from)
    load_weights(module.model, source.state_dict(), init_from)


def markov_baseline_bits(datamodule: GenomeDataModule) -> dict:
    """Bits/base of an order-k Markov model fit on the training segments, on the same validation windows."""
    from dna_mamba.baselines import markov_baseline

    split = datamodule.split
    val = datamodule.datasets["val"]
    result = markov_baseline(split.store("train"), split["train"], split.store("val"), val.windows,
                             datamodule.seq_len)
    return {"order": result.order, "bits_per_base": result.bits_per_base, "positions": result.scored_positions}


def run_pretraining(
    model_config: DnaMambaConfig,
    data_config: GenomeDataConfig,
    optim_config: OptimConfig,
    trainer_config: TrainerConfig,
    plan: BatchPlan,
    *,
    seed: int = 0,
    resume: str | None = None,
    init_from: str | None = None,
    run_baseline: bool = True,
    export: bool = True,
    settings: str | None = None,
) -> dict:
    """Pretrain, evaluate, compare with the Markov baseline, plot, and export. Returns the summary dict.

    ``settings``: text recorded as ``out_dir/config.yaml`` once the run is accepted (the entry point's config).

    Raises:
        ValueError: a launch refused before it writes anything: no steps planned, a resume of another model, context
            or data (settings or genome content), an unreadable checkpoint, an ``init_from`` model of other sizes.
        RunStopped: the run diverged (``NonFiniteLossError``) or was stopped by Ctrl-C or SIGTERM; last.ckpt holds
            the last good state, and the message says which step and how to go on.
    """
    require_accelerator(trainer_config)
    require_steps(trainer_config)
    out_dir = Path(trainer_config.out_dir)
    genome_files = data_config.resolved_fasta([*data_config.fasta, *data_config.val_fasta])
    # Everything a launch could be refused for is checked before it writes anything.
    resume_point = find_resume_point(resume, out_dir)
    if resume_point is None:
        refuse_to_overwrite(out_dir)
    else:
        check_same_model(resume_point, model_config.to_dict())
        check_same_data(resume_point, data_config.identity())
        check_same_context(resume_point, plan.seq_len)
        check_same_genome(resume_point, genome_fingerprint(genome_files))
    initial = load_model_source(init_from) if init_from else None
    if initial is not None:
        check_initial_sizes(initial.config, model_config, init_from)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_settings(out_dir, settings)
    L.seed_everything(seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")

    datamodule = GenomeDataModule(data_config, seq_len=plan.seq_len, batch_size=plan.batch_size,
                                  progress=trainer_config.enable_progress_bar)
    module = PretrainModule(model_config, optim_config, segment_len=trainer_config.segment_len,
                            activation_checkpointing=trainer_config.activation_checkpointing,
                            seq_warmup_fraction=trainer_config.seq_warmup_fraction)
    fused_block.PIECE_TOKENS = trainer_config.piece_tokens
    if initial is not None:
        load_initial_weights(module, init_from, initial)
        del initial  # the saved model's copy would otherwise stay in memory for the whole run

    # The best validation's checkpoint. last.ckpt is LastCheckpoint's alone: ModelCheckpoint's (save_last) waits for the
    # first validation, and a run that never saved one gets it at fit's end, a state that does not resume exactly.
    best = BestCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=trainer_config.checkpoint_every_n_steps,
        save_top_k=1,
        monitor="val/bits_per_base",
        mode="min",
    )
    last = last_checkpoint(out_dir, every_n_steps=trainer_config.checkpoint_every_n_steps)
    if resume_point is not None:
        last.saved_step = resume_point.global_step  # what last.ckpt holds until this run saves
    trainer = build_trainer(
        trainer_config, out_dir, plan.accumulate_grad_batches,
        callbacks=[best, last, EpochSeeder(), ThroughputMonitor(every_n_steps=trainer_config.log_every_n_steps),
                   LearningRateMonitor(logging_interval="step"), RunRecord(plan.seq_len, genome_files)],
        resume_step=resume_point.global_step if resume_point else None,
        val_check_interval=trainer_config.val_check_interval, check_val_every_n_epoch=None,
    )
    n_params = module.model.num_parameters()
    print(
        f"model: {n_params / 1e6:.2f}M parameters ({model_config.n_layer} blocks x d_model {model_config.d_model}); "
        f"context {plan.seq_len:,}; batch {plan.batch_size} x accumulate {plan.accumulate_grad_batches} x "
        f"{plan.devices} device(s) = {plan.effective_tokens_per_step:,} tokens/step"
    )
    start = time.perf_counter()
    fit(trainer, module, datamodule, resume_point.path if resume_point else None, last, optim_config)
    fit_seconds = time.perf_counter() - start
    # fit prepares the data first (the token store is built from FASTA on first use): that time is not training.
    data_seconds = datamodule.prepare_seconds

    summary: dict = {
        "parameters": n_params,
        "seq_len": plan.seq_len,
        "tokens_per_step": plan.effective_tokens_per_step,
        "global_step": trainer.global_step,
        "planned_steps": trainer_config.max_steps,
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(fit_seconds - data_seconds, 1),
    }
    try:
        if trainer_config.fast_dev_run:
            return summary
        note = early_stop_note(trainer, trainer_config.max_steps, trainer_config.max_time)
        if note:
            summary["stopped_early"] = note

        # FSDP leaves the module's parameters as flat shards after fit, which a plain validate or export would read as
        # the model. There the last validation of the run stands for the final one, and the model is exported from the
        # last checkpoint, which Lightning writes unsharded.
        sharded = isinstance(trainer.strategy, FSDPStrategy)
        if sharded:
            last_val = trainer.callback_metrics.get("val/bits_per_base")
            summary["val_bits_per_base"] = float(last_val) if last_val is not None else float("nan")
        else:
            results = trainer.validate(module, datamodule=datamodule, verbose=False)
            summary["val_bits_per_base"] = float(results[0]["val/bits_per_base"]) if results else float("nan")
        if run_baseline and trainer.is_global_zero:
            baseline = markov_baseline_bits(datamodule)
            summary["markov_order"] = baseline["order"]
            summary["markov_bits_per_base"] = baseline["bits_per_base"]
        if trainer.is_global_zero:
            metrics_csv = out_dir / "logs" / "metrics.csv"
            if metrics_csv.is_file():
                summary["curves_png"] = str(
                    plot_training_curves(metrics_csv, out_dir / "curves.png", summary.get("markov_bits_per_base"),
                                         f"order-{summary.get('markov_order')} Markov")
                )
            if export and trainer.global_step == 0:
                summary["not_exported"] = "no optimizer step was done"
            elif export:
                metadata = {"val_bits_per_base": summary["val_bits_per_base"], "global_step": trainer.global_step,
                            "data": asdict(data_config), "seq_len": plan.seq_len}
                if sharded:
                    model_dir = export_checkpoint(last.path, out_dir / "model", metadata)
                else:
                    module.model.float()
                    model_dir = save_pretrained(module.model, out_dir / "model", extra_metadata=metadata)
                summary["model_dir"] = str(model_dir)
            with atomic_output(out_dir / "summary.json") as tmp:
                tmp.write_text(json.dumps(summary, indent=2) + "\n")
            _print_summary(summary)
        return summary
    except (KeyboardInterrupt, SystemExit) as err:
        # Lightning ends a Ctrl-C in its final validation with sys.exit(1), after telling LastCheckpoint.
        if not isinstance(err, KeyboardInterrupt) and last.stop_reason is None:
            raise
        raise RunStopped(f"stopped by Ctrl-C after training, in the final evaluation or export; {last.path} holds the "
                         f"trained state (step {last.saved_step}): export it with `dna-mamba export {last.path} --out "
                         f"{out_dir / 'model'}`", EXIT_CTRL_C) from None


def fit(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, ckpt_path: str | None,
        last: LastCheckpoint, optim: OptimConfig) -> None:
    """``trainer.fit``, with the run's stops that are not its plan's end told as :class:`RunStopped`: one line on what
    ``last`` (last.ckpt) holds and how to go on. A diverged loss exits 1, Ctrl-C 130 and SIGTERM 143 (once saved)."""
    try:
        with stop_on_ctrl_c(last):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except NonFiniteLossError as err:
        raise NonFiniteLossError(stopped_message(f"training diverged: {err}", trainer.global_step, last, optim,
                                                 lower_lr=True)) from err
    except (KeyboardInterrupt, SystemExit):
        # Lightning ends a Ctrl-C with sys.exit(1), and a SIGTERM with its SIGTERMException (a SystemExit of status 0).
        if last.stop_reason is None:
            raise
        _raise_interrupted(trainer, last, optim)
    if last.stop_reason is not None:  # a first Ctrl-C, which stops the run at the end of a step
        _raise_interrupted(trainer, last, optim)


def _raise_interrupted(trainer: L.Trainer, last: LastCheckpoint, optim: OptimConfig) -> None:
    code = EXIT_SIGTERM if last.stop_reason == "SIGTERM" else EXIT_CTRL_C
    message = stopped_message(f"stopped by {last.stop_reason} at step {trainer.global_step}", trainer.global_step,
                              last, optim, lower_lr=last.unhealthy_step is not None)
    raise RunStopped(message, code) from None


def stopped_message(what: str, step: int, last: LastCheckpoint, optim: OptimConfig, lower_lr: bool) -> str:
    """``what`` happened (the run was at ``step``); what last.ckpt holds (the last good state) and how to go on."""
    lr = f" with a lower optim.lr (now {optim.lr})" if lower_lr else ""
    if not last.path.is_file():
        return f"{what}; no checkpoint was saved, so start the run again{lr}"
    if last.saved_step == step:
        return f"{what}; {last.path} holds step {step}: add resume=auto to the same command to go on{lr}"
    return (f"{what}; {last.path} holds step {last.saved_step}, the last good state: add resume=auto to the same "
            f"command to go on from it{lr}")


def _print_summary(summary: dict) -> None:
    rows = [
        ("validation bits/base (model)", f"{summary['val_bits_per_base']:.4f}"),
    ]
    if "markov_bits_per_base" in summary:
        rows.append((f"validation bits/base (order-{summary['markov_order']} Markov)",
                     f"{summary['markov_bits_per_base']:.4f}"))
    steps = f"{summary['global_step']} of {summary['planned_steps']} planned"
    if "stopped_early" in summary:
        steps += f" ({summary['stopped_early']})"
    rows += [
        ("optimizer steps", steps),
        ("data preparation time", format_seconds(summary["data_seconds"])),
        ("training time", format_seconds(summary["train_seconds"])),
    ]
    if "model_dir" in summary:
        rows.append(("exported model", summary["model_dir"]))
    elif "not_exported" in summary:
        rows.append(("exported model", f"none ({summary['not_exported']})"))
    if "curves_png" in summary:
        rows.append(("training curves", summary["curves_png"]))
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows))


def format_seconds(seconds: float) -> str:
    """A duration as people read it: ``0.4 s``, ``12 s``, ``4 min 10 s``, ``2 h 05 min``."""
    if round(seconds, 1) < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
