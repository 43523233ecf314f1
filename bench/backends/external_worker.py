"""The worker an external engine runs in: a separate interpreter, fed an ONNX file, answering on a pipe.

    PYTHON bench/backends/external_worker.py ENGINE     # ENGINE: deepsparse | onnxruntime

It imports nothing of prunebench (the interpreter is the engine's own, e.g. a venv
with DeepSparse 1.8, which needs Python <= 3.11 and numpy < 2), only the standard
library, numpy and the engine. One JSON request per line on stdin, one JSON reply
per line on stdout; arrays travel as .npy files, never through the pipe:

    {"op": "load", "onnx": PATH, "input": NPY, "threads": T}   -> {"ok": true, "engine": ..., "version": ...,
        "isa": the instruction set the engine says it runs, or null}
    {"op": "run", "output": NPY}  one call on the loaded input, its output saved -> {"ok": true}
    {"op": "block", "seconds": S, "least": K}  back-to-back calls timed here   -> {"ok": true, "median_s": ...}
    {"op": "layers", "runs": N}  the engine's own per-layer profile of N calls  -> {"ok": true, "layers": [...],
        "total_ms": ...}: each layer {"name", "op", "outputs" (the ONNX outputs or nodes it computes),
        "ms" (mean per call)}
    {"op": "quit"}

A failure is {"ok": false, "error": "one line"}. Timing happens inside the worker, so
no pipe round trip is inside a timed call.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time

import numpy as np


def _deepsparse(path: str, batch: int, threads: int):
    import deepsparse

    from deepsparse.cpu import cpu_architecture

    engine = deepsparse.compile_model(path, batch_size=batch, num_cores=threads)
    # its kernels follow the CPU, or NM_ARCH (avx2 | avx512) where set: a comparison must say which ran
    isa = cpu_architecture().isa
    if isa == "avx2" and _lists_avx512():
        # NM_ARCH=avx2 picks its AVX2 binary, but where /proc/cpuinfo lists AVX-512 that binary still runs
        # 512-bit code; experiments/deepsparse_avx2.sh hides the flags from it
        isa = "avx2 binary running AVX-512 code"
    return (lambda x: engine.run([x])[0]), deepsparse.__version__, isa


def _lists_avx512() -> bool:
    """Whether /proc/cpuinfo, where DeepSparse reads the CPU's features, lists AVX-512."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "avx512f" in line.split() for line in f)
    except OSError:
        return False


def _onnxruntime_options(threads: int):
    """The session options the worker times ONNX Runtime with, and profiles it with."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def _onnxruntime(path: str, batch: int, threads: int):
    import onnxruntime as ort

    session = ort.InferenceSession(path, _onnxruntime_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})[0]), ort.__version__, None


ENGINES = {"deepsparse": _deepsparse, "onnxruntime": _onnxruntime}


def _deepsparse_layers(path: str, x, threads: int, runs: int) -> tuple[list[dict], float]:
    """DeepSparse's debug analysis: each fused subgraph it runs, timed inside the engine."""
    from deepsparse.engine import model_debug_analysis

    result = model_debug_analysis(path, [x], batch_size=x.shape[0], num_cores=threads, num_iterations=runs,
                                  num_warmup_iterations=max(3, runs // 4))
    layers = [{"name": info["name"], "op": re.split(r"[-_ ]\d", info["name"])[0],  # "ks_convolution-90.0%_1"
               "ms": float(info["average_run_time_in_ms"]),
               "outputs": [o for o in info["canonical_name"].split(",") if o and o != "<none>"]}
              for info in result["layer_info"]]
    return layers, float(result["average_total_time"])


def _onnxruntime_layers(path: str, x, threads: int, runs: int) -> tuple[list[dict], float]:
    """ONNX Runtime's profiler: each node's kernel time, after the graph optimisations fused what they fuse."""
    import tempfile

    import onnxruntime as ort

    options = _onnxruntime_options(threads)  # as it is timed
    with tempfile.TemporaryDirectory() as folder:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "profile")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        for _ in range(max(3, runs // 4)):  # warm-up calls are in the trace too: dropped below by count
            session.run(None, feed)
        for _ in range(runs):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    nodes: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            nodes.setdefault(name, []).append(e["dur"] / 1e3)
            ops[name] = e.get("args", {}).get("op_name", "")
    model_runs = [e["dur"] / 1e3 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    # a fused node is named after its output (a ReLU's, say), not its conv: "op" tells a conv step apart
    layers = [{"name": name, "outputs": [name], "op": ops[name], "ms": statistics.fmean(ts[-runs:])}
              for name, ts in nodes.items()]
    return layers, statistics.fmean(model_runs[-runs:])


PROFILERS = {"deepsparse": _deepsparse_layers, "onnxruntime": _onnxruntime_layers}


def own_stdout():
    """The replies' own file on what was stdout; from here on, whatever else prints (DeepSparse announces an NM_ARCH
    it was given), from Python or from an engine's C++, goes to stderr instead of into the replies."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return replies


def serve(engine_name: str, requests=sys.stdin, replies=sys.stdout) -> None:
    run, x, loaded = None, None, {}

    def reply(**fields) -> None:
        replies.write(json.dumps(fields) + "\n")
        replies.flush()

    for line in requests:
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "quit":
                reply(ok=True)
                return
            if op == "load":
                x = np.ascontiguousarray(np.load(req["input"]), dtype=np.float32)
                run, version, isa = ENGINES[engine_name](req["onnx"], x.shape[0], int(req["threads"]))
                loaded = {"path": req["onnx"], "threads": int(req["threads"])}
                reply(ok=True, engine=engine_name, version=version, isa=isa)
            elif run is None:
                reply(ok=False, error=f"{op!r} before 'load'")
            elif op == "run":
                np.save(req["output"], np.asarray(run(x), dtype=np.float32))
                reply(ok=True)
            elif op == "block":
                times, end = [], time.perf_counter() + float(req["seconds"])
                while len(times) < int(req.get("least", 3)) or time.perf_counter() < end:
                    start = time.perf_counter()
                    run(x)
                    times.append(time.perf_counter() - start)
                reply(ok=True, median_s=statistics.median(times), calls=len(times))
            elif op == "layers":
                layers, total = PROFILERS[engine_name](loaded["path"], x, loaded["threads"], int(req.get("runs", 20)))
                reply(ok=True, layers=layers, total_ms=total)
            else:
                reply(ok=False, error=f"unknown request {op!r}")
        except Exception as e:  # the engine's errors, whatever their type, go back as one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            reply(ok=False, error=f"{type(e).__name__}: {first[:300]}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ENGINES:
        sys.exit(f"usage: python external_worker.py {{{'|'.join(ENGINES)}}}")
    replies = own_stdout()
    try:
        __import__(sys.argv[1])
    except ImportError as e:
        sys.exit(f"{sys.argv[1]} cannot be imported by {sys.executable}: {e}")
    serve(sys.argv[1], replies=replies)
