"""Sparse direct convolution on the CPU: the C++ kernels, their activation layout and a conv op built on them.

The path of a model through them, one way: ``lower`` (fx graph -> convs with fused
epilogues between buffers of the flat layout, ``layout``) -> ``choose`` (per conv, the
fastest variant of the kinds in ``kinds``, timed on this machine and cached) -> ``engine``
(runs the chosen ops: buffers, threads, batch chunks). ``build`` compiles the kernels for
the instruction set selected (``PRUNEBENCH_ISA``).

A vector is 16 floats: one zmm register with AVX-512, two ymm halves with AVX2, where
only half as many fit in registers; the tiles offered per layer follow the build
(``vector_registers``).
"""

from __future__ import annotations

import torch

from bench.kernels.build import SOURCE, kernel_module, rest_threads, unavailable, vector_registers
from bench.kernels.kinds import (
    COLS_MAX_BYTES,
    COLS_MAX_POSITIONS,
    COLS_V,
    DENSE_KINDS,
    KERNELS,
    KINDS,
    PANEL_TILES,
    ROWS_V,
    SPARSE_KINDS,
    STACK_TILES,
    SWEEP_TILES,
    WINO_TILES,
    ConvOp,
    Kind,
    Variant,
    candidate_variants,
    cols_fit,
    cols_offsets,
    cols_tile,
    fits_registers,
    kind_of,
    rows_fit,
    stack_fit,
    stack_tiles,
)
from bench.kernels.layout import VEC, Act, ConvGeometry, from_act, global_avg_pool, linear, to_act
from bench.kernels.pack import PackedPanels, PackedRows, PackedSweep, PackedWeights, PackedWinograd, dense_nbytes
from prune.errors import PruneBenchError

__all__ = [
    "COLS_MAX_BYTES", "COLS_MAX_POSITIONS", "COLS_V", "DENSE_KINDS", "KERNELS", "KINDS", "PANEL_TILES", "ROWS_V",
    "SOURCE", "SPARSE_KINDS", "STACK_TILES", "SWEEP_TILES", "VEC", "WINO_TILES", "Act", "ConvGeometry", "ConvOp", "Kind",
    "PackedPanels", "PackedRows", "PackedSweep", "PackedWeights", "PackedWinograd", "PruneBenchError", "Variant",
    "candidate_variants", "cols_fit", "cols_offsets", "cols_tile", "dense_nbytes", "fits_registers", "from_act",
    "global_avg_pool", "kernel_module", "kind_of", "linear", "rest_threads", "rows_fit", "sparse_conv2d",
    "stack_fit", "stack_tiles", "to_act", "unavailable", "vector_registers",
]


def sparse_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 1,
                  padding: int = 0, residual: torch.Tensor | None = None, relu: bool = False,
                  variant: Variant = Variant("sparse", 1, 4), threads: int = 1) -> torch.Tensor:
    """``conv2d(x, weight, bias, stride, padding) (+ residual) (ReLU)`` through the kernel, NCHW in and out.

    For tests and one-off use: it builds the layout, packs the weights and runs one
    variant; the backend keeps all of that prepared between calls instead.
    """
    if x.dim() != 4 or weight.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise PruneBenchError(f"conv2d shapes do not fit: input {tuple(x.shape)}, weight {tuple(weight.shape)}")
    n, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    shift_max = (max(kh, kw) - 1) // stride
    if stride == 1 and kh == kw and kw == 2 * padding + 1:  # the engine's case: same size, taps read in place
        inp = Act(c, h, w, n, max(1, padding))
        geom = ConvGeometry.make(inp, weight.shape[0], (kh, kw), stride, padding, out_border=inp.B)
    else:
        inp = Act(c, h, w, n, padding)
        geom = ConvGeometry.make(inp, weight.shape[0], (kh, kw), stride, padding, out_border=max(1, shift_max))
    src = to_act(x.float(), inp)
    out = geom.out.alloc()
    res = to_act(residual.float(), geom.out) if residual is not None else None
    phases = geom.alloc_phases()
    if phases is not None:
        geom.fill_phases(src, phases, threads)
    op = ConvOp(geom, weight, bias, variant, src, out, phases, res, relu, threads)
    op()
    return from_act(out, geom.out)
