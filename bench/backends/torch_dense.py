"""Eager PyTorch, dense weights, on the CPU or CUDA: the reference every backend is checked against."""

from __future__ import annotations

import copy

import torch
from torch import nn

from bench.backends import Backend, Prepared, cuda_unavailable


def eager_prepared(model: nn.Module, example: torch.Tensor, device: str) -> Prepared:
    """``model`` (already a private copy) run eagerly on ``device`` under inference mode."""
    model = model.eval().to(device)
    inputs = example.to(device)

    def run(x):
        with torch.inference_mode():
            return model(x)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return Prepared(run=run, inputs=inputs, synchronize=sync)


def _prepare(model: nn.Module, example: torch.Tensor, device: str, threads: int) -> Prepared:
    torch.set_num_threads(threads)
    return eager_prepared(copy.deepcopy(model), example, device)


BACKEND = Backend(
    name="torch-dense",
    dense=True,
    devices=("cpu", "cuda"),
    prepare=_prepare,
    unavailable=cuda_unavailable,
    atol=1e-5,
    rtol=1e-5,
    description="eager PyTorch with dense fp32 weights",
)
