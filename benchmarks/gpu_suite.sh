#!/usr/bin/env bash
# One device call: the shipped human model's training run, GPU tests of the model paths, GPU benchmarks.
# Needs, carried beside the checkout: .whl (hydra, omegaconf, antlr4, pyfaidx, biopython wheels from
# ../shared/tools/gpu-wheelhouse.sh) and .gpu_data/human (GRCh37_chr20.fa.gz with .fai/.gzi).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
summary="$OUT/summary.txt"; : > "$summary"

# Does the fused scan run at the training shape? (A separate process: a bad kernel can poison a CUDA context.)
timeout 120 python3 - > "$OUT/parity.log" 2>&1 <<'PY'
import torch
from dna_mamba.kernels import selective_scan
torch.manual_seed(0)
b, d, n, L = 32, 256, 16, 8192
args = [torch.randn(b, d, L, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2)]
A = -(torch.rand(d, n, device="cuda") + 0.5)
B, C = (torch.randn(b, 1, n, L, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
kw = dict(D=torch.ones(d, device="cuda"), z=torch.randn_like(args[0]), delta_bias=torch.zeros(d, device="cuda"),
          delta_softplus=True)
y = selective_scan(*args, A, B, C, backend="triton", **kw)
r = selective_scan(*args, A, B, C, backend="reference", **kw)
y.float().sum().backward()
torch.cuda.synchronize()
err = ((y.float() - r.float()).norm() / r.float().norm()).item()
print("rel err", err)
assert err < 2e-2
PY
if [ $? -eq 0 ]; then SCAN=triton; else SCAN=reference; fi
echo "scan backend for training: $SCAN ($(tail -1 "$OUT/parity.log"))" >> "$summary"

timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_segments.py > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests (segments): $(tail -1 "$OUT/gpu_tests.log")" >> "$summary"

# The model shipped for variant scoring: the paper's 1.4M size on human chr20 at an 8k context.
timeout 330 python3 - > "$OUT/human_train.log" 2>&1 <<PY
import functools, sys
import dna_mamba.model.mamba as mamba
from dna_mamba.kernels import selective_scan
if "$SCAN" == "reference":  # measurement fallback only: the fused scan failed its parity check above
    mamba.selective_scan = functools.partial(selective_scan, backend="reference")
    mamba.Block.fused = False  # the fused node calls the Triton scan directly
sys.argv = ["dna_mamba.train", "model=1.4m", "context=8k", "trainer=gpu", "data=human_chr20",
            "data.fasta=[.gpu_data/human/GRCh37_chr20.fa.gz]", "data.num_workers=4",
            "trainer.tokens_per_step=262144", "trainer.micro_batch_tokens=262144", "trainer.max_steps=1000",
            "trainer.max_time=00:00:03:30", "trainer.val_check_interval=250", "trainer.checkpoint_every_n_steps=250",
            "trainer.log_every_n_steps=25", "trainer.enable_progress_bar=false", "name=human_1.4m_8k",
            "out_dir=/tmp/human"]
from dna_mamba.train import main
main()
PY
mkdir -p "$OUT/human_model"
cp /tmp/human/model/config.json /tmp/human/model/model.safetensors "$OUT/human_model/" 2>/dev/null
cp /tmp/human/curves.png "$OUT/human_curves.png" 2>/dev/null
cp /tmp/human/summary.json "$OUT/human_summary.json" 2>/dev/null
echo "human model: $(grep -E 'bits/base|optimizer steps|training time' "$OUT/human_train.log" | tr -s ' ' | paste -sd';')" >> "$summary"
grep -E "tok/s|tokens_per_s" /tmp/human/logs/metrics.csv 2>/dev/null | tail -1 >> "$summary"

{
  timeout 100 python3 benchmarks/bench_embed.py --sizes 1.4m,7m 2>&1 | tail -15
  timeout 100 python3 benchmarks/bench_variants.py --fasta .gpu_data/human/GRCh37_chr20.fa.gz 2>&1 | tail -15
} > "$OUT/bench.log" 2>&1
tail -32 "$OUT/bench.log"
cat "$summary"
