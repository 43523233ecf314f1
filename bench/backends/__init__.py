"""The backend registry: a plain dict of name -> where the backend lives, imported on first use.

Every backend shares one small interface (see ``Backend``): ``prepare(model,
example, device, threads)`` returns a ``Prepared`` whose ``run(inputs)`` is the
only thing the bench times. Heavy imports (onnxruntime, compilers) happen inside
``prepare`` so that listing backends is cheap.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import torch
from torch import nn

from prune.errors import PruneBenchError


class NotApplicable(PruneBenchError):
    """``prepare`` cannot run this model on this backend (e.g. a 2:4 backend given a model with no 2:4 layer).

    The suite turns it into a skip that gives the reason, not a failure.
    """


@dataclasses.dataclass
class Prepared:
    """A model made ready on one backend. Only ``run(inputs)`` is timed."""

    run: Callable[[Any], Any]  # the inference call
    inputs: Any  # what ``run`` takes, already on the device and in the backend's format
    to_torch: Callable[[Any], torch.Tensor] = lambda y: y.detach().float().cpu()  # output -> CPU fp32 tensor
    synchronize: Callable[[], None] = lambda: None  # called inside the timed call on asynchronous devices
    info: dict = dataclasses.field(default_factory=dict)  # extra_info additions (per-layer choices, bytes...)
    # (seconds) -> median seconds per call of back-to-back calls, for engines that time themselves (in a worker)
    time_block: Callable[[float], float] | None = None
    close: Callable[[], None] = lambda: None  # frees what outlives the object (a worker process)


@dataclasses.dataclass(frozen=True)
class Backend:
    """One way of running a model. ``prepare`` builds everything outside the timed call."""

    name: str
    devices: tuple[str, ...]  # "cpu", "cuda"
    prepare: Callable[[nn.Module, torch.Tensor, str, int], Prepared]  # (model, example batch, device, threads)
    unavailable: Callable[[str], str | None] = lambda device: None  # why it cannot run on ``device`` here
    atol: float = 1e-3  # parity tolerance against dense fp32 PyTorch (absolute)...
    rtol: float = 1e-3  # ...and relative
    description: str = ""
    default: bool = True  # part of the default ``pytest bench`` run (False: only when asked for by name)
    dense: bool = False  # computes every weight, zero or not: a baseline the sparse backends are measured against
    sparse: bool = False  # skips zero weights: nothing to gain on a model without zeros (channel-pruned, say)
    check: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], None] | None = None  # own parity criterion
    # (got, expected, other, what), raising ParityError; None: atol/rtol (INT8 cannot meet fp32's tolerances)


# name -> "module:attribute" of a Backend; add a line here for each backend.
BACKENDS: dict[str, str] = {
    "torch-dense": "bench.backends.torch_dense:BACKEND",
    "torch-sparse": "bench.backends.torch_sparse:BACKEND",
    "onnxruntime": "bench.backends.onnxruntime:BACKEND",
    "onnxruntime-int8": "bench.backends.onnxruntime_int8:BACKEND",
    "sparse-direct": "bench.backends.sparse_direct:BACKEND",
    "sparse-direct-kernels": "bench.backends.sparse_direct:KERNELS_ONLY",
    "torch-dense-folded": "bench.backends.torch_folded:BACKEND",
    "torch-compile": "bench.backends.torch_compile:BACKEND",
    "torch-dense-channels-last": "bench.backends.cuda_dense:CHANNELS_LAST",
    "torch-cuda-graph": "bench.backends.cuda_dense:CUDA_GRAPH",
    "torch-compile-cuda": "bench.backends.cuda_dense:COMPILE",
    "torch-dense-fp16": "bench.backends.cuda_dense:FP16",
    "torch-dense-bf16": "bench.backends.cuda_dense:BF16",
    "torch-cuda-graph-fp16": "bench.backends.cuda_dense:CUDA_GRAPH_FP16",
    "torch-compile-cuda-fp16": "bench.backends.cuda_dense:COMPILE_FP16",
    "torch-sparse-bsr": "bench.backends.torch_sparse_bsr:BACKEND",
    "torch-sparse-bsr-4": "bench.backends.torch_sparse_bsr:BACKEND_4",
    "torch-2:4": "bench.backends.semi_structured:BACKEND",
    "torch-2:4-bf16": "bench.backends.semi_structured:BACKEND_BF16",
    "torch-2:4-cutlass": "bench.backends.semi_structured:BACKEND_CUTLASS",
    "im2col-dense-fp16": "bench.backends.semi_structured:BACKEND_CONTROL",
    "deepsparse": "bench.backends.external:DEEPSPARSE",
    "onnxruntime-worker": "bench.backends.external:STAND_IN",
}


def backend_names() -> list[str]:
    return list(BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; an unknown name lists the valid ones."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise PruneBenchError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}") from None
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def cuda_unavailable(device: str) -> str | None:
    """The reason a CUDA case cannot run here, or None."""
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU on this machine (torch.cuda.is_available() is False)"
    return None
