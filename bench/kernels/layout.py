"""The flat activation layout the kernels read and write, and where each tap of a convolution reads in it.

An activation of C channels, N images of H x W is a 2-D float32 tensor (C, stride):
channel c's row holds the zero-bordered image stack (H + 2B, W + B, N) flattened with
the batch innermost, then zeros (one border strip of B columns between rows is both
the right border of a row and the left border of the next). Because every plane is
flat and zero-bordered, one tap (ky, kx) of a stride-1 convolution is a constant shift
of the flat index, so a convolution is, per output channel, a sum of shifted
contiguous vectors times scalars: one per nonzero weight, no im2col. A strided
convolution first splits its input into s*s phases (space-to-depth), after which each
tap is again a constant shift.
"""

from __future__ import annotations

import dataclasses

import torch

from bench.kernels.build import kernel_module
from prune.errors import PruneBenchError

VEC = 16  # floats per vector (one AVX-512 register, two AVX2 ones); also the layout's alignment unit


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


@dataclasses.dataclass(frozen=True)
class Act:
    """Geometry of one activation in the flat layout: C planes of (H + 2B, W + B, N), batch innermost."""

    C: int
    H: int
    W: int
    N: int
    B: int  # zero border on every side

    @property
    def pitch(self) -> int:  # positions per padded row: one border strip serves as right and next row's left
        return self.W + self.B

    @property
    def plane_len(self) -> int:  # floats in one padded plane (the last row's right border follows it)
        return ((self.H + 2 * self.B) * self.pitch + self.B) * self.N

    @property
    def stride(self) -> int:  # floats between planes: room for one vector of overrun, aligned
        return _round_up(self.plane_len + VEC, VEC)

    def alloc(self) -> torch.Tensor:
        return torch.zeros(self.C, self.stride)

    def grid(self, buf: torch.Tensor) -> torch.Tensor:
        """(C, H+2B, W+B, N) view of ``buf``: image pixel (y, x) at [:, B + y, B + x]."""
        rows = (self.H + 2 * self.B) * self.pitch * self.N
        return buf[:, :rows].view(self.C, self.H + 2 * self.B, self.pitch, self.N)

    def interior(self, buf: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) view of the image part of ``buf``."""
        b = self.B
        return self.grid(buf)[:, b : b + self.H, b : b + self.W].permute(3, 0, 1, 2)

    def valid_range(self) -> tuple[int, int]:
        """Flat [t0, t1) from the first to past the last image element (wrap-around positions in between)."""
        b, p, n = self.B, self.pitch, self.N
        return (b * p + b) * n, ((self.H - 1 + b) * p + self.W + b) * n

    def mask(self) -> torch.Tensor:
        """1.0 on image elements, 0.0 on border, wrap-around and overrun: the kernel's last multiply."""
        m = torch.zeros(self.stride)
        view = m[: (self.H + 2 * self.B) * self.pitch * self.N].view(self.H + 2 * self.B, self.pitch, self.N)
        view[self.B : self.B + self.H, self.B : self.B + self.W] = 1.0
        return m


def to_act(x: torch.Tensor, act: Act, buf: torch.Tensor | None = None) -> torch.Tensor:
    """Copy an (N, C, H, W) tensor into the flat layout (into ``buf`` where given, whose border stays zero)."""
    if buf is None:
        buf = act.alloc()
    if x.dtype == torch.float32 and x.is_contiguous() and tuple(x.shape) == (act.N, act.C, act.H, act.W):
        kernel_module().to_layout(x.data_ptr(), act.N, act.C, act.H, act.W, buf.data_ptr(), buf.stride(0), act.pitch,
                                  act.B, act.B)
    else:
        act.interior(buf).copy_(x)
    return buf


def from_act(buf: torch.Tensor, act: Act) -> torch.Tensor:
    """The (N, C, H, W) contiguous tensor held by ``buf``."""
    return act.interior(buf).contiguous()


def global_avg_pool(buf: torch.Tensor, act: Act, out: torch.Tensor, threads: int = 1) -> None:
    """Write the mean of each image's plane, read straight from the layout, into ``out`` ((N, C, ...), contiguous)."""
    if out.numel() != act.N * act.C or not out.is_contiguous():
        raise PruneBenchError(f"global_avg_pool: output of shape {tuple(out.shape)} does not hold {act.N} x {act.C}")
    kernel_module().plane_mean(
        buf.data_ptr(), buf.stride(0), act.C, act.H, act.W, act.pitch, act.N, act.B, act.B, out.data_ptr(), threads
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """``out = x @ weight.T + bias`` on the calling thread, for the small classifier after the pool.

    Inside a pass torch's linear pays for its thread pool against ours, for a microsecond of work; all
    operands are contiguous fp32 (``x``: (n, C), ``weight``: (K, C)).
    """
    n, c = x.shape
    k = weight.shape[0]
    if weight.shape[1] != c or tuple(out.shape) != (n, k) or not all(
        t.is_contiguous() and t.dtype == torch.float32 for t in (x, weight, out)
    ):
        raise PruneBenchError(f"linear: shapes do not fit: x {tuple(x.shape)}, weight {tuple(weight.shape)}, out {tuple(out.shape)}")
    kernel_module().linear(x.data_ptr(), weight.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(), n, c, k)


# ---------------------------------------------------------------------------- geometry
@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """Where each tap of a convolution reads, for an input and an output in the flat layout."""

    inp: Act
    out: Act
    kernel: tuple[int, int]
    stride: int
    padding: int
    phase_rows: int  # rows of each phase plane (pitch = out.pitch)

    @classmethod
    def make(cls, inp: Act, cout: int, kernel: tuple[int, int], stride: int, padding: int, out_border: int):
        kh, kw = kernel
        if padding > inp.B:
            raise PruneBenchError(f"a convolution pads by {padding} but its input has a border of {inp.B}")
        hout = (inp.H + 2 * padding - kh) // stride + 1
        wout = (inp.W + 2 * padding - kw) // stride + 1
        if hout < 1 or wout < 1:
            raise PruneBenchError(f"a {kh}x{kw} stride-{stride} convolution does not fit a {inp.H}x{inp.W} input")
        out = Act(cout, hout, wout, inp.N, out_border)
        shift = inp.B - padding
        qy_max, qx_max = (kh - 1 + shift) // stride, (kw - 1 + shift) // stride
        # taps reaching past a row's end wrap into the next row: fine while they land in its zero left border
        if qx_max > out_border and stride * (qx_max - out_border) > inp.B:
            raise PruneBenchError(
                f"a {kh}x{kw} stride-{stride} padding-{padding} convolution needs an output border of at least "
                f"{max(1, qx_max - inp.B // stride)}, not {out_border}"
            )
        # every input row in its phase plus the rows the taps reach: the same for every conv reading this
        # input at this stride with this output, so a 3x3 conv and a 1x1 shortcut share one set of phases
        rows = max(-(-(inp.H + 2 * inp.B) // stride), hout + qy_max) + 1
        return cls(inp, out, (kh, kw), stride, padding, rows)

    @property
    def direct(self) -> bool:
        """Whether taps read the input buffer itself (stride 1, same pitch) rather than phase planes."""
        return self.stride == 1 and self.inp.pitch == self.out.pitch

    @property
    def phase_stride(self) -> int:
        return _round_up(self.phase_rows * self.out.pitch * self.inp.N + VEC, VEC)

    def tap_offsets(self) -> torch.Tensor:
        """(Cin, kh, kw) int64: flat offset of each (input channel, tap) relative to the output index."""
        kh, kw = self.kernel
        s, bo, po, n = self.stride, self.out.B, self.out.pitch, self.inp.N
        shift = self.inp.B - self.padding
        plane = self.inp.stride if self.direct else self.phase_stride
        cin = self.inp.C
        off = torch.empty(cin, kh, kw, dtype=torch.int64)
        ci = torch.arange(cin, dtype=torch.int64)
        for ky in range(kh):
            a, qy = (ky + shift) % s, (ky + shift) // s
            for kx in range(kw):
                b, qx = (kx + shift) % s, (kx + shift) // s
                phase = 0 if self.direct else a * s + b
                off[:, ky, kx] = (phase * cin + ci) * plane + ((qy - bo) * po + (qx - bo)) * n
        return off

    def input_offsets(self) -> torch.Tensor:
        """(Cin, kh, kw) int64: flat offset of each (input channel, tap) in the input buffer itself, relative to
        the input pixel at stride x the output pixel (for kernels that step through a strided input directly)."""
        kh, kw = self.kernel
        i, p = self.inp, self.padding
        ci = torch.arange(i.C, dtype=torch.int64).view(-1, 1, 1) * i.stride
        ky = torch.arange(kh, dtype=torch.int64).view(1, -1, 1) - p
        kx = torch.arange(kw, dtype=torch.int64).view(1, 1, -1) - p
        return ci + (ky * i.pitch + kx) * i.N

    def alloc_phases(self) -> torch.Tensor | None:
        if self.direct:
            return None
        return torch.zeros(self.stride * self.stride * self.inp.C, self.phase_stride)

    def fill_phases(self, buf: torch.Tensor, phases: torch.Tensor, threads: int = 1) -> None:
        """Split the input into s*s phase planes with the output's pitch (space-to-depth)."""
        i, o = self.inp, self.out
        kernel_module().phases(
            buf.data_ptr(), buf.stride(0), i.C, i.H + 2 * i.B, i.pitch, i.N, self.stride,
            phases.data_ptr(), phases.stride(0), self.phase_rows, o.pitch, threads,
        )


