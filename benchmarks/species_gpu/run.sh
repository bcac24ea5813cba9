#!/usr/bin/env bash
# Scaled-down species sweep on one GPU for docs/species.md, run from the repository root on the device machine
# (the `run` tool: everything it reports goes to $OUT). Before the call, here:
#   mkdir -p .gpu_data/species && cp -r ../shared/data/species/{bacteria,drosophila_chr4} .gpu_data/species/
#   build .whl with ../shared/tools/gpu-wheelhouse.sh (hydra-core, omegaconf, antlr4, pyfaidx, biopython)
# and carry [".gpu_data", ".whl"]: command `bash benchmarks/species_gpu/run.sh 2>&1 | tee $OUT/log.txt`.
# The k-mer columns come from `species-sweep --kmer-only` on a CPU with the same settings, joined by
# benchmarks/species_sweep.py.
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
if ! python3 -m pip install -q --no-deps --no-build-isolation -e . > /tmp/pip.log 2>&1; then
  tail -3 /tmp/pip.log; ln -sfn ../kernels dna_mamba/kernels; ln -sfn ../conf dna_mamba/conf
  export PYTHONPATH=$PWD:${PYTHONPATH:-}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning, sklearn; print('torch', torch.__version__, 'lightning', lightning.__version__, 'sklearn', sklearn.__version__)"
verdict=$(python3 benchmarks/species_gpu/parity.py 2>&1 | tail -1); log "scan backend: $verdict"
case $verdict in triton) export SCAN_BACKEND=auto;; *) export SCAN_BACKEND=reference;; esac
save() {  # what came back so far, within the 8-file limit
  cp /tmp/bact/sweep.md $OUT/bact_sweep.md 2>/dev/null; cp /tmp/bact/sweep.png $OUT/bact_sweep.png 2>/dev/null
  cp /tmp/dros/sweep.md $OUT/dros_sweep.md 2>/dev/null
  tar czf $OUT/runs.tar.gz --exclude='checkpoints' --exclude='classifier' --exclude='tensorboard' /tmp/bact /tmp/dros \
    /tmp/logs 2>/dev/null
}
mkdir -p /tmp/logs
COMMON=(--data-root .gpu_data --model small --epochs 1 --batch-size 64 --lr 2e-3 --test-windows-per-class 32
        --val-windows-per-class 4 --no-baseline --accelerator gpu --micro-batch-tokens 524288 --pooling mean --quiet)
sweep() {  # out dataset manifest context steps max_time hard_limit_s title [extra options]
  local left=$(( 455 - ($(date +%s) - T0) ))
  if (( left < 40 )); then log "skip $3 $4: ${left} s left"; return; fi
  log "$3 context $4: $5 steps, at most $6 of training"
  timeout $(( $7 < left ? $7 : left )) python3 benchmarks/species_gpu/sweep_pinned.py "$3" --out "$1" --dataset-dir "$2" \
    --contexts "$4" --steps-per-epoch "$5" --max-time-per-context "$6" --title "$8" "${COMMON[@]}" "${@:9}" 2>&1 \
    | tee "/tmp/logs/$3_$4.log" | grep -v -e Warning -e warn -e '^ *$' -e 'Tip:' | tail -25
  save
}
sweep /tmp/bact /tmp/ds_b bacteria 1k 120 00:00:01:00 110 "bacteria, held-out strains (scaled down)"
sweep /tmp/bact /tmp/ds_b bacteria 4k 40 00:00:01:00 120 "bacteria, held-out strains (scaled down)"
sweep /tmp/bact /tmp/ds_b bacteria 16k 12 00:00:01:20 150 "bacteria, held-out strains (scaled down)"
sweep /tmp/dros /tmp/ds_d drosophila_chr4 1k 120 00:00:00:50 90 "Drosophila chr4, held-out regions (scaled down)" \
  --test-fraction 0.25
log done
