"""Selective scan benchmark: Triton forward and backward against mamba_ssm's CUDA kernel (BASELINES.md).

Prints, per shape: forward and backward ms (median of CUDA-event timings, triton.testing.do_bench), ps per
(l, d, n) (time / (batch * L * dim * N)), peak extra GiB (working memory above inputs, outputs and gradients)
and the ratio of mamba_ssm's time to ours. All shapes: bf16 I/O, fp32 A / D / delta_bias, one B/C group,
z gate, D skip, delta_bias and softplus, as in BASELINES.md.

    python benchmarks/bench_scan.py                   # S0-S4, (batch, dim, L) contiguous inputs like mamba_ssm
    python benchmarks/bench_scan.py --layout channel_last --shapes S0,S1   # the model's layout
    python benchmarks/bench_scan.py --sass            # instructions per (l, d, n) of each kernel's inner loop
    python benchmarks/bench_scan.py --shapes S1 --variants "base;t_tile=4;block_d=64,programs_per_sm=8"
    python benchmarks/bench_scan.py --profile S1      # one forward + backward, to run under ncu

--sass needs no GPU: it compiles the kernels for sm_90 and counts the SASS of each time loop, with the installed
Triton. The GPU machine runs Triton 3.6: put a triton==3.6.0 install first on PYTHONPATH to count what it runs.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from collections import Counter
from pathlib import Path

import torch

# mamba_ssm 2.3.2 on an H100 (BASELINES.md): (forward ms, backward ms); None where not measured.
MAMBA_SSM = {
    (1, 1536, 16, 1 << 20): (36.0, 127.8),
    (1, 256, 16, 1 << 20): (10.3, 26.3),
    (1, 512, 16, 1 << 20): (12.0, 61.2),
    (16, 1536, 16, 1 << 16): (33.6, 165.0 - 33.6),
    (1, 1536, 16, 1 << 18): (9.05, 31.3),
    (1, 1536, 8, 1 << 18): (5.3, 17.0),
    (1, 1536, 32, 1 << 18): (16.5, 60.7),
    (1, 1536, 64, 1 << 18): (31.1, 119.3),
}


def shapes(names: list[str]) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(label, (batch, dim, N, L)) for the named groups."""
    out = []
    for name in names:
        if name == "S0":
            out.append(("S0", (1, 1536, 16, 1 << 20)))
        elif name == "S1":
            out += [("S1", (1, 256, 16, 1 << 20)), ("S1", (1, 512, 16, 1 << 20))]
        elif name == "S2":
            out += [("S2", (1 << (20 - k), 1536, 16, 1 << k)) for k in range(14, 21, 2)]
        elif name == "S3":
            out += [("S3", (1, 1536, n, 1 << 18)) for n in (8, 16, 32, 64)]
        elif name == "S4":
            out.append(("S4", (1, 2048, 16, 1 << 20)))
        elif name == "P":  # the pieces of 2^18 steps that the model's fused blocks scan, d_model 256 and 512
            out += [("P", (1, 512, 16, 1 << 18)), ("P", (1, 1024, 16, 1 << 18))]
        else:
            raise SystemExit(f"unknown shape group {name!r}; use S0..S4 or P")
    return out


def make_inputs(batch, dim, dstate, seqlen, layout, device="cuda"):
    bf16 = torch.bfloat16

    def per_channel(scale):
        if layout == "channel_last":
            return (torch.randn(batch, seqlen, dim, device=device) * scale).to(bf16).transpose(1, 2)
        return (torch.randn(batch, dim, seqlen, device=device) * scale).to(bf16)

    u, delta, z = per_channel(1.0), per_channel(0.5), per_channel(1.0)
    A = -(torch.rand(dim, dstate, device=device) * 4 + 0.05)
    if layout == "channel_last":  # x_proj output (batch, L, 2N), B and C transposed views of it
        bc = torch.randn(batch, seqlen, 2, dstate, device=device).to(bf16)
        B, C = bc[:, :, 0].transpose(1, 2).unsqueeze(1), bc[:, :, 1].transpose(1, 2).unsqueeze(1)
    else:
        B = torch.randn(batch, 1, dstate, seqlen, device=device).to(bf16)
        C = torch.randn(batch, 1, dstate, seqlen, device=device).to(bf16)
    D = torch.randn(dim, device=device)
    bias = torch.randn(dim, device=device) * 0.5
    return u, delta, A, B, C, D, z, bias


def nbytes(*ts) -> int:
    return sum(t.untyped_storage().nbytes() for t in ts if t is not None)


def bench_shape(batch, dim, dstate, seqlen, layout, rep=300):
    import triton.testing
    from dna_mamba.kernels import selective_scan

    torch.cuda.empty_cache()
    u, delta, A, B, C, D, z, bias = make_inputs(batch, dim, dstate, seqlen, layout)
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]

    def forward():
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)

    with torch.no_grad():
        fwd_ms = triton.testing.do_bench(forward, warmup=50, rep=rep, return_mode="median")

    y = forward()
    dy = torch.randn_like(y)

    def backward():
        return torch.autograd.grad(y, leaves, dy, retain_graph=True)

    bwd_ms = triton.testing.do_bench(backward, warmup=50, rep=rep, return_mode="median")

    # Peak working memory of one forward + backward beyond inputs, output and gradients.
    del y
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = forward()
    grads = torch.autograd.grad(y, leaves, dy)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base - nbytes(y, *grads)
    return fwd_ms, bwd_ms, extra / 2**30


def sass_counts(dstate: int = 16) -> None:
    """Instructions per (l, d, n) in each kernel's time loop, from SASS compiled for sm_90 (no GPU needed).

    Block sizes are the ones _config picks for S0 on a 132-SM GPU. Strides are left unspecialised (as for the
    model's channel-last inputs), so the tile loads are scalar.
    """
    import triton
    from dna_mamba.kernels._launch import LAUNCH_OPTIONS
    from dna_mamba.kernels.selective_scan import triton as kernels
    from dna_mamba.kernels.selective_scan.interface import _config
    from triton.backends.compiler import GPUTarget

    cfg = _config(1, 1536, 1, dstate, 1 << 20, torch.device("cuda"), sms=132)
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    io = ("u", "delta", "z", "y", "dy", "du", "ddelta", "dz")
    base = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, BLOCK_N=cfg.block_n, PREFETCH=1, PREFETCH_IO=True,
                FAST_MATH=cfg.fast_math, CHANNEL_LAST=True)
    fwd = dict(base, BLOCK_D=cfg.block_d, T_TILE=cfg.t_tile)
    bwd = dict(base, BLOCK_D=cfg.block_d_bwd, LANE_SUMS=cfg.lane_sums)
    fwd_opts = {"num_warps": cfg.block_d // 32} | ({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}) | LAUNCH_OPTIONS
    bwd_opts = {"num_warps": cfg.block_d_bwd // 32} | LAUNCH_OPTIONS
    fit = dict(bwd, T_TILE=cfg.t_tile_bwd, FAST_MATH=bool(cfg.fast_math_bwd & 1))
    rev = dict(bwd, T_TILE=cfg.t_tile_rev, FAST_MATH=bool(cfg.fast_math_bwd & 2))
    jobs = [
        ("fwd local (pass 1)", kernels._fwd_kernel, dict(fwd, LOCAL=True), fwd_opts),
        ("fwd output (pass 3)", kernels._fwd_kernel, dict(fwd, LOCAL=False), fwd_opts),
        ("bwd forward-in-time", kernels._bwd_forward_kernel, fit, bwd_opts),
        ("bwd reverse-in-time", kernels._bwd_reverse_kernel, rev, bwd_opts),
    ]
    print(f"SASS per (l, d, n), sm_90, bf16 I/O, N={dstate}: forward BLOCK_D={cfg.block_d} T_TILE={cfg.t_tile}"
          f" maxnreg={cfg.maxnreg}, backward BLOCK_D={cfg.block_d_bwd} T_TILE={cfg.t_tile_bwd} / {cfg.t_tile_rev}"
          f" fast_math_bwd={cfg.fast_math_bwd}")
    for label, fn, consts, opts in jobs:
        sig, attrs = {}, {}
        for i, name in enumerate(fn.arg_names):
            if name in consts:
                sig[name] = "constexpr"
            elif name.endswith("_ptr"):
                sig[name] = "*bf16" if name[: -len("_ptr")] in io else "*fp32"
                attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                sig[name] = "i32"
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
        cubin = Path("/tmp") / f"scan_{fn.__name__}.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass = subprocess.run([str(cuobjdump), "-sass", str(cubin)], capture_output=True, text=True).stdout
        usage = subprocess.run([str(cuobjdump), "-res-usage", str(cubin)], capture_output=True, text=True).stdout
        regs = re.search(r"REG:(\d+)", usage).group(1)
        stack = re.search(r"STACK:(\d+)", usage).group(1)
        ins = [(int(m.group(1), 16), m.group(2).strip()) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
        # The time loop is the largest backward branch's body: T_TILE steps of N states per thread.
        best = []
        for addr, text in ins:
            m = re.search(r"BRA (?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", text)
            if m and m.group(1) and int(m.group(1), 16) < addr:
                body = [t for a, t in ins if int(m.group(1), 16) <= a <= addr]
                best = max(best, body, key=len)
        steps = consts["T_TILE"]
        per = len(best) / (steps * cfg.block_n)
        ops = Counter((t.split()[1] if t.startswith("@") else t.split()[0]).split(".")[0] for t in best)
        top = ", ".join(f"{k} {v / (steps * cfg.block_n):.1f}" for k, v in ops.most_common(7))
        print(f"  {label:22s} {per:5.1f} instr/(l,d,n)  regs {regs} stack {stack}  [{top}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="S0,S1,S2,S3,S4")
    parser.add_argument("--layout", choices=["contiguous", "channel_last"], default="contiguous")
    parser.add_argument("--sass", action="store_true", help="count instructions of the compiled loops and exit")
    parser.add_argument("--variants", help="';'-separated block-size overrides to time, e.g. 'base;t_tile=4'")
    parser.add_argument("--profile", help="run one forward + backward of this shape group's first shape (for ncu)")
    args = parser.parse_args()
    if args.sass:
        sass_counts()
        return
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (or --sass)")
    from dna_mamba.kernels.selective_scan import interface

    if args.profile:
        batch, dim, dstate, seqlen = shapes([args.profile])[0][1]
        from dna_mamba.kernels import selective_scan

        ins = [t.requires_grad_() for t in make_inputs(batch, dim, dstate, seqlen, args.layout)]
        y = selective_scan(*ins[:5], D=ins[5], z=ins[6], delta_bias=ins[7], delta_softplus=True)
        torch.autograd.grad(y, ins, torch.randn_like(y))
        torch.cuda.synchronize()
        return
    if args.variants:
        print(f"{torch.cuda.get_device_name()}, layout {args.layout}: variants (fwd ms / bwd ms)")
        for label, (batch, dim, dstate, seqlen) in shapes(args.shapes.split(",")):
            for variant in args.variants.split(";"):
                interface._TUNING.clear()
                if variant != "base":
                    interface._TUNING.update({k: int(v) for k, v in (kv.split("=") for kv in variant.split(","))})
                fwd, bwd, extra = bench_shape(batch, dim, dstate, seqlen, args.layout, rep=100)
                print(f"  {label} B={batch} D={dim} N={dstate} L=2^{seqlen.bit_length() - 1} [{variant}]:"
                      f" {fwd:.2f} / {bwd:.2f}  ({extra:.2f} GiB extra)", flush=True)
        interface._TUNING.clear()
        return
    rows = []
    dev = torch.cuda.get_device_name()
    for label, (batch, dim, dstate, seqlen) in shapes(args.shapes.split(",")):
        fwd, bwd, extra = bench_shape(batch, dim, dstate, seqlen, args.layout)
        elems = batch * seqlen * dim * dstate
        peer = MAMBA_SSM.get((batch, dim, dstate, seqlen))
        ratio = f"{peer[0] / fwd:4.2f}x / {peer[1] / bwd:4.2f}x" if peer else "—"
        rows.append((label, batch, dim, dstate, seqlen, fwd, bwd, fwd * 1e9 / elems, bwd * 1e9 / elems, extra, ratio))
        print(f"{label} B={batch} D={dim} N={dstate} L={seqlen}: fwd {fwd:.2f} ms, bwd {bwd:.2f} ms", flush=True)
    print(f"\n{dev}, layout {args.layout}, bf16, z + D + delta_bias + softplus")
    print("| shape | batch | dim | N | L | fwd ms | bwd ms | fwd ps/(l,d,n) | bwd ps/(l,d,n) | peak extra GiB |"
          " mamba_ssm / ours (fwd / bwd) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | 2^{r[4].bit_length() - 1} | {r[5]:.2f} | {r[6]:.2f} |"
              f" {r[7]:.2f} | {r[8]:.2f} | {r[9]:.2f} | {r[10]} |")


if __name__ == "__main__":
    main()
