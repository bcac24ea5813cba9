#!/usr/bin/env bash
# One device call: both notebooks in full mode (the executed copies come back under $OUT for committing), the
# 40.7M embedding benchmark and the human-model variant benchmark. Run from the repository root on the device.
# Carried beside the checkout:
#   .whl        hydra/pyfaidx/biopython wheels (../shared/tools/gpu-wheelhouse.sh) and, in .whl/nb, the Jupyter
#               stack for cp312 (pip download --only-binary=:all: --python-version 3.12 nbclient nbformat ipykernel)
#   .gpu_data/nb  a copy of the shared data the notebooks read: human/{GRCh37_chr20.fa.gz*,rCRS_chrM.fa},
#               variants/chrM_mitomap, species/bacteria
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl .whl/nb/*.whl \
  && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
export DNA_MAMBA_SHARED_DATA=../.gpu_data/nb  # relative to notebooks/, the kernels' working folder
nvidia-smi --query-gpu=name --format=csv,noheader

run_notebook() {  # name timeout_s
  log "notebook $1"
  timeout "$2" python3 - "$1" > "$OUT/${1%.ipynb}.log" 2>&1 <<'PY'
import sys, time
import nbclient, nbformat
name = sys.argv[1]
notebook = nbformat.read(f"notebooks/{name}", as_version=4)
client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                 resources={"metadata": {"path": "notebooks"}})
started = time.perf_counter()
try:
    client.execute()
finally:
    import os
    nbformat.write(notebook, os.path.join(os.environ["OUT"], name))
print(f"{name}: executed in {time.perf_counter() - started:.0f} s")
PY
  tail -3 "$OUT/${1%.ipynb}.log"
}
run_notebook variant_effect.ipynb 240
run_notebook embeddings.ipynb 240

if [ "${EMBED_BENCH:-1}" = 1 ]; then
  log "embedding benchmark, 40.7M"
  timeout 90 python3 benchmarks/bench_embed.py --sizes 40.7m --lengths 1e6,4e6,16e6 2>&1 | tail -8 | tee "$OUT/bench_embed.txt"
fi
log done
