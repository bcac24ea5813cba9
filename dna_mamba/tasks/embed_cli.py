"""``dna-mamba embed``: embeddings of BED regions or fixed windows of a reference, written to parquet, npz or npy.

    dna-mamba embed --model MODEL_DIR --fasta hg38.fa.gz --bed peaks.bed --flank 500 --out peaks.parquet
    dna-mamba embed --model MODEL_DIR --fasta genome.fa --window 1000 --stride 1000 --layers 4,8,-1 \\
        --strands both --out windows.npz
    dna-mamba embed --model MODEL_DIR --fasta GRCh37_chr20.fa.gz --contigs 20 --pooling none --float16 --out chr20.npy
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dna_mamba.errors import report_user_errors
from dna_mamba.outputs import parse_device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dna-mamba embed",
        description="Embed BED regions or fixed windows of a reference with a saved dna_mamba model. Sequences of "
        "any length are streamed in chunks with the model's state carried, so memory stays that of one chunk.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="a model directory (save_pretrained / dna-mamba export)")
    parser.add_argument("--fasta", required=True, help="reference FASTA: plain or bgzip (random access), or gzip "
                        "(read into memory)")
    parser.add_argument("--bed", help="regions to embed (BED: 0-based, half-open; name and strand columns kept)")
    parser.add_argument("--window", type=int, help="embed fixed windows of this many bases instead of a BED")
    parser.add_argument("--stride", type=int, help="distance between window starts (default: --window)")
    parser.add_argument("--contigs", help="comma-separated contigs: those to tile with --window (default: all), or "
                        "without --window, contigs to embed whole (streamed in chunks)")
    parser.add_argument("--flank", type=int, default=0, help="bases added on each side of every region (default 0)")
    parser.add_argument("--layers", default="-1", help="hidden-state index, comma-separated indices for a layer "
                        "sweep, or 'all'; 0 = embeddings, -1 = final normed output (default -1)")
    parser.add_argument("--pooling", choices=("mean", "last", "none"), default="mean",
                        help="mean over positions (N included), last position, or none (per position; needs .npy "
                        "or .npz output)")
    parser.add_argument("--strands", choices=("forward", "both"), default="forward",
                        help="'both' averages with the reverse-complement pass (default forward)")
    parser.add_argument("--ignore-strand", action="store_true",
                        help="read '-' strand BED regions as the reference's forward strand, not reverse-complemented")
    parser.add_argument("--out", required=True, help="output file: .parquet or .npz (pooled), .npy (+ .npy.json "
                        "sidecar; streamed to disk for per-position outputs)")
    parser.add_argument("--batch-size", type=int, help="sequences per forward pass (default: fill --chunk-tokens)")
    parser.add_argument("--chunk-tokens", type=int,
                        help="tokens per forward pass over the batch (default 262144 on CUDA, 65536 on CPU)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: cuda if "
                        "available, else cpu)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto = bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--float16", action="store_true", help="store float16 values (halves per-position files)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser


def parse_layers(text: str) -> int | list[int] | str:
    """``"-1"`` -> -1, ``"0,4,-1"`` -> [0, 4, -1], ``"all"`` -> ``"all"``."""
    text = text.strip()
    if text == "all":
        return text
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--layers must be an integer, comma-separated integers or 'all', got {text!r}") from None
    return values[0] if "," not in text else values


def _attach_negative_lists(argv: list[str]) -> list[str]:
    """``--layers -1,2`` -> ``--layers=-1,2``: argparse takes a value that starts with '-' for an option unless it is
    one plain negative number, so it would refuse the documented form."""
    attached: list[str] = []
    for arg in argv:
        if attached and attached[-1] == "--layers" and arg.startswith("-") and arg[1:2].isdecimal():
            attached[-1] = f"--layers={arg}"
        else:
            attached.append(arg)
    return attached


MEMORY_ADVICE = "a smaller --chunk-tokens (tokens per forward pass, e.g. 65536) or --batch-size"


def main(argv: list[str] | None = None) -> int:
    """Run ``dna-mamba embed``; returns the exit status (user errors exit with status 1 and a one-line message)."""
    args = build_parser().parse_args(_attach_negative_lists(sys.argv[1:] if argv is None else list(argv)))
    with report_user_errors(args.debug, memory_advice=MEMORY_ADVICE):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from dna_mamba.model.io import load_pretrained
    from dna_mamba.tasks.embed import embed_regions

    if (args.bed is None) == (args.window is None and args.contigs is None):
        raise ValueError("give --bed, or --window (with --stride) and/or --contigs")
    layers = parse_layers(args.layers)
    device = parse_device(args.device)
    model = load_pretrained(args.model, device=device)
    started = time.perf_counter()
    result = embed_regions(
        model, args.fasta, args.bed, window=args.window, stride=args.stride,
        contigs=args.contigs.split(",") if args.contigs else None, flank=args.flank,
        use_strand=not args.ignore_strand, layers=layers, pooling=args.pooling, strands=args.strands,
        batch_size=args.batch_size, chunk_tokens=args.chunk_tokens, precision=args.precision,
        dtype=np.float16 if args.float16 else np.float32, out=args.out, progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - started
    bases = sum(region.length + 2 * args.flank for region in result.regions)
    passes = 2 if args.strands == "both" else 1
    size = Path(args.out).stat().st_size
    print(f"embedded {len(result):,} regions ({_si(bases)}b, {args.strands} strand{'s' if passes == 2 else ''}) "
          f"in {elapsed:.1f} s: {_si(bases * passes / elapsed)}b/s on {device}")
    print(f"layers {result.layers} of {model.config.n_layer + 1} hidden states, pooling {args.pooling}, "
          f"dim {result.dim}, values {tuple(result.values.shape)} -> {args.out} ({_si(size)}B)")
    padded = result.metadata["padded_regions"]
    if padded:
        print(f"{padded:,} of {len(result):,} regions reach past a contig end (or before its start): the bases "
              "there are read as N")
    return 0


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} "


if __name__ == "__main__":
    sys.exit(main())
