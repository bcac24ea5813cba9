"""Models on disk: ``config.json`` + ``model.safetensors``, written atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from dna_mamba.model.config import DnaMambaConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def save_pretrained(model, directory: str | Path, extra_metadata: dict | None = None) -> Path:
    """Write ``model`` to ``directory`` (created or replaced) so that a crash never leaves a half-written model."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        config = {"format_version": FORMAT_VERSION, "model_type": "dna_mamba", **model.config.to_dict()}
        if extra_metadata:
            config["metadata"] = extra_metadata
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        # save_model (not save_file) handles the tied embedding / LM head without duplicating it.
        save_model(model, str(tmp / WEIGHTS_NAME))
        if directory.exists():
            backup = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, backup)
            os.replace(tmp, directory)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_config(directory: str | Path) -> tuple[DnaMambaConfig, dict]:
    """The model config and the extra metadata stored with a saved model."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a saved dna_mamba model (no {CONFIG_NAME})")
    data = json.loads(path.read_text())
    version = data.pop("format_version", None)
    if data.pop("model_type", None) != "dna_mamba" or version != FORMAT_VERSION:
        raise ValueError(f"{path}: not a dna_mamba model config of format version {FORMAT_VERSION}")
    metadata = data.pop("metadata", {})
    return DnaMambaConfig.from_dict(data), metadata


def load_pretrained(directory: str | Path, device: str | torch.device | None = None):
    """Load a model saved by :func:`save_pretrained`, in eval mode."""
    from dna_mamba.model.mamba import DnaMambaLM

    config, _ = read_config(directory)
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{directory}: missing {WEIGHTS_NAME}")
    model = DnaMambaLM(config)
    missing, unexpected = load_model(model, str(weights), strict=True, device=str(device or "cpu"))
    if device is not None:
        model.to(device)
    return model.eval()
