"""2:4 semi-structured sparse convolutions on sparse tensor cores (CUDA, Ampere or newer).

Every conv whose GEMM weight (``prune.nm.gemm_view``, K in ``(kh, kw, Cin)``
order) is 2:4 sparse runs as im2col + ``F.linear`` with a
``torch.sparse.to_sparse_semi_structured`` weight: cuSPARSELt by default, CUTLASS
when ``SparseSemiStructuredTensor._FORCE_CUTLASS`` is set for the conversion.
The kernels take fp16/bf16 (not fp32), so the whole model runs in that precision,
channels-last; convs that are not 2:4 (the stem, dense layers) or whose
``[Cout, K]`` misses the kernel's shape multiples stay dense cuDNN convs.
Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks" (arXiv:2104.08378).

``im2col-dense-fp16`` is the control: the same layers through the same im2col
path with dense weights, so the sparse kernels' gain is not confused with the
cost of im2col against cuDNN (compare both with ``torch-dense-fp16``).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from bench.backends import Backend, NotApplicable, Prepared, cuda_unavailable
from bench.backends.convmm import convert_convs_, dense_linear, inference_copy
from bench.backends.cuda_dense import TOLERANCE
from prune.errors import PruneBenchError
from prune.nm import fits_nm, is_nm

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
KERNELS = ("cusparselt", "cutlass", "dense")  # "dense": the control, same path with dense weights


def shape_multiples(kernel: str, dtype: torch.dtype) -> tuple[int, int]:
    """(rows, cols) the sparse ``[Cout, K]`` weight must be a multiple of, for ``kernel`` and ``dtype``."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    cls = SparseSemiStructuredTensorCUTLASS if kernel == "cutlass" else SparseSemiStructuredTensorCUSPARSELT
    # the dense control converts the layers cuSPARSELt fp16 would, whatever its own dtype
    dtype = torch.float16 if kernel == "dense" else dtype
    if dtype not in cls._DTYPE_SHAPE_CONSTRAINTS:
        raise PruneBenchError(f"{kernel} 2:4 kernels take {', '.join(map(str, cls._DTYPE_SHAPE_CONSTRAINTS))}, not {dtype}")
    config = cls._DTYPE_SHAPE_CONSTRAINTS[dtype]
    return config.sparse_min_rows, config.sparse_min_cols


def _make_weight(name: str, conv: nn.Conv2d, matrix: torch.Tensor, *, kernel: str, dtype, device) -> torch.Tensor | str:
    """The conv's ``[Cout, K]`` weight in the kernel's format, or why it stays a dense cuDNN conv."""
    if not fits_nm(conv):
        return f"in_channels {conv.in_channels} not a multiple of 4"
    rows_mult, cols_mult = shape_multiples(kernel, dtype)
    rows, cols = matrix.shape
    if rows % rows_mult or cols % cols_mult:
        return f"[Cout, K] = [{rows}, {cols}] is not a multiple of ({rows_mult}, {cols_mult})"
    if kernel != "dense" and not is_nm(matrix):
        return "not 2:4 sparse along (kh, kw, Cin)"
    weight = matrix.to(device=device, dtype=dtype).contiguous()
    if kernel == "dense":
        return weight
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    forced = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = kernel == "cutlass"  # read at conversion; the tensor keeps its class
    try:
        return to_sparse_semi_structured(weight)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = forced


def prepare_model(model: nn.Module, device: str, dtype: torch.dtype, kernel: str) -> tuple[nn.Module, dict[str, str]]:
    """A copy of ``model`` in ``dtype``, channels-last on ``device``, with its 2:4 convs on ``kernel``.

    Returns the model and, per conv, "converted" or why it stayed dense. The
    ``dense`` kernel runs anywhere (it is how the path is tested on the CPU).
    """
    if kernel not in KERNELS:
        raise PruneBenchError(f"unknown 2:4 kernel {kernel!r}: choose from {', '.join(KERNELS)}")
    model = inference_copy(model)  # attached masks -> plain weights with zeros
    model = model.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    maker = functools.partial(_make_weight, kernel=kernel, dtype=dtype, device=device)
    choices = convert_convs_(model, maker, dense_linear)  # F.linear dispatches on the semi-structured weight
    return model, choices


def _prepare(model: nn.Module, example: torch.Tensor, device: str, threads: int, *, precision: str, kernel: str) -> Prepared:
    torch.set_num_threads(threads)
    dtype = DTYPES[precision]
    model, choices = prepare_model(model, device, dtype, kernel)
    converted = sum(c == "converted" for c in choices.values())
    if kernel != "dense" and converted == 0:
        raise NotApplicable(
            "no conv of this model is 2:4 sparse along (kh, kw, Cin): prune it with the 2:4 strategy first"
        )
    inputs = example.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)

    def run(x):
        with torch.inference_mode():
            return model(x)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    info = {"precision": precision, "kernel": kernel, "sparse_convs": converted, "convs": choices}
    return Prepared(run=run, inputs=inputs, synchronize=sync, info=info)


def sparse_unavailable(device: str, kernel: str = "cusparselt") -> str | None:
    """Why the 2:4 kernels cannot run on ``device`` here, or None."""
    reason = cuda_unavailable(device)
    if reason or device != "cuda":
        return reason or f"2:4 sparse kernels run on CUDA only, not {device}"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 0):
        name = torch.cuda.get_device_name()
        return f"2:4 sparse tensor cores need compute capability 8.0+ (Ampere); {name} is {major}.{minor}"
    if kernel == "cutlass" and major != 8:
        # torch's CUTLASS 2:4 kernels are built for 8.x only (seen on an H200, 9.0: "Supported only on GPUs with
        # compute capability 8.x"); cuSPARSELt covers 9.0
        name = torch.cuda.get_device_name()
        return f"torch's CUTLASS 2:4 kernels run on compute capability 8.x only; {name} is {major}.{minor} (use torch-2:4)"
    if kernel == "cusparselt" and not torch.backends.cusparselt.is_available():
        return "this torch build has no cuSPARSELt (try torch-2:4-cutlass)"
    return None



def _backend(name: str, precision: str, kernel: str, default: bool, description: str) -> Backend:
    atol, rtol = TOLERANCE[precision]
    unavailable = cuda_unavailable if kernel == "dense" else functools.partial(sparse_unavailable, kernel=kernel)
    return Backend(
        name=name,
        devices=("cuda",),
        prepare=functools.partial(_prepare, precision=precision, kernel=kernel),
        unavailable=unavailable,
        atol=atol,
        rtol=rtol,
        description=description,
        default=default,
        dense=kernel == "dense",
        sparse=kernel != "dense",
    )


# Opt-in (default=False): they refuse models with no 2:4 conv, which the suite's synthetic set has none of; run them
# with --bench-backends on 2:4 checkpoints (bench/gpu_job.sh writes one: python -m bench.gpu_job models).
BACKEND = _backend("torch-2:4", "fp16", "cusparselt", False, "2:4 convs on cuSPARSELt, fp16, channels-last")
BACKEND_BF16 = _backend("torch-2:4-bf16", "bf16", "cusparselt", False, "2:4 convs on cuSPARSELt, bf16, channels-last")
BACKEND_CUTLASS = _backend(
    "torch-2:4-cutlass", "fp16", "cutlass", False, "2:4 convs on CUTLASS (_FORCE_CUTLASS), fp16, channels-last"
)
BACKEND_CONTROL = _backend(
    "im2col-dense-fp16", "fp16", "dense", True, "control for torch-2:4: the same im2col path, dense fp16 weights"
)
