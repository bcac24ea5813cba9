"""One Mamba block (pre-norm + mixer + residual), forward + backward at 1M tokens: ms and peak GiB.

    python benchmarks/bench_block.py                       # d_model 256 and 512, L 2^20, fused and step-by-step
    python benchmarks/bench_block.py --d-models 256 --seqlen 262144
    python benchmarks/bench_block.py --piece-tokens 262144 65536   # the fused node's piece size (memory vs time)

The block is ``dna_mamba.model.mamba.Block`` (d_state 16, d_conv 4, expand 2) under bf16 autocast with an fp32
residual stream, batch 1, as in a training step. "fused" is the CUDA default (the whole block as one autograd node
that keeps only its input and runs over pieces of the sequence, ``dna_mamba.model.fused_block``); "step-by-step" is the
same block with ``block.fused = False`` (the CPU path's op-by-op autograd, on the same Triton kernels). Times are
medians of CUDA-event-timed iterations after warm-up; "host ms" is the time Python took to issue a step (see
``time_ms``). Peak is ``torch.cuda.max_memory_allocated`` over one forward + backward, input, output gradient and
parameters included (as the baseline counts it). Baseline: mamba_ssm's ``Mamba`` block, BASELINES.md (108 ms /
12.4 GiB at 256, 187 ms / 24.5 GiB at 512).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dna_mamba.model import DnaMambaConfig, fused_block
from dna_mamba.model.mamba import Block

BASELINE = {256: (108.0, 12.4), 512: (187.0, 24.5)}  # mamba_ssm Mamba block at L 2^20: fwd+bwd ms, peak GiB


def time_ms(fn, warmup: int, iters: int) -> tuple[float, float]:
    """Medians of (GPU ms between events around fn, host ms that issuing fn took).

    The host time is the wall time of the call itself, the GPU idle before it: when it comes close to the GPU time,
    the step is bound by Python and kernel launches, not by the GPU.
    """
    for _ in range(warmup):
        fn()
    times, host = [], []
    for _ in range(iters):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        started = time.perf_counter()
        start.record()
        fn()
        end.record()
        host.append((time.perf_counter() - started) * 1e3)
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), statistics.median(host)


def bench(d_model: int, seqlen: int, fused: bool, warmup: int, iters: int) -> dict:
    torch.manual_seed(0)
    block = Block(DnaMambaConfig(d_model=d_model, n_layer=1, d_state=16)).cuda()
    block.fused = fused
    x = torch.randn(1, seqlen, d_model, device="cuda", requires_grad=True)  # the fp32 residual stream
    dout = torch.randn(1, seqlen, d_model, device="cuda")

    def step():
        # As a training step: gradients start from None (zero_grad(set_to_none=True)), so x.grad is the block's
        # dx itself rather than a 1 GiB fp32 add into the previous step's (about 1 ms at d_model 256).
        x.grad = None
        block.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, _ = block(x)
        out.backward(dout)

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    ms, host_ms = time_ms(step, warmup, iters)
    return {"ms": ms, "host_ms": host_ms, "peak": peak}


def profile(d_model: int, seqlen: int, top: int = 24) -> None:
    """Where one fused forward + backward spends its GPU time, kernel by kernel (torch.profiler)."""
    r = bench(d_model, seqlen, True, warmup=1, iters=1)  # compiles and warms up
    torch.manual_seed(0)
    block = Block(DnaMambaConfig(d_model=d_model, n_layer=1, d_state=16)).cuda()
    x = torch.randn(1, seqlen, d_model, device="cuda", requires_grad=True)
    dout = torch.randn(1, seqlen, d_model, device="cuda")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, _ = block(x)
        out.backward(dout)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]  # kernels, not the ops around them
    total = sum(e.self_device_time_total for e in events)
    print(f"# d_model {d_model}, L {seqlen}: {r['ms']:.1f} ms per step, kernels below sum to {total / 1e3:.1f} ms")
    print("| kernel | calls | ms | share |")
    print("| --- | ---: | ---: | ---: |")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        us = e.self_device_time_total
        print(f"| {e.key[:70]} | {e.count} | {us / 1e3:.2f} | {us / total:.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-models", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--seqlen", type=int, default=2**20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="print the GPU time per kernel of one fused step")
    parser.add_argument("--piece-tokens", type=int, nargs="+", default=[fused_block.PIECE_TOKENS],
                        help="fused rows at each of these piece sizes (fused_block.PIECE_TOKENS)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_block.py needs a CUDA GPU")
    if args.profile:
        for piece_tokens in args.piece_tokens:
            fused_block.PIECE_TOKENS = piece_tokens
            print(f"## pieces of {piece_tokens:,} tokens")
            profile(args.d_models[0], args.seqlen)
        return

    print(f"# one Mamba block, fwd + bwd: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 autocast")
    print("| d_model | L | path | fwd+bwd ms | host ms | tokens/s | peak GiB | mamba_ssm ms / GiB | speed-up | "
          "memory ratio |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for d_model in args.d_models:
        for path in [*args.piece_tokens, "step-by-step"]:
            fused = path != "step-by-step"
            if fused:
                fused_block.PIECE_TOKENS = path
            r = bench(d_model, args.seqlen, fused, args.warmup, args.iters)
            base = BASELINE.get(d_model) if args.seqlen == 2**20 else None
            ratio = f"{base[0] / r['ms']:.2f}x" if base else "-"
            mem = f"{r['peak'] / base[1]:.2f}" if base else "-"
            base_txt = f"{base[0]:.0f} / {base[1]}" if base else "-"
            label = f"fused, pieces of {path:,}" if fused else path
            print(f"| {d_model} | {args.seqlen:,} | {label} | {r['ms']:.1f} | {r['host_ms']:.1f} | "
                  f"{args.seqlen / r['ms'] * 1e3 / 1e6:.2f} M | {r['peak']:.2f} | {base_txt} | {ratio} | {mem} |",
                  flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
