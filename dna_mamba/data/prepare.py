"""``dna-mamba prepare``: build a genome store from FASTA files and print what is in it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dna_mamba.data.fasta import FastaFormatError
from dna_mamba.data.store import GenomeStore, StoreError, build_store
from dna_mamba.outputs import quiet_closed_stdout
from dna_mamba.tokenizer import InvalidSequenceError

DESCRIPTION = """\
Parse FASTA files (plain, gzip or bgzip; any line width; \\n or \\r\\n) into a genome store: one memory-mapped
token file per contig plus index.json. Training, evaluation and scoring read stores, so a genome is parsed once.
Lowercase bases become upper case and IUPAC ambiguity codes become N; any other character is an error.
"""

EPILOG = """\
examples:
  dna-mamba prepare GRCh38.fa.gz --out stores/hg38
  dna-mamba prepare strainA.fa.gz strainB.fa.gz --out stores/strains   (one store, contigs of both files)

If --out already holds a store built from the same files (same paths, sizes, modification times and first and
last MiB) it is kept as is; pass --force to rebuild. A directory that is not a store is never overwritten, and
what a killed build left beside --out (.NAME.tmp-...) is removed by the next one.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dna-mamba prepare", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fasta", nargs="+", metavar="FASTA", help="input FASTA file(s); record names must be unique")
    parser.add_argument("--out", required=True, metavar="DIR", help="store directory to create or replace")
    parser.add_argument("--force", action="store_true", help="rebuild even if --out is up to date")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    parser.add_argument("--max-rows", type=int, default=30, metavar="N",
                        help="contigs listed in the summary (default: 30; the totals cover all)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 success, 1 bad input, 2 bad arguments).

    A reader that stops early (``| head``) ends the listing quietly: the store is built by then.
    """
    status = 0
    with quiet_closed_stdout():
        status = _run(argv)
    return status


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = _existing_store(args)
        reused = store is not None
        if store is None:
            store = build_store(args.fasta, args.out, progress=not args.quiet)
    except (FastaFormatError, InvalidSequenceError, StoreError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{'up to date' if reused else 'built'}: {store.directory}")
        print(summary_table(store, max_rows=args.max_rows))
    return 0


def _existing_store(args: argparse.Namespace) -> GenomeStore | None:
    if args.force:
        return None
    try:
        store = GenomeStore.open(args.out)
    except StoreError:
        return None
    return store if store.matches(args.fasta) else None


def summary_table(store: GenomeStore, *, max_rows: int = 30) -> str:
    """Contig name, length and N fraction per contig, then totals."""
    names = store.names
    width = max([len("contig"), len("total")] + [len(n) for n in names[:max_rows]])
    lines = [f"{'contig':<{width}}  {'length':>15}  {'N fraction':>10}"]
    for name in names[:max_rows]:
        lines.append(f"{name:<{width}}  {store.length(name):>15,}  {store.n_fraction(name):>10.4f}")
    if len(names) > max_rows:
        lines.append(f"... {len(names) - max_rows} more contigs")
    lines.append(f"{'total':<{width}}  {store.total_length:>15,}  {store.n_fraction():>10.4f}  ({len(names)} contigs)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
