"""Fused residual add + RMSNorm (the pre-norm of every Mamba block): Triton kernels and a PyTorch reference."""

from .interface import add_rms_norm
from .reference import add_rms_norm_ref

__all__ = ["add_rms_norm", "add_rms_norm_ref"]
