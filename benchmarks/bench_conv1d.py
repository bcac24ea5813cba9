"""Time causal_conv1d forward and backward at 1M-token shapes and print a Markdown table.

Usage: ``python benchmarks/bench_conv1d.py [--dims 512 1024] [--seqlen 1048576]`` on a CUDA machine.

Inputs are bf16 activations with fp32 weight and bias (what a bf16-autocast Mamba block passes),
width 4, SiLU, batch 1. "model layout" is the channel slice of a (1, L, 2 * dim) projection,
transposed, as the Mamba block passes it; "contiguous" is a plain (1, dim, L) tensor. Times are
medians of CUDA-event-timed runs after warm-up (``triton.testing.do_bench``). GB/s counts only the
bytes that must move: forward reads x and writes out; backward reads x and dout and writes dx
(weights and per-block partial sums are under 0.1% and left out). The HBM column compares with the
3.0 TB/s copy rate measured on the H100 (BASELINES.md).
"""

from __future__ import annotations

import argparse

import torch
import triton.testing
from dna_mamba.kernels import causal_conv1d
from dna_mamba.kernels.causal_conv1d import interface as conv_interface

HBM_COPY_BYTES_PER_S = 3.0e12  # H100 device-to-device copy, read + write (BASELINES.md)


def make_inputs(dim: int, seqlen: int, layout: str, width: int = 4):
    if layout == "model layout":
        x = torch.randn(1, seqlen, 2 * dim, device="cuda", dtype=torch.bfloat16)[:, :, :dim].transpose(1, 2)
    else:
        x = torch.randn(1, dim, seqlen, device="cuda", dtype=torch.bfloat16)
    x.requires_grad_()
    weight = (torch.randn(dim, width, device="cuda") * 0.5).requires_grad_()
    bias = torch.randn(dim, device="cuda").requires_grad_()
    return x, weight, bias


def bench(dim: int, seqlen: int, layout: str, backend: str) -> dict[str, float | str]:
    x, weight, bias = make_inputs(dim, seqlen, layout)

    def forward():
        return causal_conv1d(x, weight, bias, "silu", backend=backend)

    dout = torch.randn_like(forward())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    torch.autograd.grad(forward(), (x, weight, bias), dout)
    torch.cuda.synchronize()
    peak_gib = torch.cuda.max_memory_allocated() / 2**30  # inputs, dout, activations and gradients

    fwd_ms = triton.testing.do_bench(forward, warmup=50, rep=300, return_mode="median")
    out = forward()
    bwd_ms = triton.testing.do_bench(
        lambda: torch.autograd.grad(out, (x, weight, bias), dout, retain_graph=True),
        warmup=50,
        rep=300,
        return_mode="median",
    )

    elements = dim * seqlen
    fwd_bytes = elements * (2 + 2)  # x in, out out (bf16)
    bwd_bytes = elements * (2 + 2 + 2)  # x and dout in, dx out (bf16)
    return {
        "device": torch.cuda.get_device_name(),
        "backend": backend,
        "shape": f"1 x {dim} x {seqlen} ({layout})",
        "fwd ms": fwd_ms,
        "bwd ms": bwd_ms,
        "fwd GB/s": fwd_bytes / fwd_ms / 1e6,
        "bwd GB/s": bwd_bytes / bwd_ms / 1e6,
        "fwd % HBM": 100 * fwd_bytes / HBM_COPY_BYTES_PER_S / (fwd_ms / 1e3),
        "bwd % HBM": 100 * bwd_bytes / HBM_COPY_BYTES_PER_S / (bwd_ms / 1e3),
        "peak GiB": peak_gib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--seqlen", type=int, default=1 << 20)
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the PyTorch reference (fp32 F.conv1d) at the first dim, for scale")  # fmt: skip
    parser.add_argument("--sweep", action="store_true",
                        help="also time other channels-last tiles at the last dim (to revise GPU_TILES)")  # fmt: skip
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_conv1d.py needs a CUDA GPU")

    rows = []
    for dim in args.dims:
        for layout in ("model layout", "contiguous"):
            rows.append(bench(dim, args.seqlen, layout, "triton"))
            torch.cuda.empty_cache()
    if args.reference:
        rows.append(bench(args.dims[0], args.seqlen, "model layout", "reference"))

    print_table(rows)
    if args.sweep:
        print_table(sweep_tiles(args.dims[-1], args.seqlen))


def sweep_tiles(dim: int, seqlen: int) -> list[dict[str, float | str]]:
    """Times the model layout under alternative channels-last tile sizes; the first row is the table's."""
    default = conv_interface.GPU_TILES["channels_last"]
    candidates = [
        default,
        {**default, "BLOCK_D_FWD": 64, "BLOCK_L_FWD": 64},  # the forward's tile before the eleventh session
        {**default, "BLOCK_D_FWD": 64, "BLOCK_L_FWD": 32},
        {**default, "BLOCK_D_FWD": 128, "BLOCK_L_FWD": 64},
        {**default, "BLOCK_D_FWD": 256, "BLOCK_L_FWD": 16},
    ]
    rows = []
    try:
        for tiles in candidates:
            conv_interface.GPU_TILES["channels_last"] = tiles
            row = bench(dim, seqlen, "model layout", "triton")
            row["backend"] = "triton " + ",".join(f"{k}={v}" for k, v in tiles.items())
            rows.append(row)
    finally:
        conv_interface.GPU_TILES["channels_last"] = default
    return rows


def print_table(rows: list[dict[str, float | str]]) -> None:
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in rows:
        print("| " + " | ".join(_format(key, value) for key, value in row.items()) + " |")
    print()


def _format(key: str, value: float | str) -> str:
    if isinstance(value, str):
        return value
    if key == "peak GiB":
        return f"{value:.2f}"
    return f"{value:.3f}" if key.endswith("ms") else f"{value:.0f}"


if __name__ == "__main__":
    main()
