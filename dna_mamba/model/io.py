"""Models on disk: ``config.json`` + ``model.safetensors``, written atomically."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from dna_mamba.model.config import DnaMambaConfig
from dna_mamba.outputs import install_work_dir, make_work_dir, remove_stale_work_dirs

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
MODEL_TYPE = "dna_mamba"


def save_pretrained(model, directory: str | Path, extra_metadata: dict | None = None) -> Path:
    """Write ``model`` to ``directory`` (created or replaced) so that a crash never leaves a half-written model.

    Raises:
        ValueError: ``directory`` is a file, or a non-empty directory that is not a saved model (replacing it
            would delete the user's files).
    """
    directory = Path(directory)
    _check_replaceable(directory)
    remove_stale_work_dirs(directory)  # what a save killed part-way left
    tmp = make_work_dir(directory)
    try:
        config = {"format_version": FORMAT_VERSION, "model_type": MODEL_TYPE, **model.config.to_dict()}
        if extra_metadata:
            config["metadata"] = extra_metadata
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        # save_model (not save_file) handles the tied embedding / LM head without duplicating it.
        save_model(model, str(tmp / WEIGHTS_NAME))
        install_work_dir(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _check_replaceable(directory: Path) -> None:
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ValueError(f"{directory}: exists and is not a directory; refusing to replace it with a model")
    if any(directory.iterdir()) and _model_type(directory / CONFIG_NAME) != MODEL_TYPE:
        raise ValueError(f"{directory}: directory is not empty and is not a saved dna_mamba model; refusing to "
                         f"overwrite it (choose a new or empty directory)")


def _model_type(config_path: Path) -> object:
    try:
        data = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return None
    return data.get("model_type") if isinstance(data, dict) else None


def read_config(directory: str | Path) -> tuple[DnaMambaConfig, dict]:
    """The model config and the extra metadata stored with a saved model.

    Raises:
        FileNotFoundError: no such directory, or no ``config.json`` in it.
        NotADirectoryError: ``directory`` is a file.
        ValueError: ``config.json`` is not JSON, belongs to another tool or format version, lacks a field, or holds
            a field or value that :class:`DnaMambaConfig` rejects.
    """
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: model directory not found")
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory}: is a file; a saved model is a directory holding {CONFIG_NAME} and "
                                 f"{WEIGHTS_NAME}")
    if not path.is_file():
        nested = directory / "model" / CONFIG_NAME
        hint = f"; the model is in its model/ subfolder ({nested.parent})" if nested.is_file() else ""
        raise FileNotFoundError(f"{directory}: not a saved dna_mamba model (no {CONFIG_NAME}){hint}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("model_type") != MODEL_TYPE:
        found = f" (model_type {data['model_type']!r})" if isinstance(data, dict) and "model_type" in data else ""
        raise ValueError(f"{path}: not a dna_mamba model config{found}")
    version = data.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r}; this dna_mamba reads version {FORMAT_VERSION} "
                         f"(upgrade dna_mamba, or re-export the model)")
    data.pop("model_type")
    metadata = data.pop("metadata", {})
    # Every field is written by save_pretrained; a missing one would silently take its default and give a model
    # that differs from the trained one (a shape error at best, different outputs at worst, e.g. norm_eps).
    missing = [f.name for f in dataclasses.fields(DnaMambaConfig) if f.name not in data]
    if missing:
        raise ValueError(f"{path}: missing model field(s) {', '.join(missing)}")
    try:
        return DnaMambaConfig.from_dict(data), metadata
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Copy ``state`` into ``model``, first checking that names and shapes match exactly.

    A tensor the model shares under two names (the tied embedding / LM head) may appear under either or both.

    Raises:
        ValueError: missing, unexpected or wrongly shaped tensors; the message names ``source`` and a few of each.
    """
    expected = model.state_dict()
    aliases: dict[int, list[str]] = {}
    for name, tensor in expected.items():
        aliases.setdefault(tensor.data_ptr(), []).append(name)
    missing = [names[0] for names in aliases.values() if not any(n in state for n in names)]
    unexpected = [name for name in state if name not in expected]
    wrong = [f"{name} {tuple(state[name].shape)} where the config needs {tuple(expected[name].shape)}"
             for name in state if name in expected and state[name].shape != expected[name].shape]
    problems = [f"{what}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} ({len(names)})"
                for what, names in (("wrong shape", wrong), ("missing", missing), ("unexpected", unexpected)) if names]
    if problems:
        raise ValueError(f"{source}: weights do not match the model config; " + "; ".join(problems))
    model.load_state_dict(state, strict=False)  # strict would demand both names of a tied tensor


def load_pretrained(directory: str | Path, device: str | torch.device | None = None):
    """Load a model saved by :func:`save_pretrained`, in eval mode.

    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: see :func:`read_config`; also a missing or unreadable
            weights file, or weights that do not match the config.
    """
    from dna_mamba.model.mamba import DnaMambaLM

    config, _ = read_config(directory)
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{directory}: missing {WEIGHTS_NAME}")
    try:
        state = load_file(weights)
    except SafetensorError as err:
        raise ValueError(f"{weights}: not a readable safetensors file, truncated or damaged ({err})") from None
    model = DnaMambaLM(config)
    load_weights(model, state, weights)
    if device is not None:
        model.to(device)
    return model.eval()
