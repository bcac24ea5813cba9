"""Selective scan (Mamba-1): fused Triton kernels on CUDA, a chunked pure-PyTorch reference elsewhere."""

from dna_mamba.kernels.selective_scan.interface import selective_scan
from dna_mamba.kernels.selective_scan.reference import selective_scan_ref

__all__ = ["selective_scan", "selective_scan_ref"]
