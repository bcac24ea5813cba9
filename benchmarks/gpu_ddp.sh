#!/usr/bin/env bash
# One device call on a 2-GPU host (kind nvidia-h200-x2): `trainer=ddp` (or TRAINER=fsdp), the paper's 1.4M model at
# a 1,048,576-bp context on GRCh37 chr20, one window per GPU per step, time-boxed. Carry .whl and .gpu_data/human.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name --format=csv,noheader
TRAINER=${TRAINER:-ddp}
timeout ${TRAIN_TIMEOUT:-330} python3 -m dna_mamba.train trainer=$TRAINER model=1.4m context=1m data=human_chr20 \
  "data.fasta=[.gpu_data/human/GRCh37_chr20.fa.gz]" data.num_workers=4 trainer.tokens_per_step=2097152 \
  trainer.max_steps=${STEPS:-60} trainer.max_time=${MAX_TIME:-00:00:04:00} trainer.val_check_interval=30 \
  trainer.checkpoint_every_n_steps=30 trainer.log_every_n_steps=5 trainer.enable_progress_bar=false \
  name=${TRAINER}_1.4m_1m out_dir=/tmp/$TRAINER > "$OUT/${TRAINER}_train.log" 2>&1
echo "exit $?"
cp /tmp/$TRAINER/summary.json "$OUT/${TRAINER}_summary.json" 2>/dev/null
find /tmp/$TRAINER -name metrics.csv -exec cp {} "$OUT/${TRAINER}_metrics.csv" \;
grep -v -i warn "$OUT/${TRAINER}_train.log" | tail -15
