"""Convolutions as matrix products (im2col from a channels-last input), for backends whose kernels only multiply matrices.

A conv with weight ``[Cout, Cin, kh, kw]`` becomes ``cols @ W.T`` where ``cols`` is
``[N*Ho*Wo, K]`` and ``W = prune.nm.gemm_view(weight)`` is ``[Cout, K]``, K in
``(kh, kw, Cin)`` order (input channel fastest: the order of 2:4 groups). The
result is ``[N*Ho*Wo, Cout]``, i.e. NHWC, handed on as an NCHW view in
channels-last memory, so a model kept channels-last pays no layout copies
between layers; the im2col itself is one copy of the input times kh*kw.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from prune.mask import make_permanent_
from prune.nm import gemm_view

# (cols [M, K], weight [Cout, K] in the backend's format, bias [Cout] or None) -> [M, Cout]
Matmul = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def inference_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with any attached pruning masks folded into plain weights.

    With masks attached, ``module.weight`` is a computed (non-leaf) tensor that
    ``copy.deepcopy`` refuses; the copy gets a detached clone of it instead.
    """
    memo = {}
    for module in model.modules():
        if hasattr(module, "weight_orig") and isinstance(getattr(module, "weight", None), torch.Tensor):
            memo[id(module.weight)] = module.weight.detach().clone()
    model = copy.deepcopy(model, memo).eval()
    make_permanent_(dict(model.named_modules()))
    return model


def im2col_nhwc(x: torch.Tensor, kernel_size, stride, padding) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The ``[N*Ho*Wo, kh*kw*C]`` patch matrix of ``x`` (NCHW, any memory format) and ``(N, Ho, Wo)``."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n = x.shape[0]
    xh = x.permute(0, 2, 3, 1)  # NHWC; a view with no copy when x is channels-last
    if ph or pw:
        xh = F.pad(xh, (0, 0, pw, pw, ph, ph))
    patches = xh.unfold(1, kh, sh).unfold(2, kw, sw)  # [N, Ho, Wo, C, kh, kw], a view
    _, ho, wo, c = patches.shape[:4]
    cols = patches.permute(0, 1, 2, 4, 5, 3).reshape(n * ho * wo, kh * kw * c)
    return cols, (n, ho, wo)


def why_not_matmul(conv: nn.Module) -> str | None:
    """Why ``conv`` cannot run as ``ConvAsMatmul``, or None where it can."""
    if not isinstance(conv, nn.Conv2d):
        return f"not a Conv2d ({type(conv).__name__})"
    if conv.groups != 1:
        return f"grouped conv (groups={conv.groups})"
    if conv.dilation != (1, 1):
        return f"dilated conv (dilation={conv.dilation})"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return f"padding {conv.padding!r}/{conv.padding_mode} (only explicit zero padding)"
    return None


def dense_linear(cols: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(cols, weight, bias)


class ConvAsMatmul(nn.Module):
    """A Conv2d run as im2col + a matrix product with a weight in any format ``matmul`` accepts.

    Args:
        conv: the convolution replaced (its geometry and bias are taken).
        weight: ``[Cout, K]`` in ``gemm_view`` order, dense or in the backend's sparse format.
        matmul: ``(cols, weight, bias) -> [M, Cout]``.
    """

    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor, matmul: Matmul = dense_linear):
        super().__init__()
        reason = why_not_matmul(conv)
        if reason:
            raise ValueError(f"cannot run this conv as a matrix product: {reason}")
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.out_channels = conv.out_channels
        self.weight = weight  # a plain attribute: sparse tensor subclasses need not be Parameters
        self.bias = None if conv.bias is None else conv.bias.detach().to(device=weight.device)
        self.matmul = matmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols, (n, ho, wo) = im2col_nhwc(x, self.kernel_size, self.stride, self.padding)
        y = self.matmul(cols, self.weight, self.bias)
        return y.reshape(n, ho, wo, self.out_channels).permute(0, 3, 1, 2)


def convert_convs_(
    model: nn.Module,
    make_weight: Callable[[str, nn.Conv2d, torch.Tensor], torch.Tensor | str],
    matmul: Matmul,
) -> dict[str, str]:
    """Replace the model's convs by ``ConvAsMatmul`` where ``make_weight`` returns a weight (in place).

    ``make_weight(name, conv, matrix)`` gets the dense ``[Cout, K]`` matrix and
    returns the weight in the backend's format, or a string saying why that conv
    stays as it is. Returns name -> "converted" or the reason, for ``Prepared.info``.
    """
    choices: dict[str, str] = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Conv2d):
            continue
        reason = why_not_matmul(module)
        if reason is None:
            matrix = gemm_view(module.weight.detach()).contiguous()
            weight = make_weight(name, module, matrix)
            if isinstance(weight, str):
                reason = weight
            else:
                _set_submodule(model, name, ConvAsMatmul(module, weight, matmul))
        choices[name] = reason or "converted"
    return choices


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
