#!/usr/bin/env bash
# One device call: `experiment=human_1m` (the paper's 7M model, 16 blocks x 256, at a 1,048,576-bp context on
# GRCh37 chr20), time-boxed. Carry .whl and .gpu_data/human (GRCh37_chr20.fa.gz with .fai/.gzi).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
timeout ${TRAIN_TIMEOUT:-500} python3 -m dna_mamba.train experiment=human_1m \
  "data.fasta=[.gpu_data/human/GRCh37_chr20.fa.gz]" data.num_workers=4 trainer.max_steps=${STEPS:-250} \
  trainer.max_time=${MAX_TIME:-00:00:07:00} trainer.val_check_interval=50 trainer.checkpoint_every_n_steps=50 \
  trainer.log_every_n_steps=10 trainer.enable_progress_bar=false out_dir=/tmp/h1m > "$OUT/train.log" 2>&1
cp /tmp/h1m/curves.png "$OUT/" 2>/dev/null; cp /tmp/h1m/summary.json "$OUT/" 2>/dev/null
cp /tmp/h1m/logs/metrics.csv "$OUT/" 2>/dev/null || find /tmp/h1m -name metrics.csv -exec cp {} "$OUT/" \;
grep -v -i warn "$OUT/train.log" | tail -15
