#!/bin/bash
# The results page's Zen 4 runs: one interleaved A/B per batch size, ONNX Runtime, sparse-direct, our kernels
# alone and DeepSparse in the same run, on the embedded default's models and two pruned otherwise
set -u
PY=.venv/bin/python
OUT=${1:-results/zen4-avx512-2026-12-06}  # where ab/ goes
cd "$(dirname "$0")/../.."
export PRUNEBENCH_CACHE=$(mktemp -d)  # an empty cache: every choice timed afresh
MODELS=$(mktemp -d)
$PY experiments/other_pruned.py "$MODELS"  # uniform-s90.pt, emptied-s90.pt (seeded: the same files every time)
for bs in 64 1; do
  echo "== bs $bs $(date +%T)"
  $PY -m bench.ab synthetic:0 synthetic:0.5 synthetic:0.9 synthetic:0.95 "$MODELS/uniform-s90.pt" "$MODELS/emptied-s90.pt" \
    --backends onnxruntime,sparse-direct,sparse-direct-kernels,deepsparse \
    --deepsparse-python "${DEEPSPARSE_PYTHON:-$HOME/ds/bin/python}" --batch-size $bs --blocks 12 -o $OUT/ab --force 2>&1 \
    | tr '\r' '\n' | grep -v "it/s\]\|s/it\]\|choosing\|^\s*$" | tail -12
done
echo "== done $(date +%T)"
