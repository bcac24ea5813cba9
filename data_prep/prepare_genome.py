"""Build a genome store from FASTA files: ``python data_prep/prepare_genome.py FASTA [FASTA ...] --out DIR``.

A thin wrapper over :func:`dna_mamba.data.prepare.main` (also available as ``dna-mamba prepare``).
"""

import sys

from dna_mamba.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
