"""Prototype, not product code: a one-exponential, time-parallel selective-scan forward in plain Triton.

The shipped forward (kernels/selective_scan) walks time sequentially, one channel per thread with its N states
in registers, and cuts the sequence into chunks that run in parallel: a chunk-local pass, a combine over chunks,
and an output pass, so every (l, d, n) pays two exponentials. This prototype tests the other design that
BASELINES.md's floor points to: each exponential computed once, time split across the lanes of a warp.

Layout (contiguous (batch, dim, L) inputs, one program per (batch, channel), one warp by default): a block of
T = ROWS * E steps is loaded as a (REPS, ROWS, 8) tile whose element (s, r, k) is step r * E + s * 8 + k, E = 8 *
REPS. Loads are contiguous along k only, so Triton gives each thread one row r: E consecutive steps. Per state n:
  1. dA = exp2(dt A2), x = B dt u; an in-thread scan of (dA, x) pairs over runs of 8, then over the thread's runs;
  2. tl.associative_scan of the row totals across lanes (and warps), the carry from the previous block folded in;
  3. the state entering each row from the row before, through a small scratch buffer (Triton has no shuffle);
  4. h = a_local * h_enter + b_local; y += C h.
It computes y only (no final or chunk states): enough to time it against the shipped forward.

    python benchmarks/proto_time_parallel.py --check     # against the reference (CPU: TRITON_INTERPRET=1)
    python benchmarks/proto_time_parallel.py             # time it on a GPU next to the shipped forward
    python benchmarks/proto_time_parallel.py --sass      # instructions per (l, d, n), no GPU needed
"""

from __future__ import annotations

import argparse
import functools
import re
import subprocess
from collections import Counter
from pathlib import Path

import torch
import triton
import triton.language as tl
from dna_mamba.kernels.selective_scan.interface import _a2t
from dna_mamba.kernels.selective_scan.triton import _sigmoid, _softplus


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _fwd_time_parallel(
    u_ptr, delta_ptr, z_ptr, y_ptr, A2T_ptr, D_ptr, bias_ptr, B_ptr, C_ptr, carry_ptr, scratch_ptr,
    dim, seqlen, dstate, dim_per_group, bc_len,
    s_ub, s_ud, s_db, s_dd, s_zb, s_zd, s_yb, s_yd,
    BLOCK_N: tl.constexpr, REPS: tl.constexpr, ROWS: tl.constexpr, FAST_MATH: tl.constexpr,
    GATHER: tl.constexpr,
):
    E: tl.constexpr = 8 * REPS
    T_BLOCK: tl.constexpr = E * ROWS
    pid = tl.program_id(0).to(tl.int64)
    d = pid % dim
    b = pid // dim
    g = d // dim_per_group
    s = tl.arange(0, REPS)[:, None, None]
    r = tl.arange(0, ROWS)[None, :, None]
    k = tl.arange(0, 8)[None, None, :]
    off = r * E + s * 8 + k  # (REPS, ROWS, 8): step of the block
    bias = tl.load(bias_ptr + d)
    Dv = tl.load(D_ptr + d)
    u_ptrs = u_ptr + b * s_ub + d * s_ud + off
    delta_ptrs = delta_ptr + b * s_db + d * s_dd + off
    z_ptrs = z_ptr + b * s_zb + d * s_zd + off
    y_ptrs = y_ptr + b * s_yb + d * s_yd + off
    bc_row = (b * (dim // dim_per_group) + g) * BLOCK_N * bc_len
    B_ptrs = B_ptr + bc_row + off  # (batch, groups, BLOCK_N, bc_len) fp32, zero past L
    C_ptrs = C_ptr + bc_row + off
    carry = carry_ptr + pid * BLOCK_N  # the state after the previous block, per n
    scratch = scratch_ptr + pid * 2 * ROWS
    rows = tl.arange(0, ROWS)
    s2 = tl.arange(0, REPS)[:, None]
    si = tl.arange(0, REPS)[:, None, None]
    sj = tl.arange(0, REPS)[None, :, None]
    for t0 in range(0, seqlen, T_BLOCK):
        mask = off < seqlen - t0
        u = tl.load(u_ptrs, mask=mask, other=0.0).to(tl.float32)
        pre = tl.load(delta_ptrs, mask=mask, other=0.0).to(tl.float32) + bias
        dt = tl.where(mask, _softplus(pre, FAST_MATH), 0.0)
        dtu = dt * u
        y = tl.zeros((REPS, ROWS, 8), tl.float32)
        for n in range(dstate):
            a2 = tl.load(A2T_ptr + n * dim + d)
            h0 = tl.load(carry + n)
            Bn = tl.load(B_ptrs + n * bc_len)
            Cn = tl.load(C_ptrs + n * bc_len)
            a1, b1 = tl.associative_scan((tl.exp2(dt * a2), Bn * dtu), 2, _combine)  # runs of 8, in-thread
            a8 = tl.sum(tl.where(k == 7, a1, 0.0), 2)  # (REPS, ROWS): each run's total
            b8 = tl.sum(tl.where(k == 7, b1, 0.0), 2)
            a_s, b_s = tl.associative_scan((a8, b8), 0, _combine)  # over a thread's runs, in-thread
            a_row = tl.sum(tl.where(s2 == REPS - 1, a_s, 0.0), 0)  # (ROWS,): each row's total
            b_row = tl.sum(tl.where(s2 == REPS - 1, b_s, 0.0), 0)
            a_inc, b_inc = tl.associative_scan((a_row, b_row), 0, _combine)  # across lanes and warps
            b_inc = a_inc * h0 + b_inc  # the state after each row
            if GATHER:  # the row before's value, within the warp(s)
                h_in = tl.gather(b_inc, tl.maximum(rows - 1, 0), 0)
            else:  # through a scratch buffer
                slot = scratch + (n % 2) * ROWS  # two slots: one barrier per n orders the reuse
                tl.store(slot + rows, b_inc)
                tl.debug_barrier()
                h_in = tl.load(slot + rows - 1, mask=rows > 0, other=0.0)
            h_in = tl.where(rows == 0, h0, h_in)  # the state entering each row
            end_s = a_s * h_in[None, :] + b_s  # the state after each run (REPS, ROWS)
            enter = tl.sum(tl.where(si == sj + 1, end_s[None, :, :], 0.0), 1)  # ... entering each run
            enter = tl.where(s2 == 0, h_in[None, :], enter)
            y += Cn * (a1 * enter[:, :, None] + b1)
            tl.store(carry + n + 0 * rows, b_inc, mask=rows == ROWS - 1)
        tl.debug_barrier()
        z = tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
        y = (y + Dv * u) * z * _sigmoid(z, FAST_MATH)
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)
        u_ptrs += T_BLOCK
        delta_ptrs += T_BLOCK
        z_ptrs += T_BLOCK
        y_ptrs += T_BLOCK
        B_ptrs += T_BLOCK
        C_ptrs += T_BLOCK


def forward(u, delta, A, B, C, D, z, delta_bias, reps: int = 2, warps: int = 1, gather: bool = True) -> torch.Tensor:
    """y of selective_scan(..., delta_softplus=True) for contiguous (batch, dim, L) inputs, zero initial state."""
    batch, dim, seqlen = u.shape
    groups, dstate = B.shape[1], A.shape[1]
    block_n = triton.next_power_of_2(dstate)
    rows = 32 * warps
    t_block = 8 * reps * rows
    bc_len = triton.cdiv(seqlen, t_block) * t_block
    dev = u.device

    def packed(x):
        out = torch.zeros(batch, groups, block_n, bc_len, dtype=torch.float32, device=dev)
        out[:, :, :dstate, :seqlen] = x
        return out

    a2t = _a2t(A, block_n)  # A * log2(e), (block_n, dim), as the shipped kernels read it
    y = torch.empty_like(u)
    carry = torch.zeros(batch * dim, block_n, dtype=torch.float32, device=dev)
    scratch = torch.zeros(batch * dim, 2, rows, dtype=torch.float32, device=dev)
    _fwd_time_parallel[(batch * dim,)](
        u, delta, z, y, a2t, D.float(), delta_bias.float(), packed(B), packed(C), carry, scratch,
        dim, seqlen, dstate, dim // groups, bc_len,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), z.stride(0), z.stride(1), y.stride(0),
        y.stride(1), BLOCK_N=block_n, REPS=reps, ROWS=rows, FAST_MATH=u.is_cuda, GATHER=gather, num_warps=warps,
        enable_fp_fusion=True,
    )
    return y


def inputs(batch, dim, dstate, seqlen, groups=1, dtype=torch.bfloat16, device="cuda", seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    u = rand(batch, dim, seqlen).to(dtype)
    delta = rand(batch, dim, seqlen, scale=0.5).to(dtype)
    z = rand(batch, dim, seqlen).to(dtype)
    A = -torch.exp(rand(dim, dstate, scale=0.5))
    B = rand(batch, groups, dstate, seqlen).to(dtype)
    C = rand(batch, groups, dstate, seqlen).to(dtype)
    D = rand(dim)
    bias = rand(dim, scale=0.5) - 2.0
    return u, delta, A, B, C, D, z, bias


def check(device: str) -> None:
    from dna_mamba.kernels.selective_scan.reference import selective_scan_ref

    for batch, dim, dstate, seqlen, groups, reps, warps in [(2, 3, 5, 700, 1, 2, 1), (1, 4, 16, 1030, 2, 1, 2)]:
        u, delta, A, B, C, D, z, bias = inputs(batch, dim, dstate, seqlen, groups, torch.float32, device)
        y = forward(u, delta, A, B, C, D, z, bias, reps, warps)
        ref = selective_scan_ref(u.double(), delta.double(), A.double(), B.double(), C.double(), D.double(),
                                 z.double(), bias.double(), True)
        err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
        print(f"check batch {batch} dim {dim} N {dstate} L {seqlen} groups {groups} reps {reps} warps {warps}: "
              f"max error / max |y| = {err:.2e}")
        assert err < 1e-4, err


def _median_ms(fn, *args) -> float:
    return triton.testing.do_bench(functools.partial(fn, *args), rep=300, return_mode="median")


def time_against_shipped() -> None:
    from dna_mamba.kernels.selective_scan.interface import scan_forward

    name = torch.cuda.get_device_name()
    print("| shape | layout | shipped fwd ms | prototype fwd ms (reps, warps) | device |")
    print("| --- | --- | ---: | --- | --- |")
    for label, (batch, dim, seqlen) in [("S0", (1, 1536, 1 << 20)), ("S1 D 256", (1, 256, 1 << 20)),
                                        ("S1 D 512", (1, 512, 1 << 20)), ("P D 512", (1, 512, 1 << 18))]:
        u, delta, A, B, C, D, z, bias = inputs(batch, dim, 16, seqlen)
        shipped = _median_ms(scan_forward, u, delta, A, B, C, D, z, bias, None, True)
        ucl, dcl, zcl = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (u, delta, z))
        shipped_cl = _median_ms(scan_forward, ucl, dcl, A, B, C, D, zcl, bias, None, True)
        protos = [f"{_median_ms(forward, u, delta, A, B, C, D, z, bias, reps, warps):.2f} ({reps}, {warps})"
                  for reps, warps in [(2, 1), (1, 1), (2, 4)]]
        print(f"| {label} | contiguous | {shipped:.2f} | {', '.join(protos)} | {name} |")
        print(f"| {label} | channel-last (shipped only) | {shipped_cl:.2f} | | {name} |")


def sass(reps: int, warps: int) -> None:
    from triton.backends.compiler import GPUTarget

    fn = _fwd_time_parallel
    consts = dict(BLOCK_N=16, REPS=reps, ROWS=32 * warps, FAST_MATH=True, GATHER=True)
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*bf16" if name[0] in "uzy" or name.startswith("delta") else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "i64" if name.startswith("s_") else "i32"
            if name.startswith("s_") or name in ("seqlen", "bc_len"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": warps, "enable_fp_fusion": True})
    cubin = Path("/tmp") / "proto_time_parallel.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    text = subprocess.run([str(cuobjdump), "-sass", str(cubin)], capture_output=True, text=True).stdout
    usage = subprocess.run([str(cuobjdump), "-res-usage", str(cubin)], capture_output=True, text=True).stdout
    ins = [(int(m.group(1), 16), m.group(2).strip()) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", text)]
    loops = []  # (start, end) of each backward branch: the n loop is the innermost, the block loop the outermost
    for addr, t in ins:
        m = re.search(r"BRA (?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", t)
        if m and m.group(1) and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    inner = min(loops, key=lambda x: x[1] - x[0])
    outer = max(loops, key=lambda x: x[1] - x[0])
    n_inner = sum(inner[0] <= a <= inner[1] for a, _ in ins)
    n_outer = sum(outer[0] <= a <= outer[1] for a, _ in ins) - n_inner
    e = 8 * reps
    ops = Counter((t.split()[1] if t.startswith("@") else t.split()[0]).split(".")[0]
                  for a, t in ins if inner[0] <= a <= inner[1])
    regs, stack = re.search(r"REG:(\d+)", usage).group(1), re.search(r"STACK:(\d+)", usage).group(1)
    print(f"prototype reps {reps} warps {warps} ({e} steps per thread), sm_90, N 16: per (l, d, n) "
          f"{n_inner / e:.1f} in the n loop + {n_outer / e / 16:.1f} per-step work = "
          f"{(n_inner + n_outer / 16) / e:.1f}; registers {regs}, stack {stack}")
    print("  n loop: " + ", ".join(f"{k} {v / e:.1f}" for k, v in ops.most_common(8)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the reference and exit")
    parser.add_argument("--sass", action="store_true", help="count instructions of the compiled loops and exit")
    args = parser.parse_args()
    if args.sass:
        for reps, warps in [(2, 1), (1, 1), (2, 4)]:
            sass(reps, warps)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    check(device)
    if not args.check:
        time_against_shipped()


if __name__ == "__main__":
    main()
