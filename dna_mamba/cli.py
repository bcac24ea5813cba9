"""The ``dna-mamba`` command: one entry point with subcommands.

    dna-mamba prepare GENOME.fa.gz --out STORE      FASTA -> token store
    dna-mamba train [hydra overrides]               pretrain (same as python -m dna_mamba.train)
    dna-mamba export RUN/checkpoints/last.ckpt --out MODEL_DIR
    dna-mamba embed --model DIR --fasta REF --bed REGIONS --out emb.parquet
    dna-mamba score-vcf --model DIR --fasta REF --vcf IN.vcf.gz --out OUT.vcf.gz
    dna-mamba mutagenesis --model DIR --fasta REF --region chrM:1-500 --out PREFIX
    dna-mamba info [MODEL_DIR]                      what a saved model is (default: the shipped human model)
    dna-mamba prepare-species MANIFEST --out DIR    species manifest -> stores + split
    dna-mamba species-sweep MANIFEST --out DIR      species accuracy against context length
"""

from __future__ import annotations

import argparse
import sys
import warnings

from dna_mamba.errors import report_user_errors


def _cmd_prepare(argv: list[str]) -> int:
    from dna_mamba.data.prepare import main as prepare_main

    return prepare_main(argv) or 0


def _cmd_train(argv: list[str]) -> int:
    from dna_mamba import train

    sys.argv = ["dna-mamba train", *argv]
    train.main()
    return 0


def _cmd_export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dna-mamba export",
        description="Export the model of a Lightning checkpoint as a directory that from_pretrained() loads "
        "(config.json + model.safetensors).",
    )
    parser.add_argument("checkpoint", help="a .ckpt written by dna-mamba train (e.g. RUN/checkpoints/last.ckpt)")
    parser.add_argument("--out", required=True, help="output directory (replaced atomically if it exists)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    from dna_mamba.export import export_checkpoint

    with report_user_errors(args.debug, memory_advice=None):
        out = export_checkpoint(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} -> {out}")
    return 0


def _cmd_embed(argv: list[str]) -> int:
    from dna_mamba.tasks.embed_cli import main as embed_main

    return embed_main(argv)


def _cmd_score_vcf(argv: list[str]) -> int:
    from dna_mamba.tasks.variants_cli import score_vcf_main

    return score_vcf_main(argv)


def _cmd_mutagenesis(argv: list[str]) -> int:
    from dna_mamba.tasks.variants_cli import mutagenesis_main

    return mutagenesis_main(argv)


def _cmd_info(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dna-mamba info", description="Describe a saved dna_mamba model.")
    parser.add_argument("model", nargs="?", help="a directory written by save_pretrained / dna-mamba export "
                        "(default: the human model shipped with dna_mamba, which score-vcf and mutagenesis use "
                        "without --model)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    from dna_mamba.model.io import read_config

    with report_user_errors(args.debug, memory_advice=None):
        if args.model is None:
            from dna_mamba.tasks.variants import HUMAN_MODEL_DIR, default_human_model

            shipped = default_human_model()
            if shipped is None:
                raise FileNotFoundError(f"no model given and no shipped human model in {HUMAN_MODEL_DIR}")
            args.model = str(shipped)
        config, metadata = read_config(args.model)
    from dna_mamba.model import DnaMambaLM

    n_params = DnaMambaLM(config).num_parameters()
    print(f"{args.model}: {n_params:,} parameters, {config.n_layer} Mamba blocks of d_model {config.d_model}, "
          f"d_state {config.d_state}")
    for key, value in metadata.items():
        if not isinstance(value, dict):
            print(f"  {key}: {value}")
    return 0


def _cmd_prepare_species(argv: list[str]) -> int:
    from dna_mamba.species.cli import prepare_main

    return prepare_main(argv)


def _cmd_species_sweep(argv: list[str]) -> int:
    from dna_mamba.species.cli import sweep_main

    return sweep_main(argv)


COMMANDS = {
    "prepare": (_cmd_prepare, "FASTA (plain, gzip, bgzip) -> memory-mapped token store"),
    "train": (_cmd_train, "pretrain a model (Hydra overrides, e.g. context=8k model=1.4m trainer=gpu)"),
    "export": (_cmd_export, "Lightning checkpoint -> from_pretrained directory"),
    "embed": (_cmd_embed, "embeddings of BED regions, windows or whole contigs (.npz, .parquet, .npy)"),
    "score-vcf": (_cmd_score_vcf, "variant-effect scores (log-likelihood ratios) for a VCF/BCF or table"),
    "mutagenesis": (_cmd_mutagenesis, "in-silico saturation mutagenesis of a region: TSV, bedGraph and plot"),
    "info": (_cmd_info, "describe a saved model"),
    "prepare-species": (_cmd_prepare_species, "species manifest -> one store per genome, leak-free splits"),
    "species-sweep": (_cmd_species_sweep, "species classification accuracy against context, beside k-mer baselines"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dna-mamba",
        description="Single-nucleotide Mamba language models for DNA.",
        epilog="Run 'dna-mamba COMMAND --help' for a command's options. For train, see "
        "'dna-mamba train --help' (Hydra) and the README.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        parser.error(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return COMMANDS[command][0](rest)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # A command's user needs the message, not the library line that raised it.
    print(f"warning: {message}", file=sys.stderr if file is None else file)


if __name__ == "__main__":
    sys.exit(main())
