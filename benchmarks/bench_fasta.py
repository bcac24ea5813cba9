"""FASTA → genome store throughput for plain, gzip and bgzip inputs of the same genome.

    python benchmarks/bench_fasta.py [--fasta PATH] [--repeat 3]

Writes a plain and a gzip copy of the input (and a bgzip copy unless the input is bgzip) to a temporary
directory, builds a store from each on one core (the build is single-threaded), checks the stores are identical
and prints a table. MB/s is uncompressed FASTA megabytes (10^6 bytes, headers and newlines included) per second
of wall time, best of ``--repeat`` runs; the CPU-second columns give the same per second of this process's CPU
time, which other load on a shared machine does not inflate. The target is at least 50 MB/s.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from Bio import bgzf

from dna_mamba.data.fasta import DEFAULT_BLOCK_SIZE, detect_compression
from dna_mamba.data.store import GenomeStore, build_store

DEFAULT_FASTA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "human" / "GRCh37_chr20.fa.gz"
_COPY_BLOCK = 16 << 20


def _copy_decompressed(source: Path, target: Path) -> None:
    opener = open if detect_compression(source) == "plain" else gzip.open
    with opener(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, _COPY_BLOCK)


def _compress(plain: Path, target: Path, *, bgzip: bool) -> None:
    with open(plain, "rb") as src, (bgzf.BgzfWriter(target, "wb") if bgzip else gzip.open(target, "wb")) as dst:
        shutil.copyfileobj(src, dst, _COPY_BLOCK)


def _time_build(path: Path, out: Path, repeat: int, block_size: int) -> tuple[float, float, GenomeStore]:
    """Best wall and best CPU seconds of ``repeat`` builds (CPU time is robust to other load on the machine)."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        store = build_store([path], out, progress=False, block_size=block_size)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fasta", type=Path, default=DEFAULT_FASTA, help=f"input FASTA (default: {DEFAULT_FASTA})")
    parser.add_argument("--repeat", type=int, default=3, help="builds per format; the best time is reported")
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="decompressed bytes per read")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where to write the copies and stores")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp_name:
        tmp = Path(tmp_name)
        plain = tmp / "genome.fa"
        _copy_decompressed(args.fasta, plain)
        inputs = {"plain": plain, "gzip": tmp / "genome.fa.gz"}
        _compress(plain, inputs["gzip"], bgzip=False)
        if detect_compression(args.fasta) == "bgzip":
            inputs["bgzip"] = args.fasta
        else:
            inputs["bgzip"] = tmp / "genome.fa.bgz"
            _compress(plain, inputs["bgzip"], bgzip=True)

        uncompressed_mb = plain.stat().st_size / 1e6
        print(f"input: {args.fasta}  ({uncompressed_mb:.1f} MB uncompressed), best of {args.repeat}")
        print(f"| {'format':<6} | {'input MB':>8} | {'uncompressed MB':>15} | {'seconds':>7} | {'MB/s':>6} "
              f"| {'CPU seconds':>11} | {'MB/s per CPU second':>19} |")
        print(f"|{'-' * 8}|{'-' * 10}|{'-' * 17}|{'-' * 9}|{'-' * 8}|{'-' * 13}|{'-' * 21}|")
        reference = None
        for name, path in inputs.items():
            seconds, cpu, store = _time_build(path, tmp / f"store-{name}", args.repeat, args.block_size)
            print(f"| {name:<6} | {path.stat().st_size / 1e6:>8.1f} | {uncompressed_mb:>15.1f} | {seconds:>7.2f} | "
                  f"{uncompressed_mb / seconds:>6.1f} | {cpu:>11.2f} | {uncompressed_mb / cpu:>19.1f} |")
            arrays = [np.asarray(store.array(contig)) for contig in store.names]
            if reference is None:
                reference = arrays
            elif not all(np.array_equal(a, b) for a, b in zip(reference, arrays, strict=True)):
                raise SystemExit(f"{name} store differs from the plain store")


if __name__ == "__main__":
    main()
