#!/usr/bin/env bash
# The one-call GPU job: CUDA tests, the bench suite on CUDA (batch 1 and a large batch) and the pruning study on
# Fashion-MNIST (base model, the 12-case grid, 2:4 cases); JSON, tables and plots land under $OUT and a short
# summary prints last. It installs nothing from the network.
#
# What it needs: a Linux machine with an NVIDIA GPU and a CUDA build of torch, the project installed
# (`pip install -e '.[test]'`, or its packages already present: torch, torchvision, onnx, onnxruntime, onnxscript,
# pytest, pytest-benchmark, tqdm, matplotlib, hypothesis), and for the study Fashion-MNIST's four *-ubyte.gz files in
# data/fashion-mnist (Debian's dataset-fashion-mnist package has them in /usr/share/datasets/fashion-mnist; DATA_ROOT
# names another folder). It downloads nothing. A machine without network access may get the small pure-Python
# wheels beside the checkout in .whl/ (`pip download --no-deps pytest-benchmark py-cpuinfo tqdm -d .whl` where there
# is network); the job installs whatever .whl holds into /tmp/site first. ONNX Runtime runs on the CPU here: its
# CUDA provider needs CUDA libraries that match the onnxruntime-gpu build, so its CUDA cases are left out.
#
# Run it (about 8 minutes on one data-centre GPU; each phase has its own time limit, so partial results still
# land under $OUT):
#   OUT=runs/gpu_job bash bench/gpu_job.sh
# A dry run on the CPU, tiny (a few minutes on 2 cores):
#   GPU_JOB_TINY=1 OUT=/tmp/gpu_job_out bash bench/gpu_job.sh
#
# Knobs (environment): GPU_JOB_TINY=1; STUDY_BUDGET_S, BENCH_BUDGET_S (seconds per phase); STUDY_EPOCHS,
# STUDY_ROUNDS, STUDY_BASE_EPOCHS, STUDY_TRAIN_LIMIT; BENCH_BATCHES (e.g. "1,256"); BENCH_QUICK=0 for the
# suite's full timing (2 s per case instead of 0.2 s: about 3 more minutes); GPU_JOB_WORK (scratch folder).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/gpu_job}
WORK=${GPU_JOB_WORK:-/tmp/prunebench_gpu_job}
TINY=${GPU_JOB_TINY:-0}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-10}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/log.txt"
: >"$LOG"
say() { echo "[gpu_job $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
# run LIMIT_S CMD...: run a phase with a time limit (SIGINT first, so pytest and the study save what they have)
phase() {
    local limit=$1
    shift
    say "\$ $*  (limit ${limit}s)"
    timeout -s INT -k 30 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    [ $rc -eq 0 ] || say "exit status $rc$([ $rc -eq 124 ] && echo ' (time limit reached)')"
    return 0
}

# -- 0. packages -----------------------------------------------------------------------------------------------
if compgen -G ".whl/*.whl" >/dev/null; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || { say "installing .whl failed"; exit 3; }
fi
if ! $PYTHON -c "import torch, torchvision, pytest, pytest_benchmark, tqdm, matplotlib, numpy" 2>>"$LOG"; then
    say "a required package is missing (see $LOG): install it, or put its wheel in .whl (see this script's header)"
    exit 3
fi
HAS_CUDA=$($PYTHON -c "import torch; print(int(torch.cuda.is_available()))")
DEVICE=$([ "$HAS_CUDA" = 1 ] && echo cuda || echo cpu)

# -- settings ----------------------------------------------------------------------------------------------------
DATA_ROOT=${DATA_ROOT:-$([ -d data/fashion-mnist ] && echo data/fashion-mnist || echo "")}
if [ "$TINY" = 1 ]; then
    MODELS="synthetic-s90 synthetic-24-s50"
    BENCH_BATCHES=${BENCH_BATCHES:-1,4}
    BENCH_BACKENDS=${BENCH_BACKENDS:-torch-dense,torch-sparse-bsr,torch-dense-fp16,torch-cuda-graph}
    STUDY_ARGS=(--train-limit 256 --test-limit 256 --base-epochs 1 --sparsities 0.5 --epochs 1 --rounds 2
        --cases 50perc_oneshot1 50perc_oneshot1_2-4 --batch-size 64 --time-iters 5 --time-warmup 1)
    STUDY_BUDGET_S=${STUDY_BUDGET_S:-300}
    BENCH_BUDGET_S=${BENCH_BUDGET_S:-300}
else
    MODELS="synthetic-s00 synthetic-s50 synthetic-s90 synthetic-24-s50"
    BENCH_BATCHES=${BENCH_BATCHES:-1,256}
    BENCH_BACKENDS=${BENCH_BACKENDS:-torch-dense,torch-dense-channels-last,torch-cuda-graph,torch-dense-fp16,torch-dense-bf16,torch-cuda-graph-fp16,im2col-dense-fp16,torch-sparse,torch-sparse-bsr}
    # 2:4 beside unstructured 50% at the same budgets first (so a time limit cuts the grid's tail, not them),
    # then the 12-case grid with shortened budgets, then 2:4 plus magnitude to 75%.
    E=${STUDY_EPOCHS:-1 2}
    R=${STUDY_ROUNDS:-2 3}
    read -r E1 E2 <<<"$E"
    STUDY_ARGS=(--base-epochs "${STUDY_BASE_EPOCHS:-8}" --train-limit "${STUDY_TRAIN_LIMIT:-0}" --epochs $E --rounds $R
        --cases "50perc_oneshot${E1}" "50perc_oneshot${E1}_2-4" "50perc_oneshot${E2}" "50perc_oneshot${E2}_2-4" grid
        "75perc_oneshot${E2}_2-4" --eval-batch-size 1000)
    STUDY_BUDGET_S=${STUDY_BUDGET_S:-240}
    BENCH_BUDGET_S=${BENCH_BUDGET_S:-150}
fi
QUICK=$([ "${BENCH_QUICK:-1}" = 1 ] && echo --bench-quick || echo "")

say "device $DEVICE, tiny $TINY, out $OUT, work $WORK"
$PYTHON -m bench.gpu_job env | tee -a "$LOG"
[ "$HAS_CUDA" = 1 ] && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv >>"$LOG" 2>&1

# -- 1. the CUDA paths' own tests (torch.compile left out: ~30 s a compile; see BENCH_BACKENDS to bench it) ----
phase 120 $PYTHON -m pytest -q -rs -p no:cacheprovider -k "not compile" tests/test_cuda_backends.py tests/test_semi_structured.py

# -- 2. bench models and the bench suite ---------------------------------------------------------------------------
phase 120 $PYTHON -m bench.gpu_job models "$WORK/models" --names $MODELS --force
MODEL_FILES=$(for m in $MODELS; do printf '%s,' "$WORK/models/$m.pt"; done)
rm -f "$WORK"/bench-*.json
phase "$BENCH_BUDGET_S" $PYTHON -m pytest bench -q -rs -p no:cacheprovider $QUICK --bench-devices "$DEVICE" \
    --bench-models "${MODEL_FILES%,}" --bench-backends "$BENCH_BACKENDS" --bench-batch-sizes "$BENCH_BATCHES" \
    --benchmark-json "$WORK/bench-main.json"
if [ "$HAS_CUDA" = 1 ]; then
    # the 2:4 kernels need a 2:4 model: only that one
    phase 120 $PYTHON -m pytest bench -q -rs -p no:cacheprovider $QUICK --bench-devices cuda \
        --bench-models "$WORK/models/synthetic-24-s50.pt" --bench-backends torch-2:4,torch-2:4-bf16,torch-2:4-cutlass \
        --bench-batch-sizes "$BENCH_BATCHES" --benchmark-json "$WORK/bench-24.json"
fi

# -- 3. the study -------------------------------------------------------------------------------------------------------
STUDY="$WORK/study"
phase "$STUDY_BUDGET_S" $PYTHON -m prune study --dataset fashion-mnist ${DATA_ROOT:+--data-root "$DATA_ROOT"} \
    --out "$STUDY" --device "$DEVICE" --force "${STUDY_ARGS[@]}"

# -- 4. results under $OUT, the summary last -------------------------------------------------------------------------
[ -f "$STUDY/accuracy_vs_sparsity.png" ] && cp "$STUDY/accuracy_vs_sparsity.png" "$OUT/"
$PYTHON -m bench.gpu_job summary "$OUT" --results-json "$WORK"/bench-*.json --study "$STUDY" \
    --command "bash bench/gpu_job.sh (GPU_JOB_TINY=$TINY)" 2>>"$LOG" | tee -a "$LOG"
