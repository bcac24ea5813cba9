"""Command lines for variant scoring and saturation mutagenesis.

    dna-mamba score-vcf --fasta REF.fa --vcf IN.vcf.gz --out OUT.vcf.gz [--tsv OUT.tsv] [--model DIR]
    dna-mamba score-vcf --fasta REF.fa --table IN.tsv --out OUT.tsv [--model DIR]
    dna-mamba mutagenesis --fasta REF.fa --region chr20:1,000,001-1,010,000 --out PREFIX [--model DIR]

``--model`` defaults to the human model shipped with the package. ``main(argv)`` takes the subcommand name first
(``main(["score-vcf", ...])``); :func:`score_vcf_main` and :func:`mutagenesis_main` take only its options.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from dna_mamba.errors import report_user_errors
from dna_mamba.outputs import check_output, parse_device

_DEFAULTS = dict(window=256, context=8192, batch_size=64, stream_tokens=1 << 21)
# Out of memory outside the scoring loops (which name the values in use, _memory_advice below).
MEMORY_ADVICE = "a smaller --batch-size or --context"


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model directory (config.json + model.safetensors); default: the human "
                        "model shipped with dna_mamba")
    parser.add_argument("--fasta", required=True, help="reference FASTA (plain, gzip or bgzip; indexed is fastest)")
    parser.add_argument("--window", type=int, default=_DEFAULTS["window"],
                        help="scored tokens per haplotype from the variant on (default %(default)s)")
    parser.add_argument("--context", type=int, default=_DEFAULTS["context"],
                        help="prefix grid size C: each variant sees C to 2C-1 reference bases before it "
                        "(default %(default)s)")
    parser.add_argument("--strands", choices=("both", "forward"), default="both",
                        help="score the forward strand only, or both and average (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS["batch_size"],
                        help="haplotype windows per forward pass (default %(default)s)")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1' or 'mps'")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def _check_outputs(outputs: list[tuple[str, Path]], inputs: dict[str, str | None]) -> None:
    """Refuse, before any model compute, outputs that cannot be written, would overwrite an input, or are one file.

    Args:
        outputs: (option, file it writes) pairs, e.g. ``("--out", Path("out.vcf"))``.
        inputs: option -> the file it reads (None when the option was not given).
    """
    seen: dict[Path, str] = {}
    for option, path in outputs:
        check_output(path, f"{option} {path}", inputs)
        resolved = path.resolve()
        if resolved in seen:
            raise ValueError(f"{option} {path}: is also the {seen[resolved]} output; give each output its own file")
        seen[resolved] = option


def build_score_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dna-mamba score-vcf",
        description="Zero-shot variant-effect scores: log p(ALT) - log p(REF) over a window from the variant on, "
        "on both strands, and REF/ALT embedding distances. Every input record is kept; alleles that cannot be "
        "scored get a DNAM_SKIP reason.",
    )
    _add_model_options(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--vcf", help="input VCF or BCF (plain, gzip or bgzip)")
    source.add_argument("--table", help="input table with columns chrom, pos (1-based), ref, alt: TSV, CSV or parquet")
    parser.add_argument("--out", required=True, help="output: a VCF (.vcf, or .vcf.gz: bgzip + tabix) for --vcf; "
                        "a TSV for --table")
    parser.add_argument("--tsv", help="also write one row per ALT allele as TSV (.gz for gzip)")
    parser.add_argument("--layer", type=int, default=-1,
                        help="hidden-state layer for embedding distances (0 = token embedding, -1 = final; "
                        "default %(default)s)")
    parser.add_argument("--no-embeddings", action="store_true", help="skip the embedding distances")
    parser.add_argument("--snapshot-stride", type=int, default=512,
                        help="spacing of cached states within a context cell (default %(default)s)")
    parser.add_argument("--stream-tokens", type=int, default=_DEFAULTS["stream_tokens"],
                        help="reference-prefix tokens per forward pass, over all context cells run side by side; "
                        "lower it if the GPU runs out of memory (default %(default)s)")
    parser.add_argument("--naive", action="store_true",
                        help="run prefix + window per variant instead of cached prefix states (same scores, slower)")
    return parser


def score_vcf_main(argv: list[str] | None = None) -> int:
    """``dna-mamba score-vcf``: score a VCF/BCF or a variant table."""
    args = build_score_parser().parse_args(argv)
    with report_user_errors(args.debug, memory_advice=MEMORY_ADVICE):
        return _score(args)


def _score(args: argparse.Namespace) -> int:
    from dna_mamba.tasks.variants import ScoringConfig, load_scoring_model, score_records, summarize_skips
    from dna_mamba.tasks.vcf_io import (
        ReferenceGenome,
        is_vcf_path,
        read_variant_table,
        read_vcf,
        write_scored_vcf,
        write_scores_tsv,
    )

    if args.vcf and not is_vcf_path(args.out):
        raise ValueError(f"--out {args.out}: with --vcf the output must be a VCF (.vcf, .vcf.gz or .vcf.bgz); "
                         f"use --tsv for a table")
    if args.table and is_vcf_path(args.out):
        raise ValueError(f"--out {args.out}: with --table the output is a TSV; a VCF output needs a --vcf input")
    outputs = [("--out", Path(args.out))] + ([("--tsv", Path(args.tsv))] if args.tsv else [])
    _check_outputs(outputs, {"--vcf": args.vcf, "--table": args.table, "--fasta": args.fasta})
    config = ScoringConfig(window=args.window, context=args.context, strands=args.strands,
                           embeddings=not args.no_embeddings, layer=args.layer, cached=not args.naive,
                           batch_size=args.batch_size, snapshot_stride=args.snapshot_stride,
                           stream_tokens=args.stream_tokens)
    device = parse_device(args.device)
    model = load_scoring_model(args.model, device=device)
    if args.vcf:
        records, header = read_vcf(args.vcf)
        table = None
    else:
        records, table = read_variant_table(args.table)
    started = time.perf_counter()
    memory_options = (f"--batch-size (now {args.batch_size}), --stream-tokens (now {args.stream_tokens}) or "
                      f"--context (now {args.context})")
    with ReferenceGenome(args.fasta) as reference, _memory_advice(memory_options):
        result = score_records(model, reference, records, config, progress=not args.no_progress)
    elapsed = time.perf_counter() - started

    if args.vcf:
        meta = dict(model=args.model or "shipped human model", fasta=args.fasta, window=config.window,
                    context=config.context, strands=config.strands, layer=config.layer)
        out = write_scored_vcf(args.vcf, args.out, header, result.table, meta)
        if args.tsv:
            write_scores_tsv(result.table, args.tsv)
    else:
        out = write_scores_tsv(result.table, args.out, extra=table)
        if args.tsv:
            write_scores_tsv(result.table, args.tsv, extra=table)
    scored = int(result.table["skip_reason"].isna().sum())
    total = len(result.table)
    rate = scored / elapsed if elapsed > 0 else float("inf")
    print(f"scored {scored:,} of {total:,} ALT alleles in {len(records):,} records on {device} in {elapsed:.1f} s "
          f"({rate:,.1f} alleles/s) -> {out}", file=sys.stderr)
    if scored < total:
        print(f"skipped {total - scored:,} alleles:\n{summarize_skips(result)}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _memory_advice(options: str) -> Iterator[None]:
    """Out of memory while scoring becomes a user error naming the scoring options that need less memory; the
    generic report (dna_mamba.errors) would give training advice."""
    import torch

    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"out of memory while scoring ({first_line}); lower {options}") from err


_REGION = re.compile(r"^(?P<chrom>[^:]+):(?P<start>[\d,]+)-(?P<end>[\d,]+)$")


def parse_region(text: str) -> tuple[str, int, int]:
    """A samtools-style region (1-based, inclusive) as 0-based half-open coordinates.

    ``chr20:1,000,001-1,010,000`` -> ``("chr20", 1000000, 1010000)``.

    Raises:
        ValueError: not of the form CHROM:START-END with 1 <= START <= END.
    """
    match = _REGION.match(text.strip())
    if match is None:
        raise ValueError(f"--region {text!r}: expected CHROM:START-END (1-based, inclusive), e.g. chr20:1001-2000")
    start, end = int(match["start"].replace(",", "")), int(match["end"].replace(",", ""))
    if not 1 <= start <= end:
        raise ValueError(f"--region {text!r}: need 1 <= START <= END")
    return match["chrom"], start - 1, end


def build_mutagenesis_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dna-mamba mutagenesis",
        description="In-silico saturation mutagenesis: the LLR of all three substitutions at every position of a "
        "region, written as PREFIX.tsv (one row per substitution), PREFIX.bedGraph (one value per position) and "
        "PREFIX.png.",
    )
    _add_model_options(parser)
    parser.add_argument("--region", required=True, help="CHROM:START-END, 1-based inclusive (e.g. chr20:1001-2000)")
    parser.add_argument("--out", required=True, help="output prefix (PREFIX.tsv, PREFIX.bedGraph, PREFIX.png); a "
                        "folder (existing, or ending in '/') gets files named after the region, e.g. "
                        "DIR/chr20_1001_2000.tsv")
    parser.add_argument("--bedgraph-stat", choices=("mean", "min"), default="mean",
                        help="per-position value: mean LLR of the 3 substitutions, or the minimum (most damaging) "
                        "(default %(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return parser


def mutagenesis_main(argv: list[str] | None = None) -> int:
    """``dna-mamba mutagenesis``: saturation mutagenesis of a region."""
    args = build_mutagenesis_parser().parse_args(argv)
    with report_user_errors(args.debug, memory_advice=MEMORY_ADVICE):
        return _mutagenesis(args)


def _mutagenesis(args: argparse.Namespace) -> int:
    from dna_mamba.tasks.mutagenesis import (
        plot_mutagenesis,
        saturation_mutagenesis,
        write_bedgraph,
        write_mutagenesis_tsv,
    )
    from dna_mamba.tasks.variants import ScoringConfig, load_scoring_model
    from dna_mamba.tasks.vcf_io import ReferenceGenome

    chrom, start, end = parse_region(args.region)
    prefix = mutagenesis_prefix(args.out, chrom, start, end)
    outputs = [("--out", prefix.with_name(prefix.name + suffix))
               for suffix in (".tsv", ".bedGraph") + (() if args.no_plot else (".png",))]
    _check_outputs(outputs, {"--fasta": args.fasta})
    config = ScoringConfig(window=args.window, context=args.context, strands=args.strands, embeddings=False,
                           batch_size=args.batch_size)
    device = parse_device(args.device)
    model = load_scoring_model(args.model, device=device)
    started = time.perf_counter()
    memory_options = f"--batch-size (now {args.batch_size}) or --context (now {args.context})"
    with ReferenceGenome(args.fasta) as reference, _memory_advice(memory_options):
        result = saturation_mutagenesis(model, reference, chrom, start, end, config, progress=not args.no_progress)
    elapsed = time.perf_counter() - started
    outputs = [write_mutagenesis_tsv(result, prefix.with_name(prefix.name + ".tsv")),
               write_bedgraph(result, prefix.with_name(prefix.name + ".bedGraph"), args.bedgraph_stat)]
    if not args.no_plot:
        import matplotlib.pyplot as plt

        figure = plot_mutagenesis(result, prefix.with_name(prefix.name + ".png"), args.bedgraph_stat)
        plt.close(figure)
        outputs.append(prefix.with_name(prefix.name + ".png"))
    print(f"{end - start:,} positions x 3 substitutions on {device} in {elapsed:.1f} s -> "
          f"{', '.join(map(str, outputs))}", file=sys.stderr)
    return 0


def mutagenesis_prefix(out: str, chrom: str, start: int, end: int) -> Path:
    """``--out`` as the prefix of the output files. A folder (one that exists, or a name ending in '/') gets files
    named after the region inside it (``DIR/chr20_1001_2000.tsv``) rather than ``DIR.tsv`` beside it."""
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        return Path(out) / f"{chrom}_{start + 1}_{end}"
    return Path(out)


COMMANDS = {"score-vcf": score_vcf_main, "mutagenesis": mutagenesis_main}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``score-vcf`` or ``mutagenesis`` (the first argument) to its command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: dna-mamba {{{','.join(COMMANDS)}}} [options]  (run one with --help)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
