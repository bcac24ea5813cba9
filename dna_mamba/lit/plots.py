"""Training curves as a PNG, drawn from the CSV logger's metrics file."""

from __future__ import annotations

import csv
import math
from pathlib import Path


def read_metrics(csv_path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Series of (step, value) per metric name from a Lightning CSVLogger ``metrics.csv``."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(row.get("step") or 0)
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                series.setdefault(key, []).append((step, float(value)))
    return series


def plot_training_curves(csv_path: str | Path, out_png: str | Path, baseline_bits: float | None = None,
                         baseline_label: str = "Markov baseline") -> Path:
    """Train and validation bits per base against optimizer step, with an optional baseline line."""
    import matplotlib

    matplotlib.use("Agg")  # files only: training runs headless
    import matplotlib.pyplot as plt

    series = read_metrics(csv_path)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if "train/loss" in series:
        steps, values = zip(*series["train/loss"], strict=True)
        ax.plot(steps, [v / math.log(2) for v in values], label="train", alpha=0.7)
    if "val/bits_per_base" in series:
        steps, values = zip(*series["val/bits_per_base"], strict=True)
        ax.plot(steps, values, "o-", label="validation")
    if baseline_bits is not None:
        ax.axhline(baseline_bits, color="gray", linestyle="--", label=f"{baseline_label} ({baseline_bits:.3f})")
    ax.axhline(2.0, color="lightgray", linestyle=":", label="uniform (2.0)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("bits per base")
    ax.set_title("dna_mamba pretraining")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
