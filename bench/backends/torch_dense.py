"""Eager PyTorch, dense weights, on the CPU or CUDA: the reference every backend is checked against."""

from __future__ import annotations

import copy

import torch
from torch import nn

from bench.backends import Backend, Prepared, cuda_unavailable


def _prepare(model: nn.Module, example: torch.Tensor, device: str, threads: int) -> Prepared:
    torch.set_num_threads(threads)
    model = copy.deepcopy(model).eval().to(device)
    inputs = example.to(device)

    def run(x):
        with torch.inference_mode():
            return model(x)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return Prepared(run=run, inputs=inputs, synchronize=sync)


BACKEND = Backend(
    name="torch-dense",
    devices=("cpu", "cuda"),
    prepare=_prepare,
    unavailable=cuda_unavailable,
    atol=1e-5,
    rtol=1e-5,
    description="eager PyTorch with dense fp32 weights",
)
