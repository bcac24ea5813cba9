"""Export a Lightning checkpoint as a ``from_pretrained`` model directory."""

from __future__ import annotations

from pathlib import Path

import torch

from dna_mamba.model import DnaMambaConfig, DnaMambaLM, save_pretrained
from dna_mamba.model.io import CONFIG_NAME, load_weights


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, extra_metadata: dict | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` for the model inside a Lightning ``.ckpt``.

    Works for any dna_mamba LightningModule that stores ``model_config`` in its hyperparameters and the
    language model under the ``model.`` prefix (pretraining; the species task keeps its backbone there too).

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: a directory, a file that is not a PyTorch checkpoint (or a truncated one), a checkpoint of
            another tool, or one whose weights do not match its model config; or ``out_dir`` holds other files.
    """
    checkpoint = Path(checkpoint)
    model, step = load_checkpoint_model(checkpoint)
    metadata = {"exported_from": checkpoint.name, "global_step": step, **(extra_metadata or {})}
    return save_pretrained(model, out_dir, extra_metadata=metadata)


def load_checkpoint_model(checkpoint: str | Path) -> tuple[DnaMambaLM, int | None]:
    """The language model inside a dna_mamba Lightning checkpoint, and the checkpoint's global step.

    Raises:
        FileNotFoundError, ValueError: as for :func:`export_checkpoint`.
    """
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        kind = "a saved model directory already" if (checkpoint / CONFIG_NAME).is_file() else "a directory"
        raise ValueError(f"{checkpoint}: is {kind}; pass a Lightning .ckpt file (e.g. RUN/checkpoints/last.ckpt)")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: checkpoint not found")
    try:
        # weights_only: our checkpoints hold tensors and plain containers only, and a file from elsewhere must not
        # run code when read.
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails with many types (pickle, zip, EOF, OS errors) for one cause
        raise ValueError(f"{checkpoint}: not a readable PyTorch checkpoint: truncated, damaged or another format "
                         f"({type(err).__name__})") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or not isinstance(hparams.get("model_config"), dict) \
            or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{checkpoint}: not a dna_mamba training checkpoint (no model_config / state_dict)")
    try:
        config = DnaMambaConfig.from_dict(hparams["model_config"])
    except ValueError as err:
        raise ValueError(f"{checkpoint}: bad model_config: {err}") from None
    model = DnaMambaLM(config)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    load_weights(model, state, checkpoint)
    return model, ckpt.get("global_step")


def load_model_source(source: str | Path) -> DnaMambaLM:
    """The language model in a saved model directory or a dna_mamba Lightning checkpoint file (``init_from``).

    Raises:
        FileNotFoundError: neither exists.
        ValueError: as :func:`dna_mamba.model.load_pretrained` and :func:`load_checkpoint_model`.
    """
    from dna_mamba.model import load_pretrained

    path = Path(source)
    if path.is_dir():
        return load_pretrained(path)
    if path.is_file():
        return load_checkpoint_model(path)[0]
    raise FileNotFoundError(f"{source}: neither a saved model directory nor a checkpoint file")
