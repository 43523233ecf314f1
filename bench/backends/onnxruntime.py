"""ONNX Runtime: the model exported by ``exporters.onnx`` (verified there), run in an InferenceSession.

All session options live in ``session_options``; the execution provider is
chosen in ``providers``. Exports are cached per process by a fingerprint of the
model's weights, so batch sizes of one model share a file.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.backends import Backend, Prepared, cuda_unavailable
from bench.backends.convmm import inference_copy

_EXPORTS: dict[str, tuple[Path, dict]] = {}  # model fingerprint -> (ONNX file, facts about it)
_FOLDER: Path | None = None


def session_options(threads: int):
    """Every ONNX Runtime setting the bench uses, in one place.

    ``threads`` intra-op threads (the same count torch gets), one inter-op thread
    with sequential execution (a ResNet is a chain; parallel branches gain
    nothing), all graph optimisations (constant folding, Conv+Add+ReLU fusion,
    layout transforms), warnings off.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def providers(device: str) -> list[str]:
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]


def unavailable(device: str) -> str | None:
    """Why ONNX Runtime cannot run on ``device`` here, or None."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime)"
    if device == "cuda":
        reason = cuda_unavailable(device)
        if reason:
            return reason
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
    return None


def fingerprint(model: nn.Module) -> str:
    """A hash of the model's class and every tensor in its state_dict (names, shapes, bytes)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def exported(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[Path, dict]:
    """The model's verified ONNX file with a dynamic batch axis (exported once per process), and its facts."""
    from exporters.onnx import OnnxSettings, export_model

    global _FOLDER
    key = hashlib.blake2b(f"{fingerprint(model)}{input_shape}".encode(), digest_size=16).hexdigest()
    if key not in _EXPORTS:
        if _FOLDER is None:
            _FOLDER = Path(tempfile.mkdtemp(prefix="prunebench-onnx-"))
            atexit.register(shutil.rmtree, _FOLDER, True)
        report = export_model(model, _FOLDER / f"{key}.onnx", OnnxSettings(), input_shape=input_shape, force=True)
        facts = {
            "onnx_opset": report.opset,
            "onnx_bytes": report.bytes,
            "onnx_zero_weights": report.zero_weights,
            "onnx_export_max_abs_diff": report.max_abs_diff,
        }
        _EXPORTS[key] = (report.path, facts)
    return _EXPORTS[key]


def _prepare(model: nn.Module, example: torch.Tensor, device: str, threads: int) -> Prepared:
    import onnxruntime as ort

    path, facts = exported(inference_copy(model), tuple(example.shape[1:]))
    session = ort.InferenceSession(str(path), session_options(threads), providers=providers(device))
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    x = np.ascontiguousarray(example.detach().cpu().float().numpy())
    info = {
        **facts,
        "ort_providers": session.get_providers(),
        "ort_intra_op_threads": threads,
        "ort_inter_op_threads": 1,
        "ort_graph_optimization": "ORT_ENABLE_ALL",
        "ort_execution_mode": "ORT_SEQUENTIAL",
    }
    if device == "cuda":
        # Input and output stay on the GPU (I/O binding), as torch's do: only the model is timed.
        binding = session.io_binding()
        binding.bind_ortvalue_input(input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output(output_name, "cuda")

        def run(b):
            session.run_with_iobinding(b)  # synchronises the CUDA stream before returning
            return b

        return Prepared(
            run=run, inputs=binding, to_torch=lambda b: torch.from_numpy(b.copy_outputs_to_cpu()[0]), info=info
        )

    return cpu_prepared(session, example, info)


def cpu_prepared(session, example: torch.Tensor, info: dict) -> Prepared:
    """A CPU session as the bench times it: a numpy batch in, the first output out. The sparse-direct backend
    returns the same where ONNX Runtime runs the model, so that the two are the same call."""
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    x = np.ascontiguousarray(example.detach().cpu().float().numpy())

    def run(inputs):
        return session.run([output_name], {input_name: inputs})[0]

    return Prepared(run=run, inputs=x, to_torch=lambda y: torch.from_numpy(np.asarray(y)).float(), info=info)


BACKEND = Backend(
    name="onnxruntime",
    dense=True,
    devices=("cpu", "cuda"),
    prepare=_prepare,
    unavailable=unavailable,
    atol=1e-4,
    rtol=1e-4,
    description="ONNX Runtime session on the exporters.onnx file (BatchNorm folded, all graph optimisations)",
)
