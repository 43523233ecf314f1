"""One-off: DeepSparse 1.8 against ONNX Runtime on this CPU, interleaved, as issue 4's table measured them on AVX-512.

Needs its own venv (DeepSparse 1.8, archived, wants numpy < 2 and Python <= 3.11; it is not a project dependency):

    python3.11 -m venv /tmp/ds && /tmp/ds/bin/pip install "deepsparse==1.8.0" "numpy<2"
    python bench/results/deepsparse-avx2/export.py /tmp/dsm            # in the project's venv
    /tmp/ds/bin/python bench/results/deepsparse-avx2/ds_ab.py /tmp/dsm 1 64

Both engines on the same file, 2 cores (DeepSparse num_cores=2; ONNX Runtime 2 intra-op threads, all graph
optimisations), the same seeded batch, DeepSparse's output checked against ONNX Runtime's first. Then blocks of
back-to-back calls (0.5 s at batch 1, 2 s at 64), alternating which engine goes first, 12 per engine: ms per image
is the median over blocks of each block's median call; the speedup is the median over block pairs of ONNX
Runtime's block over DeepSparse's (lowest and highest pair in brackets).
"""
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from deepsparse import compile_model

folder, batches = sys.argv[1], [int(b) for b in sys.argv[2:]]
BLOCKS = 12


def block(run, seconds: float) -> float:
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


for bs in batches:
    print(f"batch {bs}, 2 cores")
    print("| model | ONNX Runtime ms/img | DeepSparse ms/img | DeepSparse vs ONNX Runtime |")
    print("|---|---:|---:|---:|")
    for name in ("synthetic-s00", "synthetic-s50", "synthetic-s90", "synthetic-s95"):
        path = f"{folder}/{name}.onnx"
        x = np.random.RandomState(0).randn(bs, 3, 32, 32).astype(np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        engine = compile_model(path, batch_size=bs, num_cores=2)
        ref, out = session.run(None, {"input": x})[0], engine.run([x])[0]
        err = float(np.abs(out - ref).max())
        if err > 1e-3 + 1e-3 * float(np.abs(ref).max()):
            raise SystemExit(f"{name} bs {bs}: DeepSparse differs from ONNX Runtime by {err}")
        runs = {"ort": lambda: session.run(None, {"input": x}), "ds": lambda: engine.run([x])}
        for run in runs.values():  # warm up
            block(run, 0.5)
        seconds = 0.5 if bs == 1 else 2.0
        pairs, ort_blocks, ds_blocks = [], [], []
        for i in range(BLOCKS):
            order = ("ort", "ds") if i % 2 == 0 else ("ds", "ort")
            got = {k: block(runs[k], seconds) for k in order}
            ort_blocks.append(got["ort"]), ds_blocks.append(got["ds"])
            pairs.append(got["ort"] / got["ds"])
        print(f"| {name} | {statistics.median(ort_blocks) / bs * 1e3:.3f} | {statistics.median(ds_blocks) / bs * 1e3:.3f} "
              f"| **{statistics.median(pairs):.2f}x** ({min(pairs):.2f}-{max(pairs):.2f}) |", flush=True)
        del engine, session
