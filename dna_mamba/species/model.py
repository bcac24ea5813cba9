"""A species classifier: a DnaMambaLM backbone, a pooled hidden state, a linear head.

The head reads the final-normed residual stream either at the last position (the Mamba paper's choice for a causal
model: the last token has seen the whole window) or averaged over all positions. Prediction averages the class
probabilities of a window and of its reverse complement, so the answer does not depend on the strand.

Saved classifiers are a directory: ``model/`` (a ``from_pretrained`` backbone), ``head.safetensors`` and
``classifier.json`` (classes, pooling, context), loadable without Lightning.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from dna_mamba.model import DnaMambaLM, load_pretrained, save_pretrained
from dna_mamba.outputs import install_work_dir, make_work_dir
from dna_mamba.tokenizer import reverse_complement

POOLINGS = ("last", "mean")
CLASSIFIER_CONFIG = "classifier.json"
HEAD_WEIGHTS = "head.safetensors"


class SpeciesHead(nn.Module):
    """Pooling over positions, then a linear layer to class logits.

    Shapes:
        hidden (B, L, d_model) → logits (B, num_classes) fp32.
    """

    def __init__(self, d_model: int, num_classes: int, pooling: str = "last"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least two classes, got {num_classes}")
        self.pooling = pooling
        self.linear = nn.Linear(d_model, num_classes)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        pooled = hidden[:, -1] if self.pooling == "last" else hidden.float().mean(dim=1)  # (B, d_model)
        return self.linear(pooled.float()).float()


def class_logits(backbone: DnaMambaLM, head: SpeciesHead, tokens: torch.Tensor, *, frozen: bool = False
                 ) -> torch.Tensor:
    """Class logits of token windows. A frozen backbone runs without autograd (no activations kept).

    Shapes:
        tokens (B, L) int → (B, num_classes) fp32.
    """
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
        hidden = final_hidden(backbone, tokens)  # (B, L, d_model)
    return head(hidden)


def final_hidden(backbone: DnaMambaLM, tokens: torch.Tensor) -> torch.Tensor:
    """The final-normed residual stream, caught at ``norm_f``.

    Same tensor as ``hidden_states[-1]`` of ``output_hidden_states=True``, without holding every layer's states:
    at a 1M-token context those would be (n_layer + 1) x L x d_model floats per sequence.

    Shapes:
        tokens (B, L) → (B, L, d_model).
    """
    captured: list[torch.Tensor] = []
    handle = backbone.norm_f.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        backbone(tokens)
    finally:
        handle.remove()
    return captured[0]


def both_strand_probs(backbone: DnaMambaLM, head: SpeciesHead, tokens: torch.Tensor) -> torch.Tensor:
    """Class probabilities averaged over a window and its reverse complement.

    Shapes:
        tokens (B, L) → (B, num_classes) fp32.
    """
    forward = F.softmax(class_logits(backbone, head, tokens), dim=-1)
    reverse = F.softmax(class_logits(backbone, head, reverse_complement(tokens)), dim=-1)
    return (forward + reverse) / 2


class SpeciesClassifier(nn.Module):
    """A backbone and a head, for prediction outside Lightning (see :func:`load_classifier`)."""

    def __init__(self, model: DnaMambaLM, head: SpeciesHead, classes: list[str], context: int):
        super().__init__()
        if len(classes) != head.linear.out_features:
            raise ValueError(f"{len(classes)} class names for a head of {head.linear.out_features} outputs")
        self.model = model
        self.head = head
        self.classes = list(classes)
        self.context = context

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits. Shapes: tokens (B, L) → (B, num_classes)."""
        return class_logits(self.model, self.head, tokens)

    @torch.no_grad()
    def predict_proba(self, tokens: torch.Tensor, both_strands: bool = True) -> torch.Tensor:
        """Class probabilities, averaged over both strands by default. Shapes: (B, L) → (B, num_classes)."""
        if both_strands:
            return both_strand_probs(self.model, self.head, tokens)
        return F.softmax(self(tokens), dim=-1)


def save_classifier(model: DnaMambaLM, head: SpeciesHead, classes: list[str], context: int,
                    directory: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write a classifier directory: ``model/``, ``head.safetensors`` and ``classifier.json`` (created or replaced).

    The three parts are written to a temporary directory beside ``directory``, which then takes its place, so a
    crash never pairs a new backbone with an old head (or leaves half of either).

    Raises:
        ValueError: ``directory`` is a file, or a non-empty directory that is not a saved classifier (replacing it
            would delete the user's files).
    """
    directory = Path(directory)
    _check_replaceable(directory)
    tmp = make_work_dir(directory)
    try:
        save_pretrained(model, tmp / "model")
        save_file({k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()},
                  str(tmp / HEAD_WEIGHTS))
        config = {"classes": list(classes), "pooling": head.pooling, "context": context, "metadata": metadata or {}}
        (tmp / CLASSIFIER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        install_work_dir(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _check_replaceable(directory: Path) -> None:
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ValueError(f"{directory}: exists and is not a directory; refusing to replace it with a classifier")
    # Only what save_classifier writes (a write of older code, which wrote in place, may have stopped part-way).
    others = [p.name for p in directory.iterdir() if p.name not in ("model", HEAD_WEIGHTS, CLASSIFIER_CONFIG)]
    if others:
        raise ValueError(f"{directory}: holds {', '.join(sorted(others)[:3])}, so it is not a saved species "
                         "classifier; refusing to overwrite it (choose a new or empty directory)")


def load_classifier(directory: str | os.PathLike, device: str | torch.device | None = None) -> SpeciesClassifier:
    """Load a classifier written by :func:`save_classifier` (or by a ``task=species`` run), in eval mode."""
    directory = Path(directory)
    path = directory / CLASSIFIER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a species classifier (no {CLASSIFIER_CONFIG})")
    config = json.loads(path.read_text())
    backbone = load_pretrained(directory / "model", device=device)
    head = SpeciesHead(backbone.config.d_model, len(config["classes"]), config["pooling"])
    head.load_state_dict(load_file(str(directory / HEAD_WEIGHTS)))
    classifier = SpeciesClassifier(backbone, head, config["classes"], config["context"])
    return classifier.to(device).eval() if device is not None else classifier.eval()
