#!/usr/bin/env bash
# One device call for the kernel and long-context work: the GPU test tier, then the block, training-step,
# RMSNorm and scan benchmarks. Run from the repository root on the device machine; carry .whl (hydra/pyfaidx/
# biopython wheels from ../shared/tools/gpu-wheelhouse.sh). PARTS picks what to run (default: all).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PARTS=${PARTS:-"tests conv block step longest rmsnorm scan"}  # also: compare (8 x 256 steps on the step-by-step mixer)
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
summary="$OUT/summary.md"; : > "$summary"
has() { [[ " $PARTS " == *" $1 "* ]]; }

if has tests; then
  log "GPU test tier"
  timeout ${TESTS_TIMEOUT:-420} python3 -m pytest -q -m gpu -p no:cacheprovider --durations=0 \
    ${GPU_TESTS:-tests/kernels tests/test_fused_block.py tests/test_segments.py} > "$OUT/gpu_tests.log" 2>&1
  echo "gpu tests: $(tail -1 "$OUT/gpu_tests.log")" | tee -a "$summary"
fi
if has conv; then
  log "conv1d"
  timeout 60 python3 benchmarks/bench_conv1d.py 2>&1 | tee -a "$summary" | tail -8
fi
if has block; then
  log "block"
  timeout 150 python3 benchmarks/bench_block.py --piece-tokens 262144 131072 65536 2>&1 | tee -a "$summary" | tail -10
fi
if has step; then
  log "training step"
  timeout 200 python3 benchmarks/bench_train_step.py 2>&1 | tee -a "$summary" | tail -8
  timeout 60 python3 benchmarks/bench_train_step.py --models 8x256 --piece-tokens 131072 65536 2>&1 \
    | tee -a "$summary" | tail -2
fi
if has compare; then
  log "training step, step-by-step mixer"
  timeout 60 python3 benchmarks/bench_train_step.py --models 8x256 --step-by-step 2>&1 | tee -a "$summary" | tail -4
fi
if has longest; then
  log "longest context"
  timeout 180 python3 benchmarks/bench_train_step.py --models 8x256 --modes segments --context 2097152 --longest \
    --longest-contexts 4194304 8388608 16777216 33554432 --steps 1 --warmup 1 2>&1 | tee -a "$summary" | tail -8
fi
if has rmsnorm; then
  log "rmsnorm"
  timeout 60 python3 benchmarks/bench_rmsnorm.py 2>&1 | tee -a "$summary" | tail -8
fi
if has scan; then
  log "scan S2-S4"
  timeout 150 python3 benchmarks/bench_scan.py --shapes S2,S3,S4 2>&1 | tee -a "$summary" | tail -14
fi
log done
