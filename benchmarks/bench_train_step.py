"""Full language-model training steps at 1M-bp context and beyond: tokens/s and peak GiB on one GPU.

    python benchmarks/bench_train_step.py                          # 8 x 256 and the paper's sizes at 2^20
    python benchmarks/bench_train_step.py --models 8x256 --longest  # also 2^21 ... 2^24 with segment checkpointing

A step is what ``dna_mamba.lit.pretrain`` does: forward, next-token cross-entropy over the whole window, backward
and a fused AdamW update, batch 1, bf16 autocast, fp32 weights and residual stream, on the default CUDA paths
(fused block, Triton scan / conv / RMSNorm). Rows: no checkpointing; per-block activation checkpointing
(``model.gradient_checkpointing``, which applies only to step-by-step blocks: ``--step-by-step``; a fused block
keeps only its input anyway); segment checkpointing (``segmented_lm_loss``: segments of ``--segment-len`` carrying
state, recomputed in reverse). ``--piece-tokens``: the fused block's piece size (``fused_block.PIECE_TOKENS``).
Models: ``NxD`` (N Mamba blocks of width D) or a paper size (``1.4m`` = 12 x 128, ``7m`` = 16 x 256, ``40.7m`` =
24 x 512). Times are medians of CUDA-event-timed steps after warm-up; peak is ``torch.cuda.max_memory_allocated``
over a step. Baselines (mamba_ssm fast path, BASELINES.md) are printed beside the rows they have.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from dna_mamba.model import DnaMambaConfig, DnaMambaLM, fused_block
from dna_mamba.model.segments import next_token_nll_sum, segmented_lm_loss

# (blocks, d_model, context, mode) -> (tokens/s, GiB) of mamba_ssm's fast path, BASELINES.md
BASELINE = {
    (6, 128, 2**20, "none"): (3.50e6, 19.5), (6, 128, 2**20, "block"): (2.74e6, 10.0),
    (8, 256, 2**20, "none"): (1.40e6, 47.4), (8, 256, 2**20, "block"): (1.18e6, 21.5),
    (12, 512, 2**20, "block"): (0.44e6, 50.8), (8, 256, 2**21, "block"): (1.16e6, 42.9),
}


def parse_model(name: str) -> DnaMambaConfig:
    if "x" in name:
        blocks, width = (int(v) for v in name.split("x"))
        return DnaMambaConfig(n_layer=blocks, d_model=width, d_state=16)
    return DnaMambaConfig.from_size(name)


def run(config: DnaMambaConfig, context: int, mode: str, segment_len: int, steps: int, warmup: int,
        fused: bool = True) -> dict:
    torch.manual_seed(0)
    model = DnaMambaLM(config).cuda()
    for layer in model.layers:
        layer.fused = fused
    model.gradient_checkpointing = mode in ("block", "segments")
    optimizer = torch.optim.AdamW(model.param_groups(0.1), lr=1e-4, betas=(0.9, 0.95), fused=True)
    tokens = torch.randint(0, 4, (1, context), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if mode == "segments":
                nll, count = segmented_lm_loss(model, tokens, segment_len)
            else:
                nll = next_token_nll_sum(model(tokens[:, :-1]).logits, tokens[:, 1:])
                count = context - 1
        (nll / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    seconds = statistics.median(times)
    return {"s": seconds, "tok_s": context / seconds, "peak": torch.cuda.max_memory_allocated() / 2**30,
            "params": model.num_parameters()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["8x256", "6x128", "1.4m", "7m", "12x512", "40.7m"])
    parser.add_argument("--context", type=int, default=2**20)
    parser.add_argument("--modes", nargs="+", default=["none"], choices=["none", "block", "segments"])
    parser.add_argument("--piece-tokens", type=int, nargs="+", default=[fused_block.PIECE_TOKENS])
    parser.add_argument("--segment-len", type=int, default=2**20)
    parser.add_argument("--longest", action="store_true",
                        help="also contexts 2^21 ... 2^24 with segment checkpointing, for the first model")
    parser.add_argument("--longest-contexts", type=int, nargs="+", default=[2**21, 2**22, 2**23, 2**24])
    parser.add_argument("--step-by-step", action="store_true",
                        help="the mixer's op-by-op autograd path instead of the fused node (for comparison)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_train_step.py needs a CUDA GPU")

    runs = [(m, args.context, mode, p) for m in args.models for mode in args.modes for p in args.piece_tokens]
    if args.longest:
        runs += [(args.models[0], context, "segments", args.piece_tokens[0]) for context in args.longest_contexts]
    print(f"# training step, batch 1, bf16 autocast, fused AdamW: {torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}; segment length {args.segment_len:,}")
    print("| model | params | context | checkpointing | pieces | step s | tokens/s | peak GiB "
          "| mamba_ssm tokens/s, GiB |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for name, context, mode, piece_tokens in runs:
        fused_block.PIECE_TOKENS = piece_tokens
        config = parse_model(name)
        label = f"{name} ({config.n_layer} x {config.d_model}{', step-by-step mixer' if args.step_by_step else ''})"
        base = BASELINE.get((config.n_layer, config.d_model, context, mode))
        base_txt = f"{base[0] / 1e6:.2f} M, {base[1]}" if base else "-"
        try:
            r = run(config, context, mode, args.segment_len, args.steps, args.warmup, fused=not args.step_by_step)
        except torch.cuda.OutOfMemoryError:
            print(f"| {label} | - | {context:,} | {mode} | {piece_tokens:,} | - | out of memory | - | {base_txt} |",
                  flush=True)
        else:
            print(f"| {label} | {r['params'] / 1e6:.2f} M | {context:,} | {mode} | {piece_tokens:,} | {r['s']:.3f} | "
                  f"{r['tok_s'] / 1e6:.2f} M | {r['peak']:.1f} | {base_txt} |", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
