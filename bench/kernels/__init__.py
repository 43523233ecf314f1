"""Sparse direct convolution on the CPU: the C++ kernel, its activation layout and a conv op built on it.

The layout ("Act"): an activation of C channels, N images of H x W is a 2-D float32
tensor (C, stride); channel c's row holds the zero-bordered image stack
(H + 2B, W + B, N) flattened with the batch innermost, then zeros (one border strip
of B columns between rows is both the right border of a row and the left border of
the next, which wastes fewer lanes on small images). Because every
plane is flat and zero-bordered, one tap (ky, kx) of a stride-1 convolution is a
constant shift of the flat index, so a convolution is, per output channel, a sum
of shifted contiguous vectors times scalars: one per nonzero weight, no im2col.
Wrap-around positions between rows are computed and zeroed by a mask, or skipped
where each image row is whole vectors (16 images innermost). A strided
convolution first splits its input into s*s phases (space-to-depth), after which
each tap is again a constant shift.

Variants of one convolution (``Variant``), timed against each other per layer:
"sparse" (each output channel's nonzeros; the tile of V vectors stays in
registers), "grouped" (R channels share the union of their patterns), "dense"
(every weight, R channels x V vectors per tile), "channels" (every weight, 16
output channels per vector: small single images), "rows" (16 images: each
output channel's nonzeros grouped by kernel row, so the 2-3 nonzero taps of a
row share the vectors they load; see ``PackedRows``), "cols" (one picture
whose output plane is whole vectors, such as 4x4: each input channel's taps
are first gathered into a compact buffer, so a nonzero costs one aligned run
of vectors with no lanes on borders) and "torch" (torch's conv2d). Several
images per pass can also split the input channels into chunks and the
positions into blocks, so that what a pass reads stays in cache, and
run tile-major (``tiles``): each tile of positions runs every output channel
while its inputs stay in L1, instead of each output channel sweeping every
position.

The kernel (``sparse_conv.cpp``) is built once per machine with
``torch.utils.cpp_extension.load_inline`` (-O3 -march=native) into torch's
extension cache and reused from there; it runs on its own small thread pool and
takes the thread count on every call. A vector is 16 floats: one zmm register with
AVX-512, two ymm halves without it (AVX2), where only half as many fit in registers;
the tiles offered per layer follow that (``fits_registers``). Approach after Elsen et al. 2020, "Fast
Sparse ConvNets" (per-output-channel nonzeros, output tile in registers, inner
loop over spatial positions), carried to 3x3 and strided convolutions by the
flat shifted layout.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from prune.errors import PruneBenchError

SOURCE = Path(__file__).with_name("sparse_conv.cpp")
VEC = 16  # floats per vector (one AVX-512 register, two AVX2 ones); also the layout's alignment unit
# (R, V) pairs compiled into the extension: R output channels share a pattern, V vectors per tile
KERNELS = ((1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 8), (1, 12), (1, 16), (2, 1), (2, 2), (3, 1), (3, 2),
           (4, 1), (4, 2), (4, 4), (4, 6), (6, 1), (6, 4), (8, 1), (8, 2), (8, 3), (12, 2))
CFLAGS = ["-O3", "-march=native", "-std=c++17", "-pthread"]  # no -ffast-math: it splits FMAs apart


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


@functools.lru_cache(maxsize=1)
def _load():
    """Build (first use on this machine, about 15 s) or load the cached C++ extension."""
    import shutil
    import warnings

    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # the ninja wheel's binary sits beside python, often not on PATH
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass  # load_inline then says ninja is missing, and kernel_module() passes that on

    from prune.platform import cpu_name

    source = SOURCE.read_text()
    # the name carries a hash of source, flags and CPU (-march=native), so no stale or foreign build loads
    digest = hashlib.sha1((source + " ".join(CFLAGS) + cpu_name()).encode()).hexdigest()[:10]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cpp_extension.load_inline(
            name=f"prunebench_sparse_conv_{digest}",
            cpp_sources=[source],
            extra_cflags=CFLAGS,
            extra_ldflags=["-pthread"],
            no_implicit_headers=True,  # pybind11 only: a much faster build than torch/extension.h
            verbose=bool(os.environ.get("PRUNEBENCH_VERBOSE_BUILD")),
        )


def kernel_module():
    """The compiled kernel module, or a one-line PruneBenchError saying why it cannot be built here."""
    try:
        return _load()
    except Exception as e:  # compiler missing, ninja missing, build error: all mean "cannot build here"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PruneBenchError(
            f"cannot build the sparse convolution kernel ({first[:160]}): it needs g++ and ninja (pip install ninja)"
        ) from None


def vector_registers() -> int:
    """How many 16-float vectors the compiled kernel can keep in registers: 32 with AVX-512, 8 without."""
    return int(getattr(kernel_module(), "vector_registers", 32))


def fits_registers(kind: str, R: int, V: int, regs: int | None = None) -> bool:
    """Whether a tile of R channels x V vectors keeps its live values in registers (see ``kVRegs`` in the C++).

    A tile that does not spills its accumulators at every multiply-add: on an AVX2
    machine (8 such vectors) the AVX-512-sized tiles ran 3-10x slower than torch.
    Live values: the accumulators (times the C++'s U independent sets for small
    tiles), one input vector and one broadcast weight; the rows kernel keeps its V
    accumulators, one input vector and the 3 broadcast weights of a kernel row (a
    broadcast is one ymm, half a vector, on AVX2); the stack kernel R x V accumulators
    (R output rows), one input vector and a kernel column's 3 weights.
    """
    regs = vector_registers() if regs is None else regs
    if kind == "rows":
        return V + 1 + (3 if regs >= 32 else 2) <= regs
    if kind == "stack":  # R rows x V vectors of accumulators, one input vector, a kernel column's 3 weights
        return R * V + 1 + (3 if regs >= 32 else 2) <= regs
    rv = R * V
    if regs >= 32:
        u = 1 if rv >= 8 else (2 if rv >= 4 else 4)
    else:
        u = 1 if rv >= 4 else (2 if rv >= 2 else 4)
    return u * rv + 2 <= regs


def rest_threads() -> None:
    """Let the kernel's idle threads sleep at once (no spinning) until its next call: for when another
    engine's threads take the cores next."""
    kernel_module().rest()


def unavailable() -> str | None:
    """Why the kernel cannot run here, or None."""
    try:
        kernel_module()
    except PruneBenchError as e:
        return str(e)
    return None


# ---------------------------------------------------------------------------- layout
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

    torch's linear costs 25-40 us here inside a pass (its thread pool against ours) for a
    microsecond of work; all operands are contiguous fp32 (``x``: (n, C), ``weight``: (K, C)).
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


# ---------------------------------------------------------------------------- weights
@dataclasses.dataclass
class PackedWeights:
    """Nonzeros of a convolution's weights, R output channels per group sharing the union of their patterns."""

    R: int
    gptr: torch.Tensor  # (groups + 1,) int64: group g's entries are [gptr[g], gptr[g+1])
    src: torch.Tensor  # (entries,) int32: flat input offset of each entry
    val: torch.Tensor  # (entries, R) float32: the R weights of each entry (zeros where a channel has none)
    bias: torch.Tensor  # (Cout,) float32
    cout: int
    ci: torch.Tensor  # (entries,) int32: input channel of each entry (to split the work into channel chunks)
    cols: bool = False  # offsets into the cols kernel's gathered buffer, not into the layout
    _chunks: dict = dataclasses.field(default_factory=dict, repr=False)  # chunk size -> chunk_pointers result

    def chunk_pointers(self, cin: int, chunk: int) -> tuple[torch.Tensor, int]:
        """(groups, chunks + 1) int64 entry pointers for input-channel chunks of ``chunk`` channels, and the count."""
        chunk = chunk if chunk and chunk < cin else cin
        cached = self._chunks.get(chunk)
        if cached is not None:
            return cached
        groups = self.gptr.numel() - 1
        nchunks = -(-cin // chunk)
        if nchunks == 1:
            ptr = torch.stack([self.gptr[:-1], self.gptr[1:]], 1)
        else:
            # entries are sorted by input channel within each group: a chunk starts at the first entry
            # whose channel reaches it (searchsorted over group * cin + channel, which is sorted overall)
            group_of = torch.repeat_interleave(torch.arange(groups, dtype=torch.int64), self.gptr.diff())
            flat = group_of * cin + self.ci.long()
            starts = torch.arange(groups, dtype=torch.int64).view(-1, 1) * cin + torch.arange(nchunks + 1).view(1, -1) * chunk
            starts[:, -1] = torch.arange(1, groups + 1) * cin
            ptr = torch.searchsorted(flat, starts.reshape(-1)).view(groups, nchunks + 1)
        self._chunks[chunk] = (ptr.contiguous(), nchunks)
        return self._chunks[chunk]

    @classmethod
    def pack(cls, weight: torch.Tensor, bias: torch.Tensor | None, offsets: torch.Tensor, R: int, dense: bool = False):
        """``offsets`` from ``ConvGeometry.tap_offsets``; ``dense`` keeps every weight (a dense direct conv)."""
        cout = weight.shape[0]
        k = weight[0].numel()
        groups = (cout + R - 1) // R
        w = torch.zeros(groups * R, k)
        w[:cout] = weight.detach().reshape(cout, k).float()
        w = w.view(groups, R, k)
        if int(offsets.max()) >= 2**31:
            raise PruneBenchError("activation too large for the sparse kernel's 32-bit offsets: use a smaller batch")
        taps = k // weight.shape[1]
        channel = torch.arange(k, dtype=torch.int32) // taps
        b = torch.zeros(cout) if bias is None else bias.detach().float().clone()
        if dense:  # every (input channel, tap) in every group: no masks to gather with
            gptr = torch.arange(groups + 1, dtype=torch.int64) * k
            src = offsets.reshape(1, k).expand(groups, k).reshape(-1).to(torch.int32).contiguous()
            val = w.permute(0, 2, 1).reshape(groups * k, R).contiguous()
            return cls(R, gptr, src, val, b.contiguous(), cout, channel.repeat(groups))
        keep = (w != 0).any(1)
        gptr = torch.zeros(groups + 1, dtype=torch.int64)
        gptr[1:] = keep.sum(1).cumsum(0)
        src = offsets.reshape(1, k).expand(groups, k)[keep].to(torch.int32).contiguous()
        val = w.permute(0, 2, 1)[keep].contiguous()
        ci = channel.expand(groups, k)[keep].contiguous()
        return cls(R, gptr, src, val, b.contiguous(), cout, ci)

    @classmethod
    def pack_cols(cls, weight: torch.Tensor, bias: torch.Tensor | None, geom: "ConvGeometry"):
        """The nonzeros with offsets into the cols kernel's gathered taps (``cols_offsets``), one channel per group."""
        return dataclasses.replace(cls.pack(weight, bias, cols_offsets(geom), 1), cols=True)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed weights (offsets, values, group pointers, bias) as the kernel reads them."""
        return sum(t.numel() * t.element_size() for t in (self.gptr, self.src, self.val, self.bias))


# a kernel row's nonzero taps (bit kx set) -> entry class, and the taps each class multiplies, in order
_ROW_CLASS = torch.tensor([-1, 0, 0, 1, 0, 2, 1, 3])
_ROW_TAPS = {1: (0,), 2: (1,), 4: (2,), 3: (0, 1), 6: (1, 2), 5: (0, 2), 7: (0, 1, 2)}
_ROW_WIDTH = (1, 2, 2, 3)  # weights per entry of each class


@dataclasses.dataclass
class PackedRows:
    """Nonzeros of a 3-wide convolution grouped by kernel row, for the "rows" kernel.

    Each entry is one (input channel, ky) row of one output channel with at least one
    nonzero tap, in one of four classes by its taps: one tap, {0,1} or {1,2}, {0,2},
    all three; ``src`` is the input offset of its first tap, ``val`` its 1-3 weights.
    Entries are sorted by (output channel, input chunk, class).
    """

    rptr: torch.Tensor  # (cout * chunks, 5) int64: entries of class k are [rptr[s, k], rptr[s, k + 1])
    vptr: torch.Tensor  # (cout * chunks, 4) int64: where class k's weights start in val
    src: torch.Tensor  # (entries,) int32
    val: torch.Tensor  # (weights,) float32
    bias: torch.Tensor  # (cout,) float32
    cout: int
    nchunks: int

    @classmethod
    def pack(cls, weight: torch.Tensor, bias: torch.Tensor | None, offsets: torch.Tensor, chunk: int = 0):
        cout, cin, kh, kw = weight.shape
        if kw != 3:
            raise PruneBenchError("the rows kernel takes 3-wide kernels (the stack kernel 3-high ones)")
        chunk = chunk if chunk and chunk < cin else cin
        nchunks = -(-cin // chunk)
        w = weight.detach().float()
        nz = (w != 0).long()
        pattern = nz[..., 0] + 2 * nz[..., 1] + 4 * nz[..., 2]  # (cout, cin, kh)
        co, ci, ky = (pattern > 0).nonzero(as_tuple=True)
        pat = pattern[co, ci, ky]
        klass = _ROW_CLASS[pat]
        seg = co * nchunks + ci // chunk
        order = torch.argsort(((seg * 4 + klass) * cin + ci) * kh + ky, stable=True)
        co, ci, ky, pat, klass, seg = co[order], ci[order], ky[order], pat[order], klass[order], seg[order]
        taps = torch.full((8, 3), -1, dtype=torch.int64)
        for bits, t in _ROW_TAPS.items():
            taps[bits, : len(t)] = torch.tensor(t)
        tap = taps[pat]  # (entries, 3): the taps of each entry, -1 past its width
        values = w[co.view(-1, 1), ci.view(-1, 1), ky.view(-1, 1), tap.clamp_min(0)]
        val = values[tap >= 0].contiguous()  # entry by entry, its taps in order
        if offsets.numel() and int(offsets.max()) >= 2**31:
            raise PruneBenchError("activation too large for the sparse kernel's 32-bit offsets: use a smaller batch")
        src = offsets[ci, ky, tap[:, 0]].to(torch.int32).contiguous()
        nseg = cout * nchunks
        counts = torch.bincount(seg * 4 + klass, minlength=nseg * 4)
        width = torch.tensor(_ROW_WIDTH).repeat(nseg)
        flat = torch.zeros(nseg * 4 + 1, dtype=torch.int64)
        flat[1:] = counts.cumsum(0)
        vflat = torch.zeros(nseg * 4 + 1, dtype=torch.int64)
        vflat[1:] = (counts * width).cumsum(0)
        idx = torch.arange(nseg).view(-1, 1) * 4
        rptr = flat[idx + torch.arange(5)].contiguous()
        vptr = vflat[idx + torch.arange(4)].contiguous()
        b = torch.zeros(cout) if bias is None else bias.detach().float().clone()
        return cls(rptr, vptr, src, val, b.contiguous(), cout, nchunks)

    @classmethod
    def pack_stack(cls, weight: torch.Tensor, bias: torch.Tensor | None, offsets: torch.Tensor, chunk: int = 0):
        """For the "stack" kernel: entries are kernel columns, the rows packing of the transposed kernel
        (taps ky = 0, 1, 2 of one (input channel, kx), ``src`` the offset of the first nonzero one)."""
        return cls.pack(weight.transpose(2, 3), bias, offsets.transpose(1, 2), chunk)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.rptr, self.vptr, self.src, self.val, self.bias))


def dense_nbytes(weight: torch.Tensor, bias_len: int) -> int:
    """Bytes of the same weights stored densely in fp32 (with the bias)."""
    return (weight.numel() + bias_len) * 4


# ---------------------------------------------------------------------------- one convolution
@dataclasses.dataclass(frozen=True)
class Variant:
    """How one convolution is computed: ``kind`` is "sparse" (R=1), "grouped" (R>1, union pattern),
    "dense" (every weight, own kernel), "channels" (every weight, 16 output channels per vector: for
    small images), "rows" (16 images: a kernel row's taps share their loads), "stack" (one picture whose
    width is whole vectors: a kernel column's taps share their loads across R output rows), "cols" (one
    small picture over its gathered taps) or "torch" (torch's dense conv2d on a view of the layout)."""

    kind: str
    R: int = 1
    V: int = 1
    block: int = 0  # flat elements per work item (0: the whole plane)
    chunk: int = 0  # input channels per pass (0: all), so a pass's input planes stay in cache
    tiles: bool = False  # position tiles outermost: each tile runs every output channel while its inputs stay in L1

    def __str__(self) -> str:
        if self.kind in ("torch", "channels"):
            return self.kind
        extra = (f",block={self.block}" if self.block else "") + (f",chunk={self.chunk}" if self.chunk else "")
        extra += ",tiles" if self.tiles else ""
        return f"{self.kind}(R={self.R},V={self.V}{extra})"


class ConvOp:
    """One convolution + bias (+ residual) (+ ReLU) between buffers of the flat layout, as one variant.

    ``weight``/``bias`` are the BN-folded fp32 parameters; ``residual`` (same geometry
    as the output) is added before the ReLU. Where the geometry is not ``direct`` the
    op reads ``phases``, which the caller fills (``ConvGeometry.fill_phases``) first.
    """

    def __init__(self, geom: ConvGeometry, weight: torch.Tensor, bias: torch.Tensor | None, variant: Variant,
                 inp: torch.Tensor, out: torch.Tensor, phases: torch.Tensor | None, residual: torch.Tensor | None,
                 relu: bool, threads: int, mask: torch.Tensor | None = None, packed: PackedWeights | None = None):
        self.geom, self.variant, self.relu, self.threads = geom, variant, relu, threads
        self.inp, self.out, self.phases, self.residual = inp, out, phases, residual
        self.weight = weight.detach().float().contiguous()
        self.bias = None if bias is None else bias.detach().float().contiguous()
        if variant.kind == "torch":
            self._call = self._torch
            return
        self.mask = geom.out.mask() if mask is None else mask
        t0, t1 = geom.out.valid_range()
        block = variant.block or (t1 - t0)
        src_buf = inp if geom.direct else phases
        res_ptr = residual.data_ptr() if residual is not None else 0
        res_stride = residual.stride(0) if residual is not None else 0
        if variant.kind == "channels":
            if geom.out.N != 1 or not (geom.out.W in (4, 8) or geom.out.W % 16 == 0):
                raise PruneBenchError("the channels kernel takes one image 4, 8 or a multiple of 16 wide")
            if packed is None or packed.R != 16:
                packed = PackedWeights.pack(self.weight, self.bias, geom.tap_offsets(), 16, dense=True)
            self.packed = p = packed
            self.bias16 = torch.zeros(-(-p.cout // 16) * 16)
            self.bias16[: p.cout] = p.bias
            self._args = (
                src_buf.data_ptr(), out.data_ptr(), out.stride(0), p.cout, t0, geom.out.H, geom.out.W, geom.out.pitch,
                p.gptr.data_ptr(),
                p.src.data_ptr(), p.val.data_ptr(), self.bias16.data_ptr(), res_ptr, res_stride, self.mask.data_ptr(),
                relu, threads,
            )
            self._conv = kernel_module().conv_channels
            self._call = self._kernel
            return
        if variant.kind == "cols":
            if not cols_fit(geom):
                raise PruneBenchError("the cols kernel takes one picture whose output plane is whole vectors, at most "
                                      f"{COLS_MAX_POSITIONS} positions, and whose gathered taps fit {COLS_MAX_BYTES // 1024} KiB")
            i, o = geom.inp, geom.out
            kh, kw = geom.kernel
            positions = o.H * o.W
            if variant.V not in COLS_V or positions % (VEC * variant.V):
                raise PruneBenchError(f"the cols kernel's tile of {variant.V} vectors does not divide a plane of "
                                      f"{positions} positions into whole tiles")
            if packed is None or not packed.cols:
                packed = PackedWeights.pack_cols(self.weight, self.bias, geom)
            self.packed = p = packed
            self.col = torch.empty(i.C * kh * kw * positions)  # the gathered taps (torch aligns it to 64 bytes)
            self._args = (
                variant.V, inp.data_ptr(), inp.stride(0), i.C, i.pitch, i.B, geom.stride, kh, kw, geom.padding, o.H, o.W,
                self.col.data_ptr(), out.data_ptr(), out.stride(0), o.pitch, o.B, p.cout, p.gptr.data_ptr(),
                p.src.data_ptr(), p.val.data_ptr(), p.bias.data_ptr(), res_ptr, res_stride, relu, threads,
            )
            self._conv = kernel_module().conv_cols
            self._call = self._kernel
            return
        o = geom.out
        if variant.kind == "stack":
            if not stack_fit(geom):
                raise PruneBenchError("the stack kernel takes stride-1 3-high convolutions of one picture whose "
                                      "width is a multiple of 16")
            if (variant.R, variant.V) not in STACK_TILES or (o.W // VEC) % variant.V:
                raise PruneBenchError(f"no stack kernel of {variant.R} rows x {variant.V} vectors for a row of {o.W}")
            if not isinstance(packed, PackedRows):
                packed = PackedRows.pack_stack(self.weight, self.bias, geom.tap_offsets(), variant.chunk)
            self.packed = p = packed
            self._args = (
                variant.R, variant.V, src_buf.data_ptr(), out.data_ptr(), out.stride(0), p.cout, t0, o.H, o.W,
                o.pitch, p.rptr.data_ptr(), p.vptr.data_ptr(), p.nchunks, p.src.data_ptr(), p.val.data_ptr(),
                p.bias.data_ptr(), res_ptr, res_stride, relu, variant.tiles, threads,
            )
            self._conv = kernel_module().conv_stack
            self._call = self._kernel
            return
        # with whole vectors per image row, skip the wrap-around positions between rows instead of masking them
        row_len = o.W * o.N if (o.W * o.N) % VEC == 0 and o.N > 1 else 0
        if variant.kind == "rows":
            if not rows_fit(geom):
                raise PruneBenchError("the rows kernel takes stride-1 3-wide convolutions of 16 images")
            if not isinstance(packed, PackedRows):
                packed = PackedRows.pack(self.weight, self.bias, geom.tap_offsets(), variant.chunk)
            self.packed = p = packed
            self._args = (
                variant.V, src_buf.data_ptr(), out.data_ptr(), out.stride(0), p.cout, t0, t1, block, o.pitch * o.N,
                row_len, p.rptr.data_ptr(), p.vptr.data_ptr(), p.nchunks, p.src.data_ptr(), p.val.data_ptr(),
                p.bias.data_ptr(), res_ptr, res_stride, self.mask.data_ptr(), relu, variant.tiles, threads,
            )
            self._conv = kernel_module().conv_rows
            self._call = self._kernel
            return
        if packed is None or packed.R != variant.R:
            packed = PackedWeights.pack(self.weight, self.bias, geom.tap_offsets(), variant.R, dense=variant.kind == "dense")
        self.packed = p = packed
        self.cptr, nchunks = p.chunk_pointers(geom.inp.C, variant.chunk)
        self._args = (
            variant.R, variant.V, src_buf.data_ptr(), out.data_ptr(), out.stride(0), p.cout, t0, t1, block,
            o.pitch * o.N, row_len, self.cptr.data_ptr(), nchunks, p.src.data_ptr(), p.val.data_ptr(), p.bias.data_ptr(), res_ptr, res_stride,
            self.mask.data_ptr(), relu, variant.tiles, threads,
        )
        self._conv = kernel_module().conv
        self._call = self._kernel

    def _kernel(self) -> None:
        self._conv(*self._args)

    def _torch(self) -> None:
        g = self.geom
        y = F.conv2d(g.inp.interior(self.inp), self.weight, self.bias, stride=g.stride, padding=g.padding)
        if self.residual is not None:
            y += g.out.interior(self.residual)
        if self.relu:
            y.relu_()
        g.out.interior(self.out).copy_(y)

    def __call__(self) -> None:
        self._call()

    @property
    def nbytes(self) -> int:
        """Bytes of the weights this variant keeps."""
        if self.variant.kind == "torch":
            return dense_nbytes(self.weight, self.weight.shape[0])
        return self.packed.nbytes


ROWS_V = (2, 4, 6, 8, 12)  # tiles compiled for the rows kernel


COLS_V = (1, 2, 4)  # tiles compiled for the cols kernel
COLS_MAX_POSITIONS = 1024  # the C++'s per-channel sum buffer
# the gathered taps must stay in L2 while every output channel reads them: on an 8x8 plane of 256 channels
# (590 KB) the cols kernel ran 15% slower than the layout's, on a 4x4 plane of 512 (295 KB) 1.3-1.6x faster
COLS_MAX_BYTES = 384 * 1024


def cols_fit(geom: ConvGeometry) -> bool:
    """Whether the cols kernel applies: one picture whose output plane is whole vectors (4x4, 8x8, ...) and
    whose gathered taps fit in L2 (``COLS_MAX_BYTES``)."""
    positions = geom.out.H * geom.out.W
    col_bytes = geom.inp.C * geom.kernel[0] * geom.kernel[1] * positions * 4
    return (geom.inp.N == 1 and positions % VEC == 0 and positions <= COLS_MAX_POSITIONS
            and col_bytes <= COLS_MAX_BYTES)


def cols_tile(geom: ConvGeometry) -> int:
    """The cols kernel's tile: the widest compiled V that divides the plane and fits the registers."""
    vectors = geom.out.H * geom.out.W // VEC
    return max(v for v in COLS_V if vectors % v == 0 and fits_registers("sparse", 1, v))


def cols_offsets(geom: ConvGeometry) -> torch.Tensor:
    """(Cin, kh, kw) int64: where each (input channel, tap) starts in the cols kernel's gathered buffer."""
    kh, kw = geom.kernel
    positions = geom.out.H * geom.out.W
    return (torch.arange(geom.inp.C * kh * kw, dtype=torch.int64) * positions).view(geom.inp.C, kh, kw)


def rows_fit(geom: ConvGeometry) -> bool:
    """Whether the rows kernel applies: a 3-wide stride-1 conv over 16 images, so kx shifts by one vector."""
    return geom.direct and geom.kernel[1] == 3 and geom.inp.N == VEC


STACK_TILES = ((2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (8, 1), (2, 2), (4, 2), (6, 2))  # (rows, V) compiled


def stack_fit(geom: ConvGeometry) -> bool:
    """Whether the stack kernel applies: a stride-1 3-high conv of one picture whose rows are whole vectors."""
    return geom.direct and geom.kernel[0] == 3 and geom.inp.N == 1 and geom.out.W % VEC == 0


def stack_tiles(geom: ConvGeometry, regs: int | None = None) -> list[tuple[int, int]]:
    """The stack kernel's (rows, V) tiles worth timing: the two tallest one vector wide and the tallest two
    wide that fit the registers and the plane (on AVX2: 5 and 4 rows, 2 x 2; one thread, 64 channels 32x32 at
    50%: 0.66 ms with 4 rows, 0.72 with 6, which spill, 0.79 with 2 x 2, against 0.84 for the per-weight kernel)."""
    regs = vector_registers() if regs is None else regs
    fit = [t for t in STACK_TILES if (geom.out.W // VEC) % t[1] == 0 and t[0] <= geom.out.H
           and fits_registers("stack", t[0], t[1], regs)]
    one = sorted(t[0] for t in fit if t[1] == 1)[-2:]
    two = sorted(t[0] for t in fit if t[1] == 2)[-1:]
    return [(r, 1) for r in one] + [(r, 2) for r in two]


def candidate_variants(geom: ConvGeometry, density: float, threads: int = 1, everything: bool = False) -> list[Variant]:
    """The variants worth timing for this layer: sparse tilings, grouped, dense, torch.

    Tiles (V) are the largest that fit the plane. Several images per plane also try
    input-channel chunks and position blocks, which keep what a pass reads and the
    partial sums it writes in cache; with more than one thread they always split the
    positions into blocks (threads splitting only the output channels would each
    stream every partial sum through memory, and two threads ran no faster than one).
    Dense variants are skipped where at most a quarter of the weights are left
    (sparse wins there) unless ``everything`` (profiles want both times).
    """
    t0, t1 = geom.out.valid_range()
    vectors = max(1, math.ceil((t1 - t0) / VEC))
    cin = geom.inp.C
    batched = geom.inp.N > 1
    # one picture: 16 input channels per pass kept a 32x32 layer's inputs in cache (0.40 against 0.45 ms, 64
    # channels at 50%, two threads)
    chunks = [0] + [c for c in ((8, 32) if batched else (16, 64)) if c < cin]
    blocks = [0]
    if batched:
        o = geom.out
        row = o.pitch * o.N  # whole rows per block: the kernel then skips the wrap-around in between
        per_thread = row * -(-o.H // (2 * threads)) if o.H >= 2 * threads else -(-(t1 - t0) // (2 * threads))
        blocks = [0] if threads == 1 else [per_thread]
        if vectors > 128 and (threads == 1 or per_thread > 4096):
            blocks.append(2048)
    regs = vector_registers()
    fitting = [v for r, v in KERNELS if r == 1 and v <= vectors and fits_registers("sparse", 1, v, regs)]

    def widest(r: int, most: int) -> int:  # the widest compiled tile for R = r of at most ``most`` vectors that fits
        return max(v for rr, v in KERNELS if rr == r and v <= max(1, most) and (v == 1 or fits_registers("dense", r, v, regs)))

    wide = regs >= 32  # AVX-512: the tile sizes these kernels were tuned with; else the smaller ones that fit

    out = []
    if density > 0:
        for v in fitting[-2:] if batched else fitting[-3:]:
            out += [Variant("sparse", 1, v, b, c) for c in chunks for b in blocks]
        if batched:  # position tiles outermost, with input chunks small enough that a tile's inputs stay in L1
            tile_chunks = [0] + [c for c in (16, 32) if c < cin]
            kinds = ("sparse", "rows") if rows_fit(geom) else ("sparse",)
            tile_v = {"sparse": (4, 8) if wide else (3, 6), "rows": (4, 6) if wide else (2, 4)}
            out += [Variant(k, 1, v, blocks[-1], c, True) for k in kinds for v in tile_v[k] if v <= vectors
                    for c in tile_chunks]
        if cols_fit(geom):
            out.append(Variant("cols", 1, cols_tile(geom)))
        if stack_fit(geom):
            out += [Variant("stack", r, v, 0, c, order) for r, v in stack_tiles(geom, regs)
                    for c in [0] + [c for c in (16, 32, 64) if c < cin] for order in (False, True)]
        if density > 0.1:
            out += [Variant("grouped", 4, widest(4, vectors), blocks[-1], c) for c in chunks[:2]]
    else:
        out.append(Variant("sparse", 1, 1, blocks[-1]))  # every weight zero: bias (+ residual, ReLU) only
    if density > 0.25 or everything:
        for r in (8, 4) if wide else (6, 4):
            out += [Variant("dense", r, widest(r, vectors), b, c) for c in chunks[::2] for b in blocks]
        w = geom.out.W
        if geom.out.N == 1 and (w in (4, 8) or w % 16 == 0):  # lanes over channels waste none on borders
            out.append(Variant("channels", 16, 1))
        # one image with AVX-512: our dense kernel wins, and torch's threads spin under load; on AVX2 torch's
        # (oneDNN) often beats our smaller tiles
        if batched or everything or not wide:
            out.append(Variant("torch"))
    return out


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
