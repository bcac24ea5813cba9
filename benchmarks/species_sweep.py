"""Join a model sweep and a k-mer sweep run on different machines into one table and plot.

The model sweep is the expensive part (a GPU); the k-mer baseline needs only CPUs. Both draw their windows from
``(manifest, split, seed, test windows per class, test stride)`` alone, so running ``dna-mamba species-sweep``
twice with the same settings, once with ``--no-baseline`` on the GPU and once with ``--kmer-only`` on a CPU,
scores the two on exactly the same windows. This script checks that (same split, classes, test windows per
class and test stride at every context) and writes the joint ``sweep.md`` and ``sweep.png``::

    python benchmarks/species_sweep.py --model runs/gpu_sweep --kmer runs/kmer_sweep --out docs/species \\
        --title "bacteria, held-out strains"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dna_mamba.species.report import plot_sweep, sweep_table


def load_rows(directory: Path) -> dict[int, dict]:
    """Rows of a sweep directory by context, from ``sweep.json`` or, failing that, ``context_*/results.json``."""
    path = directory / "sweep.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else [
        json.loads(p.read_text()) for p in sorted(directory.glob("context_*/results.json"))]
    if not rows:
        raise FileNotFoundError(f"{directory}: no sweep.json and no context_*/results.json")
    return {row["seq_len"]: row for row in rows}


def join(model: dict[int, dict], kmer: dict[int, dict]) -> list[dict]:
    """Model rows with the k-mer results of the same context attached; refuses rows scored on other windows."""
    joined = []
    for seq_len in sorted(set(model) | set(kmer)):
        row = dict(model.get(seq_len) or kmer[seq_len])
        other = kmer.get(seq_len)
        if seq_len in model and other is not None:
            # Runs from before the test stride existed have no key: their windows did not overlap (stride = context).
            defaults = {"test_stride": seq_len}
            for key in ("split", "classes", "test_windows_per_class", "test_stride"):
                mine, theirs = (r.get(key, defaults.get(key)) for r in (row, other))
                if mine != theirs:
                    raise ValueError(f"context {seq_len}: the runs differ in {key} ({mine} vs {theirs}), so they "
                                     f"were not scored on the same windows")
            row["kmer"] = other["kmer"]
            row["kmer_train_windows"] = other.get("kmer_train_windows")
        joined.append(row)
    return joined


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="sweep directory with model rows")
    parser.add_argument("--kmer", type=Path, required=True, help="sweep directory with k-mer rows (--kmer-only)")
    parser.add_argument("--out", type=Path, required=True, help="where sweep.md and sweep.png go")
    parser.add_argument("--title", default="")
    parser.add_argument("--ks", default="4,5,6")
    args = parser.parse_args(argv)
    rows = join(load_rows(args.model), load_rows(args.kmer))
    ks = [int(k) for k in args.ks.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    table = sweep_table(rows, ks)
    (args.out / "sweep.md").write_text((f"## {args.title}\n\n" if args.title else "") + table + "\n")
    plot_sweep(rows, ks, args.out / "sweep.png", num_classes=len(rows[0]["classes"]), title=args.title)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
