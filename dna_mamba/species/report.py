"""Context-sweep reports: a markdown table and a PNG of accuracy against context, model beside k-mer baselines."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from dna_mamba.outputs import atomic_output


def context_label(seq_len: int) -> str:
    """``1024`` → ``1k`` (2^10), ``1048576`` → ``1m``; other lengths print as integers."""
    if seq_len >= 1 << 20 and seq_len % (1 << 20) == 0:
        return f"{seq_len >> 20}m"
    if seq_len >= 1 << 10 and seq_len % (1 << 10) == 0:
        return f"{seq_len >> 10}k"
    return str(seq_len)


def parse_context(text: str) -> int:
    """``"1k"`` → 1024, ``"2^18"`` → 262144, ``"1m"`` → 1048576, ``"4096"`` → 4096 (binary prefixes, as conf/context).

    Raises:
        ValueError: not a positive length.
    """
    value = text.strip().lower()
    try:
        if "^" in value:
            base, exponent = value.split("^")
            length = int(base) ** int(exponent)
        elif value.endswith("k"):
            length = int(value[:-1]) << 10
        elif value.endswith("m"):
            length = int(value[:-1]) << 20
        else:
            length = int(value)
    except ValueError:
        raise ValueError(f"context {text!r} is not a length such as 1024, 1k, 2^18 or 1m") from None
    if length < 1:
        raise ValueError(f"context must be positive, got {text!r}")
    return length


def _pct(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def sweep_table(rows: Sequence[dict], ks: Sequence[int]) -> str:
    """Markdown table: one row per context with model and k-mer accuracies (%), windows and training cost.

    Accuracies are over the fixed test windows (at most ``test windows / class`` of each class; the stride follows
    the counts when the windows overlap, since overlapping windows are not independent samples); ``steps × batch``
    counts optimizer steps and windows per step of the model, ``k-mer train windows`` the baseline's training set.

    Each row is a run's ``results.json`` dict (see ``run_species``): ``seq_len``, ``test`` metrics (absent for a
    k-mer-only row), ``kmer`` results keyed by k, ``test_windows_per_class``, ``test_stride`` (absent in runs made
    before it existed: non-overlapping), ``global_step``, ``train_seconds``.
    """
    header = ["context", "model acc", "model bal. acc", "model macro-F1"]
    header += [f"{k}-mer acc" for k in ks] + ["test windows / class", "steps × batch", "train time",
                                              "k-mer train windows"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in sorted(rows, key=lambda r: r["seq_len"]):
        test = row.get("test") or {}
        kmer = {int(k): v for k, v in (row.get("kmer") or {}).items()}
        per_class = row.get("test_windows_per_class") or []
        windows = f"{min(per_class)}–{max(per_class)}" if per_class else "—"
        if row.get("test_stride", row["seq_len"]) < row["seq_len"]:
            windows += f" (stride {context_label(row['test_stride'])})"
        steps = f"{row['global_step']} × {row['effective_batch']}" if "global_step" in row else "—"
        seconds = f"{row['train_seconds']:.0f} s" if "train_seconds" in row else "—"
        cells = [f"{context_label(row['seq_len'])} ({row['seq_len']:,})", _pct(test.get("accuracy")),
                 _pct(test.get("balanced_accuracy")), _pct(test.get("macro_f1"))]
        cells += [_pct(kmer.get(k, {}).get("accuracy")) for k in ks]
        cells += [windows, steps, seconds, str(row.get("kmer_train_windows") or "—")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(rows: Sequence[dict], ks: Sequence[int], path: str | os.PathLike, *, num_classes: int,
               title: str = "") -> Path:
    """Accuracy against context length (log2 axis): the model, each k-mer baseline, and chance."""
    import matplotlib

    matplotlib.use("Agg")  # files only: runs are headless
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["seq_len"])
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    model = [(r["seq_len"], r["test"]["accuracy"]) for r in rows if r.get("test")]
    if model:
        x, y = zip(*model, strict=True)
        ax.plot(x, [100 * v for v in y], "o-", color="C0", linewidth=2, label="Mamba (both strands)")
    for i, k in enumerate(ks):
        points = [(r["seq_len"], r["kmer"][str(k)]["accuracy"]) for r in rows if str(k) in (r.get("kmer") or {})]
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, [100 * v for v in y], "s--", color=f"C{i + 1}", alpha=0.8, label=f"{k}-mer + logistic reg.")
    ax.axhline(100 / num_classes, color="gray", linestyle=":", label=f"chance ({100 / num_classes:.0f}%)")
    ax.set_xscale("log", base=2)
    contexts = [r["seq_len"] for r in rows]
    ax.set_xticks(contexts, [context_label(c) for c in contexts])
    ax.set_ylim(0, 102)
    ax.set_xlabel("context (bp)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_output(path) as tmp:  # a crash mid-write keeps the previous plot, not half a PNG
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path
