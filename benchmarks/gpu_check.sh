#!/usr/bin/env bash
# The GPU path, measured in one go (meant to take well under ten minutes on one GPU): the layer
# on CUDA against the expert mixture, CondConv-B0 against B0 (training step and inference), then
# a 4-trial search whose proxy trains on the GPU. Prints figures; writes only under $OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT_DIR:-$(mktemp -d)}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
time python benchmarks/gpu_check.py
time condconv-nas search --budget 400M --trials 4 --results "$OUT_DIR" --run gpu --quiet
cut -d, -f1-9,14 "$OUT_DIR/gpu/trials.csv"
