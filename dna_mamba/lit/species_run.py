"""Species classification runs as library calls: one fine-tuning run, and the context-length sweep.

``dna_mamba.train`` (``task=species``) and ``dna-mamba species-sweep`` build the dataclasses; notebooks can call
:func:`run_species` and :func:`run_species_sweep` directly. Every run writes ``results.json`` (model and k-mer
metrics on the same held-out windows) and ``confusion.png``; a sweep adds ``sweep.md``, ``sweep.json`` and
``sweep.png``, rewritten after each context so that an interrupted sweep keeps what it measured.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

import lightning as L
import torch
import yaml

from dna_mamba.errors import RunStopped
from dna_mamba.export import load_model_source
from dna_mamba.lit.callbacks import EpochSeeder
from dna_mamba.lit.pretrain import OptimConfig
from dna_mamba.lit.resume import check_same_data, find_resume_point, record_settings, refuse_to_overwrite
from dna_mamba.lit.runner import (
    TrainerConfig,
    build_trainer,
    early_stop_note,
    fit,
    last_checkpoint,
    load_initial_weights,
    require_accelerator,
)
from dna_mamba.lit.species import SpeciesDataModule, SpeciesModule, SpeciesTaskConfig, stride_at
from dna_mamba.model import DnaMambaConfig, DnaMambaLM, fused_block
from dna_mamba.outputs import atomic_output
from dna_mamba.species.dataset import (
    BalancedWindowDataset,
    EvalWindowDataset,
    EvalWindows,
    SpeciesDataset,
    SplitConfig,
    default_dataset_dir,
    prepare_species,
)
from dna_mamba.species.kmer import kmer_baseline
from dna_mamba.species.manifest import read_manifest
from dna_mamba.species.metrics import plot_confusion, write_json
from dna_mamba.species.model import save_classifier
from dna_mamba.species.report import context_label, plot_sweep, sweep_table

# Trainer settings of step-counted pretraining that a species run has no use for, and what it does instead: it is
# counted in epochs (task.epochs x task.steps_per_epoch), so that a resume follows the plan exactly (see
# LastCheckpoint), and validates and checkpoints at each epoch's end.
UNUSED_TRAINER_SETTINGS = {
    "max_steps": "the run is task.epochs x task.steps_per_epoch optimizer steps; set those, or trainer.max_time to "
                 "time-box it",
    "val_check_interval": "validation runs at the end of every epoch",
    "checkpoint_every_n_steps": "checkpoints/last.ckpt is saved at the end of every epoch",
}


@dataclass
class SpeciesBatchPlan:
    """Windows per optimizer step, made of micro-batches and gradient accumulation."""

    seq_len: int
    batch_size: int  # target windows per optimizer step, all devices together
    micro_batch_size: int  # windows per forward pass on one device
    devices: int = 1
    accumulate_grad_batches: int = field(init=False)

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "micro_batch_size", "devices"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        # Exactly batch_size windows per step, or an error: a rounded-up batch would change the protocol unsaid.
        if self.batch_size % self.devices:
            suggestion = _nearby_multiples(self.batch_size, self.devices)
            raise ValueError(f"task.batch_size={self.batch_size} windows cannot be shared evenly by {self.devices} "
                             f"devices; choose a multiple of {self.devices} ({suggestion})")
        per_device = self.batch_size // self.devices
        self.micro_batch_size = min(self.micro_batch_size, per_device)
        if per_device % self.micro_batch_size:
            on_devices = f" on each of {self.devices} devices" if self.devices > 1 else ""
            raise ValueError(
                f"task.batch_size={self.batch_size} is not a whole number of micro-batches of task.micro_batch_size="
                f"{self.micro_batch_size}{on_devices}: choose a micro-batch size that divides {per_device} "
                f"({', '.join(map(str, _divisors(per_device)))}) or a batch size that is a multiple of "
                f"{self.micro_batch_size * self.devices} "
                f"({_nearby_multiples(self.batch_size, self.micro_batch_size * self.devices)})")
        self.accumulate_grad_batches = per_device // self.micro_batch_size

    @property
    def effective_batch(self) -> int:
        return self.micro_batch_size * self.accumulate_grad_batches * self.devices

    @classmethod
    def from_task(cls, task: SpeciesTaskConfig, seq_len: int, micro_batch_tokens: int | None,
                  devices: int = 1) -> SpeciesBatchPlan:
        """``task.micro_batch_size`` windows per pass when set; else the most windows that both fit
        ``micro_batch_tokens`` and divide the batch of one device (so that accumulation makes up the batch exactly).
        """
        if task.micro_batch_size is not None:
            return cls(seq_len, task.batch_size, task.micro_batch_size, devices)
        if micro_batch_tokens is not None and micro_batch_tokens < 1:
            raise ValueError(f"trainer.micro_batch_tokens must be positive, got {micro_batch_tokens}")
        fits = max(1, (micro_batch_tokens or seq_len) // seq_len)
        per_device = max(1, task.batch_size // max(1, devices))
        micro = max(d for d in _divisors(per_device) if d <= fits)
        return cls(seq_len, task.batch_size, micro, devices)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _nearby_multiples(value: int, step: int) -> str:
    """The multiples of ``step`` either side of ``value``, as a suggestion: ``"8 or 12"``."""
    below, above = value // step * step, (value // step + 1) * step
    return f"{below} or {above}" if below else str(above)


def device_count(trainer_config: TrainerConfig) -> int:
    """The number of devices a run trains on: ``trainer.devices``, where -1 / "auto" mean every visible GPU (as
    Lightning reads them)."""
    devices = trainer_config.devices
    if isinstance(devices, int) and devices > 0:
        return devices
    return max(1, torch.cuda.device_count()) if trainer_config.accelerator != "cpu" else 1


def open_species_dataset(task: SpeciesTaskConfig, *, progress: bool = True) -> SpeciesDataset:
    """The prepared dataset of a task: ``task.prepared`` as is, or ``task.manifest`` prepared (and cached).

    The split does not depend on the training seed: runs that differ only in seed are tested on the same held-out
    sequence, so their spread measures training, not a different test set.

    Raises:
        ValueError: neither is set, or the manifest is invalid (ManifestError is a ValueError).
    """
    if task.prepared:
        return SpeciesDataset.open(task.prepared)
    if not task.manifest:
        raise ValueError("task.manifest is required: a TSV/YAML manifest (label, FASTA path[, split]) or a shipped "
                         "example (bacteria, drosophila_chr4); or task.prepared=DIR from `dna-mamba prepare-species`")
    manifest = read_manifest(task.manifest, task.data_root)
    split = SplitConfig(task.split, task.val_fraction, task.test_fraction)
    out = task.dataset_dir or default_dataset_dir(manifest, split)
    return prepare_species(manifest, out, split=split, progress=progress)


def backbone_config(init_from: str | None, model_config: DnaMambaConfig | None) -> DnaMambaConfig:
    """The backbone's config: the saved model's when starting from one (its sizes are fixed), else ``model_config``."""
    if not init_from:
        if model_config is None:
            raise ValueError("a model config is needed when not starting from a saved model (init_from)")
        return model_config
    path = Path(init_from)
    if path.is_dir():
        from dna_mamba.model.io import read_config

        return read_config(path)[0]
    return load_model_source(path).config


def apply_memory_settings(module: SpeciesModule, trainer_config: TrainerConfig, seq_len: int) -> None:
    """Per-block activation checkpointing and the fused block's piece size as configured; segment checkpointing is
    refused, not ignored.

    The classification loss reads the hidden states of the whole window (the last token, or all of them for
    mean pooling), so the pretraining loss's segment recomputation does not apply.
    """
    if trainer_config.segment_len is not None and trainer_config.segment_len < seq_len:
        raise ValueError(
            f"trainer.segment_len={trainer_config.segment_len} is not supported by task=species (context "
            f"{seq_len:,}); use trainer.activation_checkpointing=true or a smaller trainer.micro_batch_tokens"
        )
    module.model.gradient_checkpointing = trainer_config.activation_checkpointing
    fused_block.PIECE_TOKENS = trainer_config.piece_tokens


def run_species(task: SpeciesTaskConfig, model_config: DnaMambaConfig | None, trainer_config: TrainerConfig,
                seq_len: int, *, micro_batch_tokens: int | None = None, optim: OptimConfig | None = None,
                seed: int = 0, init_from: str | None = None, resume: str | None = None,
                dataset: SpeciesDataset | None = None, replace_run: bool = False, settings: str | None = None) -> dict:
    """Fine-tune a species classifier at one context; evaluate it and the k-mer baseline on the test windows.

    Args:
        task: data, head, schedule and evaluation settings.
        model_config: backbone sizes when starting from scratch (ignored with ``init_from``).
        trainer_config: accelerator, precision, output directory. ``max_steps``, ``val_check_interval`` and
            ``checkpoint_every_n_steps`` are not used (the run is ``task.epochs`` epochs of ``task.steps_per_epoch``
            steps, validated and checkpointed at each epoch's end); set away from their defaults they get a notice.
        seq_len: context length of every window.
        micro_batch_tokens: tokens per forward pass, giving windows per micro-batch unless
            ``task.micro_batch_size`` is set.
        optim: optimizer settings; ``task.lr`` replaces their learning rate.
        seed: seeds weights, window draws and the baseline.
        init_from: a ``from_pretrained`` directory or a Lightning checkpoint to start the backbone from.
        resume: a checkpoint to resume this run from, or ``"auto"`` (``out_dir/checkpoints/last.ckpt``).
        dataset: an opened dataset (otherwise opened from ``task``).
        replace_run: start over in an ``out_dir`` that already holds a run (a sweep re-running a context; the old
            run's TensorBoard logs are deleted so that its curves do not mix with the new run's). Otherwise a new run
            (no ``resume``) there is refused, before any data is prepared, as for pretraining.
        settings: text recorded as ``out_dir/config.yaml`` once the run is accepted (the entry point's config, a
            YAML mapping; its ``trainer.name`` tells which trainer preset the notice on unused settings compares to).

    Returns:
        The ``results.json`` dict.
    """
    if trainer_config.strategy == "fsdp":
        # After fit FSDP leaves the parameters as flat shards, which the test pass and the export would read as the
        # model; a classifier's backbone fits one GPU, so data parallelism is what a bigger run needs.
        raise ValueError("trainer=fsdp is not supported by task=species; use trainer=ddp for several GPUs")
    require_accelerator(trainer_config)
    check_max_time(trainer_config.max_time)
    devices = device_count(trainer_config)
    plan = SpeciesBatchPlan.from_task(task, seq_len, micro_batch_tokens, devices)
    unused = unused_trainer_settings(trainer_config, settings)
    if unused:
        print(f"note: task=species does not use {'; '.join(unused)}")
    out_dir = Path(trainer_config.out_dir)
    resume_point = find_resume_point(resume, out_dir)
    if resume_point is None and not replace_run:
        refuse_to_overwrite(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume_point is None and replace_run:
        clear_tensorboard_logs(out_dir)
    record_settings(out_dir, settings)
    L.seed_everything(seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    dataset = dataset or open_species_dataset(task, progress=trainer_config.enable_progress_bar)
    datamodule = SpeciesDataModule(
        dataset, seq_len, micro_batch_size=plan.micro_batch_size,
        samples_per_epoch=task.steps_per_epoch * plan.effective_batch, seed=seed,
        rc_prob=task.rc_prob, max_n_fraction=task.max_n_fraction, val_windows_per_class=task.val_windows_per_class,
        test_windows_per_class=task.test_windows_per_class, test_stride=task.test_stride_at(seq_len),
        num_workers=task.num_workers)
    if resume_point is not None:
        # A checkpoint of older code recorded no data identity; check_same_data lets it resume unchecked.
        check_same_data(resume_point, datamodule.hparams["data"])
    datamodule.setup("fit")  # plans every window now: a context some class cannot fill fails before training

    optim = replace(optim or OptimConfig(), lr=task.lr)
    config = backbone_config(init_from, model_config)
    module = SpeciesModule(config, dataset.classes, pooling=task.pooling, freeze_backbone=task.freeze_backbone,
                           both_strands=task.both_strands, optim=optim)
    module.planned_steps = task.epochs * task.steps_per_epoch
    if init_from:
        load_initial_weights(module, init_from)
    apply_memory_settings(module, trainer_config, seq_len)

    has_val = len(datamodule.datasets["val"]) > 0
    last = last_checkpoint(out_dir, every_epoch=True)
    if resume_point is not None:
        last.saved_step = resume_point.global_step  # what last.ckpt holds until this run saves
    trainer = build_trainer(
        trainer_config, out_dir, plan.accumulate_grad_batches,
        callbacks=[last, EpochSeeder()],
        resume_step=resume_point.global_step if resume_point else None,
        # Counted in epochs alone (their steps follow from the dataset's length): a trainer that also counts max_steps
        # resumes from an epoch's end without the next epoch (see LastCheckpoint).
        max_epochs=task.epochs, max_steps=-1, num_sanity_val_steps=0,
        limit_val_batches=trainer_config.limit_val_batches if has_val else 0,
    )
    print(f"species: {dataset.num_classes} classes ({', '.join(dataset.classes)}); split {dataset.split['method']}; "
          f"context {seq_len:,}; {module.model.num_parameters() / 1e6:.2f}M-parameter backbone"
          f"{' (frozen)' if task.freeze_backbone else ''} from {init_from or 'scratch'}; "
          f"batch {plan.micro_batch_size} x accumulate {plan.accumulate_grad_batches} x {devices} device(s) = "
          f"{plan.effective_batch} windows/step; test windows per class "
          f"{datamodule.windows_per_class('test')}{_stride_note(datamodule.datasets['test'].windows)}")
    start = time.perf_counter()
    # Ctrl-C or SIGTERM: last.ckpt saved, then one line and exit status 130 / 143 (RunStopped).
    fit(trainer, module, datamodule, resume_point.path if resume_point else None, last, optim)
    train_seconds = time.perf_counter() - start
    planned_steps = task.epochs * task.steps_per_epoch
    trainer.test(module, datamodule=datamodule, verbose=False)

    results = {
        "task": "species",
        "seq_len": seq_len,
        "classes": dataset.classes,
        "dataset": str(dataset.directory),
        "data": dataset.identity(),
        "split": dataset.split,
        "init_from": init_from,
        "pooling": task.pooling,
        "freeze_backbone": task.freeze_backbone,
        "both_strands": task.both_strands,
        "parameters": module.model.num_parameters(),
        "lr": task.lr,
        "global_step": trainer.global_step,
        "planned_steps": planned_steps,
        "stopped_early": early_stop_note(trainer, planned_steps, trainer_config.max_time),
        "effective_batch": plan.effective_batch,
        "micro_batch_size": plan.micro_batch_size,
        "accumulate_grad_batches": plan.accumulate_grad_batches,
        "train_seconds": round(train_seconds, 1),
        "device": _device_name(module),
        "test_windows_per_class": datamodule.windows_per_class("test"),
        "test_stride": datamodule.datasets["test"].windows.stride,
        "val": module.results.get("val"),
        "test": module.results.get("test"),
    }
    if not trainer.is_global_zero:
        return results
    if task.run_baseline:
        results.update(_baseline(task, dataset, datamodule.datasets["train"], datamodule.datasets["test"], seed,
                                 progress=trainer_config.enable_progress_bar))
    results["confusion_png"] = str(plot_confusion(
        results["test"]["confusion_matrix"], dataset.classes, out_dir / "confusion.png",
        title=f"species, context {context_label(seq_len)}: accuracy {results['test']['accuracy']:.3f}"))
    if task.export:
        module.float()
        results["classifier_dir"] = str(save_classifier(module.model, module.head, dataset.classes, seq_len,
                                                        out_dir / "classifier", metadata={"seq_len": seq_len}))
    write_json(out_dir / "results.json", results)
    _print_results(results)
    return results


def _stride_note(windows: EvalWindows) -> str:
    if windows.stride == windows.window:
        return ""
    return f" (overlapping: a window every {windows.stride:,} bases)"


def _device_name(module: L.LightningModule) -> str:
    if module.device.type == "cuda":
        return torch.cuda.get_device_name(module.device)
    return module.device.type


def _baseline(task: SpeciesTaskConfig, dataset: SpeciesDataset, train: BalancedWindowDataset,
              test: EvalWindowDataset, seed: int, *, progress: bool = True) -> dict:
    """k-mer baseline results, keyed for results.json, on the first windows of the model's epoch-0 stream."""
    train = BalancedWindowDataset(dataset, train.window, num_samples=max(task.kmer_train_windows, dataset.num_classes),
                                  seed=train.seed, reverse_complement_prob=train.reverse_complement_prob,
                                  max_n_fraction=train.max_n_fraction)
    found = kmer_baseline(train, test, dataset.classes, ks=task.kmer_ks, seed=seed, progress=progress)
    return {"kmer": {str(r.k): r.metrics for r in found},
            "kmer_train_windows": found[0].train_windows if found else 0,
            "kmer_seconds": {str(r.k): r.seconds for r in found}}


def run_kmer_only(task: SpeciesTaskConfig, seq_len: int, out_dir: str | Path, *, seed: int = 0,
                  dataset: SpeciesDataset | None = None, progress: bool = True) -> dict:
    """The k-mer baseline alone at one context, on exactly the windows a model run with these settings would use."""
    out_dir = Path(out_dir)
    dataset = dataset or open_species_dataset(task, progress=progress)
    train = BalancedWindowDataset(dataset, seq_len, num_samples=max(task.kmer_train_windows, dataset.num_classes),
                                  seed=seed, reverse_complement_prob=task.rc_prob, max_n_fraction=task.max_n_fraction)
    test = EvalWindowDataset(dataset, dataset.eval_windows("test", seq_len, per_class=task.test_windows_per_class,
                                                           max_n_fraction=task.max_n_fraction,
                                                           stride=task.test_stride_at(seq_len)))
    start = time.perf_counter()
    results = {"task": "species", "seq_len": seq_len, "classes": dataset.classes, "dataset": str(dataset.directory),
               "data": dataset.identity(), "split": dataset.split,
               "test_windows_per_class": test.windows.per_class(dataset.num_classes),
               "test_stride": test.windows.stride, **_baseline(task, dataset, train, test, seed, progress=progress)}
    results["baseline_seconds"] = round(time.perf_counter() - start, 1)
    write_json(out_dir / "results.json", results)
    return results


def check_context_list(task: SpeciesTaskConfig, contexts: Sequence[int], *, kmer_only: bool = False,
                       option: str = "contexts") -> None:
    """Refuse, before any data work, contexts that a sweep cannot run as asked: none; one listed twice (it would be
    trained twice, the second run replacing the first); one shorter than the baseline's largest k (its windows hold
    no such k-mer); or one shorter than a test stride given in bases. ``option`` names the list in messages.
    """
    if not contexts:
        raise ValueError(f"{option} lists no context length (e.g. 1k,32k)")
    repeated = sorted({c for c in contexts if list(contexts).count(c) > 1})
    if repeated:
        raise ValueError(f"{option} lists {', '.join(context_label(c) for c in repeated)} more than once; give each "
                         "context once (a context run again replaces its earlier run)")
    if (task.run_baseline or kmer_only) and task.kmer_ks:
        k = max(task.kmer_ks)
        short = [context_label(c) for c in contexts if c < k]
        if short:
            raise ValueError(f"{option}: {', '.join(short)} is shorter than the largest k-mer size of the baseline "
                             f"({k}), so its windows hold no {k}-mer; use longer contexts (e.g. 1k)")
    for seq_len in contexts:
        stride = task.test_stride_at(seq_len)
        if stride is not None and stride > seq_len:
            raise ValueError(f"task.test_stride={task.test_stride} is longer than the {context_label(seq_len)} "
                             f"context, so the test windows would leave gaps; use at most {seq_len} bases, or a "
                             "fraction of every context such as 1/4")


def check_contexts(task: SpeciesTaskConfig, dataset: SpeciesDataset, contexts: list[int]) -> None:
    """Fail before any training if some class cannot fill a context (training or test windows), or if the test
    stride is longer than a context.
    """
    for seq_len in contexts:
        dataset.train_regions(seq_len, task.max_n_fraction)
        dataset.eval_windows("test", seq_len, per_class=1, max_n_fraction=task.max_n_fraction,
                             stride=task.test_stride_at(seq_len))


def check_max_time(max_time: object, option: str = "trainer.max_time") -> None:
    """Refuse a time limit that Lightning would reject only when the trainer is built (after the data work).

    Lightning takes a string ``DD:HH:MM:SS`` (days, hours, minutes, seconds), a ``timedelta`` or a dict of
    ``timedelta`` arguments; only strings are checked here, with Lightning's own pattern.
    """
    if isinstance(max_time, str) and not re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", max_time.strip()):
        raise ValueError(f"{option} {max_time!r} is not a duration DD:HH:MM:SS (days, hours, minutes, seconds with "
                         "two digits each but the days), e.g. 00:02:30:00 for two and a half hours")


def unused_trainer_settings(trainer_config: TrainerConfig, settings: str | None) -> list[str]:
    """The trainer settings of :data:`UNUSED_TRAINER_SETTINGS` that differ from their preset, each with what the
    species run does instead.

    The preset is the trainer group named in ``settings`` (``conf/trainer/<name>.yaml``), else
    :class:`TrainerConfig`'s defaults (a library call): a preset's own values (e.g. trainer=cpu's max_steps 350) are
    no request of the user's, so they get no notice.
    """
    preset = _trainer_preset(settings)
    return [f"trainer.{name}={getattr(trainer_config, name)} ({instead})"
            for name, instead in UNUSED_TRAINER_SETTINGS.items() if getattr(trainer_config, name) != preset.get(name)]


def _trainer_preset(settings: str | None) -> dict:
    try:
        name = (yaml.safe_load(settings or "") or {}).get("trainer", {}).get("name")
    except (yaml.YAMLError, AttributeError):  # not the entry point's config mapping
        name = None
    path = resources.files("dna_mamba.conf") / "trainer" / f"{name}.yaml"
    if isinstance(name, str) and path.is_file():
        return yaml.safe_load(path.read_text())
    return asdict(TrainerConfig())  # a library call, or a trainer group of the user's own whose values are unknown


def clear_tensorboard_logs(out_dir: Path) -> None:
    """Delete the TensorBoard files that a run writes (``tensorboard/events.out.tfevents.*``, ``hparams.yaml``).

    A run that replaces an earlier one in the same folder would otherwise add its event file beside the old one,
    and TensorBoard would draw both runs as one curve. Other files there (the user's) are left alone.
    """
    folder = out_dir / "tensorboard"
    for path in [*folder.glob("events.out.tfevents.*"), folder / "hparams.yaml"]:
        path.unlink(missing_ok=True)


def holds_run(run_dir: Path) -> bool:
    """Whether a sweep's context folder holds a run (model or k-mer only) that running the context again replaces."""
    return (run_dir / "results.json").is_file() or (run_dir / "checkpoints" / "last.ckpt").is_file()


def holds_model_run(run_dir: Path) -> bool:
    """Whether a sweep's context folder holds a model run (finished, or stopped with a checkpoint)."""
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return True
    try:
        return "test" in json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return False


# What results.json records of a run's model; rows of one sweep table must agree on them.
MODEL_KEYS = ("init_from", "parameters", "pooling", "freeze_backbone", "both_strands")


@dataclass
class SweepIdentity:
    """What every row of one sweep table shares, so that rows of earlier sweeps in the same folder can be checked.

    Other steps, epochs or learning rates are allowed (a sweep may run one context at a time, each with its own
    budget); other data, test windows or model are not, since the table and plot read as one curve.
    """

    data: dict  # SpeciesDataset.identity()
    dataset_dir: str  # what rows of older code, which recorded no identity, are compared by
    test_stride: int | str | None  # the task's setting: bases, or a fraction of each context
    model: dict | None = None  # results.json's values of MODEL_KEYS; None: a k-mer-only sweep

    def differences(self, row: dict) -> list[str]:
        """How ``row`` (a results.json dict) differs, e.g. ``["classes a, b, c"]``; empty when it belongs here."""
        found = []
        if row.get("classes") != self.data["classes"]:
            found.append(f"classes {', '.join(row.get('classes') or [])}")
        elif "data" in row and row["data"] != self.data:
            keys = sorted(k for k in row["data"].keys() | self.data.keys() if row["data"].get(k) != self.data.get(k))
            found.append(f"other data ({', '.join(keys)})")
        elif "data" not in row and row.get("dataset") != self.dataset_dir:
            found.append(f"dataset {row.get('dataset')}")
        seq_len = row["seq_len"]
        stride = row.get("test_stride", seq_len)  # runs from before the stride existed did not overlap
        if stride != (stride_at(self.test_stride, seq_len) or seq_len):
            found.append(f"test stride {stride:,}")
        if self.model is not None and row.get("test"):
            found += [f"{key} {row.get(key)}" for key in MODEL_KEYS if row.get(key) != self.model[key]]
        return found


def model_identity(task: SpeciesTaskConfig, model_config: DnaMambaConfig | None, init_from: str | None) -> dict:
    """The model keys of :class:`SweepIdentity` for a sweep that trains models, as its results.json will hold them."""
    with torch.device("meta"):  # only the parameter count: no memory, no initialisation
        parameters = DnaMambaLM(backbone_config(init_from, model_config)).num_parameters()
    return {"init_from": init_from, "parameters": parameters, "pooling": task.pooling,
            "freeze_backbone": task.freeze_backbone, "both_strands": task.both_strands}


def run_species_sweep(task: SpeciesTaskConfig, model_config: DnaMambaConfig | None, trainer_config: TrainerConfig,
                      contexts: list[int], *, micro_batch_tokens: int | None = None, optim: OptimConfig | None = None,
                      seed: int = 0, init_from: str | None = None, kmer_only: bool = False,
                      title: str = "") -> list[dict]:
    """Accuracy against context: one run per context (``out_dir/context_<1k…>``), then a table and a plot.

    Every context is checked before the first run starts; a context run again replaces its earlier run (with a
    notice). ``sweep.md``, ``sweep.json`` and ``sweep.png`` in ``trainer_config.out_dir`` are rewritten after each
    context; they also list contexts that earlier sweeps wrote into the same directory, when those ran on the same
    data, test windows and model (see :class:`SweepIdentity`; the others are left out with a notice).

    Args:
        contexts: context lengths, run in the given order (shortest first keeps early results early).
        kmer_only: run only the k-mer baseline at each context (no model, seconds on a CPU).
        Other arguments: as :func:`run_species`.
    """
    if kmer_only and not task.run_baseline:
        raise ValueError("a k-mer-only sweep runs nothing but the k-mer baseline, which task.run_baseline=false "
                         "turns off; drop one of the two")
    check_context_list(task, contexts, kmer_only=kmer_only)
    check_max_time(trainer_config.max_time)
    if not kmer_only:
        require_accelerator(trainer_config)
        for seq_len in contexts:  # a batch that micro-batches cannot make up fails now, not after some contexts
            SpeciesBatchPlan.from_task(task, seq_len, micro_batch_tokens, device_count(trainer_config))
    out_dir = Path(trainer_config.out_dir)
    if kmer_only:
        trained = [f"context_{context_label(c)}" for c in contexts
                   if holds_model_run(out_dir / f"context_{context_label(c)}")]
        if trained:
            raise FileExistsError(f"{out_dir}: {', '.join(trained)} hold{'s' if len(trained) == 1 else ''} a model "
                                  "run, whose results a k-mer-only sweep would replace (a model run with the baseline "
                                  "on already has its k-mer results); give the k-mer-only sweep its own --out")
    progress = trainer_config.enable_progress_bar
    dataset = open_species_dataset(task, progress=progress)
    check_contexts(task, dataset, contexts)
    identity = SweepIdentity(dataset.identity(), str(dataset.directory), task.test_stride,
                             None if kmer_only else model_identity(task, model_config, init_from))
    earlier, left_out = earlier_rows(out_dir, exclude=contexts, identity=identity)
    if left_out:
        print(f"note: the sweep table leaves out earlier runs in {out_dir} that differ from this sweep: "
              f"{'; '.join(left_out)}; give this sweep its own output folder to keep both")
    rows: list[dict] = []
    for seq_len in contexts:
        run_dir = out_dir / f"context_{context_label(seq_len)}"
        if holds_run(run_dir):
            print(f"note: replacing the earlier run in {run_dir}")
        if kmer_only:
            rows.append(run_kmer_only(task, seq_len, run_dir, seed=seed, dataset=dataset, progress=progress))
        else:
            try:
                rows.append(run_species(task, model_config, replace(trainer_config, out_dir=str(run_dir)), seq_len,
                                        micro_batch_tokens=micro_batch_tokens, optim=optim, seed=seed,
                                        init_from=init_from, dataset=dataset, replace_run=True))
            except RunStopped as err:
                raise RunStopped(_sweep_stopped(err, seq_len, contexts, rows, out_dir), err.exit_code) from None
        write_sweep_report(sorted(rows + earlier, key=lambda row: row["seq_len"]), task.kmer_ks, out_dir,
                           num_classes=dataset.num_classes, title=title,
                           settings={"task": asdict(task), "init_from": init_from, "kmer_only": kmer_only})
    return rows


def _sweep_stopped(err: RunStopped, seq_len: int, contexts: Sequence[int], rows: list[dict], out_dir: Path) -> str:
    """What a sweep stopped by Ctrl-C or SIGTERM (or a diverged run) has done, and the command line that finishes it.

    A sweep does not resume a context's run (running a context again replaces it), so the run's own advice
    (resume=auto) does not apply here.
    """
    what = str(err).split(";")[0]
    done = [context_label(row["seq_len"]) for row in rows]
    rest = [context_label(c) for c in contexts[len(rows):]]
    kept = (f"context{'s' if len(done) > 1 else ''} {', '.join(done)} {'are' if len(done) > 1 else 'is'} done and in "
            f"{out_dir / 'sweep.md'}; " if done else "")
    return (f"{what} (context {context_label(seq_len)}); {kept}to finish, run the same command with --contexts "
            f"{','.join(rest)} (its context runs start again)")


def earlier_rows(out_dir: Path, exclude: Sequence[int] = (), identity: SweepIdentity | None = None
                 ) -> tuple[list[dict], list[str]]:
    """``results.json`` of other contexts already in a sweep directory (an earlier invocation with other steps).

    A sweep can so be run one context at a time, each with its own budget, and still end in one table. With
    ``identity``, runs that differ from it are left out.

    Returns:
        The rows kept, and for each run left out its folder and how it differs (``"context_2k (classes a, b, c)"``).
    """
    rows, left_out = [], []
    for path in sorted(Path(out_dir).glob("context_*/results.json")):
        row = json.loads(path.read_text())
        if row.get("seq_len") in exclude:
            continue
        differences = identity.differences(row) if identity is not None else []
        if differences:
            left_out.append(f"{path.parent.name} ({', '.join(differences)})")
        else:
            rows.append(row)
    return rows, left_out


def write_sweep_report(rows: list[dict], ks: list[int], out_dir: Path, *, num_classes: int, title: str = "",
                       settings: dict | None = None) -> Path:
    """``sweep.md`` (table), ``sweep.json`` (rows without confusion matrices' bulk) and ``sweep.png``, each written
    whole or not at all."""
    table = sweep_table(rows, ks)
    with atomic_output(out_dir / "sweep.md") as tmp:
        tmp.write_text((f"## {title}\n\n" if title else "") + table + "\n")
    write_json(out_dir / "sweep.json", {"settings": settings or {}, "rows": rows})
    plot_sweep(rows, ks, out_dir / "sweep.png", num_classes=num_classes, title=title)
    print("\n" + table)
    return out_dir / "sweep.md"


def _print_results(results: dict) -> None:
    test = results["test"]
    lines = [f"  test accuracy (model, {'both strands' if results['both_strands'] else 'forward strand'})  "
             f"{test['accuracy']:.4f}   balanced {test['balanced_accuracy']:.4f}   macro-F1 {test['macro_f1']:.4f}"]
    for k, metrics in (results.get("kmer") or {}).items():
        lines.append(f"  test accuracy ({k}-mer + logistic regression)  {metrics['accuracy']:.4f}   "
                     f"balanced {metrics['balanced_accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}")
    recall = ", ".join(f"{c} {v['recall']:.2f}" if v["recall"] is not None else f"{c} —"
                       for c, v in test["per_class"].items())
    stopped = f"; {results['stopped_early']}" if results.get("stopped_early") else ""
    lines += [f"  per-class recall: {recall}",
              f"  optimizer steps {results['global_step']} of {results['planned_steps']} planned, "
              f"{results['effective_batch']} windows each, {results['train_seconds']:.0f} s{stopped}",
              f"  confusion matrix: {results['confusion_png']}"]
    if "classifier_dir" in results:
        lines.append(f"  classifier: {results['classifier_dir']}")
    print("\n" + "\n".join(lines))
