"""N:M semi-structured sparsity in the layout the matrix product uses (2:4 is what sparse tensor cores run).

A layer's weight is seen as the matrix of its GEMM, ``[out, K]``, and "N:M" means
that in every group of M consecutive entries along K (the reduction, i.e. input,
dimension) at most N are nonzero. Mishra et al. 2021, "Accelerating Sparse Deep
Neural Networks" (arXiv:2104.08378).

Reduction order for a convolution weight ``[Cout, Cin, kh, kw]``: K runs over
``(kh, kw, Cin)`` with the input channel fastest, i.e.
``weight.permute(0, 2, 3, 1).reshape(Cout, kh * kw * Cin)``. That is the order of
an im2col taken from a channels-last (NHWC) input, the one
``bench.backends.convmm`` builds, and the one NVIDIA's ASP and cuDNN/TensorRT use
for sparse convolutions: a group of 4 is 4 consecutive input channels at one
kernel tap, so a conv fits 2:4 exactly when ``in_channels % 4 == 0`` (the 3-channel
stem does not; it is left out rather than padded).
"""

from __future__ import annotations

import torch
from torch import nn


def gemm_view(weight: torch.Tensor) -> torch.Tensor:
    """A conv or linear weight as its GEMM matrix ``[out, K]``, K in ``(kh, kw, Cin)`` order (a copy for convs)."""
    if weight.dim() == 4:
        return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
    if weight.dim() == 2:
        return weight
    raise ValueError(f"expected a conv (4-d) or linear (2-d) weight, got shape {tuple(weight.shape)}")


def from_gemm_view(matrix: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Undo ``gemm_view``: the ``[out, K]`` matrix back in the weight's own ``shape``."""
    if len(shape) == 4:
        cout, cin, kh, kw = shape
        return matrix.reshape(cout, kh, kw, cin).permute(0, 3, 1, 2).contiguous()
    return matrix.reshape(shape)


def reduction_size(module: nn.Module) -> int | None:
    """K of a conv/linear layer's GEMM (``Cin/groups * kh * kw`` or ``in_features``); None for other modules."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return module.in_channels // module.groups * kh * kw
    if isinstance(module, nn.Linear):
        return module.in_features
    return None


def fits_nm(module: nn.Module, m: int = 4) -> bool:
    """True where groups of ``m`` along the GEMM's K never straddle an input channel's taps.

    Convs need ``groups == 1`` and ``in_channels % m == 0`` (so each group is m
    input channels at one tap); linears need ``in_features % m == 0``.
    """
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.in_channels % m == 0
    if isinstance(module, nn.Linear):
        return module.in_features % m == 0
    return False


def nm_keep(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean keep-matrix that keeps the ``n`` largest ``scores`` of every ``m`` consecutive along the last dim.

    ``scores`` is ``[rows, K]`` with ``K % m == 0``. Ties go to the earlier entry
    (a stable sort), so the result is deterministic.
    """
    rows, k = scores.shape
    if k % m:
        raise ValueError(f"reduction dimension {k} is not a multiple of {m}")
    groups = scores.reshape(rows, k // m, m)
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(rows, k)


def is_nm(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True where the weight's GEMM matrix has at most ``n`` nonzeros in every group of ``m`` along K."""
    matrix = gemm_view(weight.detach())
    rows, k = matrix.shape
    if k % m:
        return False
    nonzeros = (matrix != 0).reshape(rows, k // m, m).sum(-1)
    return bool((nonzeros <= n).all())
