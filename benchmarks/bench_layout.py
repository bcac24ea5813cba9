"""Time the (batch, dim, L) layout copies that the selective scan makes of time-contiguous inputs.

Usage: ``python benchmarks/bench_layout.py [--dims 256 512 1536] [--length 1048576]`` on a CUDA machine.

Compares ``dna_mamba.kernels.layout.relayout`` (a tiled Triton transpose) with torch's strided copy
(``x.transpose(1, 2).contiguous()``), in both directions: time-contiguous -> channel-last and back.
Times are medians of CUDA-event-timed runs after warm-up (``triton.testing.do_bench``); GB/s counts one read
and one write of the tensor. BASELINES.md measures an H100's HBM copy at 3.0 TB/s (read + write).
"""

from __future__ import annotations

import argparse

import torch
import triton.testing
from dna_mamba.kernels.layout import relayout, relayout_ref


def bench(dim: int, length: int, dtype: torch.dtype, to_channel_last: bool) -> list[dict]:
    x = torch.randn(1, dim, length, device="cuda", dtype=dtype)
    if not to_channel_last:
        x = relayout(x, True)
    gb = 2 * x.numel() * x.element_size() / 1e9
    rows = []
    for path, fn in (("torch", relayout_ref), ("triton", relayout)):
        assert torch.equal(fn(x, to_channel_last), relayout_ref(x, to_channel_last))
        ms = triton.testing.do_bench(lambda fn=fn: fn(x, to_channel_last), warmup=25, rep=100, return_mode="median")
        rows.append({"path": path, "ms": ms, "gbs": gb / ms * 1e3})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 512, 1536])
    parser.add_argument("--length", type=int, default=2**20)
    args = parser.parse_args()
    device = torch.cuda.get_device_name()
    print("| device | shape (1, dim, L) | dtype | direction | torch ms | triton ms | torch GB/s | triton GB/s "
          "| speed-up |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for dim in args.dims:
        for dtype in (torch.bfloat16, torch.float32):
            for to_cl in (True, False):
                torch_row, triton_row = bench(dim, args.length, dtype, to_cl)
                direction = "time -> channel-last" if to_cl else "channel-last -> time"
                print(f"| {device} | (1, {dim}, {args.length}) | {str(dtype)[6:]} | {direction} | "
                      f"{torch_row['ms']:.2f} | {triton_row['ms']:.2f} | {torch_row['gbs']:.0f} | "
                      f"{triton_row['gbs']:.0f} | {torch_row['ms'] / triton_row['ms']:.1f}x |")


if __name__ == "__main__":
    main()
