"""Time the fused residual add + RMSNorm forward and backward at 1M-token shapes and print a Markdown table.

Usage: ``python benchmarks/bench_rmsnorm.py [--dims 256 512 1024] [--rows 1048576]`` on a CUDA machine.

Inputs are what a bf16-autocast Mamba block passes between blocks: the mixer output ``x`` in bf16, the
residual stream in fp32 (``residual_in_fp32``), an fp32 gain. "unfused" is the model today:
``Block._add`` (``residual.float() + x.float()``) followed by the model's ``RMSNorm`` module, autograd
through plain ops. "fused" is ``add_rms_norm`` with the same dtypes (out in fp32, as the model's norm
returns); "fused-bf16-out" returns ``out`` in bf16, what the next matmul consumes under autocast.

Times are medians of CUDA-event-timed runs after warm-up (``triton.testing.do_bench``); the backward
gets upstream gradients on both outputs (out and the residual stream). GB/s counts only the bytes that
must move, the same for every path: forward reads x and residual and writes new_residual and out;
backward reads new_residual, dout and dnew_residual and writes dx and dresidual (the per-row rstd,
the gain and the dweight partial sums are under 1% at d >= 256 and left out). Peak GiB is the largest
allocation during one forward and backward, inputs and upstream gradients included.
"""

from __future__ import annotations

import argparse

import torch
import triton.testing
from dna_mamba.kernels import add_rms_norm

from dna_mamba.model.mamba import RMSNorm

PATHS = ("unfused", "fused", "fused-bf16-out")


def make_inputs(rows: int, dim: int):
    x = torch.randn(1, rows, dim, device="cuda", dtype=torch.bfloat16).requires_grad_()
    residual = torch.randn(1, rows, dim, device="cuda", dtype=torch.float32).requires_grad_()
    norm = RMSNorm(dim).cuda()
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.1 * torch.randn(dim))
    return x, residual, norm


def bench(rows: int, dim: int, path: str) -> dict[str, float | str]:
    x, residual, norm = make_inputs(rows, dim)
    inputs = (x, residual, norm.weight)

    def forward():
        if path == "unfused":
            new_residual = residual.float() + x.float()  # Block._add with residual_in_fp32
            return norm(new_residual), new_residual
        out_dtype = torch.bfloat16 if path == "fused-bf16-out" else None
        return add_rms_norm(x, norm.weight, residual, eps=norm.eps, residual_in_fp32=True, out_dtype=out_dtype)

    out, new_residual = forward()
    dout, dnew = torch.randn_like(out), torch.randn_like(new_residual)
    del out, new_residual
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    torch.autograd.grad(forward(), inputs, (dout, dnew))
    torch.cuda.synchronize()
    peak_gib = torch.cuda.max_memory_allocated() / 2**30

    fwd_ms = triton.testing.do_bench(forward, warmup=50, rep=300, return_mode="median")
    outputs = forward()
    bwd_ms = triton.testing.do_bench(
        lambda: torch.autograd.grad(outputs, inputs, (dout, dnew), retain_graph=True),
        warmup=50,
        rep=300,
        return_mode="median",
    )

    elements = rows * dim
    out_bytes = dout.element_size()
    fwd_bytes = elements * (x.element_size() + 4 + 4 + out_bytes)  # x, residual in; new_residual, out out
    bwd_bytes = elements * (4 + out_bytes + 4 + x.element_size() + 4)  # new_residual, dout, dnew in; dx, dres out
    return {
        "device": torch.cuda.get_device_name(),
        "path": path,
        "shape": f"1 x {rows} x {dim}",
        "out dtype": str(dout.dtype).removeprefix("torch."),
        "fwd ms": fwd_ms,
        "bwd ms": bwd_ms,
        "fwd GB/s": fwd_bytes / fwd_ms / 1e6,
        "bwd GB/s": bwd_bytes / bwd_ms / 1e6,
        "peak GiB": peak_gib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 512, 1024], help="d_model values")
    parser.add_argument("--rows", type=int, default=1 << 20, help="tokens (batch 1 x sequence length)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="what to time")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_rmsnorm.py needs a CUDA GPU")

    rows = []
    for dim in args.dims:
        timed = {}
        for path in args.paths:
            timed[path] = bench(args.rows, dim, path)
            torch.cuda.empty_cache()
        for row in timed.values():
            if "unfused" in timed:
                base = timed["unfused"]
                row["x vs unfused"] = (base["fwd ms"] + base["bwd ms"]) / (row["fwd ms"] + row["bwd ms"])
            rows.append(row)
    print_table(rows)


def print_table(rows: list[dict[str, float | str]]) -> None:
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in rows:
        print("| " + " | ".join(_format(key, row[key]) for key in columns) + " |")
    print()


def _format(key: str, value: float | str) -> str:
    if isinstance(value, str):
        return value
    if key in ("peak GiB", "x vs unfused"):
        return f"{value:.2f}"
    return f"{value:.3f}" if key.endswith("ms") else f"{value:.0f}"


if __name__ == "__main__":
    main()
