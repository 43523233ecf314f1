"""The kernel kinds, one object each, and one convolution run as one of their variants (``ConvOp``).

A kind says when it applies to a geometry, which variants (tiles, input-channel chunks,
position blocks, tile-major order) it offers on the instruction set built, how it packs
its weights, which compiled entry runs it and with what arguments, whether it skips zero
weights and whether a strided conv reads phase planes through it. ``KINDS`` lists them in
order of preference; the engine walks that list. Adding a kind: one object here and its
section of ``sparse_conv.cpp``.

The kinds: "sparse" (each output channel's nonzeros, a tile of V vectors in registers; after
Elsen et al. 2020, "Fast Sparse ConvNets"), "sweep" (16 images: each tile runs every output
channel, input chunk by chunk), "jit" (16 images: code written for the layer's nonzeros, R
output channels in registers, each input column loaded once for all of them; ``jit.py``),
"rows" (16 images: the 2-3 nonzero taps of a kernel row share the vectors they load),
"panel" (one picture: R output channels in registers, each input column loaded once for all
of them that read it; after Wilkinson et al. 2023), "cols" (one small picture over its
gathered taps), "stack" (one picture whose rows are whole vectors: a kernel column's taps
share their loads across R output rows), "grouped" (R channels share the union of their
patterns), "dense" (every weight, R channels x V vectors per tile), "winograd" (every
weight, 3x3 convs of 16 images as Winograd's F(4x4, 3x3), 4x fewer multiply-adds),
"channels" (every weight, 16 output channels per vector) and "torch" (torch's conv2d on a
view of the layout).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F

from bench.kernels.build import built_isa, kernel_module, vector_registers
from bench.kernels.jit import PackedJit
from bench.kernels.jit import regs_fit as jit_regs_fit
from bench.kernels.layout import VEC, ConvGeometry
from bench.kernels.pack import PackedPanels, PackedRows, PackedSweep, PackedWeights, PackedWinograd, dense_nbytes
from prune.errors import PruneBenchError
from prune.platform import cache_bytes

# (R, V) pairs compiled into the extension's ``conv``: R output channels share a pattern, V vectors per tile
KERNELS = ((1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 8), (1, 12), (1, 16), (2, 1), (2, 2), (3, 1), (3, 2),
           (4, 1), (4, 2), (4, 4), (4, 6), (6, 1), (6, 4), (8, 1), (8, 2), (8, 3), (12, 2))
ROWS_V = (2, 4, 6, 8, 12)  # tiles compiled for the rows kernel
SWEEP_TILES = ((1, 2), (1, 3), (1, 4), (1, 6), (1, 8), (2, 2), (2, 4))  # (rows, V) compiled for sweep
COLS_V = (1, 2, 4)  # tiles compiled for the cols kernel
COLS_MAX_POSITIONS = 1024  # the C++'s per-channel sum buffer
COLS_MAX_BYTES = 384 * 1024  # the gathered taps must stay in L2 while every output channel reads them
PANEL_TILES = ((2, 2), (2, 3), (2, 4), (4, 1), (4, 4), (4, 6))  # (R, V) compiled for the panel kernel
# (R, V) compiled for the Winograd product, in order of preference: R = 16 channels of one tile first, whose
# small block of transformed inputs stays in L2 on the 32x32 and 16x16 planes
WINO_TILES = ((16, 1), (4, 4), (4, 6), (2, 2), (1, 4))
JIT_R = {True: 24, False: 6}  # output channels per group in the jit kernel: AVX-512 (32 registers), AVX2 (16 ymm)
JIT_MAX_DENSITY = 0.4  # the jit kind is offered up to this fraction of weights left
STACK_TILES = ((2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (8, 1), (2, 2), (4, 2), (6, 2))  # (rows, V) compiled


@dataclasses.dataclass(frozen=True)
class Variant:
    """How one convolution is computed: a kind (``KINDS``) and its tiling."""

    kind: str
    R: int = 1
    V: int = 1
    block: int = 0  # flat elements per work item (0: the whole plane)
    chunk: int = 0  # input channels per pass (0: all), so a pass's input planes stay in cache
    tiles: bool = False  # position tiles outermost: each tile runs every output channel while its inputs stay in L1

    def __str__(self) -> str:
        if self.kind in KINDS and not KINDS[self.kind].tiled:
            return self.kind
        extra = (f",block={self.block}" if self.block else "") + (f",chunk={self.chunk}" if self.chunk else "")
        extra += ",tiles" if self.tiles else ""
        return f"{self.kind}(R={self.R},V={self.V}{extra})"


def tile_fits(R: int, V: int, regs: int) -> bool:
    """Whether the per-weight tile of R channels x V vectors keeps its accumulators (times the C++'s U
    independent sets for small tiles), one input vector and one broadcast weight in ``regs`` registers."""
    rv = R * V
    if regs >= 32:
        u = 1 if rv >= 8 else (2 if rv >= 4 else 4)
    else:
        u = 1 if rv >= 4 else (2 if rv >= 2 else 4)
    return u * rv + 2 <= regs


@dataclasses.dataclass
class Offer:
    """What the kinds' offers for one conv depend on: its geometry and density, the threads and the build."""

    geom: ConvGeometry
    density: float
    threads: int
    everything: bool  # dense variants of very sparse layers too (profiles want both times)
    regs: int  # the build's vector registers

    @property
    def batched(self) -> bool:
        return self.geom.inp.N > 1

    @property
    def wide(self) -> bool:  # AVX-512: the tile sizes these kernels were tuned with; else smaller ones that fit
        return self.regs >= 32

    @functools.cached_property
    def vectors(self) -> int:
        t0, t1 = self.geom.out.valid_range()
        return max(1, math.ceil((t1 - t0) / VEC))

    @functools.cached_property
    def chunks(self) -> list[int]:
        """Input-channel chunks: small enough that one pass's input planes stay in cache."""
        cin = self.geom.inp.C
        return [0] + [c for c in ((8, 32) if self.batched else (16, 64)) if c < cin]

    @functools.cached_property
    def blocks(self) -> list[int]:
        """Position blocks. With several threads always whole-row blocks, one or more per thread: threads that
        split only the output channels would each stream every partial sum through memory."""
        if not self.batched:
            return [0]
        o = self.geom.out
        t0, t1 = o.valid_range()
        row = o.pitch * o.N  # whole rows per block: the kernel then skips the wrap-around in between
        t = self.threads
        per_thread = row * -(-o.H // (2 * t)) if o.H >= 2 * t else -(-(t1 - t0) // (2 * t))
        blocks = [0] if t == 1 else [per_thread]
        if self.vectors > 128 and (t == 1 or per_thread > 4096):
            blocks.append(2048)
        return blocks

    def widest(self, r: int, most: int) -> int:
        """The widest compiled tile for R = r of at most ``most`` vectors that fits the registers."""
        return max(v for rr, v in KERNELS if rr == r and v <= max(1, most) and (v == 1 or tile_fits(r, v, self.regs)))

    @property
    def dense_worth(self) -> bool:
        """Dense variants are skipped where at most a quarter of the weights are left (sparse wins there)."""
        return self.density > 0.25 or self.everything


class Kind:
    """One kind of kernel. Subclasses override what differs; ``ConvOp`` and the engine only call these."""

    name = ""
    skips_zeros = True  # its cost falls with the zero weights (a "sparse" variant in reports)
    reads_phases = True  # a strided conv of this kind reads the phase planes (else the input itself)
    compiled: tuple[tuple[int, int], ...] = ()  # (R, V) tiles compiled into its C++ entry
    tiled = True  # its variants differ by tile (else one variant, named by the kind alone)
    # it can write its output over its residual: each output element's residual is read before anything is
    # written there (no partial sums through the output first)
    in_place = False

    def fits(self, R: int, V: int, regs: int) -> bool:
        """Whether a tile of R x V keeps its live values in ``regs`` vector registers (else it spills)."""
        return tile_fits(R, V, regs)

    def applies(self, geom: ConvGeometry) -> bool:
        return True

    def offer(self, o: Offer) -> list[Variant]:
        """The variants of this kind worth timing for ``o``'s conv (none where it does not apply)."""
        return []

    def check(self, geom: ConvGeometry, v: Variant) -> None:
        """A one-line PruneBenchError where ``v`` cannot run on ``geom``."""
        if self.compiled and (v.R, v.V) not in self.compiled:
            raise PruneBenchError(f"no {self.name} kernel of R={v.R}, V={v.V} is compiled")

    def pack_key(self, v: Variant) -> tuple:
        """Variants of one conv with the same key share their packed weights."""
        return (self.name, v.chunk)

    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None, geom: ConvGeometry, v: Variant):
        raise NotImplementedError

    def pack_for(self, op: "ConvOp", packed):
        """``packed`` if ``op`` can run it, else weights packed for ``op`` (code written for an output that
        holds its residual differs)."""
        return packed if packed is not None else self.pack(op.weight, op.bias, op.geom, op.variant)

    def bind(self, op: "ConvOp", v: Variant, p) -> tuple:
        """The compiled entry that runs ``op`` and its arguments."""
        raise NotImplementedError

    def nbytes(self, op: "ConvOp") -> int:
        return op.packed.nbytes


def _span(op: "ConvOp", v: Variant) -> tuple[int, int, int, int, int]:
    """(t0, t1, block, row pitch, row length) of the output: with whole vectors per image row the kernel skips
    the wrap-around positions between rows (row length > 0) instead of masking them."""
    o = op.geom.out
    t0, t1 = o.valid_range()
    row_len = o.W * o.N if (o.W * o.N) % VEC == 0 and o.N > 1 else 0
    return t0, t1, v.block or (t1 - t0), o.pitch * o.N, row_len


class PerWeight(Kind):
    """One entry per nonzero (input channel, tap) of each group of R output channels (``PackedWeights``)."""

    dense = False  # every weight, zeros included

    def pack_key(self, v: Variant) -> tuple:
        return ("weights", self.dense, v.R)

    def pack(self, weight, bias, geom, v):
        return PackedWeights.pack(weight, bias, geom.tap_offsets(), v.R, dense=self.dense)

    def bind(self, op, v, p):
        t0, t1, block, row_pitch, row_len = _span(op, v)
        cptr, nchunks = p.chunk_pointers(op.geom.inp.C, v.chunk)
        return kernel_module().conv, (
            v.R, v.V, op.source.data_ptr(), op.out.data_ptr(), op.out.stride(0), p.cout, t0, t1, block, row_pitch,
            row_len, op.hold(cptr), nchunks, p.src.data_ptr(), p.val.data_ptr(), p.bias.data_ptr(), *op.residual_args,
            op.mask.data_ptr(), op.relu, v.tiles, op.threads,
        )


class Sparse(PerWeight):
    name = "sparse"
    compiled = tuple(t for t in KERNELS if t[0] == 1)

    def offer(self, o):
        if o.density == 0:  # every weight zero: bias (+ residual, ReLU) only
            return [Variant("sparse", 1, 1, o.blocks[-1])]
        fitting = [v for r, v in KERNELS if r == 1 and v <= o.vectors and tile_fits(1, v, o.regs)]
        out = [Variant("sparse", 1, v, b, c) for v in (fitting[-2:] if o.batched else fitting[-3:])
               for c in o.chunks for b in o.blocks]
        if o.batched:  # position tiles outermost, every input channel at once (in input chunks: the sweep kind)
            out += [Variant("sparse", 1, v, o.blocks[-1], 0, True) for v in ((4, 8) if o.wide else (3, 6))
                    if v <= o.vectors]
        return out


class Sweep(Kind):
    """One entry per nonzero, for 16 images: each tile of positions sweeps every output channel, input chunk by
    input chunk, in one loop (``PackedSweep``), so that a chunk's inputs under the tile stay in L1. R is the
    tile's image rows: two rows of a narrow plane (4 wide) give each nonzero twice the multiply-adds."""

    name = "sweep"
    compiled = SWEEP_TILES

    def fits(self, R, V, regs):  # R x V accumulators, one input vector, the broadcast weight
        return R * V + 2 <= regs

    def applies(self, geom):
        return geom.inp.N == VEC

    def offer(self, o):
        if o.density == 0 or not self.applies(o.geom):
            return []
        w, h = o.geom.out.W, o.geom.out.H  # a row is W vectors
        if w <= 4:
            tiles = [(1, 4)] + ([(2, 4) if o.wide else (2, 2)] if h % 2 == 0 else [])
        else:
            tiles = [(1, v) for v in ((4, 8) if o.wide else (3, 6)) if v <= w]
        return [Variant("sweep", r, v, o.blocks[-1], c, True) for r, v in tiles for c in (8, 16, 32)
                if c < o.geom.inp.C]

    def check(self, geom, v):
        if not self.applies(geom):
            raise PruneBenchError("the sweep kernel takes 16 images at a time")
        if v.R > 1 and geom.out.H % v.R:
            raise PruneBenchError(f"a sweep tile of {v.R} rows needs an output height that is a multiple of {v.R}")
        super().check(geom, v)

    def pack(self, weight, bias, geom, v):
        return PackedSweep.pack(weight, bias, geom.tap_offsets(), v.chunk)

    def bind(self, op, v, p):
        t0, t1, block, row_pitch, row_len = _span(op, v)
        return kernel_module().conv_sweep, (
            v.R, v.V, op.source.data_ptr(), op.out.data_ptr(), op.out.stride(0), p.cout, t0, t1, block, row_pitch,
            row_len, p.ends.data_ptr(), p.nchunks, p.src.data_ptr(), p.val.data_ptr(), p.bias.data_ptr(),
            *op.residual_args, op.mask.data_ptr(), op.relu, op.threads,
        )


def jit_block(geom: ConvGeometry) -> int:
    """Positions per call of the jit kernel: whole rows, as many as keep every channel's partial sums under them
    within half of L2, so that they stay there between input chunks; 0 for the whole plane. Each call runs the
    conv's whole code once: on small planes (4 x 4) more calls would fetch its megabyte or two of code that
    many times, while on larger ones a whole plane's partial sums would go through L3 in a pass."""
    o = geom.out
    rows = max(1, cache_bytes(2, 1 << 20) // 2 // (o.C * o.W * o.N * 4))
    return 0 if rows >= o.H else rows * o.pitch * o.N


class Jit(Kind):
    """Code written for this conv's nonzeros, for 16 images: R output channels in registers, each input column
    loaded once for every channel of the group that reads it (``bench.kernels.jit``)."""

    name = "jit"
    reads_phases = False  # its code steps through a strided input itself
    in_place = True  # its first chunk then starts from the residual in the output (``jit.py``)

    def fits(self, R, V, regs):
        return jit_regs_fit(R, V, "avx512" if regs >= 32 else "avx2")

    def applies(self, geom):
        return geom.inp.N == VEC

    def offer(self, o):
        # denser 3x3 layers run Winograd or dense tiles faster, and their code would be megabytes; a 1x1 conv's
        # code is small at any density, and a strided one read in place spares the pass its phase planes
        most = 1.0 if o.geom.kernel == (1, 1) else JIT_MAX_DENSITY
        if not 0 < o.density <= most or not self.applies(o.geom) or built_isa() == "generic":
            return []
        chunks = [c for c in (16, 32) if c < o.geom.inp.C] or [0]
        return [Variant("jit", JIT_R[o.wide], 1, jit_block(o.geom), c) for c in chunks]

    def check(self, geom, v):
        if not self.applies(geom):
            raise PruneBenchError("the jit kernel takes 16 images at a time")
        if built_isa() not in ("avx512", "avx2"):
            raise PruneBenchError("the jit kernel needs an AVX2 or AVX-512 build")
        if not jit_regs_fit(v.R, v.V, built_isa()):
            raise PruneBenchError(f"no jit kernel of R={v.R}, V={v.V} fits the {built_isa()} build's registers")
        if geom.out.W % v.V:
            raise PruneBenchError(f"a jit tile of V={v.V} positions needs an output width that is a multiple of {v.V}")

    def pack_key(self, v):
        return ("jit", v.R, v.V, v.chunk)

    def pack(self, weight, bias, geom, v, in_place=False):
        o, i, s = geom.out, geom.inp, geom.stride
        return PackedJit.pack(weight, bias, geom.input_offsets(), o.stride, (o.W, o.pitch * o.N), v.R, v.V, v.chunk,
                              built_isa(), (s * i.N, s * i.pitch * i.N), in_place)

    def pack_for(self, op, packed):
        if packed is not None and packed.in_place == op.in_place:
            return packed
        return self.pack(op.weight, op.bias, op.geom, op.variant, op.in_place)

    def bind(self, op, v, p):
        if op.out.stride(0) != p.ostride:
            raise PruneBenchError("the jit kernel's output has another channel stride than its code was written for")
        t0, t1, block, row_pitch, row_len = _span(op, v)
        return kernel_module().conv_jit, (
            p.table.data_ptr(), p.sizes.data_ptr(), p.ngroups, p.nchunks, p.R,
            op.source.data_ptr(), op.out.data_ptr(), p.ostride, t0, t1, block, row_pitch, row_len,
            *((0, 0) if op.in_place else op.residual_args),  # in place, the code added it at the first chunk
            op.mask.data_ptr(), op.relu, op.geom.stride, op.geom.inp.pitch * op.geom.inp.N, op.geom.inp.B,
            op.geom.out.B, op.threads,
        )


def rows_fit(geom: ConvGeometry) -> bool:
    """Whether the rows kernel applies: a 3-wide stride-1 conv over 16 images, so kx shifts by one vector."""
    return geom.direct and geom.kernel[1] == 3 and geom.inp.N == VEC


class Rows(Kind):
    name = "rows"
    compiled = tuple((1, v) for v in ROWS_V)

    def fits(self, R, V, regs):  # V accumulators, one input vector, a kernel row's 3 weights (2 ymm's worth on AVX2)
        return V + 1 + (3 if regs >= 32 else 2) <= regs

    def applies(self, geom):
        return rows_fit(geom)

    def offer(self, o):
        if o.density == 0 or not o.batched or not self.applies(o.geom):
            return []
        # tiles over every input channel: input chunks made the driver's calls too short to pay (the sweep kind's
        # single loop took over there)
        return [Variant("rows", 1, v, o.blocks[-1], 0, True) for v in ((4, 6) if o.wide else (2, 4))
                if v <= o.vectors]

    def check(self, geom, v):
        if not self.applies(geom):
            raise PruneBenchError("the rows kernel takes stride-1 3-wide convolutions of 16 images")
        super().check(geom, v)

    def pack(self, weight, bias, geom, v):
        return PackedRows.pack(weight, bias, geom.tap_offsets(), v.chunk)

    def bind(self, op, v, p):
        t0, t1, block, row_pitch, row_len = _span(op, v)
        return kernel_module().conv_rows, (
            v.V, op.source.data_ptr(), op.out.data_ptr(), op.out.stride(0), p.cout, t0, t1, block, row_pitch, row_len,
            p.rptr.data_ptr(), p.vptr.data_ptr(), p.nchunks, p.src.data_ptr(), p.val.data_ptr(), p.bias.data_ptr(),
            *op.residual_args, op.mask.data_ptr(), op.relu, v.tiles, op.threads,
        )


class Panel(Kind):
    name = "panel"
    compiled = PANEL_TILES

    def fits(self, R, V, regs):  # R x V accumulators, one input vector, a pattern's R weights (2 per ymm pair on AVX2)
        return R * V + 1 + (R if regs >= 32 else -(-R // 2)) <= regs

    def offer(self, o):
        # One picture only: its activations sit in L2, where sharing loads across channels pays (1.3x per layer
        # over the best other kind). At 16 images the 32x32 and 16x16 layers stream from L3 and whole engines
        # gained nothing measurable. Where more than a few percent of weights are left: below that a column
        # rarely serves two channels of a group. Channel-major order: one picture's plane is one position
        # block, so threads split the groups.
        if o.density <= 0.03 or o.batched:
            return []
        best = {}  # per R, the widest tile that fits
        for r, v in PANEL_TILES:
            if v <= o.vectors and self.fits(r, v, o.regs):
                best[r] = max(best.get(r, 0), v)
        return [Variant("panel", r, v, 0, c) for r, v in sorted(best.items()) for c in o.chunks]

    def pack_key(self, v):
        return ("panel", v.R, v.chunk)

    def pack(self, weight, bias, geom, v):
        return PackedPanels.pack(weight, bias, geom.tap_offsets(), v.R, v.chunk)

    def bind(self, op, v, p):
        t0, t1, block, row_pitch, row_len = _span(op, v)
        return kernel_module().conv_panel, (
            v.R, v.V, op.source.data_ptr(), op.out.data_ptr(), op.out.stride(0), p.cout, t0, t1, block, row_pitch,
            row_len, p.pptr.data_ptr(), p.vptr.data_ptr(), p.nchunks, p.src.data_ptr(), p.val.data_ptr(),
            p.bias.data_ptr(), *op.residual_args, op.mask.data_ptr(), op.relu, v.tiles, op.threads,
        )


def cols_fit(geom: ConvGeometry) -> bool:
    """Whether the cols kernel applies: one picture whose output plane is whole vectors (4x4, 8x8, ...) and
    whose gathered taps fit in L2 (``COLS_MAX_BYTES``)."""
    positions = geom.out.H * geom.out.W
    col_bytes = geom.inp.C * geom.kernel[0] * geom.kernel[1] * positions * 4
    return (geom.inp.N == 1 and positions % VEC == 0 and positions <= COLS_MAX_POSITIONS
            and col_bytes <= COLS_MAX_BYTES)


def cols_tile(geom: ConvGeometry, regs: int | None = None) -> int:
    """The cols kernel's tile: the widest compiled V that divides the plane and fits the registers."""
    regs = vector_registers() if regs is None else regs
    vectors = geom.out.H * geom.out.W // VEC
    return max(v for v in COLS_V if vectors % v == 0 and tile_fits(1, v, regs))


def cols_offsets(geom: ConvGeometry) -> torch.Tensor:
    """(Cin, kh, kw) int64: where each (input channel, tap) starts in the cols kernel's gathered buffer."""
    kh, kw = geom.kernel
    positions = geom.out.H * geom.out.W
    return (torch.arange(geom.inp.C * kh * kw, dtype=torch.int64) * positions).view(geom.inp.C, kh, kw)


class Cols(Kind):
    name = "cols"
    reads_phases = False  # it gathers its taps from the input itself
    compiled = tuple((1, v) for v in COLS_V)

    def applies(self, geom):
        return cols_fit(geom)

    def offer(self, o):
        return [Variant("cols", 1, cols_tile(o.geom, o.regs))] if o.density > 0 and self.applies(o.geom) else []

    def check(self, geom, v):
        if not self.applies(geom):
            raise PruneBenchError("the cols kernel takes one picture whose output plane is whole vectors, at most "
                                  f"{COLS_MAX_POSITIONS} positions, and whose gathered taps fit {COLS_MAX_BYTES // 1024} KiB")
        positions = geom.out.H * geom.out.W
        if v.V not in COLS_V or positions % (VEC * v.V):
            raise PruneBenchError(f"the cols kernel's tile of {v.V} vectors does not divide a plane of "
                                  f"{positions} positions into whole tiles")

    def pack_key(self, v):
        return ("cols",)

    def pack(self, weight, bias, geom, v):
        return dataclasses.replace(PackedWeights.pack(weight, bias, cols_offsets(geom), 1), cols=True)

    def bind(self, op, v, p):
        g, i, o = op.geom, op.geom.inp, op.geom.out
        kh, kw = g.kernel
        col = op.hold(torch.empty(i.C * kh * kw * o.H * o.W))  # the gathered taps (torch aligns it to 64 bytes)
        return kernel_module().conv_cols, (
            v.V, op.inp.data_ptr(), op.inp.stride(0), i.C, i.pitch, i.B, g.stride, kh, kw, g.padding, o.H, o.W,
            col, op.out.data_ptr(), op.out.stride(0), o.pitch, o.B, p.cout, p.gptr.data_ptr(), p.src.data_ptr(),
            p.val.data_ptr(), p.bias.data_ptr(), *op.residual_args, op.relu, op.threads,
        )


def stack_fit(geom: ConvGeometry) -> bool:
    """Whether the stack kernel applies: a stride-1 3-high conv of one picture whose rows are whole vectors."""
    return geom.direct and geom.kernel[0] == 3 and geom.inp.N == 1 and geom.out.W % VEC == 0


def stack_tiles(geom: ConvGeometry, regs: int | None = None) -> list[tuple[int, int]]:
    """The stack kernel's (rows, V) tiles worth timing: the two tallest one vector wide and the tallest two
    wide that fit the registers and the plane."""
    regs = vector_registers() if regs is None else regs
    fit = [t for t in STACK_TILES if (geom.out.W // VEC) % t[1] == 0 and t[0] <= geom.out.H
           and STACK.fits(t[0], t[1], regs)]
    one = sorted(t[0] for t in fit if t[1] == 1)[-2:]
    two = sorted(t[0] for t in fit if t[1] == 2)[-1:]
    return [(r, 1) for r in one] + [(r, 2) for r in two]


class Stack(Kind):
    name = "stack"
    compiled = STACK_TILES

    def fits(self, R, V, regs):  # R rows x V accumulators, one input vector, a kernel column's 3 weights
        return R * V + 1 + (3 if regs >= 32 else 2) <= regs

    def applies(self, geom):
        return stack_fit(geom)

    def offer(self, o):
        if o.density == 0 or not self.applies(o.geom):
            return []
        chunks = [0] + [c for c in (16, 32, 64) if c < o.geom.inp.C]
        return [Variant("stack", r, v, 0, c, order) for r, v in stack_tiles(o.geom, o.regs)
                for c in chunks for order in (False, True)]

    def check(self, geom, v):
        if not self.applies(geom):
            raise PruneBenchError("the stack kernel takes stride-1 3-high convolutions of one picture whose "
                                  "width is a multiple of 16")
        if (v.R, v.V) not in STACK_TILES or (geom.out.W // VEC) % v.V:
            raise PruneBenchError(f"no stack kernel of {v.R} rows x {v.V} vectors for a row of {geom.out.W}")

    def pack(self, weight, bias, geom, v):
        return PackedRows.pack_stack(weight, bias, geom.tap_offsets(), v.chunk)

    def bind(self, op, v, p):
        o = op.geom.out
        t0, _ = o.valid_range()
        return kernel_module().conv_stack, (
            v.R, v.V, op.source.data_ptr(), op.out.data_ptr(), op.out.stride(0), p.cout, t0, o.H, o.W, o.pitch,
            p.rptr.data_ptr(), p.vptr.data_ptr(), p.nchunks, p.src.data_ptr(), p.val.data_ptr(), p.bias.data_ptr(),
            *op.residual_args, op.relu, v.tiles, op.threads,
        )


class Grouped(PerWeight):
    name = "grouped"
    compiled = tuple(t for t in KERNELS if t[0] > 1)

    def offer(self, o):
        if o.density <= 0.1:
            return []
        return [Variant("grouped", 4, o.widest(4, o.vectors), o.blocks[-1], c) for c in o.chunks[:2]]


class Dense(PerWeight):
    name = "dense"
    skips_zeros = False
    dense = True
    compiled = KERNELS

    def offer(self, o):
        if not o.dense_worth:
            return []
        return [Variant("dense", r, o.widest(r, o.vectors), b, c) for r in ((8, 4) if o.wide else (6, 4))
                for c in o.chunks[::2] for b in o.blocks]


class Channels(Kind):
    name = "channels"
    tiled = False
    skips_zeros = False

    def applies(self, geom):  # lanes over 16 output channels waste none on the borders of small images
        w = geom.out.W
        return geom.out.N == 1 and (w in (4, 8) or w % 16 == 0)

    def offer(self, o):
        return [Variant("channels", 16, 1)] if o.dense_worth and self.applies(o.geom) else []

    def check(self, geom, v):
        if not self.applies(geom):
            raise PruneBenchError("the channels kernel takes one image 4, 8 or a multiple of 16 wide")

    def pack_key(self, v):
        return ("weights", True, 16)

    def pack(self, weight, bias, geom, v):
        return PackedWeights.pack(weight, bias, geom.tap_offsets(), 16, dense=True)

    def bind(self, op, v, p):
        o = op.geom.out
        t0, _ = o.valid_range()
        bias16 = torch.zeros(-(-p.cout // 16) * 16)
        bias16[: p.cout] = p.bias
        return kernel_module().conv_channels, (
            op.source.data_ptr(), op.out.data_ptr(), op.out.stride(0), p.cout, t0, o.H, o.W, o.pitch,
            p.gptr.data_ptr(), p.src.data_ptr(), p.val.data_ptr(), op.hold(bias16), *op.residual_args,
            op.mask.data_ptr(), op.relu, op.threads,
        )


class Torch(Kind):
    name = "torch"
    tiled = False
    skips_zeros = False
    reads_phases = False

    def offer(self, o):
        # one image with AVX-512: our dense kernel wins, and torch's threads spin under load; on AVX2 torch's
        # (oneDNN) often beats our smaller tiles
        return [Variant("torch")] if o.dense_worth and (o.batched or o.everything or not o.wide) else []

    def check(self, geom, v):
        pass

    def pack_key(self, v):
        return ("torch",)

    def pack(self, weight, bias, geom, v):
        return None

    def bind(self, op, v, p):
        return op.run_torch, ()

    def nbytes(self, op):
        return dense_nbytes(op.weight, op.weight.shape[0])


class Winograd(Kind):
    """Every weight, as Winograd F(4x4, 3x3): 4x fewer multiply-adds than a direct dense conv, for 16 images."""

    name = "winograd"
    skips_zeros = False
    in_place = True  # the output transform reads each element's residual just before writing it
    compiled = WINO_TILES

    def fits(self, R, V, regs):
        if V == 1:  # each weight serves one multiply-add, broadcast from memory: R accumulators, an input, a weight
            return R + 2 <= regs
        return R * V + R + 1 <= regs  # R x V accumulators, R broadcast weights, one input vector

    def applies(self, geom):
        i, o = geom.inp, geom.out
        return (geom.direct and geom.kernel == (3, 3) and geom.padding == 1 and i.N == VEC and i.H % 4 == 0
                and i.W % 4 == 0 and i.B >= 1 and (o.H, o.W) == (i.H, i.W))

    def offer(self, o):
        # where a fifth or more of the weights are left: below that skipping zeros does fewer multiply-adds
        if not self.applies(o.geom) or (o.density < 0.2 and not o.everything):
            return []
        tiles = [(r, v) for r, v in WINO_TILES if self.fits(r, v, o.regs)]
        return [Variant("winograd", r, v) for r, v in tiles[:3]]

    def check(self, geom, v):
        super().check(geom, v)
        if not self.applies(geom):
            raise PruneBenchError("the winograd kernel takes a 3x3 stride-1 conv of 16 images on planes of 4x4 tiles")

    def pack_key(self, v):
        return ("winograd", v.R)

    def pack(self, weight, bias, geom, v):
        return PackedWinograd.pack(weight, bias, v.R)

    def bind(self, op, v, p):
        i, o = op.geom.inp, op.geom.out
        # per op, not with the packed weights: engines that share the weights run at the same time
        scratch = torch.zeros(kernel_module().wino_scratch_floats(i.C, p.cout, i.H, i.W, v.V, op.threads))
        return kernel_module().conv_winograd, (
            v.R, v.V, op.source.data_ptr(), op.source.stride(0), i.C, i.H, i.W, i.pitch, i.B, op.out.data_ptr(),
            op.out.stride(0), p.cout, o.pitch, o.B, p.u.data_ptr(), p.bias.data_ptr(), *op.residual_args, op.relu,
            op.hold(scratch), op.threads,
        )


STACK = Stack()
# in order of preference: the order each conv's candidates are listed and timed in
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (Sparse(), Sweep(), Jit(), Rows(), Panel(), Cols(), STACK, Grouped(), Dense(), Winograd(), Channels(),
              Torch())
}
SPARSE_KINDS = tuple(name for name, k in KINDS.items() if k.skips_zeros)
DENSE_KINDS = tuple(name for name, k in KINDS.items() if not k.skips_zeros)


def kind_of(variant: str | Variant) -> Kind:
    """The kind of a variant (or of its name, e.g. "stack(R=4,V=1)"); a one-line error for an unknown one."""
    name = variant.kind if isinstance(variant, Variant) else variant.split("(")[0]
    if name not in KINDS:
        raise PruneBenchError(f"unknown kernel kind {name!r}: the kinds are {', '.join(KINDS)}")
    return KINDS[name]


def fits_registers(kind: str, R: int, V: int, regs: int | None = None) -> bool:
    """Whether a tile of ``kind`` of R x V keeps its live values in registers (see ``kVRegs`` in the C++)."""
    return kind_of(kind).fits(R, V, vector_registers() if regs is None else regs)


def candidate_variants(geom: ConvGeometry, density: float, threads: int = 1, everything: bool = False,
                       regs: int | None = None) -> list[Variant]:
    """The variants worth timing for this conv on the build's registers (``regs``: the selected build's), kind
    by kind in ``KINDS`` order; ``everything`` also offers dense variants of very sparse layers."""
    offer = Offer(geom, density, threads, everything, vector_registers() if regs is None else regs)
    return [v for kind in KINDS.values() for v in kind.offer(offer)]


class ConvOp:
    """One convolution + bias (+ residual) (+ ReLU) between buffers of the flat layout, as one variant.

    ``weight``/``bias`` are the BN-folded fp32 parameters; ``residual`` (same geometry
    as the output) is added before the ReLU. Where the geometry is not ``direct`` and the
    kind reads phases, the op reads ``phases``, which the caller fills
    (``ConvGeometry.fill_phases``) first. ``packed``: weights packed for this variant's
    ``pack_key`` (shared between variants), else packed here.
    """

    def __init__(self, geom: ConvGeometry, weight: torch.Tensor, bias: torch.Tensor | None, variant: Variant,
                 inp: torch.Tensor, out: torch.Tensor, phases: torch.Tensor | None, residual: torch.Tensor | None,
                 relu: bool, threads: int, mask: torch.Tensor | None = None, packed=None):
        self.geom, self.variant, self.relu, self.threads = geom, variant, relu, threads
        self.inp, self.out, self.phases, self.residual = inp, out, phases, residual
        self.weight = weight.detach().float().contiguous()
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.kind = kind = kind_of(variant)
        kind.check(geom, variant)
        self._mask = mask
        self._held: list[torch.Tensor] = []  # buffers the compiled call reads through their pointers
        self.source = inp if geom.direct or not kind.reads_phases else phases
        # the output written over the residual, which the kernel must read first
        self.in_place = residual is not None and residual.data_ptr() == out.data_ptr()
        if self.in_place and not kind.in_place:
            raise PruneBenchError(f"the {kind.name} kernel cannot add its residual in place: give it its own output")
        self.packed = kind.pack_for(self, packed)
        self._conv, self._args = kind.bind(self, variant, self.packed)

    @property
    def mask(self) -> torch.Tensor:
        """1.0 on the output's image elements: the kernel's last multiply (shared between ops where given)."""
        if self._mask is None:
            self._mask = self.geom.out.mask()
        return self._mask

    @property
    def residual_args(self) -> tuple[int, int]:
        r = self.residual
        return (r.data_ptr(), r.stride(0)) if r is not None else (0, 0)

    def hold(self, t: torch.Tensor) -> int:
        """Keep ``t`` alive as long as this op, and return its pointer for the compiled call."""
        self._held.append(t)
        return t.data_ptr()

    def run_torch(self) -> None:
        g = self.geom
        y = F.conv2d(g.inp.interior(self.inp), self.weight, self.bias, stride=g.stride, padding=g.padding)
        if self.residual is not None:
            y += g.out.interior(self.residual)
        if self.relu:
            y.relu_()
        g.out.interior(self.out).copy_(y)

    def __call__(self) -> None:
        self._conv(*self._args)

    @property
    def nbytes(self) -> int:
        """Bytes of the weights this variant keeps."""
        return self.kind.nbytes(self)
