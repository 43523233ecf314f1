"""External engines in a worker process of their own interpreter: DeepSparse, or any engine that reads ONNX.

An engine that cannot live in the project's environment (DeepSparse 1.8 is archived and
needs Python <= 3.11 and numpy < 2) runs in ``external_worker.py`` under the interpreter
the user names, fed the same ONNX file and the same batch as every other backend. Its
output comes back for the parity check; its timing is done in the worker, block by
block, so that ``bench.ab`` interleaves it with the others and no pipe round trip is
timed (``Prepared.time_block``). In the pytest suite a call includes the round trip and
the output's trip through a small .npy file; its ``extra_info`` says so.

``onnxruntime-worker`` is the same mechanism with the project's own ONNX Runtime in a
subprocess of this interpreter: a stand-in that tests the protocol where DeepSparse is
absent, and a measure of what the worker itself costs.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.backends import Backend, Prepared
from bench.parity import check_parity
from prune.errors import PruneBenchError

WORKER = Path(__file__).with_name("external_worker.py")
DEEPSPARSE_PYTHON = "PRUNEBENCH_DEEPSPARSE_PYTHON"  # the interpreter of a venv with deepsparse and numpy < 2
OPSET = 13  # DeepSparse 1.8's onnx reads no newer operator set; BatchNorm stays in the graph (engines fold it)
_FOLDER: Path | None = None


def _folder() -> Path:
    global _FOLDER
    if _FOLDER is None:
        _FOLDER = Path(tempfile.mkdtemp(prefix="prunebench-external-"))
        atexit.register(shutil.rmtree, _FOLDER, True)
    return _FOLDER


def export_for_worker(model: nn.Module, input_shape: tuple[int, ...]) -> Path:
    """``model`` as an opset-13 ONNX file with a dynamic batch axis, which older engines read."""
    from bench.backends.onnxruntime import fingerprint

    path = _folder() / f"{fingerprint(model)}-{'x'.join(map(str, input_shape))}.onnx"
    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.cpu().float().eval(), (torch.randn(1, *input_shape),), str(path), dynamo=False,
                              opset_version=OPSET, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    return path


class Worker:
    """One worker process: start it, send requests, read one-line replies; a failure is a PruneBenchError."""

    def __init__(self, python: str, engine: str):
        self.engine = engine
        # -I: the script's folder (bench/backends, which holds an onnxruntime.py) must not shadow the engine
        # its stderr (the engine's own logging, whatever its length) goes to a file: a pipe nobody reads would
        # fill and stall the worker
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([python, "-I", str(WORKER), engine], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, bufsize=1)
        self._finalizer = weakref.finalize(self, Worker._stop, self.proc)

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            try:
                proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                proc.stdin.flush()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()

    def close(self) -> None:
        self._finalizer()
        self._log.close()

    def request(self, **fields) -> dict:
        try:
            self.proc.stdin.write(json.dumps(fields) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:
            line = ""
        if not line:
            self.proc.wait(timeout=5)
            self._log.seek(0)
            why = (self._log.read().strip().splitlines() or [f"exit status {self.proc.returncode}"])[-1]
            raise PruneBenchError(f"the {self.engine} worker stopped: {why[:300]}")
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            reply = None
        if not isinstance(reply, dict):
            raise PruneBenchError(f"the {self.engine} worker answered {line.strip()[:200]!r}, not a reply: is "
                                  "bench/backends/external_worker.py the worker it runs?")
        if not reply.get("ok"):
            raise PruneBenchError(f"the {self.engine} worker: {reply.get('error', 'failed')}")
        return reply


def _start(model: nn.Module, example: torch.Tensor, threads: int, python: str,
           engine: str) -> tuple["Worker", dict, Path]:
    """A worker of ``engine`` with ``model`` loaded for batches like ``example``: the worker, its load reply, and
    the file its ``run`` requests write the output to."""
    from bench.backends.convmm import inference_copy

    path = export_for_worker(inference_copy(model), tuple(example.shape[1:]))
    inp = _folder() / f"input-{os.getpid()}-{id(example)}.npy"
    np.save(inp, example.detach().cpu().float().contiguous().numpy())
    worker = Worker(python, engine)
    loaded = worker.request(op="load", onnx=str(path), input=str(inp), threads=threads)
    return worker, loaded, _folder() / f"output-{os.getpid()}-{id(worker)}.npy"


def _prepare(model: nn.Module, example: torch.Tensor, threads: int, python: str, engine: str) -> Prepared:
    worker, loaded, out = _start(model, example, threads, python, engine)

    def run(_inputs):
        worker.request(op="run", output=str(out))
        return np.load(out)

    def time_block(seconds: float, least: int = 3) -> float:
        return float(worker.request(op="block", seconds=seconds, least=least)["median_s"])

    info = {"engine": engine, "engine_version": loaded.get("version"), "engine_isa": loaded.get("isa"),
            "engine_python": python,
            "onnx_opset": OPSET, "timed_in_suite": "one call in the worker plus a pipe round trip and a .npy output",
            "timed_in_ab": "blocks timed inside the worker"}
    return Prepared(run=run, inputs=None, to_torch=lambda y: torch.from_numpy(np.asarray(y)).float(), info=info,
                    time_block=time_block, close=worker.close)


def _deepsparse_python() -> str | None:
    return os.environ.get(DEEPSPARSE_PYTHON) or None


def _deepsparse_unavailable(device: str) -> str | None:
    if device != "cpu":
        return "DeepSparse is a CPU engine"
    python = _deepsparse_python()
    if python is None:
        return (f"DeepSparse runs in an interpreter of its own: give bench.ab --deepsparse-python PATH or set "
                f"{DEEPSPARSE_PYTHON} (the README has the recipe for its venv)")
    missing = missing_interpreter(python)
    return f"{missing} (set {DEEPSPARSE_PYTHON} to the DeepSparse venv's bin/python)" if missing else None


def missing_interpreter(python: str) -> str | None:
    """Why ``python`` cannot run a worker (no such interpreter), or None."""
    if shutil.which(python) is None and not Path(python).is_file():
        return f"no Python interpreter at {python}"
    return None


def _prepare_deepsparse(model, example, device, threads) -> Prepared:
    return _prepare(model, example, threads, _deepsparse_python(), "deepsparse")


def _prepare_stand_in(model, example, device, threads) -> Prepared:
    return _prepare(model, example, threads, sys.executable, "onnxruntime")


DEEPSPARSE = Backend(
    name="deepsparse",
    sparse=True,
    devices=("cpu",),
    prepare=_prepare_deepsparse,
    unavailable=_deepsparse_unavailable,
    atol=1e-3,
    rtol=1e-3,
    description="Neural Magic's DeepSparse (sparse fp32 CPU engine) in a worker process of its own interpreter",
    default=False,
)

STAND_IN = Backend(
    name="onnxruntime-worker",
    devices=("cpu",),
    prepare=_prepare_stand_in,
    unavailable=lambda device: None if device == "cpu" else "the worker runs ONNX Runtime on the CPU",
    dense=True,
    atol=1e-4,
    rtol=1e-3,
    description="ONNX Runtime in a worker process (the external-engine mechanism's stand-in)",
    default=False,
)


@dataclasses.dataclass
class EngineLayers:
    """An external engine's own per-layer profile of one model: its steps as it runs them (fused as it fuses)."""

    engine: str
    version: str
    layers: list[dict]  # {"name", "outputs" (ONNX outputs or nodes it computes), "ms" (mean per call)}, in order
    total_ms: float  # the engine's mean time per call while profiling
    call_ms: float = 0.0  # its median call timed plainly in the same worker right after (0: not timed)

    @property
    def scale(self) -> float:
        """What to multiply its profiled step times by so that they add up to a plain call: whatever the profiler
        adds or the machine's speed changed between the two, taken as spread evenly over its steps (1 where no
        plain call was timed)."""
        return self.call_ms / self.total_ms if self.call_ms > 0 and self.total_ms > 0 else 1.0


def onnx_module(name: str) -> str:
    """The module an ONNX output or node of torch's exporter belongs to, or "" (graph inputs and outputs):
    ``/layer1/layer1.0/conv2/Conv_output_0`` -> ``layer1.0.conv2``, ``/layer4/layer4.0/downsample/downsample.0/Conv``
    -> ``layer4.0.downsample.0`` (a numbered child is named after its parent)."""
    parts = name.strip("/").split("/")[:-1]
    return ".".join(p.rsplit(".", 1)[-1] for p in parts)


PROFILED = {"deepsparse": DEEPSPARSE, "onnxruntime": STAND_IN}  # engines whose worker profiles layers


def profiler_python(engine: str, python: str = "") -> str:
    """The interpreter to profile ``engine`` in: ``python``, else the DeepSparse venv named in the environment,
    or this interpreter for ONNX Runtime; a one-line PruneBenchError where there is none."""
    if engine not in PROFILED:
        raise PruneBenchError(f"no per-layer profile of {engine!r}: name one of {', '.join(PROFILED)}")
    if not python:
        python = _deepsparse_python() if engine == "deepsparse" else sys.executable
        if not python:
            raise PruneBenchError(f"DeepSparse runs in an interpreter of its own: give its Python or set "
                                  f"{DEEPSPARSE_PYTHON} (the README has the recipe for its venv)")
    missing = missing_interpreter(python)
    if missing:
        raise PruneBenchError(f"{missing}: give the engine's interpreter (its venv's bin/python)")
    return python


PLAIN_CALL_S = 2.0  # seconds of plain calls timed after a profile, to read its step times against


def engine_layers(model: nn.Module, example: torch.Tensor, threads: int, engine: str, python: str = "",
                  runs: int = 40) -> EngineLayers:
    """``engine``'s per-layer profile of ``model`` on ``example`` in its worker (``profiler_python``), after its
    output is checked against the model's (a wrong answer's times are not reported), and its plain call timed
    after, so that a reader can tell what the profiler added."""
    python = profiler_python(engine, python)
    worker, loaded, out = _start(model, example, threads, python, engine)
    try:
        worker.request(op="run", output=str(out))
        got = torch.from_numpy(np.load(out)).float()
        other = torch.randn(example.shape, generator=torch.Generator().manual_seed(1))  # proves the check can fail
        with torch.inference_mode():
            expected, other = (model.eval()(x.float()).float() for x in (example, other))
        b = PROFILED[engine]
        check_parity(got, expected, other, b.atol, b.rtol, f"{engine}'s output (its layer times are not reported)")
        reply = worker.request(op="layers", runs=runs)
        plain = worker.request(op="block", seconds=PLAIN_CALL_S, least=5)
    finally:
        worker.close()
    return EngineLayers(engine, str(loaded.get("version")), reply["layers"], float(reply["total_ms"]),
                        1e3 * float(plain["median_s"]))
