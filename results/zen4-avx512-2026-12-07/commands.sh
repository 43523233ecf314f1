#!/bin/bash
# Our per-layer profile at batch 64 (chunks of 16, one thread per layer) beside DeepSparse's own, in one
# run per model: the embedded default at 90% and 95%, and the uniformly pruned 90% model
set -u
PY=.venv/bin/python
OUT=${1:-results/zen4-avx512-2026-12-07}
cd "$(dirname "$0")/../.."
MODELS=$(mktemp -d)
$PY experiments/other_pruned.py "$MODELS"  # uniform-s90.pt, emptied-s90.pt (seeded: the same files every time)
for m in synthetic:0.9 synthetic:0.95 "$MODELS/uniform-s90.pt"; do
  echo "== $m $(date +%T)"
  $PY -m bench.layers "$m" --batch-size 64 --pass-runs 20 --peer deepsparse \
    --peer-python "${DEEPSPARSE_PYTHON:-$HOME/ds/bin/python}" -o $OUT --force 2>&1 | grep -A40 "^Beside" | tail -32
done
echo "== done $(date +%T)"
