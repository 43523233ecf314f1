"""Dense CUDA baselines done right: channels-last, CUDA graphs, torch.compile, and fp16/bf16 as separate cases.

All run the dense model with cuDNN; what each changes is in its name:
``-channels-last`` (NHWC memory, what cuDNN's tensor-core convs prefer),
``cuda-graph`` (the whole forward captured once and replayed, so batch-1 latency
is not kernel-launch overhead), ``compile`` (TorchInductor), ``-fp16``/``-bf16``
(weights and activations in that precision). "fp32" cases run under PyTorch's
defaults, in which cuDNN convs use TF32 (``torch.backends.cudnn.allow_tf32``);
``info`` records the flags so the numbers say what they measured.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import nn

from bench.backends import Backend, Prepared, cuda_unavailable
from bench.backends.convmm import inference_copy

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# (atol, rtol) against dense fp32 PyTorch. fp32 on CUDA: TF32 convs keep 10 bits of mantissa, like fp16
# (measured on ResNet-18 on the CPU, random weights: max |error| 1.5e-3 for fp16, 1.4e-2 for bf16, logits ~1).
TOLERANCE = {"fp32": (5e-3, 5e-3), "fp16": (2e-2, 1e-2), "bf16": (1e-1, 5e-2)}
WARMUP = 3  # forwards before a graph capture or after a compile (cuDNN autotuning, lazy init, compilation)


def prepare_model(model: nn.Module, device: str, precision: str = "fp32", channels_last: bool = True) -> nn.Module:
    """A copy of ``model`` in eval mode on ``device`` in ``precision``, channels-last if asked; masks made permanent."""
    model = inference_copy(model)  # attached masks -> plain weights with zeros
    model = model.to(device=device, dtype=DTYPES[precision])
    return model.to(memory_format=torch.channels_last) if channels_last else model


def prepare_input(example: torch.Tensor, device: str, precision: str = "fp32", channels_last: bool = True):
    x = example.to(device=device, dtype=DTYPES[precision])
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def capture_graph(model: nn.Module, static_input: torch.Tensor):
    """Capture one forward of ``model`` on ``static_input`` as a CUDA graph; returns ``(replay(x), static_output)``.

    ``replay(x)`` copies ``x`` into the static input buffer (unless it is that
    buffer) and replays the graph; its result is overwritten by the next replay.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(WARMUP):  # warm up on a side stream, as capture requires
            model(static_input)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_output = model(static_input)

    def replay(x):
        if x.data_ptr() != static_input.data_ptr():
            static_input.copy_(x)
        graph.replay()
        return static_output

    return replay, static_output


def _prepare(
    model: nn.Module, example: torch.Tensor, device: str, threads: int, *, precision: str, mode: str
) -> Prepared:
    torch.set_num_threads(threads)
    model = prepare_model(model, device, precision, channels_last=True)
    inputs = prepare_input(example, device, precision, channels_last=True)
    info = {
        "precision": precision,
        "channels_last": True,
        "mode": mode,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    if mode == "graph":
        run, _ = capture_graph(model, inputs)
    else:
        if mode == "compile":
            model = torch.compile(model)  # default mode: Inductor kernels, no CUDA graphs (that is torch-cuda-graph)

        def run(x):
            with torch.inference_mode():
                return model(x)

        for _ in range(WARMUP if mode == "compile" else 1):  # compile now, not in the timed call
            run(inputs)
    torch.cuda.synchronize()
    return Prepared(run=run, inputs=inputs, synchronize=torch.cuda.synchronize, info=info)


def compile_unavailable(device: str) -> str | None:
    reason = cuda_unavailable(device)
    if reason is None and importlib.util.find_spec("triton") is None:
        reason = "torch.compile on CUDA needs Triton, which is not installed"
    return reason


def _backend(name: str, precision: str, mode: str, default: bool, description: str) -> Backend:
    atol, rtol = TOLERANCE[precision]
    return Backend(
        dense=True,
        name=name,
        devices=("cuda",),
        prepare=functools.partial(_prepare, precision=precision, mode=mode),
        unavailable=compile_unavailable if mode == "compile" else cuda_unavailable,
        atol=atol,
        rtol=rtol,
        description=description,
        default=default,
    )


# mode: "eager" | "graph" | "compile"; all channels-last.
CHANNELS_LAST = _backend("torch-dense-channels-last", "fp32", "eager", True, "eager, channels-last, fp32 (TF32 convs)")
CUDA_GRAPH = _backend("torch-cuda-graph", "fp32", "graph", True, "CUDA graph replay, channels-last, fp32 (TF32 convs)")
COMPILE = _backend(
    "torch-compile-cuda", "fp32", "compile", False, "torch.compile (Inductor), channels-last, fp32; slow to compile"
)
FP16 = _backend("torch-dense-fp16", "fp16", "eager", True, "eager, channels-last, fp16")
BF16 = _backend("torch-dense-bf16", "bf16", "eager", True, "eager, channels-last, bf16")
CUDA_GRAPH_FP16 = _backend("torch-cuda-graph-fp16", "fp16", "graph", True, "CUDA graph replay, channels-last, fp16")
COMPILE_FP16 = _backend(
    "torch-compile-cuda-fp16", "fp16", "compile", False, "torch.compile (Inductor), channels-last, fp16"
)
