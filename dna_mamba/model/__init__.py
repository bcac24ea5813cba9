"""The Mamba language model: config, modules, saving and loading."""

from dna_mamba.model.config import PAPER_SIZES, DnaMambaConfig
from dna_mamba.model.io import load_pretrained, save_pretrained
from dna_mamba.model.mamba import DnaMambaLM, LayerState, LMOutput

__all__ = [
    "PAPER_SIZES",
    "DnaMambaConfig",
    "DnaMambaLM",
    "LMOutput",
    "LayerState",
    "load_pretrained",
    "save_pretrained",
]
