"""The worker an external engine runs in: a separate interpreter, fed an ONNX file, answering on a pipe.

    PYTHON bench/backends/external_worker.py ENGINE     # ENGINE: deepsparse | onnxruntime

It imports nothing of prunebench (the interpreter is the engine's own, e.g. a venv
with DeepSparse 1.8, which needs Python <= 3.11 and numpy < 2), only the standard
library, numpy and the engine. One JSON request per line on stdin, one JSON reply
per line on stdout; arrays travel as .npy files, never through the pipe:

    {"op": "load", "onnx": PATH, "input": NPY, "threads": T}   -> {"ok": true, "engine": ..., "version": ...}
    {"op": "run", "output": NPY}  one call on the loaded input, its output saved -> {"ok": true}
    {"op": "block", "seconds": S, "least": K}  back-to-back calls timed here   -> {"ok": true, "median_s": ...}
    {"op": "quit"}

A failure is {"ok": false, "error": "one line"}. Timing happens inside the worker, so
no pipe round trip is inside a timed call.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np


def _deepsparse(path: str, batch: int, threads: int):
    import deepsparse

    engine = deepsparse.compile_model(path, batch_size=batch, num_cores=threads)
    return (lambda x: engine.run([x])[0]), deepsparse.__version__


def _onnxruntime(path: str, batch: int, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})[0]), ort.__version__


ENGINES = {"deepsparse": _deepsparse, "onnxruntime": _onnxruntime}


def serve(engine_name: str, requests=sys.stdin, replies=sys.stdout) -> None:
    run, x = None, None

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
                run, version = ENGINES[engine_name](req["onnx"], x.shape[0], int(req["threads"]))
                reply(ok=True, engine=engine_name, version=version)
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
            else:
                reply(ok=False, error=f"unknown request {op!r}")
        except Exception as e:  # the engine's errors, whatever their type, go back as one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            reply(ok=False, error=f"{type(e).__name__}: {first[:300]}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ENGINES:
        sys.exit(f"usage: python external_worker.py {{{'|'.join(ENGINES)}}}")
    try:
        __import__(sys.argv[1])
    except ImportError as e:
        sys.exit(f"{sys.argv[1]} cannot be imported by {sys.executable}: {e}")
    serve(sys.argv[1])
