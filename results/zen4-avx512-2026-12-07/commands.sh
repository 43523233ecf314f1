#!/bin/bash
# Zen 4, with the sweep kind: the results page's interleaved A/B (ONNX Runtime, sparse-direct, our kernels
# alone, DeepSparse; batch 64 and 1) into ab/, then our per-layer profile at batch 64 beside DeepSparse's own,
# one run per model (before-sweep/ holds the same profiles taken just before the kind existed)
set -u
PY=.venv/bin/python
OUT=${1:-results/zen4-avx512-2026-12-07}
cd "$(dirname "$0")/../.."
bash results/zen4-avx512-2026-12-06/commands.sh "$OUT"
MODELS=$(mktemp -d)
$PY experiments/other_pruned.py "$MODELS"  # uniform-s90.pt, emptied-s90.pt (seeded: the same files every time)
for m in synthetic:0.9 synthetic:0.95 "$MODELS/uniform-s90.pt"; do
  echo "== $m $(date +%T)"
  $PY -m bench.layers "$m" --batch-size 64 --pass-runs 20 --peer deepsparse \
    --peer-python "${DEEPSPARSE_PYTHON:-$HOME/ds/bin/python}" -o $OUT --force 2>&1 | grep -A40 "^Beside" | tail -32
done
echo "== done $(date +%T)"
# the second batch-64 run, right after (ab-run2/):
#   MODELS=$(mktemp -d); .venv/bin/python experiments/other_pruned.py $MODELS
#   .venv/bin/python -m bench.ab synthetic:0 synthetic:0.5 synthetic:0.9 synthetic:0.95 $MODELS/uniform-s90.pt \
#     $MODELS/emptied-s90.pt --backends onnxruntime,sparse-direct,sparse-direct-kernels,deepsparse \
#     --deepsparse-python ~/ds/bin/python --batch-size 64 --blocks 12 -o results/zen4-avx512-2026-12-07/ab-run2
# later the same day, same kernels (per-core/, iterative/, side-by-side-*.txt, avx2/):
#   .venv/bin/python -m bench.ab synthetic:0.9 synthetic:0.95 --backends onnxruntime,sparse-direct,deepsparse \
#     --deepsparse-python ~/ds/bin/python --batch-size 16 --threads 1 --blocks 10 -o $OUT/per-core
#   .venv/bin/python experiments/other_pruned.py $MODELS   # iterative-s90.pt among them
#   for bs in 64 1; do .venv/bin/python -m bench.ab synthetic:0.9 $MODELS/iterative-s90.pt \
#     --backends onnxruntime,sparse-direct,sparse-direct-kernels,deepsparse --deepsparse-python ~/ds/bin/python \
#     --batch-size $bs --blocks 12 -o $OUT/iterative/bs$bs; done
#   .venv/bin/python experiments/side_by_side.py synthetic:0.9    # and synthetic:0.95
#   for bs in 64 1; do NM_ARCH=avx2 PRUNEBENCH_ISA=avx2 .venv/bin/python -m bench.ab synthetic:0 synthetic:0.5 \
#     synthetic:0.9 synthetic:0.95 --backends onnxruntime,sparse-direct,sparse-direct-kernels,deepsparse \
#     --deepsparse-python ~/ds/bin/python --batch-size $bs --blocks 12 -o $OUT/avx2/bs$bs; done
#   NM_ARCH=avx2 PRUNEBENCH_ISA=avx2 .venv/bin/python -m bench.layers synthetic:0.9 --batch-size 64 --pass-runs 20 \
#     --peer deepsparse --peer-python ~/ds/bin/python -o $OUT/avx2
#   PRUNEBENCH_CACHE=$(mktemp -d) NM_ARCH=avx2 PRUNEBENCH_ISA=avx2 .venv/bin/python -m bench.ab synthetic:0.9 synthetic:0.95 \
#     --backends onnxruntime,sparse-direct,sparse-direct-kernels,deepsparse --deepsparse-python ~/ds/bin/python \
#     --batch-size 64 --blocks 12 -o $OUT/avx2/bs64-run2
# with Winograd's 16-channel tile and prefetch (wino16/):
#   git show 89c5b0f:bench/kernels/sparse_conv.cpp > /tmp/before.cpp
#   .venv/bin/python results/zen4-avx512-2026-12-07/wino16/two_builds_ab.py /tmp/before.cpp 64 2 synthetic:0.9 \
#     synthetic:0.95 synthetic:0 synthetic:0.5   # and with PRUNEBENCH_ISA=avx2: synthetic:0.9 synthetic:0
#   .venv/bin/python experiments/other_pruned.py $MODELS
#   .venv/bin/python -m bench.ab synthetic:0 synthetic:0.5 synthetic:0.9 synthetic:0.95 $MODELS/uniform-s90.pt \
#     $MODELS/iterative-s90.pt --backends onnxruntime,sparse-direct,deepsparse --deepsparse-python ~/ds/bin/python \
#     --batch-size 64 --blocks 12 -o $OUT/wino16 --force
#   for m in synthetic:0.9 synthetic:0.95; do .venv/bin/python -m bench.layers $m --batch-size 64 --pass-runs 20 \
#     --peer deepsparse --peer-python ~/ds/bin/python -o $OUT/wino16 --force; done
#   PRUNEBENCH_CACHE=$(mktemp -d) NM_ARCH=avx2 PRUNEBENCH_ISA=avx2 .venv/bin/python -m bench.ab synthetic:0 synthetic:0.5 \
#     synthetic:0.9 synthetic:0.95 --backends onnxruntime,sparse-direct,deepsparse --deepsparse-python ~/ds/bin/python \
#     --batch-size 64 --blocks 12 -o $OUT/wino16/avx2 --force
# with the jit kind (jit/):
#   .venv/bin/python experiments/other_pruned.py $MODELS
#   .venv/bin/python experiments/kind_ab.py jit 64 2 synthetic:0.95 $MODELS/uniform-s90.pt   # twice; and with
#     PRUNEBENCH_CACHE=$(mktemp -d) PRUNEBENCH_ISA=avx2
#   for run in . run2; do .venv/bin/python -m bench.ab synthetic:0 synthetic:0.5 synthetic:0.9 synthetic:0.95 \
#     $MODELS/uniform-s90.pt $MODELS/iterative-s90.pt $MODELS/emptied-s90.pt --backends onnxruntime,sparse-direct,deepsparse \
#     --deepsparse-python ~/ds/bin/python --batch-size 64 --blocks 12 -o $OUT/jit/$run --force; done   # and run3
#   .venv/bin/python -m bench.ab synthetic:0.95 $MODELS/uniform-s90.pt --backends onnxruntime,sparse-direct,deepsparse \
#     --deepsparse-python ~/ds/bin/python --batch-size 64 --threads 1 --blocks 10 -o /tmp/one   # jit/ab-cpu-bs64-one-thread.*
#   PRUNEBENCH_CACHE=$(mktemp -d) NM_ARCH=avx2 PRUNEBENCH_ISA=avx2 .venv/bin/python -m bench.ab synthetic:0 synthetic:0.5 \
#     synthetic:0.9 synthetic:0.95 $MODELS/uniform-s90.pt --backends onnxruntime,sparse-direct,deepsparse \
#     --deepsparse-python ~/ds/bin/python --batch-size 64 --blocks 12 -o $OUT/jit/avx2 --force
#   for m in synthetic:0.95 $MODELS/uniform-s90.pt; do .venv/bin/python -m bench.layers $m --batch-size 64 --pass-runs 20 \
#     --peer deepsparse --peer-python ~/ds/bin/python -o $OUT/jit --force; done
# strided convs read in place by the jit kind (inplace/):
#   .venv/bin/python experiments/in_pass.py $MODELS/uniform-s90.pt   # before and after the change
#   for run in . run2 run3; do .venv/bin/python -m bench.ab synthetic:0 synthetic:0.5 synthetic:0.9 synthetic:0.95 \
#     $MODELS/uniform-s90.pt $MODELS/iterative-s90.pt $MODELS/emptied-s90.pt --backends onnxruntime,sparse-direct,deepsparse \
#     --deepsparse-python ~/ds/bin/python --batch-size 64 --blocks 12 -o $OUT/inplace/$run --force; done
#   (the same with --batch-size 1 -o $OUT/inplace/bs1)
#   PRUNEBENCH_CACHE=$(mktemp -d) NM_ARCH=avx2 PRUNEBENCH_ISA=avx2 .venv/bin/python -m bench.ab synthetic:0 synthetic:0.5 \
#     synthetic:0.9 synthetic:0.95 $MODELS/uniform-s90.pt --backends onnxruntime,sparse-direct,deepsparse \
#     --deepsparse-python ~/ds/bin/python --batch-size 64 --blocks 12 -o $OUT/inplace/avx2 --force
#   .venv/bin/python -m bench.layers $MODELS/uniform-s90.pt --batch-size 64 --pass-runs 20 --peer deepsparse \
#     --peer-python ~/ds/bin/python -o $OUT/inplace --force
#   PRUNEBENCH_CACHE=$(mktemp -d) NM_ARCH=avx2 PRUNEBENCH_ISA=avx2 .venv/bin/python -m bench.layers $MODELS/uniform-s90.pt \
#     --batch-size 64 --pass-runs 20 --peer deepsparse --peer-python ~/ds/bin/python -o $OUT/inplace/avx2 --force
# the peer's profile beside its plain call (peer-scaled/):
#   for m in $MODELS/uniform-s90.pt synthetic:0.95; do .venv/bin/python -m bench.layers $m --batch-size 64 --pass-runs 20 \
#     --peer deepsparse --peer-python ~/ds/bin/python -o $OUT/peer-scaled --force; done
# held to AVX2, batch 1 on all seven models and batch 64 on the two not run before (inplace/avx2/bs1, inplace/avx2/others):
#   PRUNEBENCH_CACHE=$(mktemp -d) NM_ARCH=avx2 PRUNEBENCH_ISA=avx2 .venv/bin/python -m bench.ab synthetic:0 synthetic:0.5 \
#     synthetic:0.9 synthetic:0.95 $MODELS/uniform-s90.pt $MODELS/iterative-s90.pt $MODELS/emptied-s90.pt \
#     --backends onnxruntime,sparse-direct,deepsparse --deepsparse-python ~/ds/bin/python --batch-size 1 --blocks 12 \
#     -o $OUT/inplace/avx2/bs1 --force
#   PRUNEBENCH_CACHE=$(mktemp -d) NM_ARCH=avx2 PRUNEBENCH_ISA=avx2 .venv/bin/python -m bench.ab $MODELS/iterative-s90.pt \
#     $MODELS/emptied-s90.pt --backends onnxruntime,sparse-direct,deepsparse --deepsparse-python ~/ds/bin/python \
#     --batch-size 64 --blocks 12 -o $OUT/inplace/avx2/others --force
# what holds the jit code: python experiments/jit_probe.py 256 8 0.1 (and the lines in jit-probes.txt)
# a fourth batch-64 run at the end of the day (final/):
#   .venv/bin/python -m bench.ab synthetic:0 synthetic:0.5 synthetic:0.9 synthetic:0.95 $MODELS/uniform-s90.pt \
#     $MODELS/iterative-s90.pt $MODELS/emptied-s90.pt --backends onnxruntime,sparse-direct,deepsparse \
#     --deepsparse-python ~/ds/bin/python --batch-size 64 --blocks 12 -o $OUT/final --force
#   .venv/bin/python -m bench.ab synthetic:0.9 synthetic:0.95 $MODELS/uniform-s90.pt --backends onnxruntime,sparse-direct,deepsparse \
#     --deepsparse-python ~/ds/bin/python --batch-size 16 --threads 1 --blocks 12 -o $OUT/final/per-core --force
# held to AVX2 with the weights loaded four at a time (avx2-quads/): the per-conv A/B compared this code with the
# code of commit 6394a7f (bench/kernels/jit.py), each conv's two versions interleaved in one process
#   for run in . run2; do PRUNEBENCH_CACHE=$(mktemp -d) NM_ARCH=avx2 PRUNEBENCH_ISA=avx2 .venv/bin/python -m bench.ab \
#     synthetic:0 synthetic:0.5 synthetic:0.9 synthetic:0.95 $MODELS/uniform-s90.pt $MODELS/iterative-s90.pt \
#     $MODELS/emptied-s90.pt --backends onnxruntime,sparse-direct,deepsparse --deepsparse-python ~/ds/bin/python \
#     --batch-size 64 --blocks 12 -o $OUT/avx2-quads/$run --force; done
#   PRUNEBENCH_ISA=avx2 .venv/bin/python experiments/jit_probe.py 256 8 0.1 --rounds 2   # and 128 16 0.1
# residuals added in place (in-place/): two batch-64 runs, and one held to AVX2
#   for run in . run2; do .venv/bin/python -m bench.ab synthetic:0 synthetic:0.5 synthetic:0.9 synthetic:0.95 \
#     $MODELS/uniform-s90.pt $MODELS/iterative-s90.pt $MODELS/emptied-s90.pt --backends onnxruntime,sparse-direct,deepsparse \
#     --deepsparse-python ~/ds/bin/python --batch-size 64 --blocks 12 -o $OUT/in-place/$run --force; done
#   PRUNEBENCH_CACHE=$(mktemp -d) NM_ARCH=avx2 PRUNEBENCH_ISA=avx2 .venv/bin/python -m bench.ab (the same seven models) \
#     --backends onnxruntime,sparse-direct,deepsparse --deepsparse-python ~/ds/bin/python --batch-size 64 --blocks 12 \
#     -o $OUT/in-place/avx2 --force
#   .venv/bin/python -m bench.report $OUT/in-place/ab-cpu-bs64.json -o $OUT/in-place
# both engines AVX2-only (avx2-only/): DeepSparse through the wrapper that hides AVX-512 from its /proc/cpuinfo
#   for bs in 64 1; do PRUNEBENCH_CACHE=$(mktemp -d) PRUNEBENCH_ISA=avx2 .venv/bin/python -m bench.ab synthetic:0 \
#     synthetic:0.5 synthetic:0.9 synthetic:0.95 $MODELS/uniform-s90.pt $MODELS/iterative-s90.pt $MODELS/emptied-s90.pt \
#     --backends onnxruntime,sparse-direct,deepsparse --deepsparse-python experiments/deepsparse_avx2.sh \
#     --batch-size $bs --blocks 12 -o $OUT/avx2-only/bs$bs --force; done   # and once more at 64: bs64-run2
#   what NM_ARCH=avx2 alone ran: NM_ARCH=avx2 qemu-x86_64 -cpu EPYC-Milan ~/ds/bin/python (a script compiling
#   and running any ONNX model) stops on an illegal instruction; through experiments/deepsparse_avx2.sh (with
#   /proc/cpuinfo's copy bound the same way) it meets none before the emulator's segmentation fault
# weights reading always-zero channels dropped (dead-channels/): three batch-64 runs, a fresh choice cache each
#   for run in bs64 bs64-run2 bs64-run3; do PRUNEBENCH_CACHE=$(mktemp -d) .venv/bin/python -m bench.ab (the same seven models) \
#     --backends onnxruntime,sparse-direct,deepsparse --deepsparse-python ~/ds/bin/python --batch-size 64 --blocks 12 \
#     -o $OUT/dead-channels/$run --force; done
#   and once at batch 1: the same line with --batch-size 1 -o $OUT/dead-channels/bs1
