"""Species classification as Lightning code: the fine-tuning module and the datamodule over a prepared dataset.

The backbone lives in ``self.model`` and its config in the hyperparameters (``model_config``), so
``dna-mamba export`` turns a species checkpoint into a ``from_pretrained`` backbone like any other run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dna_mamba.lit.datamodule import ResumableLoader, ResumableSampler
from dna_mamba.lit.pretrain import OptimConfig, adamw_cosine, clip_gradients
from dna_mamba.model import DnaMambaConfig, DnaMambaLM
from dna_mamba.species.dataset import BalancedWindowDataset, EvalWindowDataset, SpeciesDataset
from dna_mamba.species.kmer import MAX_K
from dna_mamba.species.metrics import metrics_from_confusion
from dna_mamba.species.model import POOLINGS, SpeciesHead, both_strand_probs, class_logits
from dna_mamba.species.report import parse_context


@dataclass
class SpeciesTaskConfig:
    """Settings of a species-classification run (Hydra: the ``task`` group, ``conf/task/species.yaml``).

    The defaults are the Mamba paper's fine-tuning protocol for Great Apes: 10 epochs of 1024 optimizer steps,
    64 windows per step (gradient accumulation makes up what one device holds), learning rate 1e-4, a head on the
    last token.
    """

    manifest: str | None = None  # TSV / YAML manifest, or a shipped example: bacteria, drosophila_chr4
    prepared: str | None = None  # a directory written by `dna-mamba prepare-species`, instead of a manifest
    data_root: str | None = None  # folder relative manifest paths are relative to (default: $DNA_MAMBA_DATA, ...)
    dataset_dir: str | None = None  # where a manifest is prepared (default: the cache, keyed by manifest + split)
    split: str = "auto"  # auto, genome (held-out strains), contig, region (held-out tail of every contig)
    val_fraction: float = 0.05
    test_fraction: float = 0.2
    pooling: str = "last"  # "last": the last token's state (the paper's choice for a causal model); or "mean"
    freeze_backbone: bool = False  # train the head only
    lr: float = 1e-4  # replaces optim.lr: fine-tuning wants a far smaller rate than pretraining
    epochs: int = 10
    steps_per_epoch: int = 1024  # optimizer steps per epoch
    batch_size: int = 64  # windows per optimizer step, all devices together
    micro_batch_size: int | None = None  # windows per forward pass; None: trainer.micro_batch_tokens // context
    rc_prob: float = 0.5  # training windows come from either strand with this probability of reverse complement
    max_n_fraction: float = 0.1  # windows with more N are skipped (evaluation) or redrawn (training)
    val_windows_per_class: int = 32  # evaluated after every epoch, so kept small
    test_windows_per_class: int = 256
    # Bases between test-window starts (8192, "8k") or a fraction of the context ("1/4"); None: the context (no
    # overlap). Shorter strides give more, overlapping windows from a small held-out set (see test_stride_at).
    test_stride: int | str | None = None
    both_strands: bool = True  # evaluate each window and its reverse complement, averaging the probabilities
    run_baseline: bool = True  # k-mer + logistic regression on the same windows
    kmer_ks: list[int] = field(default_factory=lambda: [4, 5, 6])
    kmer_train_windows: int = 2048  # the first windows of the model's training stream
    export: bool = True  # write classifier/ (backbone + head) at the end
    num_workers: int = 0

    def __post_init__(self) -> None:
        self.kmer_ks = [int(k) for k in self.kmer_ks]
        if self.pooling not in POOLINGS:
            raise ValueError(f"task.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        for name in ("epochs", "steps_per_epoch", "batch_size", "val_windows_per_class", "test_windows_per_class"):
            if getattr(self, name) < 1:
                raise ValueError(f"task.{name} must be positive, got {getattr(self, name)}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"task.micro_batch_size must be positive or null, got {self.micro_batch_size}")
        if self.lr <= 0:
            raise ValueError(f"task.lr must be positive, got {self.lr}")
        if self.run_baseline and not self.kmer_ks:
            raise ValueError("task.kmer_ks lists no k-mer size (e.g. [4,5,6]); set task.run_baseline=false to skip "
                             "the k-mer baseline")
        bad_k = [k for k in self.kmer_ks if not 1 <= k <= MAX_K]
        if bad_k:
            raise ValueError(f"task.kmer_ks must lie in 1..{MAX_K}, got {bad_k}")
        if self.kmer_train_windows < 1:
            raise ValueError(f"task.kmer_train_windows must be positive, got {self.kmer_train_windows}")
        self.test_stride = _test_stride(self.test_stride)

    def test_stride_at(self, seq_len: int) -> int | None:
        """Bases between test-window starts at context ``seq_len``: ``test_stride`` itself, or that fraction of
        ``seq_len`` (rounded down, at least 1); None for non-overlapping windows.

        A fraction lets one setting serve every context of a sweep; a stride in bases longer than ``seq_len`` is
        refused when the windows are planned.
        """
        return stride_at(self.test_stride, seq_len)


def stride_at(test_stride: int | str | None, seq_len: int) -> int | None:
    """:meth:`SpeciesTaskConfig.test_stride_at` of a normalised ``test_stride`` setting."""
    if isinstance(test_stride, str):
        return max(1, int(Fraction(test_stride) * seq_len))
    return test_stride


def _test_stride(value: int | str | None) -> int | str | None:
    """``task.test_stride`` as bases (int) or a fraction of the context in lowest terms (``"1/4"``), or None.

    Raises:
        ValueError: anything else, e.g. a float (0.25 could mean bases or a share) or a fraction outside (0, 1].
    """
    if value is None:
        return None
    text = str(value).strip()
    try:
        if "/" in text:
            fraction = Fraction(text)
            if 0 < fraction <= 1:
                return f"{fraction.numerator}/{fraction.denominator}"
        elif not isinstance(value, (bool, float)):
            return parse_context(text)
    except (ValueError, ZeroDivisionError):
        pass
    raise ValueError(f"task.test_stride must be a number of bases (8192, 8k), a fraction of the context from 0 to "
                     f"1 (1/4) or null, got {value!r}")


class SpeciesModule(L.LightningModule):
    """A DnaMambaLM backbone (``self.model``) and a linear head (``self.head``) trained with cross-entropy.

    Validation and test accumulate a confusion matrix (summed over devices), from which accuracy, balanced
    accuracy, macro-F1 and per-class recall follow; ``self.results[part]`` holds them after each evaluation.
    """

    def __init__(self, model_config: DnaMambaConfig | dict, classes: list[str], *, pooling: str = "last",
                 freeze_backbone: bool = False, both_strands: bool = True, optim: OptimConfig | dict | None = None):
        super().__init__()
        if isinstance(model_config, dict):
            model_config = DnaMambaConfig.from_dict(model_config)
        if optim is None or isinstance(optim, dict):
            optim = OptimConfig(**(optim or {}))
        # Plain values in hparams: checkpoints load without pickled dataclasses, and export finds model_config.
        self.save_hyperparameters({"model_config": model_config.to_dict(), "classes": list(classes),
                                   "pooling": pooling, "freeze_backbone": freeze_backbone,
                                   "both_strands": both_strands, "optim": vars(optim)})
        self.model = DnaMambaLM(model_config)
        self.head = SpeciesHead(model_config.d_model, len(classes), pooling)
        self.classes = list(classes)
        self.freeze_backbone = freeze_backbone
        self.both_strands = both_strands
        self.optim = optim
        self.planned_steps: int | None = None  # optimizer steps of the run (run_species sets it); None: estimated
        if freeze_backbone:
            self.model.requires_grad_(False)
        self.results: dict[str, dict] = {}
        self._confusion: torch.Tensor | None = None
        self._nll = 0.0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits. Shapes: tokens (B, L) → (B, num_classes)."""
        return class_logits(self.model, self.head, tokens, frozen=self.freeze_backbone)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        tokens, labels = batch
        logits = self(tokens)
        loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", (logits.argmax(-1) == labels).float().mean())
        return loss

    def _start_eval(self) -> None:
        self._confusion = torch.zeros(len(self.classes), len(self.classes), dtype=torch.int64, device=self.device)
        self._nll = 0.0

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        tokens, labels = batch
        if self.both_strands:
            probs = both_strand_probs(self.model, self.head, tokens)
        else:
            probs = F.softmax(class_logits(self.model, self.head, tokens), dim=-1)
        self._nll += float(F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum"))
        n = len(self.classes)
        self._confusion += torch.bincount(labels * n + probs.argmax(-1), minlength=n * n).reshape(n, n)

    def _finish_eval(self, part: str) -> None:
        totals = torch.cat([self._confusion.flatten().double(), torch.tensor([self._nll], device=self.device,
                                                                             dtype=torch.float64)])
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum") if self.trainer.world_size > 1 else totals
        n = len(self.classes)
        matrix = totals[:-1].round().long().reshape(n, n).cpu().numpy()
        metrics = metrics_from_confusion(matrix, self.classes)
        metrics["loss"] = float(totals[-1]) / max(1, metrics["n_windows"])
        self.results[part] = metrics
        # Values are already reduced over devices, so sync_dist is not needed.
        self.log(f"{part}/accuracy", metrics["accuracy"], prog_bar=True)
        self.log(f"{part}/macro_f1", metrics["macro_f1"])
        self.log(f"{part}/loss", metrics["loss"])

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def configure_optimizers(self):
        opt = self.optim
        head_decay = [p for name, p in self.head.named_parameters() if not name.endswith("bias")]
        head_bias = [p for name, p in self.head.named_parameters() if name.endswith("bias")]
        groups = [] if self.freeze_backbone else self.model.param_groups(opt.weight_decay)
        groups += [{"params": head_decay, "weight_decay": opt.weight_decay}, {"params": head_bias,
                                                                              "weight_decay": 0.0}]
        return adamw_cosine(groups, opt, self.trainer, self.device, total_steps=self.planned_steps)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)


class SpeciesDataModule(L.LightningDataModule):
    """Balanced random training windows and fixed val / test windows of a prepared species dataset.

    ``setup()`` plans every window, so a context that some class cannot fill fails there, before training. Test
    windows start every ``test_stride`` bases (None: non-overlapping); validation windows never overlap.
    """

    def __init__(self, dataset: SpeciesDataset, seq_len: int, *, micro_batch_size: int, samples_per_epoch: int,
                 seed: int = 0, rc_prob: float = 0.5, max_n_fraction: float = 0.1, val_windows_per_class: int = 32,
                 test_windows_per_class: int = 256, test_stride: int | None = None, num_workers: int = 0):
        super().__init__()
        # Saved in every checkpoint (datamodule_hyper_parameters), so that a resume can tell whose data it holds; the
        # context belongs to it, as every window and the test set are cut at that length.
        self.save_hyperparameters({"data": {**dataset.identity(), "context": seq_len}})
        self.dataset = dataset
        self.seq_len = seq_len
        self.micro_batch_size = micro_batch_size
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.rc_prob = rc_prob
        self.max_n_fraction = max_n_fraction
        self.val_windows_per_class = val_windows_per_class
        self.test_windows_per_class = test_windows_per_class
        self.test_stride = test_stride
        self.num_workers = num_workers
        self.datasets: dict[str, BalancedWindowDataset | EvalWindowDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        data = self.dataset
        self.datasets["train"] = BalancedWindowDataset(
            data, self.seq_len, num_samples=self.samples_per_epoch, seed=self.seed,
            reverse_complement_prob=self.rc_prob, max_n_fraction=self.max_n_fraction)
        self.datasets["test"] = EvalWindowDataset(data, data.eval_windows(
            "test", self.seq_len, per_class=self.test_windows_per_class, max_n_fraction=self.max_n_fraction,
            stride=self.test_stride))
        # Validation may be short of a class at long contexts (e.g. a 5% tail of a small genome): it only
        # monitors training, so it is allowed to be partial or empty.
        self.datasets["val"] = EvalWindowDataset(data, data.eval_windows(
            "val", self.seq_len, per_class=self.val_windows_per_class, max_n_fraction=self.max_n_fraction,
            required=False))

    def _loader(self, name: str) -> DataLoader:
        return DataLoader(self.datasets[name], batch_size=self.micro_batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        # No shuffle: items are independent random draws already, and in order every batch is class-balanced. A
        # resumable loader, so that a run resumed mid-epoch goes on with the draws the uninterrupted run would make.
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(self.datasets["train"], num_replicas=world, rank=rank, shuffle=False)
        loader = ResumableLoader(self.datasets["train"], batch_size=self.micro_batch_size, sampler=sampler,
                                 num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                                 pin_memory=torch.cuda.is_available())
        loader.datamodule = self
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def windows_per_class(self, part: str) -> list[int]:
        dataset = self.datasets[part]
        return np.bincount(dataset.windows.label, minlength=self.dataset.num_classes).tolist()
