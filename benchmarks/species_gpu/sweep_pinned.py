"""`dna-mamba species-sweep` with the selective-scan backend pinned, for measurements on a GPU.

SCAN_BACKEND=reference routes the model's scan to the pure-PyTorch reference (for when the Triton scan is
unfinished: run.sh decides with parity.py); SCAN_BACKEND=auto (default) leaves the library's dispatch alone.
Every option is species-sweep's, passed on unchanged: e.g. ``--test-stride 1/4`` for four times as many
(overlapping) test windows on a small held-out set such as Drosophila chr4 at 32k.
"""

import functools
import os
import sys

from dna_mamba.kernels.selective_scan import interface

import dna_mamba.model.mamba as mamba
from dna_mamba.species.cli import sweep_main

backend = os.environ.get("SCAN_BACKEND", "auto")
if backend != "auto":
    mamba.selective_scan = functools.partial(interface.selective_scan, backend=backend)
    mamba.Block.fused = False  # the fused node calls the Triton scan directly, whatever the pin
sys.exit(sweep_main(sys.argv[1:]))
