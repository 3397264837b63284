#!/usr/bin/env bash
# Every GPU benchmark row in one prepared run (about 6 minutes on one H100/H200-class GPU):
# encode, the SAIL step at 4,096 and 32,768 pairs with the paper-sized heads, the UTA step at
# ViT-B/16, and evaluation. Each writes NAME.json under $OUT (default bench/results/gpu) and
# prints its table; the lines below say what each row is for (BENCHMARKS.md, "On a GPU").
#   make install && OUT=/tmp/gpu bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export BENCH_RESULTS=${OUT:-bench/results/gpu}
mkdir -p "$BENCH_RESULTS"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "bench/gpu.sh: no CUDA device")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$BENCH_RESULTS/gpu.txt"

step() { printf '\n== %s\n' "$*"; }
# pairs/s per GPU against the paper's implied 128k pairs/s (batch 32,768, 100 epochs of 23M
# pairs in about 5 hours), the FLOP rate against the measured bf16 matmul rate, peak memory
step "SAIL step, paper heads (vision GLU 2048->16384->1024, text GLU 1024->8192->1024)"
"$PY" bench/sail_step.py --batch 4096 32768 --steps 5 --precision bf16
# the UTA student's step (kept tokens only) against MIM and distillation, at a GPU batch
step "UTA step, ViT-B/16 at 224 px"
"$PY" bench/uta_step.py --device cuda --batch 128 --steps 5 --precision bf16
# the store pipeline against the bare backbone (uint8 from the workers, normalised on the GPU)
step "encode"
"$PY" bench/encode.py --device cuda --images 8192 --captions 8192 --batch 256
# evaluation's embedding path against the bare backbone, with and without decoding workers
step "eval"
"$PY" bench/eval.py --device cuda --images 8192 --batch 256
step "written: $(ls "$BENCH_RESULTS")"
