"""torch.sparse BSR: convs as im2col + a block-sparse matrix product, on the CPU or CUDA, fp32.

Each conv's ``[Cout, K]`` weight (``prune.nm.gemm_view`` order) is stored as
``to_sparse_bsr((b, b))`` wherever both dimensions are multiples of ``b``, and
multiplied as ``W_bsr @ cols.T`` (on the CPU that is ~8x faster than
``F.linear(cols, W_bsr)``; on CUDA torch sends 16x16 and larger power-of-two
blocks to its Triton kernel, others to cuSPARSE). Every conv whose shape fits is
converted, whatever its share of all-zero blocks (recorded per layer in
``info``): unstructured pruning leaves few whole blocks empty, and the numbers
should show what that costs rather than hide it. The stem (K = 27) and fc stay
dense. torch calls its BSR support beta.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from bench.backends import Backend, Prepared, cuda_unavailable
from bench.backends.convmm import convert_convs_, inference_copy


def block_density(matrix: torch.Tensor, blocksize: int) -> float:
    """Fraction of the ``blocksize`` x ``blocksize`` blocks of ``matrix`` holding any nonzero."""
    rows, cols = matrix.shape
    blocks = (matrix != 0).reshape(rows // blocksize, blocksize, cols // blocksize, blocksize)
    return float(blocks.any(dim=3).any(dim=1).float().mean())


def bsr_linear(cols: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``cols @ weight.T (+ bias)`` for a BSR ``weight``, computed as ``(weight @ cols.T).T``."""
    y = torch.mm(weight, cols.t()).t()
    return y if bias is None else y + bias


def _make_weight(name: str, conv: nn.Conv2d, matrix: torch.Tensor, *, blocksize: int, device: str, densities: dict):
    rows, cols = matrix.shape
    if rows % blocksize or cols % blocksize:
        return f"[Cout, K] = [{rows}, {cols}] is not a multiple of the {blocksize}x{blocksize} block"
    densities[name] = round(block_density(matrix, blocksize), 4)
    with warnings.catch_warnings():  # "BSR support is in beta": known, and said once in this module's docstring
        warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
        return matrix.to(device).to_sparse_bsr((blocksize, blocksize))


def prepare_model(model: nn.Module, device: str, blocksize: int) -> tuple[nn.Module, dict[str, str], dict[str, float]]:
    """A copy of ``model`` on ``device`` with its convs as BSR matrix products where the shape allows.

    Returns the model, per conv "converted" or why not, and the block density of each converted conv.
    """
    model = inference_copy(model)  # attached masks -> plain weights with zeros
    model = model.to(device)
    densities: dict[str, float] = {}
    maker = functools.partial(_make_weight, blocksize=blocksize, device=device, densities=densities)
    choices = convert_convs_(model, maker, bsr_linear)
    return model, choices, densities


def _prepare(model: nn.Module, example: torch.Tensor, device: str, threads: int, *, blocksize: int) -> Prepared:
    torch.set_num_threads(threads)
    model, choices, densities = prepare_model(model, device, blocksize)
    inputs = example.to(device)

    def run(x):
        with torch.inference_mode():
            return model(x)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    info = {"blocksize": blocksize, "convs": choices, "block_density": densities}
    return Prepared(run=run, inputs=inputs, synchronize=sync, info=info)


def _backend(name: str, blocksize: int, default: bool) -> Backend:
    return Backend(
        sparse=True,
        name=name,
        devices=("cpu", "cuda"),
        prepare=functools.partial(_prepare, blocksize=blocksize),
        unavailable=cuda_unavailable,
        # fp32; on CUDA the dense layers run cuDNN with TF32 (PyTorch's default) and Triton's fp32 dot is TF32
        atol=5e-3,
        rtol=5e-3,
        description=f"torch.sparse BSR ({blocksize}x{blocksize} blocks) convs via im2col, fp32",
        default=default,
    )


BACKEND = _backend("torch-sparse-bsr", 16, True)
BACKEND_4 = _backend("torch-sparse-bsr-4", 4, False)
