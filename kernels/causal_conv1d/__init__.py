"""Causal depthwise conv1d (Mamba's short convolution): Triton kernels and a PyTorch reference."""

from .interface import causal_conv1d
from .reference import causal_conv1d_ref

__all__ = ["causal_conv1d", "causal_conv1d_ref"]
