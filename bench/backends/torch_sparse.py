"""torch.sparse: convolutions as unfold + CSR-weight matmul, the linear layer as a CSR matmul.

A convolution with weight W (O, C, kh, kw) is, for each image, the matrix
product of W reshaped to (O, C*kh*kw) with the unfolded image (im2col:
C*kh*kw rows, one column per output pixel); with W stored as a CSR sparse
matrix, ``torch.sparse.mm`` skips the pruned weights. BatchNorm, ReLU, pooling and the
residual additions stay eager dense modules.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.backends import Backend, Prepared, cuda_unavailable
from bench.backends.convmm import inference_copy


@contextlib.contextmanager
def _quiet_csr():
    """Silence PyTorch's one-time "sparse CSR support is in beta" warning (it says nothing about our results)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        yield


class _PlainTensors(nn.Module):
    """A module whose weight and bias are plain tensor attributes (sparse layouts cannot be Parameters)."""

    def _apply(self, fn, recurse=True):
        # nn.Module.to() does not reach plain tensor attributes; move them by hand.
        self.weight = fn(self.weight)
        if self.bias is not None:
            self.bias = fn(self.bias)
        return self


class SparseConv2d(_PlainTensors):
    """A Conv2d (groups 1, zero padding) computed as unfold + ``torch.sparse.mm`` with a CSR weight."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        with _quiet_csr():
            self.weight = conv.weight.detach().reshape(conv.out_channels, -1).to_sparse_csr()
        self.bias = None if conv.bias is None else conv.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (n, C*kh*kw, oh*ow)
        # One product per image: W (O, C*kh*kw) @ cols[i] gives (O, oh*ow), already in NCHW order. Measured on
        # 2 CPU cores, this is 1.5-4x faster than one product over all images at once, which needs the
        # columns transposed to (C*kh*kw, n*oh*ow) and the result transposed back (two copies of the largest
        # tensors), and whose long rows run the CSR kernel out of cache.
        out = torch.stack([torch.sparse.mm(self.weight, cols[i]) for i in range(n)])
        if self.bias is not None:
            out = out + self.bias[None, :, None]
        return out.reshape(n, self.out_channels, oh, ow)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}->{self.out_channels}, nnz={self.weight.values().numel()}, CSR"


class SparseLinear(_PlainTensors):
    """A Linear layer as ``W_csr @ x^T`` (``torch.sparse.mm``)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        with _quiet_csr():
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        out = torch.sparse.mm(self.weight, flat.t().contiguous()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, out.shape[-1])


def convertible(module: nn.Module, name: str) -> bool:
    """Layers this backend converts: Linear, and Conv2d with groups 1 and zero padding given as numbers."""
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def sparsify_(model: nn.Module, filter_fn: Callable[[nn.Module, str], bool] = convertible) -> list[str]:
    """Replace the layers chosen by ``filter_fn(module, name)`` with their CSR versions, in place.

    Returns the names of the replaced layers.
    """
    chosen = [(name, m) for name, m in model.named_modules() if name and filter_fn(m, name)]
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        sparse = SparseLinear(module) if isinstance(module, nn.Linear) else SparseConv2d(module)
        setattr(parent, child, sparse)
    return [name for name, _ in chosen]


@functools.cache
def conv2d_accepts_sparse_weight(device: str = "cpu") -> str:
    """Whether ``F.conv2d`` runs with a sparse weight (COO and CSR), as one line to record."""
    x = torch.randn(1, 2, 5, 5, device=device)
    w = torch.randn(3, 2, 3, 3, device=device)
    w[0] = 0
    results = []
    with _quiet_csr():
        for label, convert in (("COO", lambda t: t.to_sparse()), ("CSR", lambda t: t.to_sparse_csr())):
            try:
                y = F.conv2d(x, convert(w), padding=1)
                same = torch.allclose(y.to_dense() if y.is_sparse else y, F.conv2d(x, w, padding=1), atol=1e-5)
                results.append(f"{label}: accepted ({'same result' if same else 'WRONG result'})")
            except Exception as e:  # what PyTorch raises here is exactly what we want to record
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                results.append(f"{label}: {type(e).__name__}: {first[:120]}")
    return "; ".join(results)


def _prepare(model: nn.Module, example: torch.Tensor, device: str, threads: int) -> Prepared:
    torch.set_num_threads(threads)
    # Move the dense copy first and convert on the device, so the CSR tensors are built where they run.
    model = inference_copy(model).to(device)
    converted = sparsify_(model)
    inputs = example.to(device)
    nnz = sum(m.weight.values().numel() for m in model.modules() if isinstance(m, (SparseConv2d, SparseLinear)))
    sparse_bytes = sum(
        sum(t.numel() * t.element_size() for t in (m.weight.values(), m.weight.col_indices(), m.weight.crow_indices()))
        for m in model.modules()
        if isinstance(m, (SparseConv2d, SparseLinear))
    )

    def run(x):
        with torch.inference_mode():
            return model(x)

    info = {
        "sparse_layers": len(converted),
        "sparse_format": "CSR (torch.sparse_csr_tensor, int64 indices)",
        "sparse_nonzeros": nnz,
        "sparse_weight_bytes": sparse_bytes,
        "conv2d_sparse_weight": conv2d_accepts_sparse_weight(device),
    }
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return Prepared(run=run, inputs=inputs, synchronize=sync, info=info)


BACKEND = Backend(
    name="torch-sparse",
    sparse=True,
    devices=("cpu", "cuda"),
    prepare=_prepare,
    unavailable=cuda_unavailable,
    atol=1e-4,
    rtol=1e-4,
    description="convolutions as unfold + torch.sparse.mm with CSR weights; BatchNorm eager",
)
