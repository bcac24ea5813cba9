"""Export a Lightning checkpoint as a ``from_pretrained`` model directory."""

from __future__ import annotations

from pathlib import Path

import torch

from dna_mamba.model import DnaMambaConfig, DnaMambaLM, save_pretrained


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, extra_metadata: dict | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` for the model inside a Lightning ``.ckpt``.

    Works for any dna_mamba LightningModule that stores ``model_config`` in its hyperparameters and the
    language model under the ``model.`` prefix (pretraining; the species task keeps its backbone there too).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: checkpoint not found")
    # weights_only=False: Lightning checkpoints hold plain-dict hyperparameters we wrote ourselves.
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hparams = ckpt.get("hyper_parameters", {})
    if "model_config" not in hparams or "state_dict" not in ckpt:
        raise ValueError(f"{checkpoint}: not a dna_mamba training checkpoint (no model_config / state_dict)")
    model = DnaMambaLM(DnaMambaConfig.from_dict(hparams["model_config"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    metadata = {"exported_from": checkpoint.name, "global_step": ckpt.get("global_step"), **(extra_metadata or {})}
    return save_pretrained(model, out_dir, extra_metadata=metadata)
