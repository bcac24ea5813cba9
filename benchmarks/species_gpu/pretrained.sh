#!/usr/bin/env bash
# Species classification from a backbone pretrained on each dataset's own training sequence (docs/species.md, "What
# remains"): for bacteria and Drosophila chr4, (1) write the training part of the species split as FASTA files
# (train_regions.py: the library's split code; held-out strains, held-out regions and validation tails are never
# written), (2) pretrain the 1.4M model on them (next-token LM, `python -m dna_mamba.train data=fasta`), (3)
# fine-tune from its exported `model/` with the species sweep (sweep_pinned.py --init-from), the k-mer baseline on
# the same test windows, (4) print one table. Earlier, from the human model: bacteria 1k 91.2 vs 6-mer 96.9;
# Drosophila 32k 35.8 vs 5-mer 41.5.
#
# On one H100, from the repository root, with .gpu_data (cp -r ../shared/data/species/{bacteria,drosophila_chr4}
# .gpu_data/species/) and .whl (hydra-core, omegaconf, antlr4, pyfaidx, biopython) carried:
#   bash benchmarks/species_gpu/pretrained.sh 2>&1 | tee $OUT/log.txt
# Everything ends within BUDGET seconds (default 540): each stage runs under `timeout`, results are copied to $OUT
# after each stage. One dataset per call with longer stages:
#   ONLY=bacteria BUDGET=560 PRE_TIME=200 PRE_STEPS=850 FT_TIME_B=180 FT_STEPS_B=1400 bash ...pretrained.sh
# From a backbone pretrained earlier (carried in .gpu_data), several contexts, overlapping test windows:
#   ONLY=bacteria BACKBONE_B=.gpu_data/backbones/pre_b/model FT_CONTEXT_B=64k,256k FT_BATCH_B=16 TEST_STRIDE=1/4 ...
# FT_CONTEXT_* may list contexts (comma-separated); the fine-tuning time is shared between them.
# CPU smoke run (tiny model, a few steps):
#   ACCEL=cpu MODEL=tiny PRE_CONTEXT=1k PRE_TOKENS=8192 PRE_STEPS=20 PRE_TIME=40 FT_CONTEXT_D=4k FT_STEPS_B=20 \
#   FT_STEPS_D=4 FT_BATCH_B=16 FT_BATCH_D=8 FT_TIME_B=40 FT_TIME_D=40 KMER_WINDOWS=256 MB_TOKENS=16384 BUDGET=400 \
#   OUT=/tmp/sp_out bash benchmarks/species_gpu/pretrained.sh
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s)
: "${OUT:?set OUT to the folder for results}"
mkdir -p "$OUT"
BUDGET=${BUDGET:-540}
ACCEL=${ACCEL:-gpu}                     # gpu or cpu (the Hydra trainer group and the sweep's --accelerator)
ONLY=${ONLY:-bacteria drosophila_chr4}
DATA_ROOT=${DATA_ROOT:-.gpu_data}       # holds species/bacteria and species/drosophila_chr4
WORK=${WORK:-/tmp/sp}                   # intermediate files
MODEL=${MODEL:-1.4m}
PRE_CONTEXT=${PRE_CONTEXT:-8k}          # pretraining context and tokens per step: as the shipped human model
PRE_TOKENS=${PRE_TOKENS:-262144}
PRE_STEPS=${PRE_STEPS:-400}             # the cosine schedule's length (4.5 steps/s at 1.19 M tokens/s)
PRE_TIME=${PRE_TIME:-85}                # seconds: Lightning's max_time, a safety net beside max_steps
PRE_LR=${PRE_LR:-8e-3}
PRE_WORKERS=${PRE_WORKERS:-$([[ $ACCEL == gpu ]] && echo 4 || echo 0)}
FT_CONTEXT_B=${FT_CONTEXT_B:-1k}; FT_STEPS_B=${FT_STEPS_B:-600}; FT_BATCH_B=${FT_BATCH_B:-64}; FT_TIME_B=${FT_TIME_B:-75}
FT_CONTEXT_D=${FT_CONTEXT_D:-32k}; FT_STEPS_D=${FT_STEPS_D:-180}; FT_BATCH_D=${FT_BATCH_D:-32}; FT_TIME_D=${FT_TIME_D:-85}
OVERHEAD=${OVERHEAD:-45}                # seconds a training command takes beyond its max_time (start, eval, export)
FT_LR=${FT_LR:-1e-3}
MB_TOKENS=${MB_TOKENS:-1048576}         # sweep: tokens per forward pass
KMER_WINDOWS=${KMER_WINDOWS:-}          # default: 2048 below 32k, 512 from 32k (as run.sh)
TEST_WINDOWS=${TEST_WINDOWS:-32}        # test windows per class, at most
TEST_STRIDE=${TEST_STRIDE:-}            # species-sweep --test-stride (e.g. 1/4); default: non-overlapping windows
BACKBONE_B=${BACKBONE_B:-}; BACKBONE_D=${BACKBONE_D:-}  # an exported model/ directory: skip steps 1-2 for that set
INSTALL=${INSTALL:-$([[ $ACCEL == gpu ]] && echo 1 || echo 0)}
PARITY=${PARITY:-$([[ $ACCEL == gpu ]] && echo 1 || echo 0)}

log() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
hms() { printf '00:%02d:%02d:%02d' $(( $1 / 3600 )) $(( $1 % 3600 / 60 )) $(( $1 % 60 )); }
stage() {  # name limit_s reserve_s command...: at most limit_s, ending reserve_s before the budget; skipped when short
  local name=$1 limit=$2 reserve=$3; shift 3
  local t=$(( $(left) - reserve - 10 ))
  (( t > limit )) && t=$limit
  if (( t < 15 )); then log "skip $name: $(left) s left"; return 124; fi
  log "$name (at most $t s)"
  timeout -k 5 "$t" "$@" > "$WORK/logs/$name.log" 2>&1
  local rc=$?
  grep -v -e Warning -e warn -e '^ *$' -e 'Tip:' -e '^ *| Name' -e '^[0-9]* | model' -e '^---' -e 'Total' \
    -e 'params' -e 'Modules in' -e 'treespec' \
    "$WORK/logs/$name.log" | tail -"${TAIL:-14}"
  (( rc == 0 )) || log "$name: exit status $rc$( (( rc == 124 )) && echo ' (timed out)')"
  return $rc
}
save() {  # at most 8 files in $OUT: log.txt (tee), table.md, two sweep tables, runs.tar.gz, models.tar.gz
  cp "$WORK/sweep_bacteria/sweep.md" "$OUT/bact_sweep.md" 2>/dev/null
  cp "$WORK/sweep_drosophila_chr4/sweep.md" "$OUT/dros_sweep.md" 2>/dev/null
  tar czf "$OUT/runs.tar.gz" -C "$WORK" --exclude='checkpoints' --exclude='classifier' --exclude='tensorboard' \
    --exclude='model' --exclude='*.fa' --exclude='ds_*' --exclude='cache' . 2>/dev/null
  local models=("$WORK"/pre_*/model)
  [[ -d ${models[0]} ]] && tar czf "$OUT/models.tar.gz" -C "$WORK" "${models[@]#"$WORK"/}" 2>/dev/null
  return 0
}

rm -rf "$WORK"; mkdir -p "$WORK/logs"
if [[ $INSTALL == 1 ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
  if ! python3 -m pip install -q --no-deps --no-build-isolation -e . > /tmp/pip.log 2>&1; then
    tail -3 /tmp/pip.log; ln -sfn ../kernels dna_mamba/kernels; ln -sfn ../conf dna_mamba/conf
    export PYTHONPATH=$PWD:${PYTHONPATH:-}
  fi
fi
[[ $ACCEL == gpu ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning, sklearn; print('torch', torch.__version__, 'lightning', lightning.__version__, 'sklearn', sklearn.__version__)"
export SCAN_BACKEND=${SCAN_BACKEND:-auto}
if [[ $PARITY == 1 ]]; then
  verdict=$(timeout 60 python3 benchmarks/species_gpu/parity.py 2>&1 | tail -1); log "scan backend: $verdict"
  [[ $verdict == triton ]] || SCAN_BACKEND=reference
fi
# Pretraining entry point: `python -m dna_mamba.train`, with the scan pinned as sweep_pinned.py pins it if needed.
PIN="import functools, sys, dna_mamba.model.mamba as m
from dna_mamba.kernels.selective_scan import interface
if '$SCAN_BACKEND' != 'auto':
    m.selective_scan = functools.partial(interface.selective_scan, backend='$SCAN_BACKEND'); m.Block.fused = False
sys.argv[0] = 'dna_mamba.train'
from dna_mamba.train import main
main()"
PRE_BP=$(python3 -c "from dna_mamba.species.report import parse_context as p; print(p('$PRE_CONTEXT'))")
TRAINER=$([[ $ACCEL == gpu ]] && echo gpu || echo cpu)

run_dataset() {  # dataset tag contexts steps batch ft_time backbone [split options...]
  local ds=$1 tag=$2 ctx=$3 steps=$4 batch=$5 ft_time=$6 backbone=$7; shift 7
  local split=("$@") fa=$WORK/fa_$tag pre=$WORK/pre_$tag sweep=$WORK/sweep_$ds
  local kmer=${KMER_WINDOWS:-$([[ $ctx =~ ^((1k|2k|4k|8k|16k),?)+$ ]] && echo 2048 || echo 512)}
  local n_ctx ft_t; n_ctx=$(tr ',' '\n' <<< "$ctx" | grep -c .)
  if [[ -n $backbone ]]; then
    [[ -f $backbone/config.json ]] || { log "$ds: $backbone has no config.json"; return; }
    mkdir -p "$pre"; cp -r "$backbone" "$pre/model"; log "$ds: fine-tuning from $backbone (no pretraining)"
  else
    # 1. the training part of the species split, as the sweep below will cut it (same dataset dir and options)
    TAIL=40 stage "${tag}_regions" 90 $(( 2 * OVERHEAD + 60 )) python3 benchmarks/species_gpu/train_regions.py "$ds" \
      --data-root "$DATA_ROOT" --dataset-dir "$WORK/ds_$tag" --out "$fa" --min-length "$PRE_BP" "${split[@]}" \
      || return
    # 2. pretrain on those files only; its max_time leaves room for this dataset's fine-tuning
    local files pre_t; files=$(paste -sd, "$fa/files.txt")
    pre_t=$(( $(left) - 2 * OVERHEAD - ft_time - 20 )); (( pre_t > PRE_TIME )) && pre_t=$PRE_TIME
    if (( pre_t < 20 )); then log "skip $ds: $(left) s left"; return; fi
    stage "${tag}_pretrain" $(( pre_t + OVERHEAD )) $(( OVERHEAD + 30 )) python3 -c "$PIN" data=fasta \
      "data.fasta=[$files]" model="$MODEL" context="$PRE_CONTEXT" trainer="$TRAINER" name="pre_$tag" out_dir="$pre" \
      trainer.tokens_per_step="$PRE_TOKENS" trainer.micro_batch_tokens="$PRE_TOKENS" trainer.max_steps="$PRE_STEPS" \
      trainer.max_time="$(hms "$pre_t")" trainer.val_check_interval=$(( PRE_STEPS / 2 > 0 ? PRE_STEPS / 2 : 1 )) \
      trainer.checkpoint_every_n_steps=$(( PRE_STEPS / 4 > 0 ? PRE_STEPS / 4 : 1 )) trainer.log_every_n_steps=25 \
      trainer.enable_progress_bar=false optim.lr="$PRE_LR" data.num_workers="$PRE_WORKERS" data.cache_dir="$WORK/cache"
    if [[ ! -f $pre/model/config.json && -f $pre/checkpoints/last.ckpt ]]; then  # cut short: export the last checkpoint
      stage "${tag}_export" 60 $(( OVERHEAD + 20 )) python3 -m dna_mamba.cli export "$pre/checkpoints/last.ckpt" \
        --out "$pre/model"
    fi
    save
  fi
  [[ -f $pre/model/config.json ]] || { log "$ds: no pretrained model, no fine-tuning"; return; }
  ls -l "$pre/model"
  # 3. fine-tune from it, the k-mer baseline on the same test windows; training time fits what is left
  ft_t=$(( $(left) - OVERHEAD - 10 )); (( ft_t > ft_time )) && ft_t=$ft_time
  if (( ft_t < 15 )); then log "skip fine-tuning $ds: $(left) s left"; return; fi
  local per_ctx=$(( (ft_t - OVERHEAD * (n_ctx - 1)) / n_ctx ))  # each further context starts and evaluates anew
  local stride=(); [[ -n $TEST_STRIDE ]] && stride=(--test-stride "$TEST_STRIDE")
  stage "${tag}_finetune_${ctx//,/_}" $(( ft_t + OVERHEAD )) 0 python3 benchmarks/species_gpu/sweep_pinned.py "$ds" \
    --out "$sweep" --dataset-dir "$WORK/ds_$tag" --contexts "$ctx" --steps-per-epoch "$steps" --batch-size "$batch" \
    --max-time-per-context "$(hms "$per_ctx")" --title "$ds, backbone pretrained on its training split" \
    --data-root "$DATA_ROOT" --init-from "$pre/model" --epochs 1 --lr "$FT_LR" --pooling mean \
    --test-windows-per-class "$TEST_WINDOWS" "${stride[@]}" --val-windows-per-class 4 --accelerator "$ACCEL" \
    --micro-batch-tokens "$MB_TOKENS" --kmer-train-windows "$kmer" --quiet "${split[@]}"
  # the split the sweep used is the one pretraining was cut from (a carried backbone: cut in an earlier call)
  if [[ -n $backbone ]]; then
    log "$ds: backbone from $backbone; its split was cut with the same options in the call that pretrained it"
  elif [[ -f $WORK/ds_$tag/species.json ]] && sha256sum "$WORK/ds_$tag/species.json" | cut -d' ' -f1 \
      | grep -qx "$(cut -d' ' -f1 "$fa/species.json.sha256")"; then
    log "$ds: the sweep's split (species.json) is the one pretraining was cut from"
  else
    log "$ds: WARNING: the sweep's split differs from the pretraining split"
  fi
  save
}

for ds in $ONLY; do
  case $ds in
    bacteria) run_dataset bacteria b "$FT_CONTEXT_B" "$FT_STEPS_B" "$FT_BATCH_B" "$FT_TIME_B" "$BACKBONE_B" \
      --split genome ;;
    drosophila_chr4) run_dataset drosophila_chr4 d "$FT_CONTEXT_D" "$FT_STEPS_D" "$FT_BATCH_D" "$FT_TIME_D" \
      "$BACKBONE_D" --test-fraction 0.25 ;;
    *) log "unknown dataset $ds" ;;
  esac
done

# 4. one table from the sweep outputs and the pretraining summaries
WORK=$WORK python3 - <<'EOF' | tee "$OUT/table.md"
import json
import os
from pathlib import Path

work = Path(os.environ["WORK"])
print("| dataset | context | model acc | bal. acc | 4-mer | 5-mer | 6-mer | test windows / class "
      "| fine-tune steps x batch, s | pretraining steps, s, val bits/base (Markov) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
notes = []
for ds, tag in (("bacteria", "b"), ("drosophila_chr4", "d")):
    pre, p = work / f"pre_{tag}", {}
    if (pre / "summary.json").is_file():
        p = json.loads((pre / "summary.json").read_text())
        pre_text = (f"{p['global_step']}, {p['train_seconds']:.0f} s, {p['val_bits_per_base']:.3f} "
                    f"({p.get('markov_bits_per_base', float('nan')):.3f})")
    elif (pre / "model" / "config.json").is_file():  # cut short and exported from last.ckpt, or carried in
        meta = json.loads((pre / "model" / "config.json").read_text()).get("metadata", {})
        how = "cut short; from last.ckpt" if (work / f"fa_{tag}").is_dir() else "carried from an earlier call"
        pre_text = f"{meta.get('global_step', '?')} ({how})"
    else:
        pre_text = "—"
    for path in sorted((work / f"sweep_{ds}").glob("context_*/results.json")):
        r = json.loads(path.read_text())
        test, kmer, per = r.get("test") or {}, r.get("kmer") or {}, r.get("test_windows_per_class") or [0]
        acc = lambda m, key="accuracy": f"{100 * m[key]:.1f}" if m else "—"  # noqa: E731
        print(f"| {ds} | {path.parent.name.removeprefix('context_')} | {acc(test)} | {acc(test, 'balanced_accuracy')} "
              f"| {acc(kmer.get('4'))} | {acc(kmer.get('5'))} | {acc(kmer.get('6'))} | {min(per)}–{max(per)} | "
              f"{r.get('global_step')} x {r.get('effective_batch')}, {r.get('train_seconds', 0):.0f} s | {pre_text} |")
        files = work / f"fa_{tag}" / "files.txt"
        notes.append(f"{ds}: fine-tuned from {r.get('init_from')}; pretraining files: "
                     + (f"{len(files.read_text().split())} (fa_{tag}/regions.tsv)" if files.is_file() else "—"))
print("\n" + "\n".join(dict.fromkeys(notes)))
EOF
save
log "done"
