"""Layout copies of (batch, dim, L) tensors: time-contiguous <-> channel-last, as a tiled Triton transpose."""

from .interface import relayout
from .reference import relayout_ref

__all__ = ["relayout", "relayout_ref"]
