"""The suite's parity rules: TF32-aware tolerance on CUDA, and NotApplicable as a named skip."""

import pytest
import torch

from bench.backends import NotApplicable, get_backend
from bench.parity import TF32_ATOL, parity_tolerance
from prune.errors import PruneBenchError


def test_cpu_keeps_the_backends_own_tolerance():
    dense = get_backend("torch-dense")
    assert parity_tolerance(dense, "cpu") == (dense.atol, dense.rtol, False)


def test_cuda_with_tf32_widens_fp32_tolerance_and_says_so(monkeypatch):
    dense = get_backend("torch-dense")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    atol, rtol, tf32 = parity_tolerance(dense, "cuda")
    assert tf32 and atol == TF32_ATOL and atol > dense.atol


def test_cuda_without_tf32_is_strict_fp32(monkeypatch):
    dense = get_backend("torch-dense")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    matmul = torch.backends.cuda.matmul  # a module-like object monkeypatch cannot restore: do it by hand
    saved = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        assert parity_tolerance(dense, "cuda") == (dense.atol, dense.rtol, False)
    finally:
        matmul.allow_tf32 = saved


def test_fp16_backend_keeps_its_wider_tolerance(monkeypatch):
    fp16 = get_backend("torch-dense-fp16")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    atol, _, _ = parity_tolerance(fp16, "cuda")
    assert atol == max(fp16.atol, TF32_ATOL)


def test_not_applicable_is_a_user_facing_error():
    with pytest.raises(PruneBenchError):
        raise NotApplicable("no 2:4 layer")
