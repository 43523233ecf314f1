"""Convolution weights packed as the kernels read them: nonzeros by output channel (or group), or by kernel row."""

from __future__ import annotations

import dataclasses

import torch

from prune.errors import PruneBenchError


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

    @property
    def nbytes(self) -> int:
        """Bytes of the packed weights (offsets, values, group pointers, bias) as the kernel reads them."""
        return sum(t.numel() * t.element_size() for t in (self.gptr, self.src, self.val, self.bias))


@dataclasses.dataclass
class PackedSweep:
    """Nonzeros of a convolution in chunk-major order, for the "sweep" kernel: one entry per nonzero (its input
    offset and value), sorted by (input chunk, output channel, input channel, tap)."""

    ends: torch.Tensor  # (chunks * cout,) int64: the entries of channel co reading chunk c end at ends[c * cout + co]
    src: torch.Tensor  # (entries,) int32
    val: torch.Tensor  # (entries,) float32
    bias: torch.Tensor  # (cout,) float32
    cout: int
    nchunks: int

    @classmethod
    def pack(cls, weight: torch.Tensor, bias: torch.Tensor | None, offsets: torch.Tensor, chunk: int = 0):
        cout, cin = weight.shape[:2]
        chunk = chunk if chunk and chunk < cin else cin
        nchunks = -(-cin // chunk)
        w = weight.detach().float().reshape(cout, cin, -1)
        co, ci, tap = (w != 0).nonzero(as_tuple=True)  # sorted by (co, ci, tap)
        seg = (ci // chunk) * cout + co
        order = torch.argsort(seg, stable=True)
        co, ci, tap, seg = co[order], ci[order], tap[order], seg[order]
        if offsets.numel() and int(offsets.max()) >= 2**31:
            raise PruneBenchError("activation too large for the sparse kernel's 32-bit offsets: use a smaller batch")
        src = offsets.reshape(cin, -1)[ci, tap].to(torch.int32).contiguous()
        ends = torch.bincount(seg, minlength=nchunks * cout).cumsum(0).contiguous()
        b = torch.zeros(cout) if bias is None else bias.detach().float().clone()
        return cls(ends, src, w[co, ci, tap].contiguous(), b.contiguous(), cout, nchunks)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.ends, self.src, self.val, self.bias))


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


@dataclasses.dataclass
class PackedPanels:
    """Nonzeros of a convolution in groups of R output channels, for the "panel" kernel.

    Each entry is one (input channel, tap) column where at least one of the group's R
    channels has a nonzero; its pattern (bit r: channel r has one) picks the loop that
    runs it, ``src`` is the column's input offset and ``val`` the pattern's weights in
    channel order. Entries are sorted by (group, input chunk, pattern).
    """

    R: int
    pptr: torch.Tensor  # (groups * chunks, 2^R + 1) int64: entries of pattern p are [pptr[s, p], pptr[s, p + 1])
    vptr: torch.Tensor  # (groups * chunks, 2^R) int64: where pattern p's weights start in val
    src: torch.Tensor  # (entries,) int32
    val: torch.Tensor  # (weights,) float32: the nonzeros themselves, none filled in
    bias: torch.Tensor  # (cout,) float32
    cout: int
    nchunks: int

    @classmethod
    def pack(cls, weight: torch.Tensor, bias: torch.Tensor | None, offsets: torch.Tensor, R: int, chunk: int = 0):
        cout, cin = weight.shape[:2]
        k = weight[0].numel()
        taps = k // cin
        chunk = chunk if chunk and chunk < cin else cin
        nchunks = -(-cin // chunk)
        groups = -(-cout // R)
        w = torch.zeros(groups * R, k)
        w[:cout] = weight.detach().reshape(cout, k).float()
        w = w.view(groups, R, k)
        nz = w != 0
        pattern = (nz.long() << torch.arange(R).view(1, R, 1)).sum(1)  # (groups, k)
        g, col = (pattern > 0).nonzero(as_tuple=True)
        pat = pattern[g, col]
        seg = g * nchunks + (col // taps) // chunk
        order = torch.argsort((seg * (1 << R) + pat) * k + col, stable=True)
        g, col, pat, seg = g[order], col[order], pat[order], seg[order]
        columns = w[g, :, col]  # (entries, R)
        val = columns[nz[g, :, col]].contiguous()  # entry by entry, its channels in order
        if offsets.numel() and int(offsets.max()) >= 2**31:
            raise PruneBenchError("activation too large for the sparse kernel's 32-bit offsets: use a smaller batch")
        src = offsets.reshape(k)[col].to(torch.int32).contiguous()
        n = 1 << R
        nseg = groups * nchunks
        counts = torch.bincount(seg * n + pat, minlength=nseg * n)
        width = torch.tensor([bin(p).count("1") for p in range(n)]).repeat(nseg)
        flat = torch.zeros(nseg * n + 1, dtype=torch.int64)
        flat[1:] = counts.cumsum(0)
        vflat = torch.zeros(nseg * n + 1, dtype=torch.int64)
        vflat[1:] = (counts * width).cumsum(0)
        idx = torch.arange(nseg).view(-1, 1) * n
        pptr = flat[idx + torch.arange(n + 1)].contiguous()
        vptr = vflat[idx + torch.arange(n)].contiguous()
        b = torch.zeros(cout) if bias is None else bias.detach().float().clone()
        return cls(R, pptr, vptr, src, val, b.contiguous(), cout, nchunks)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.pptr, self.vptr, self.src, self.val, self.bias))


# Winograd F(4x4, 3x3) (Lavin and Gray 2016): U = G g G^T is a 3x3 kernel g transformed to the 6x6 tile
WINO_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                       [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)


@dataclasses.dataclass
class PackedWinograd:
    """A 3x3 convolution's weights transformed for Winograd F(4x4, 3x3), every weight kept (a dense method)."""

    R: int
    u: torch.Tensor  # (36, groups, Cin, R) float32: point xi's weight of output channel g * R + r for input ci
    bias: torch.Tensor  # (Cout,) float32
    cout: int

    @classmethod
    def pack(cls, weight: torch.Tensor, bias: torch.Tensor | None, R: int) -> "PackedWinograd":
        cout, cin, kh, kw = weight.shape
        if (kh, kw) != (3, 3):
            raise PruneBenchError(f"Winograd F(4x4, 3x3) takes 3x3 kernels, not {kh}x{kw}")
        # in float64: the transform's fractions (1/6, 1/24) then round once, to the weights the kernel multiplies
        u = torch.einsum("ik,ockl,jl->ijoc", WINO_G, weight.double(), WINO_G).reshape(36, cout, cin)
        groups = -(-cout // R)
        padded = torch.zeros(36, groups * R, cin, dtype=torch.float64)
        padded[:, :cout] = u
        u = padded.view(36, groups, R, cin).permute(0, 1, 3, 2).contiguous().float()
        b = torch.zeros(cout) if bias is None else bias.detach().float().contiguous()
        return cls(R, u, b, cout)

    @property
    def nbytes(self) -> int:
        return self.u.numel() * 4 + self.bias.numel() * 4


def dense_nbytes(weight: torch.Tensor, bias_len: int) -> int:
    """Bytes of the same weights stored densely in fp32 (with the bias)."""
    return (weight.numel() + bias_len) * 4

