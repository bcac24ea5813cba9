"""Model configuration: a small validated dataclass, saved as ``config.json`` beside the weights."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from dna_mamba.tokenizer import VOCAB_SIZE

# The Mamba paper's DNA table lists (layers, d_model); its parameter counts match two Mamba blocks per
# listed layer, so e.g. its "7M, 8 layers of 256" model is 16 blocks of 256 here (see BASELINES.md).
PAPER_SIZES: dict[str, tuple[int, int]] = {
    "250k": (8, 64),
    "700k": (10, 96),
    "1.4m": (12, 128),
    "3.5m": (14, 192),
    "7m": (16, 256),
    "19.3m": (20, 384),
    "40.7m": (24, 512),
}


@dataclass
class DnaMambaConfig:
    """Sizes and initialisation of a single-nucleotide Mamba-1 language model."""

    d_model: int = 128
    n_layer: int = 12  # Mamba blocks (not the paper's "layers", which hold two blocks each)
    d_state: int = 16  # N: state size per channel; 16 is the paper's choice for DNA
    d_conv: int = 4  # width of the depthwise causal convolution before the scan
    expand: int = 2  # d_inner = expand * d_model
    dt_rank: int | None = None  # low rank of the dt projection; None -> ceil(d_model / 16) as in Mamba
    dt_min: float = 1e-3  # dt is initialised log-uniform in [dt_min, dt_max] (Mamba's S4D-style init)
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    vocab_size: int = VOCAB_SIZE  # 9 tokens used, padded to 16
    norm_eps: float = 1e-5
    conv_bias: bool = True
    proj_bias: bool = False  # in_proj / out_proj without bias, as in Mamba
    residual_in_fp32: bool = True  # keep the residual stream fp32 under bf16 autocast: 1M-step sums drift in bf16
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True  # GPT-2 style 1/sqrt(n_layer) scaling of out_proj at init

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "d_state", "expand", "dt_rank", "vocab_size"):
            value = getattr(self, name)
            if name == "dt_rank" and value is None:  # d_model is checked by now
                value = self.dt_rank = math.ceil(self.d_model / 16)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DnaMambaConfig.{name} must be a positive integer, got {value!r}")
        # JSON and YAML hand-edits give strings ("1e-5", "false") that would otherwise fail later or, for the flags,
        # count as true.
        for name in ("dt_min", "dt_max", "dt_init_floor", "norm_eps", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"DnaMambaConfig.{name} must be a number, got {value!r}")
        for name in ("conv_bias", "proj_bias", "residual_in_fp32", "rescale_prenorm_residual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DnaMambaConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if not 2 <= self.d_conv <= 4:
            raise ValueError(f"DnaMambaConfig.d_conv must be in 2..4 (the conv kernel's range), got {self.d_conv}")
        if self.d_state > 64:
            raise ValueError(f"DnaMambaConfig.d_state must be at most 64 (the scan kernel's limit), got {self.d_state}")
        if self.vocab_size < 9:
            raise ValueError(f"DnaMambaConfig.vocab_size must cover the 9 tokenizer ids, got {self.vocab_size}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")
        if not self.norm_eps > 0:
            raise ValueError(f"DnaMambaConfig.norm_eps must be positive (it keeps RMSNorm finite), got {self.norm_eps}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @classmethod
    def from_size(cls, size: str, **overrides) -> DnaMambaConfig:
        """A config of the paper's DNA table by its parameter count (``"1.4m"``, ``"7m"``, ...)."""
        key = size.lower()
        if key not in PAPER_SIZES:
            raise ValueError(f"unknown model size {size!r}; choose from {', '.join(PAPER_SIZES)}")
        n_layer, d_model = PAPER_SIZES[key]
        return cls(n_layer=n_layer, d_model=d_model, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DnaMambaConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown DnaMambaConfig fields: {sorted(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_file(cls, path: str | Path) -> DnaMambaConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
