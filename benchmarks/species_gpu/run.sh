#!/usr/bin/env bash
# Time-boxed species sweep on one GPU for docs/species.md, run from the repository root on the device machine
# (the `run` tool: everything it reports goes to $OUT). Before the call, here:
#   mkdir -p .gpu_data/species && cp -r ../shared/data/species/{bacteria,drosophila_chr4} .gpu_data/species/
#   build .whl with ../shared/tools/gpu-wheelhouse.sh (hydra-core, omegaconf, antlr4, pyfaidx, biopython)
# and carry [".gpu_data", ".whl"]: command `bash benchmarks/species_gpu/run.sh 2>&1 | tee $OUT/log.txt`.
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
  cp /tmp/dros/sweep.md $OUT/dros_sweep.md 2>/dev/null; cp /tmp/dros/sweep.png $OUT/dros_sweep.png 2>/dev/null
  tar czf $OUT/runs.tar.gz --exclude='checkpoints' --exclude='classifier' --exclude='tensorboard' /tmp/bact /tmp/dros \
    /tmp/logs 2>/dev/null
}
mkdir -p /tmp/logs
# Fine-tuned from the shipped human model (1.4M parameters, GRCh37 chr20), mean pooling, one time-boxed epoch per
# context, the k-mer baseline computed in the same run on the same windows.
COMMON=(--data-root .gpu_data --init-from dna_mamba/resources/human_model --epochs 1 --lr 1e-3 --pooling mean
        --test-windows-per-class 32 --val-windows-per-class 4 --accelerator gpu --micro-batch-tokens 1048576 --quiet)
BUDGET=${BUDGET:-560}
ONLY=${ONLY:-}  # e.g. "bacteria:32k drosophila_chr4:32k": run only these sweeps
sweep() {  # out dataset_dir dataset context steps batch max_time hard_limit_s title [extra options]
  if [[ -n "$ONLY" && " $ONLY " != *" $3:$4 "* ]]; then return; fi
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  if (( left < 45 )); then log "skip $3 $4: ${left} s left"; return; fi
  log "$3 context $4: $5 steps of $6 windows, at most $7 of training"
  timeout $(( $8 < left ? $8 : left )) python3 benchmarks/species_gpu/sweep_pinned.py "$3" --out "$1" \
    --dataset-dir "$2" --contexts "$4" --steps-per-epoch "$5" --batch-size "$6" --max-time-per-context "$7" \
    --title "$9" "${COMMON[@]}" "${@:10}" 2>&1 \
    | tee "/tmp/logs/$3_$4.log" | grep -v -e Warning -e warn -e '^ *$' -e 'Tip:' | tail -12
  save
}
B="bacteria, held-out strains, from the human model"
D="Drosophila chr4, held-out regions, from the human model"
sweep /tmp/bact /tmp/ds_b bacteria 1k 400 64 00:00:00:45 110 "$B"
sweep /tmp/bact /tmp/ds_b bacteria 32k ${STEPS_32K:-150} 32 ${TIME_32K:-00:00:01:15} 170 "$B" --kmer-train-windows 512
sweep /tmp/bact /tmp/ds_b bacteria 256k 60 16 00:00:01:40 220 "$B" --kmer-train-windows 256
sweep /tmp/dros /tmp/ds_d drosophila_chr4 4k 300 64 00:00:01:00 120 "$D" --test-fraction 0.25
sweep /tmp/dros /tmp/ds_d drosophila_chr4 32k ${STEPS_32K:-150} 32 ${TIME_32K:-00:00:01:00} 170 "$D" \
  --test-fraction 0.25 \
  --kmer-train-windows 512
log done
