"""Prints 'triton' when the library's Triton scan runs and matches the reference (outputs and gradients) at the
shapes the sweep uses, else 'reference' and why."""

import torch
from dna_mamba.kernels.selective_scan import interface


def check(b: int, d: int, n: int, length: int) -> float:
    torch.manual_seed(0)
    args = [torch.randn(b, d, length), torch.randn(b, d, length) * 0.5, -torch.rand(d, n) - 0.5,
            torch.randn(b, 1, n, length), torch.randn(b, 1, n, length), torch.randn(d), torch.randn(b, d, length),
            torch.randn(d) * 0.1]
    args = [a.cuda().requires_grad_() for a in args]
    weight = torch.randn(b, d, length, device="cuda")
    outs = {}
    for backend in ("reference", "triton"):
        y = interface.selective_scan(*args, delta_softplus=True, backend=backend)
        outs[backend] = [y, *torch.autograd.grad((y * weight).sum(), args)]
        torch.cuda.synchronize()
    return max(float((r - t).abs().max() / (r.abs().max() + 1e-6)) for r, t in zip(*outs.values(), strict=True))


try:
    worst = max(check(2, 64, 16, 700), check(64, 128, 16, 1024), check(32, 128, 16, 4096))
    print("triton" if worst < 1e-3 else f"reference (triton differs: relative error {worst:.2e})")
except Exception as err:  # an unfinished kernel may raise anything, an illegal memory access included
    print(f"reference (triton failed: {type(err).__name__}: {str(err)[:120]})")
