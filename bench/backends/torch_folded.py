"""Eager PyTorch with BatchNorm folded into the convolutions, on the CPU or CUDA: a stronger dense baseline."""

from __future__ import annotations

import torch
from torch import nn

from bench.backends import Backend, Prepared, cuda_unavailable
from bench.backends.torch_dense import eager_prepared
from bench.fold import fold_batchnorm


def _prepare(model: nn.Module, example: torch.Tensor, device: str, threads: int) -> Prepared:
    torch.set_num_threads(threads)
    return eager_prepared(fold_batchnorm(model.cpu()), example, device)


BACKEND = Backend(
    name="torch-dense-folded",
    dense=True,
    devices=("cpu", "cuda"),
    prepare=_prepare,
    unavailable=cuda_unavailable,
    atol=1e-4,
    rtol=1e-4,
    description="eager PyTorch, dense fp32 weights, BatchNorm folded into the convolutions",
)
