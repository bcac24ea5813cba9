"""FASTA files of exactly the training part of a species split, for pretraining a backbone without leaks.

The dataset is opened with the library's own code path (``open_species_dataset``, as ``dna-mamba species-sweep``
does with the same options), so the held-out genomes / regions are the ones the sweep tests on. For each genome the
``train`` segments of ``species.json`` are written as records ``<genome>:<contig>:<start>-<end>`` to
``OUT/<nn>_<genome>.fa``; validation and test segments (held-out strains; the tail regions of ``split=region``) are
never written, and a check confirms that no written base lies in one of them. Segments shorter than
``--min-length`` are left out (the pretraining windows cannot fit them).

Writes ``OUT/files.txt`` (one FASTA path per line), ``OUT/regions.tsv`` (every segment of every genome and whether
pretraining uses it) and ``OUT/species.json.sha256`` (the split it was cut from, to compare with the sweep's).

    python benchmarks/species_gpu/train_regions.py bacteria --data-root .gpu_data --dataset-dir /tmp/ds_b --out DIR
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from dna_mamba.errors import report_user_errors
from dna_mamba.lit.species import SpeciesTaskConfig
from dna_mamba.lit.species_run import open_species_dataset
from dna_mamba.species.cli import _add_data_options
from dna_mamba.species.dataset import INDEX_NAME
from dna_mamba.tokenizer import ID_TO_CHAR

LINE = 100
_CHARS = np.frombuffer(ID_TO_CHAR.encode() + b"N" * (256 - len(ID_TO_CHAR)), dtype=np.uint8)


def write_record(handle, name: str, ids: np.ndarray) -> None:
    seq = _CHARS[ids].tobytes()
    handle.write(f">{name}\n".encode())
    for i in range(0, len(seq), 1 << 20):  # 1 Mb blocks of LINE-wide lines
        block = seq[i:i + (1 << 20)]
        handle.write(b"\n".join(block[j:j + LINE] for j in range(0, len(block), LINE)) + b"\n")


def overlaps(a: list, b: list) -> bool:
    return any(x.contig == y.contig and x.start < y.end and y.start < x.end for x in a for y in b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", help="manifest or shipped example name (as for species-sweep)")
    parser.add_argument("--dataset-dir", metavar="DIR", help="where the sweep prepares the manifest")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the training FASTAs")
    parser.add_argument("--min-length", type=int, default=1, help="leave out shorter training segments")
    parser.add_argument("--seed", type=int, default=0, help="the sweep's --seed (orders the contig split)")
    _add_data_options(parser)
    args = parser.parse_args(argv)
    with report_user_errors(args.debug):
        task = SpeciesTaskConfig(manifest=args.manifest, data_root=args.data_root, dataset_dir=args.dataset_dir,
                                 split=args.split, val_fraction=args.val_fraction, test_fraction=args.test_fraction)
        dataset = open_species_dataset(task, seed=args.seed, progress=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(dataset.describe())
    files, rows, used_bp, held = [], ["genome\tlabel\tpart\tcontig\tstart\tend\tpretraining"], 0, []
    for g, genome in enumerate(dataset.genomes):
        train = [s for s in genome.segments["train"] if s.length >= args.min_length]
        held_out = genome.segments["val"] + genome.segments["test"]
        if overlaps(train, held_out):  # cannot happen with the library's split; checked all the same
            raise SystemExit(f"{genome.name}: a training segment overlaps a held-out one")
        for part in ("train", "val", "test"):
            for s in genome.segments[part]:
                use = part == "train" and s.length >= args.min_length
                rows.append(f"{genome.name}\t{genome.label}\t{part}\t{s.contig}\t{s.start}\t{s.end}\t"
                            f"{'yes' if use else 'no'}")
        if not genome.segments["train"]:
            held.append(f"{genome.label}/{genome.name}")
        if not train:
            continue
        path = out / f"{g:02d}_{genome.name}.fa"
        store = dataset.store(g)
        with open(path, "wb") as handle:
            for s in train:
                write_record(handle, f"{genome.name}:{s.contig}:{s.start}-{s.end}", store.fetch(s.contig, s.start,
                                                                                               s.end))
        bp = sum(s.length for s in train)
        used_bp += bp
        files.append(str(path.absolute()))
        test_bp = sum(s.length for s in genome.segments["test"])
        print(f"pretrain {genome.label:<13} {genome.name:<58} {bp:>11,} bp in {len(train)} segment(s) "
              f"(held out: val {sum(s.length for s in genome.segments['val']):,} bp, test {test_bp:,} bp)")
    for name in held:
        print(f"held out {name} (test genome: no base used)")
    (out / "files.txt").write_text("\n".join(files) + "\n")
    (out / "regions.tsv").write_text("\n".join(rows) + "\n")
    digest = hashlib.sha256((dataset.directory / INDEX_NAME).read_bytes()).hexdigest()
    (out / "species.json.sha256").write_text(f"{digest}  {dataset.directory / INDEX_NAME}\n")
    print(f"pretraining data: {len(files)} files, {used_bp:,} bp (split {dataset.split['method']}, "
          f"species.json sha256 {digest[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
