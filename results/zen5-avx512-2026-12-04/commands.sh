#!/bin/bash
# The results page's Zen 5 runs: one interleaved A/B per batch size, DeepSparse and INT8 in the same run
set -u
PY=.venv/bin/python
OUT=results/zen5-avx512-2026-12-04
cd "$(dirname "$0")/../.."
export PRUNEBENCH_CACHE=$(mktemp -d)  # an empty cache: every choice timed afresh
for bs in 1 64; do
  echo "== bs $bs $(date +%T)"
  $PY -m bench.ab synthetic:0 synthetic:0.5 synthetic:0.9 synthetic:0.95 \
    --backends onnxruntime,sparse-direct,sparse-direct-kernels,torch-compile,deepsparse,onnxruntime-int8 \
    --deepsparse-python "${DEEPSPARSE_PYTHON:-$HOME/ds/bin/python}" --batch-size $bs --blocks 12 -o $OUT/ab-unstructured --force 2>&1 | grep -v "^\s*$" | tr '\r' '\n' | grep -v "it/s\]\|s/it\]" | tail -12
done
for bs in 1 64; do
  echo "== channel bs $bs $(date +%T)"
  $PY -m bench.ab synthetic:0 synthetic-channel:0.5 synthetic-channel:0.9 \
    --backends onnxruntime,torch-compile,onnxruntime-int8 --batch-size $bs --blocks 12 -o $OUT/ab-channel --force 2>&1 | tr '\r' '\n' | grep -v "it/s\]\|s/it\]" | tail -8
done
echo "== done $(date +%T)"
