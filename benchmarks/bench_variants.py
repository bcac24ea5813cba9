"""Variant-scoring throughput: cached prefix states against the naive prefix + window pass per variant.

    python benchmarks/bench_variants.py                      # CUDA, the 7M model, contexts 8,192 and 131,072
    python benchmarks/bench_variants.py --device cpu --quick # a CPU run that finishes in about a minute

Variants are SNVs at random positions of a stretch of GRCh37 chr20 (the shared data, or ``--fasta``), at the
density of a population VCF (``--density`` bases per variant). Both strands are scored, with embeddings, under
bf16 autocast on CUDA. The model has random weights: speed does not depend on them.

For each context the cached path scores every variant; the naive path, which reads 2 x (prefix + window) tokens
per variant and strand, scores a subset (``--naive-variants``) and its rate is variants per second of that subset.
The last rows time saturation mutagenesis (3 substitutions at every position) of a ``--ism-length`` region.
Prefixes are grid-anchored (``context`` to ``2 x context - 1`` bases, see ``dna_mamba.tasks.variants``), so the
naive path's mean prefix is 1.5 x context.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dna_mamba.model import DnaMambaConfig, DnaMambaLM
from dna_mamba.tasks.mutagenesis import saturation_mutagenesis
from dna_mamba.tasks.variants import ScoringConfig, score_alleles
from dna_mamba.tasks.vcf_io import ReferenceGenome, VariantRecord, prepare_alleles
from dna_mamba.tokenizer import ID_TO_CHAR

DEFAULT_FASTA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "human" / "GRCh37_chr20.fa.gz"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_snvs(reference: ReferenceGenome, contig: str, start: int, length: int, count: int,
                 rng: np.random.Generator) -> list[VariantRecord]:
    """``count`` SNVs at distinct random non-N positions of ``[start, start + length)``, sorted."""
    ids = reference.fetch(contig, start, start + length)
    candidates = np.flatnonzero(ids < 4)
    positions = np.sort(rng.choice(candidates, size=min(count, len(candidates)), replace=False))
    records = []
    for i, offset in enumerate(positions):
        ref = ID_TO_CHAR[ids[offset]]
        alt = ID_TO_CHAR[(ids[offset] + 1 + rng.integers(3)) % 4]
        records.append(VariantRecord(i, contig, int(start + offset + 1), ".", ref, (alt,)))
    return records


def _time_scoring(model, reference, alleles, config, device) -> float:
    _sync(device)
    started = time.perf_counter()
    score_alleles(model, reference, alleles, config)
    _sync(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes for a CPU run of about a minute")
    parser.add_argument("--fasta", type=Path, default=DEFAULT_FASTA)
    parser.add_argument("--contig", default="20")
    parser.add_argument("--region-start", type=int, default=30_000_000, help="0-based start of the variant region")
    parser.add_argument("--model-size", default=None, help="paper size (default 7m; 250k with --quick)")
    parser.add_argument("--contexts", type=int, nargs="+", default=None, help="default 8192 131072")
    parser.add_argument("--window", type=int, default=None, help="scored window (default 128; 32 with --quick)")
    parser.add_argument("--variants", type=int, default=None, help="variants for the cached path (default 2000)")
    parser.add_argument("--density", type=int, default=500, help="bases per variant in the region")
    parser.add_argument("--naive-variants", type=int, default=None, help="variants for the naive path (default 32)")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per forward (default 256; 64 quick)")
    parser.add_argument("--snapshot-stride", type=int, default=None,
                        help="spacing of cached states (default 512; 128 with --quick, where calls are cheap)")
    parser.add_argument("--ism-length", type=int, default=None, help="mutagenesis region (default 10000; 200 quick)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.fasta.exists():
        parser.error(f"{args.fasta} not found: the default is the shared GRCh37 chr20; pass --fasta (with --contig "
                     "and --region-start inside it) to use another genome")
    if args.threads:
        torch.set_num_threads(args.threads)

    quick = args.quick
    size = args.model_size or ("250k" if quick else "7m")
    contexts = args.contexts or ([512, 4096] if quick else [8192, 131072])
    window = args.window or (32 if quick else 128)
    n_variants = args.variants or (32 if quick else 2000)
    n_naive = args.naive_variants or (4 if quick else 32)
    batch_size = args.batch_size or (64 if quick else 256)
    ism_length = args.ism_length or (200 if quick else 10_000)
    stride = args.snapshot_stride or (128 if quick else 512)
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    model = DnaMambaLM(DnaMambaConfig.from_size(size)).to(device).eval()
    reference = ReferenceGenome(args.fasta)
    rng = np.random.default_rng(args.seed)
    records = _random_snvs(reference, args.contig, args.region_start, n_variants * args.density, n_variants, rng)
    alleles = prepare_alleles(records, reference)
    assert all(a.skip is None for a in alleles), "benchmark variants must all check out"

    # Warm-up: kernel compilation and allocator growth are not part of the steady state.
    warm = ScoringConfig(window=window, context=min(contexts), batch_size=batch_size)
    score_alleles(model, reference, alleles[:2], warm)
    score_alleles(model, reference, alleles[:1], ScoringConfig(window=window, context=min(contexts), cached=False))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# {name}; model {size} ({model.num_parameters():,} parameters, random weights); window {window}; "
          f"{n_variants} SNVs, one per {args.density} bp; snapshot stride {stride}; both strands + embeddings"
          + ("; bf16 autocast" if device.type == "cuda" else "; fp32"))
    print("| context | path | variants | seconds | variants/s | speed-up |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for context in contexts:
        cached_cfg = ScoringConfig(window=window, context=context, batch_size=batch_size, snapshot_stride=stride)
        naive_cfg = ScoringConfig(window=window, context=context, batch_size=batch_size, cached=False)
        cached_s = _time_scoring(model, reference, alleles, cached_cfg, device)
        naive_s = _time_scoring(model, reference, alleles[:n_naive], naive_cfg, device)
        cached_rate, naive_rate = len(alleles) / cached_s, n_naive / naive_s
        print(f"| {context:,} | naive (2 x prefix + window per strand) | {n_naive} | {naive_s:.2f} | "
              f"{naive_rate:,.2f} | 1.0 |")
        print(f"| {context:,} | cached prefix states | {len(alleles)} | {cached_s:.2f} | {cached_rate:,.2f} | "
              f"{cached_rate / naive_rate:,.1f} |")

    ism_context = min(contexts)
    ism_cfg = ScoringConfig(window=window, context=ism_context, embeddings=False, batch_size=batch_size)
    _sync(device)
    started = time.perf_counter()
    saturation_mutagenesis(model, reference, args.contig, args.region_start, args.region_start + ism_length, ism_cfg)
    _sync(device)
    ism_s = time.perf_counter() - started
    print(f"\nsaturation mutagenesis of {ism_length:,} bp (x 3 substitutions, both strands, context {ism_context:,}, "
          f"window {window}): {ism_s:.2f} s ({3 * ism_length / ism_s:,.0f} substitutions/s)")


if __name__ == "__main__":
    main()
