"""Embedding throughput and peak device memory versus sequence length (``dna_mamba.tasks.embed``).

One long sequence per run, streamed chunk by chunk with the recurrent state carried, mean-pooled: the cost of
embedding a whole chromosome. Peak GPU memory should stay flat as the length grows (it is that of one chunk);
throughput is bases per second of input (both strands count once each with ``--strands both``).

    python benchmarks/bench_embed.py                                   # CUDA: 1.4M/7M/40.7M at 1, 4, 16, 63 Mb
    python benchmarks/bench_embed.py --fasta GRCh37_chr20.fa.gz --contig 20   # a real chromosome via pyfaidx
    python benchmarks/bench_embed.py --device cpu --quick              # CPU smoke run (1.4M model, 8 kb)
    python benchmarks/bench_embed.py --window 1000 --lengths 16e6      # 1-kb windows, batched (the CLI's --window)

With ``--window W`` the length is cut into consecutive W-bp windows, each embedded as its own sequence and
batched to fill a chunk, as ``dna-mamba embed --window W`` does: the cost of embedding many short regions.

Weights are randomly initialised (``DnaMambaConfig.from_size``): throughput does not depend on them. Tokens are
uniform random bases unless ``--fasta`` is given. The first run of each model is preceded by an untimed warm-up
(Triton compilation). Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from dna_mamba.genomics import Region
from dna_mamba.model import DnaMambaConfig, DnaMambaLM
from dna_mamba.tasks.embed import CPU_CHUNK_TOKENS, CUDA_CHUNK_TOKENS, embed, embed_regions

GPU_LENGTHS = (1_000_000, 4_000_000, 16_000_000, 63_025_520)  # up to the length of GRCh37 chr20
CPU_LENGTHS = (1 << 17,)
QUICK_LENGTHS = (1 << 13,)  # the CPU reference scan is slow: a smoke run, not a measurement


def parse_lengths(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="1.4m,7m,40.7m", help="model sizes of DnaMambaConfig.from_size")
    parser.add_argument("--lengths", type=parse_lengths, help="comma-separated lengths in bases (1e6 accepted)")
    parser.add_argument("--chunk-tokens", type=int, help="tokens per forward pass (default: embed's default)")
    parser.add_argument("--layers", default="-1", help="hidden state(s) to pool, e.g. -1 or 4,8,-1")
    parser.add_argument("--pooling", choices=("mean", "last"), default="mean")
    parser.add_argument("--strands", choices=("forward", "both"), default="forward")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--fasta", help="embed a real contig of this FASTA (plain or bgzip) instead of random bases")
    parser.add_argument("--contig", help="the contig of --fasta (default: its longest)")
    parser.add_argument("--window", type=int, help="embed the length as consecutive windows of this many bases, "
                        "batched (default: one sequence streamed in chunks)")
    parser.add_argument("--quick", action="store_true", help="one small model, one short length: a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.window is not None and args.window < 1:
        parser.error(f"--window must be positive, got {args.window}")

    device = torch.device(args.device)
    sizes = ["1.4m"] if args.quick else args.sizes.split(",")
    lengths = args.lengths or list(QUICK_LENGTHS if args.quick else GPU_LENGTHS if device.type == "cuda"
                                   else CPU_LENGTHS)
    chunk = args.chunk_tokens or (CUDA_CHUNK_TOKENS if device.type == "cuda" else CPU_CHUNK_TOKENS)
    if args.quick and args.chunk_tokens is None:
        chunk = min(chunk, max(lengths) // 4)  # several chunks, so the carried state is exercised
    layers = [int(part) for part in args.layers.split(",")]
    layers = layers[0] if len(layers) == 1 else layers
    options = dict(layers=layers, pooling=args.pooling, strands=args.strands, chunk_tokens=chunk,
                   precision=args.precision, progress=False)
    window = args.window

    source = _RealContig(args.fasta, args.contig) if args.fasta else None
    rng = np.random.default_rng(args.seed)
    synthetic = None if source else rng.integers(0, 4, size=max(lengths), dtype=np.uint8)
    label = source.describe() if source else "random bases"
    print(f"# embed throughput: {_device_name(device)}, torch {torch.__version__}, {label}, pooling {args.pooling}, "
          f"layers {args.layers}, strands {args.strands}, precision {args.precision}, "
          + (f"{window:,}-bp windows, batched" if window else "one sequence"))
    print("| device | model | params | length (bp) | windows | chunk | bp/s | peak GPU GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in sizes:
        torch.manual_seed(args.seed)
        model = DnaMambaLM(DnaMambaConfig.from_size(size)).to(device).eval()
        params = f"{model.num_parameters() / 1e6:.1f}M"
        # Warm-up: Triton compilation and allocator growth are not timed.
        _embed_once(model, source, synthetic, min(lengths[0], 2 * chunk), window, options)
        for length in lengths:
            if source is not None and length > source.length:
                print(f"| {device.type} | {size} | {params} | {length:,} | | skipped: longer than {source.contig} "
                      f"({source.length:,} bp) | | |")
                continue
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            started = time.perf_counter()
            _embed_once(model, source, synthetic, length, window, options)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
            passes = 2 if args.strands == "both" else 1
            peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if device.type == "cuda" else "n/a"
            windows = f"{-(-length // window):,} x {window:,}" if window else "one"
            print(f"| {device.type} | {size} | {params} | {length:,} | {windows} | {chunk:,} | "
                  f"{length * passes / elapsed:,.0f} | {peak} |", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


def _embed_once(model, source: _RealContig | None, synthetic: np.ndarray | None, length: int, window: int | None,
                options: dict) -> None:
    """Embed the first ``length`` bases: as one sequence, or as consecutive ``window``-bp windows (the last shorter)."""
    if source is not None:
        if window:
            regions = [Region(source.contig, start, min(start + window, length)) for start in range(0, length, window)]
        else:
            regions = [Region(source.contig, 0, length)]
        embed_regions(model, source.fasta, regions, **options)
    elif window:
        embed(model, [synthetic[start:min(start + window, length)] for start in range(0, length, window)], **options)
    else:
        embed(model, synthetic[:length], **options)


class _RealContig:
    def __init__(self, fasta: str, contig: str | None):
        import pyfaidx

        self.fasta = pyfaidx.Fasta(fasta, as_raw=True)
        names = list(self.fasta.keys())
        self.contig = contig or max(names, key=lambda name: len(self.fasta[name]))
        if self.contig not in names:
            raise SystemExit(f"error: contig {self.contig!r} is not in {fasta} (contigs: {', '.join(names[:10])})")
        self.length = len(self.fasta[self.contig])
        self.path = fasta

    def describe(self) -> str:
        return f"{self.path} contig {self.contig} ({self.length:,} bp, read through pyfaidx)"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    raise SystemExit(main())
