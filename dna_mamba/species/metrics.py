"""Classification metrics from a confusion matrix, a confusion-matrix PNG, and JSON; files are written atomically.

Everything is computed from the confusion matrix, so per-device matrices summed across processes give exactly the
metrics of the whole evaluation set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dna_mamba.outputs import atomic_output


def confusion(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class). Shapes: (M,), (M,) → (C, C) int64, rows = true classes."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def metrics_from_confusion(matrix: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class recall / precision / F1 and the matrix itself.

    A class absent from the evaluation set gets recall NaN and is left out of the balanced accuracy and macro-F1.
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    total = int(matrix.sum())
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / support
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(tp > 0, 2 * tp / (support + predicted), 0.0)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / total) if total else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "n_windows": total,
        "classes": list(classes),
        "per_class": {
            label: {"recall": _float(recall[c]), "precision": float(precision[c]), "f1": float(f1[c]),
                    "support": int(support[c])}
            for c, label in enumerate(classes)
        },
        "confusion_matrix": matrix.tolist(),
    }


def classification_metrics(y_true, y_pred, classes: Sequence[str]) -> dict:
    """:func:`metrics_from_confusion` of labels and predictions."""
    return metrics_from_confusion(confusion(y_true, y_pred, len(classes)), classes)


def _float(x: float) -> float | None:
    return None if np.isnan(x) else float(x)  # JSON has no NaN


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """Row-normalised confusion matrix (each row: where a true class's windows went) with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: runs are headless
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    size = 1.6 + 0.55 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.2, size), dpi=120)
    image = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{matrix[i, j]}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_output(path) as tmp:  # a crash mid-write keeps the previous plot, not half a PNG
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write JSON atomically (a reader never sees half a file)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return path
