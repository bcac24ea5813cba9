"""What every op's ``interface.py`` needs around a Triton launch: backend choice, buffers, device and SM count."""

from __future__ import annotations

import contextlib
import functools
import logging
import os

import torch

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "reference")
# Compile options of every launch. Fused multiply-adds: the kernels' instruction counts and measured times assume
# them (h = a * h + b is one FFMA per state and step). Triton 3.9 warns that its default turns them off in 3.10.
LAUNCH_OPTIONS = {"enable_fp_fusion": True}
_warned_fallback: set[str] = set()


def shape_of(value: object) -> object:
    """A tensor's shape, or the type name of a non-tensor, for error messages."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def check_backend(backend: str, x: torch.Tensor) -> None:
    """ValueError for an unknown backend, or backend='triton' on CPU tensors without the interpreter."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton" and not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1), x is on {x.device}")


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401  (probe only)
    except ImportError:
        return False
    return True


def use_triton(op: str, x: torch.Tensor, backend: str, unsupported: str | None = None) -> bool:
    """Whether ``op`` runs its Triton path. "auto" takes it for CUDA tensors when Triton imports and nothing is
    ``unsupported`` (a reason, e.g. a width above the kernel's limit); the first fallback per op is logged."""
    if backend == "reference" or x.numel() == 0:
        # Empty inputs would need zero-sized grids; the reference handles them exactly.
        return False
    if backend == "triton":
        return True
    if x.is_cuda and triton_available() and unsupported is None:
        return True
    if op not in _warned_fallback:
        _warned_fallback.add(op)
        reason = f"x is on {x.device}" if not x.is_cuda else unsupported or "Triton is not installed"
        logger.info("%s: using the PyTorch reference because %s", op, reason)
    return False


def new_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, poison: bool) -> torch.Tensor:
    """An uninitialised buffer, or a NaN-filled one when ``poison`` (tests: an unwritten element then shows)."""
    if poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.cache
def cuda_sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def device_guard(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device; make it x's (no-op for CPU interpreter runs)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
