"""``dna-mamba prepare-species`` and ``dna-mamba species-sweep``: argparse entry points (no Hydra).

The sweep runs Lightning through :mod:`dna_mamba.lit.species_run`, imported only when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import yaml

from dna_mamba.errors import report_user_errors
from dna_mamba.outputs import check_output, same_file
from dna_mamba.species.dataset import SPLIT_METHODS, SplitConfig, prepare_species
from dna_mamba.species.manifest import EXAMPLES, read_manifest
from dna_mamba.species.report import parse_context

PREPARE_EPILOG = f"""\
manifest (TSV: label, path[, split]; or YAML: label -> [paths]); shipped examples: {', '.join(EXAMPLES)}
examples:
  dna-mamba prepare-species my_species.tsv --out data/species
  dna-mamba prepare-species bacteria --data-root ../shared/data --out data/bacteria --context 32k
  dna-mamba prepare-species drosophila_chr4 --split region --test-fraction 0.25 --out data/dros
"""

SWEEP_EPILOG = """\
The defaults are the Mamba paper's protocol: contexts 2^10 ... 2^20, 10 epochs x 1024 steps, 64 windows per step
(gradient accumulation), lr 1e-4, head on the last token. Shorter runs for a quick look:
  dna-mamba species-sweep bacteria --contexts 1k,4k --model tiny --epochs 1 --steps-per-epoch 20 --out runs/sw
  dna-mamba species-sweep bacteria --contexts 1k,32k,256k --kmer-only --out runs/kmer   (baseline only)
  dna-mamba species-sweep drosophila_chr4 --contexts 32k --test-stride 1/4 --out runs/dros   (4x the test windows)
  dna-mamba species-sweep bacteria --init-from runs/pretrain/model --accelerator gpu --precision bf16-mixed
"""


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", metavar="DIR", help="folder relative manifest paths are relative to "
                        "(default: $DNA_MAMBA_DATA, then the manifest's folder)")
    parser.add_argument("--split", choices=SPLIT_METHODS, default="auto",
                        help="genome: hold out genomes (strains); contig: whole contigs; region: the tail of every "
                        "contig; auto: genome when every class has 2+ genomes or the manifest has a split column, "
                        "else region (default)")
    parser.add_argument("--val-fraction", type=float, default=0.05, metavar="F",
                        help="held-out tail of training contigs used for validation (default 0.05)")
    parser.add_argument("--test-fraction", type=float, default=0.2, metavar="F",
                        help="share held out for testing by the contig and region splits (default 0.2)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def build_prepare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dna-mamba prepare-species", epilog=PREPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build one genome store per genome of a species manifest and split them without leaks "
        "(held-out genomes, contigs or regions).")
    parser.add_argument("manifest", help="TSV or YAML manifest, or a shipped example name")
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset directory to create or update")
    parser.add_argument("--context", action="append", default=[], metavar="N",
                        help="check that every class fills windows of this length (e.g. 32k; repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_options(parser)
    return parser


def prepare_main(argv: Sequence[str] | None = None) -> int:
    """``dna-mamba prepare-species``; returns the exit status."""
    args = build_prepare_parser().parse_args(argv)
    with report_user_errors(args.debug, memory_advice=None):
        split = SplitConfig(args.split, args.val_fraction, args.test_fraction)
        manifest = read_manifest(args.manifest, args.data_root)
        dataset = prepare_species(manifest, args.out, split=split, progress=not args.quiet)
        for text in args.context:
            window = parse_context(text)
            dataset.train_regions(window)
            counts = dataset.eval_windows("test", window).per_class(dataset.num_classes)
            print(f"context {window:,}: test windows per class {dict(zip(dataset.classes, counts, strict=True))}")
    print(f"prepared: {dataset.directory}")
    print(dataset.describe())
    return 0


def build_sweep_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dna-mamba species-sweep", epilog=SWEEP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Species classification accuracy against context length, beside k-mer baselines on the same "
        "windows: one fine-tuning run per context, then sweep.md (table) and sweep.png (plot).")
    parser.add_argument("manifest", help="TSV or YAML manifest, a shipped example name, or a prepared dataset "
                        "directory (from prepare-species)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory: sweep.md, sweep.json, sweep.png and one subfolder per context. A "
                        "context already there is run again: its earlier run is replaced. The table also lists the "
                        "other contexts of earlier sweeps there, if they ran on the same data, test windows and "
                        "model (others are left out, with a notice)")
    parser.add_argument("--contexts", default="1k,2k,4k,8k,16k,32k,64k,128k,256k,512k,1m",
                        help="comma-separated lengths (default: 2^10 ... 2^20)")
    parser.add_argument("--dataset-dir", metavar="DIR", help="where to prepare the manifest (default: the cache)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", default="1.4m", help="backbone size from conf/model when starting from scratch "
                       "(tiny, 250k, 700k, 1.4m, 3.5m, 7m, ...; default 1.4m)")
    model.add_argument("--init-from", metavar="PATH", help="a from_pretrained directory or Lightning checkpoint")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64, help="windows per optimizer step (default 64)")
    parser.add_argument("--micro-batch-tokens", type=int, default=1 << 20, metavar="N",
                        help="tokens per forward pass at most; gradient accumulation makes up the batch exactly, with "
                        "micro-batches of the most windows that fit and divide --batch-size (default 2^20)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--pooling", choices=("last", "mean"), default="last")
    parser.add_argument("--freeze-backbone", action="store_true", help="train the head only")
    parser.add_argument("--test-windows-per-class", type=int, default=256)
    parser.add_argument("--test-stride", metavar="N|P/Q",
                        help="bases between test-window starts (e.g. 8192 or 8k; at most the context), or a fraction "
                        "of each context (e.g. 1/4: four times as many windows, overlapping). Default: the context "
                        "(non-overlapping). Overlapping windows are correlated: more of them lower the variance from "
                        "window placement but are not independent samples. The k-mer baseline uses the same windows")
    parser.add_argument("--val-windows-per-class", type=int, default=32)
    parser.add_argument("--kmer", default="4,5,6", help="k-mer sizes of the baseline (default 4,5,6)")
    parser.add_argument("--kmer-train-windows", type=int, default=2048)
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument("--kmer-only", action="store_true", help="run only the k-mer baseline")
    baseline.add_argument("--no-baseline", action="store_true", help="skip the k-mer baseline")
    parser.add_argument("--accelerator", choices=("auto", "cpu", "gpu"), default="auto",
                        help="auto (default): a CUDA GPU when PyTorch sees one, else the CPU")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on a GPU, 32-true on a CPU")
    parser.add_argument("--max-time-per-context", metavar="DD:HH:MM:SS",
                        help="stop training at a context after this long (then evaluate); for time-boxed sweeps, "
                        "e.g. 00:02:30:00")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--title", default="", help="plot and table title")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_options(parser)
    return parser


def model_config_by_name(name: str):
    """A DnaMambaConfig from a ``conf/model/<name>.yaml`` option, read without Hydra."""
    from dna_mamba.model import DnaMambaConfig

    path = resources.files("dna_mamba.conf") / "model" / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.name.removesuffix(".yaml") for p in (resources.files("dna_mamba.conf") / "model").iterdir()
                         if p.name.endswith(".yaml"))
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(options)}")
    values = yaml.safe_load(path.read_text())
    values.pop("name", None)
    return DnaMambaConfig(**values)


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--kmer {text!r} must be comma-separated k-mer sizes, e.g. 4,5,6") from None
    if not ks:
        raise ValueError(f"--kmer {text!r} lists no k-mer size (e.g. 4,5,6); use --no-baseline to skip the baseline")
    return ks


# The sweep's flags for the settings that library messages name by their Hydra keys.
FLAGS = {"task.lr": "--lr", "task.epochs": "--epochs", "task.steps_per_epoch": "--steps-per-epoch",
         "task.batch_size": "--batch-size", "task.val_windows_per_class": "--val-windows-per-class",
         "task.test_windows_per_class": "--test-windows-per-class", "task.test_stride": "--test-stride",
         "task.kmer_ks": "--kmer", "task.kmer_train_windows": "--kmer-train-windows", "task.pooling": "--pooling",
         "task.split": "--split", "task.val_fraction": "--val-fraction", "task.test_fraction": "--test-fraction",
         "trainer.micro_batch_tokens": "--micro-batch-tokens", "trainer.max_time": "--max-time-per-context"}


@contextlib.contextmanager
def _in_flag_terms() -> Iterator[None]:
    """Re-raise a ValueError whose message names settings by Hydra key (``task.lr``) with the flags instead."""
    try:
        yield
    except ValueError as err:
        message = str(err)
        translated = re.sub(r"\b(?:task|trainer)\.\w+", lambda m: FLAGS.get(m.group(0), m.group(0)), message)
        if translated == message:
            raise
        raise ValueError(translated) from err


def _check_out(out: str, data: Sequence[str | None]) -> Path:
    """Refuse, before any data work, an --out that cannot be the sweep's folder; note one that holds other files."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--out {out}: is a file; the sweep writes a folder (sweep.md, sweep.png and one "
                                 "subfolder per context)")
    for source in data:
        if source is not None and same_file(source, path):
            raise ValueError(f"--out {out}: is the dataset directory {source}; give the sweep a folder of its own")
    check_output(path / "sweep.md", f"--out {out}")  # a folder that can be made and written
    if path.is_dir():
        others = sorted(p.name for p in path.iterdir() if p.name not in ("sweep.md", "sweep.json", "sweep.png")
                        and not p.name.startswith("context_"))
        if others and not (path / "sweep.json").is_file():
            listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            print(f"note: {out} already holds other files ({listed}); the sweep writes sweep.md, sweep.json, "
                  "sweep.png and context_* folders beside them")
    return path


def sweep_main(argv: Sequence[str] | None = None) -> int:
    """``dna-mamba species-sweep``; returns the exit status."""
    args = build_sweep_parser().parse_args(argv)
    with report_user_errors(args.debug, memory_advice="a smaller --batch-size, or fewer or shorter --contexts"), \
            _in_flag_terms():
        prepared = Path(args.manifest).is_dir()
        _check_out(args.out, [args.manifest if prepared else None, args.dataset_dir])
        if args.micro_batch_tokens < 1:
            raise ValueError(f"--micro-batch-tokens must be positive, got {args.micro_batch_tokens}")
        contexts = [parse_context(c) for c in args.contexts.split(",") if c.strip()]
        kmer_ks = _parse_ks(args.kmer)

        import torch

        from dna_mamba.lit.runner import TrainerConfig
        from dna_mamba.lit.species import SpeciesTaskConfig
        from dna_mamba.lit.species_run import check_context_list, check_max_time, run_species_sweep

        check_max_time(args.max_time_per_context, "--max-time-per-context")
        if args.accelerator == "gpu" and not args.kmer_only and not torch.cuda.is_available():
            raise ValueError("--accelerator gpu: PyTorch sees no CUDA GPU on this machine; use --accelerator cpu")
        task = SpeciesTaskConfig(
            manifest=None if prepared else args.manifest, prepared=args.manifest if prepared else None,
            data_root=args.data_root, dataset_dir=args.dataset_dir, split=args.split,
            val_fraction=args.val_fraction, test_fraction=args.test_fraction, pooling=args.pooling,
            freeze_backbone=args.freeze_backbone, lr=args.lr, epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
            val_windows_per_class=args.val_windows_per_class, test_windows_per_class=args.test_windows_per_class,
            test_stride=args.test_stride, run_baseline=not args.no_baseline,
            kmer_ks=kmer_ks, kmer_train_windows=args.kmer_train_windows)
        check_context_list(task, contexts, kmer_only=args.kmer_only, option=f"--contexts {args.contexts!r}")
        gpu = args.accelerator == "gpu" or (args.accelerator == "auto" and torch.cuda.is_available())
        trainer = TrainerConfig(out_dir=args.out, accelerator=args.accelerator,
                                precision=args.precision or ("bf16-mixed" if gpu else "32-true"),
                                max_time=args.max_time_per_context, enable_progress_bar=not args.quiet,
                                log_every_n_steps=10)
        model = None if args.init_from or args.kmer_only else model_config_by_name(args.model)
        run_species_sweep(task, model, trainer, contexts, micro_batch_tokens=args.micro_batch_tokens, seed=args.seed,
                          init_from=args.init_from, kmer_only=args.kmer_only, title=args.title)
    print(f"sweep written to {args.out}/sweep.md, sweep.png")
    return 0


if __name__ == "__main__":
    sys.exit(sweep_main())
