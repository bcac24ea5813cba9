"""Prepare a species-classification dataset: ``python data_prep/prepare_species.py MANIFEST --out DIR``.

A thin wrapper over :func:`dna_mamba.species.cli.prepare_main` (also available as ``dna-mamba prepare-species``).
"""

import sys

from dna_mamba.species.cli import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main())
