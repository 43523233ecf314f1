"""Machine code written for one convolution's nonzeros: the "jit" kind's code generator.

A group of R output channels keeps R accumulators (one vector of 16 images each) in
registers. For each (input channel, tap) column that any channel of the group reads, the
input vector is loaded once and multiplied into every accumulator whose channel has a
nonzero there, its weight broadcast from the code's own constant table. Which channels read
which column differs from column to column, so the instructions that name those registers
are written out for this conv's weights alone, one function per (input chunk, group), each
looping over the positions of a block of rows (after Wilkinson et al. 2023, "Register Tiling for
Unstructured Sparsity in Neural Network Inference", and the code generation of SparseRT,
Wang 2020). A loaded input then serves several multiply-adds, where one entry per nonzero
("sweep") loads an input for each.

The functions are written as assembly text, then assembled and linked into a shared library
by the C++ compiler that builds the kernels (about 0.2 s for a layer of 100,000 nonzeros).
"""

from __future__ import annotations

import _ctypes
import ctypes
import dataclasses
import os
import subprocess
import tempfile
import weakref
from pathlib import Path

import torch

from prune.errors import PruneBenchError

# The generated functions, in C: void f(const float* x, float* o, int64_t rows, const float* res,
# int64_t res_stride_bytes, const float* mask, int64_t relu): x = the input pixel at stride x output position t,
# o = the group's first output channel + t, for `rows` rows of positions (vectors) from t on, the rows' widths
# and pitches (input and output) written into the code;
# the last chunk adds the residual (res != 0), applies the ReLU and the mask. The first chunk starts from the
# bias, later ones from the partial sums in o. Code written to add its residual in place starts instead from the
# bias plus what o holds (the residual, whose buffer the conv overwrites), and is called with res = 0.


def regs_fit(R: int, V: int, isa: str) -> bool:
    """Whether R x V accumulators, V input vectors and a broadcast weight (with V = 1 on AVX-512 the mask's
    register in the epilogue; on AVX2 the four weights it is shuffled from) fit the vector registers of
    ``isa``: 32 zmm, or 16 ymm with a vector a pair."""
    if R < 1 or V < 1:
        return False
    return R * V + V + 1 <= 32 if isa == "avx512" else 2 * (R * V + V) + 1 + (V == 1) <= 16


def _floats(name: str, values: torch.Tensor) -> list[str]:
    bits = values.detach().float().contiguous().view(torch.int32).tolist()
    bits += [0] * (-len(bits) % 4)  # whole 16-byte quads: AVX2 code loads the weights four at a time
    lines = ["  .p2align 6", f"{name}:"]
    for i in range(0, len(bits), 16):
        lines.append("  .long " + ",".join(str(b) for b in bits[i : i + 16]))
    return lines


def _function(name: str, wname: str, cols: list[tuple[int, list[tuple[int, int]]]], bias_name: str, co0: int,
              nr: int, V: int, row: tuple[int, int], ostride: int, first: bool, last: bool, isa: str,
              irow: tuple[int, int], in_place: bool = False) -> list[str]:
    """One (chunk, group) function: ``cols`` lists (input offset in floats, [(accumulator, weight index)]); V
    positions per turn of its loop; ``row``: (positions per row, floats from one output row's start to the
    next); ``irow``: (floats the input moves per position, floats from one input row read to the next)."""
    os_b = 4 * ostride
    width, pitch = row
    skip = 4 * pitch - 64 * width  # bytes from a row's end to the next row's start
    istep, ipitch = 4 * irow[0], 4 * irow[1]
    iskip = ipitch - istep * width
    if isa == "avx512":  # a vector is one zmm: accumulators from zmm0 up, inputs from zmm31 down, then the weight
        acc = [[[f"%zmm{r * V + v}"] for v in range(V)] for r in range(nr)]
        xin = [[f"%zmm{31 - v}"] for v in range(V)]
        wreg = f"%zmm{31 - V}"
    else:  # a vector is a ymm pair
        acc = [[[f"%ymm{2 * (r * V + v)}", f"%ymm{2 * (r * V + v) + 1}"] for v in range(V)] for r in range(nr)]
        xin = [[f"%ymm{15 - 2 * v - 1}", f"%ymm{15 - 2 * v}"] for v in range(V)]
        wreg = f"%ymm{15 - 2 * V}"
        qreg = f"%ymm{14 - 2 * V}"
    halves = len(xin[0])
    step = 64 // halves  # bytes per register
    zero, mask = xin[0][0], wreg  # free once the multiply-adds are done

    def each(fmt) -> list[str]:  # fmt(register, its byte offset from o) for every accumulator register
        return [fmt(acc[r][v][h], r * os_b + 64 * v + step * h) for r in range(nr) for v in range(V)
                for h in range(halves)]

    out = ["  .p2align 5", f"{name}:", "0:", f"  movq ${width}, %rax", "1:"]
    if first and not in_place:
        for r in range(nr):
            out.append(f"  vbroadcastss {bias_name}+{4 * (co0 + r)}(%rip), {acc[r][0][0]}")
            out += [f"  vmovaps {acc[r][0][0]}, {reg}" for v in range(V) for reg in acc[r][v] if reg != acc[r][0][0]]
    else:  # the partial sums in o, or (first, in place) the residual there, to which the bias is added
        out += each(lambda reg, b: f"  vmovups {b}(%rsi), {reg}")
        for r in range(nr if first else 0):
            b = f"{bias_name}+{4 * (co0 + r)}(%rip)"
            if halves == 1:
                out += [f"  vaddps {b}{{1to16}}, {acc[r][v][0]}, {acc[r][v][0]}" for v in range(V)]
            else:
                out.append(f"  vbroadcastss {b}, {wreg}")
                out += [f"  vaddps {wreg}, {reg}, {reg}" for v in range(V) for reg in acc[r][v]]
    # the weights through a base register with one-byte displacements: 7-byte multiply-adds, not 10, so less code
    # to fetch; AVX-512 scales a broadcast's displacement by 4 (a window of 256 weights), AVX2 does not (32)
    window = 1024 if halves == 1 else 256
    centre = None
    # AVX2 has no broadcast operand, and its loads are what hold this loop: one 16-byte load brings four weights
    # into both lanes of a register, and an in-lane shuffle broadcasts each, so a weight costs a quarter of a load
    quads, quad = halves == 2 and V == 1, None
    for off, uses in cols:
        out += [f"  vmovups {4 * off + istep * v + step * h}(%rdi), {xin[v][h]}" for v in range(V)
                for h in range(halves)]
        for r, k in uses:
            at = 16 * (k // 4) if quads else 4 * k
            if centre is None or not -window // 2 <= at - centre < window // 2:
                centre = at + window // 2
                out.append(f"  leaq {wname}+{centre}(%rip), %r11")
            w = f"{at - centre}(%r11)"
            if V == 1 and halves == 1:  # the weight broadcast from memory by the multiply-add itself
                out.append(f"  vfmadd231ps {w}{{1to16}}, {xin[0][0]}, {acc[r][0][0]}")
                continue
            if quads:
                if quad != k // 4:
                    out.append(f"  vbroadcastf128 {w}, {qreg}")
                    quad = k // 4
                out.append(f"  vshufps ${0x55 * (k % 4)}, {qreg}, {qreg}, {wreg}")
                out += [f"  vfmadd231ps {wreg}, {xin[0][h]}, {acc[r][0][h]}" for h in range(halves)]
                continue
            out.append(f"  vbroadcastss {w}, {wreg}")
            out += [f"  vfmadd231ps {wreg}, {xin[v][h]}, {acc[r][v][h]}" for v in range(V) for h in range(halves)]
    if not last:
        out += each(lambda reg, b: f"  vmovups {reg}, {b}(%rsi)")
    else:
        out += ["  testq %rcx, %rcx", "  jz 2f", "  movq %rcx, %r10"]
        for r in range(nr):
            out += [f"  vaddps {64 * v + step * h}(%r10), {acc[r][v][h]}, {acc[r][v][h]}" for v in range(V)
                    for h in range(halves)]
            if r < nr - 1:
                out.append("  addq %r8, %r10")
        out += [f"  addq ${64 * V}, %rcx", "2:", "  cmpq $0, 8(%rsp)", "  je 3f", f"  vxorps {zero}, {zero}, {zero}"]
        out += each(lambda reg, b: f"  vmaxps {zero}, {reg}, {reg}")
        out.append("3:")
        for v in range(V):
            for h in range(halves):
                out.append(f"  vmovups {64 * v + step * h}(%r9), {mask}")
                for r in range(nr):
                    reg = acc[r][v][h]
                    out += [f"  vmulps {mask}, {reg}, {reg}", f"  vmovups {reg}, {r * os_b + 64 * v + step * h}(%rsi)"]
        out.append(f"  addq ${64 * V}, %r9")
    out += [f"  addq ${istep * V}, %rdi", f"  addq ${64 * V}, %rsi", f"  subq ${V}, %rax", "  jnz 1b"]
    out += [f"  addq ${iskip}, %rdi", f"  addq ${skip}, %rsi"]
    if last:
        out += [f"  addq ${skip}, %r9", "  testq %rcx, %rcx", "  jz 4f", f"  addq ${skip}, %rcx", "4:"]
    out += ["  decq %rdx", "  jnz 0b", "  vzeroupper", "  ret", f"{name}_end:"]
    return out


def assembly(weight: torch.Tensor, bias: torch.Tensor | None, offsets: torch.Tensor, ostride: int,
             row: tuple[int, int], R: int, V: int, chunk: int, isa: str,
             irow: tuple[int, int] | None = None, in_place: bool = False) -> tuple[str, list[int | None]]:
    """The assembly of one conv's functions, and for each (chunk, group) in that order the index of its
    function in the table (None: nothing to do there). ``irow``: how the input moves, per position and per
    row (floats); by default as the output does (a stride-1 conv on the output's pitch)."""
    irow = irow or (16, row[1])
    cout, cin = weight.shape[:2]
    chunk = chunk if chunk and chunk < cin else cin
    nchunks, ngroups = -(-cin // chunk), -(-cout // R)
    k = weight[0, 0].numel()
    w = weight.detach().float().reshape(cout, cin * k)
    off = offsets.reshape(cin * k).tolist()
    b = torch.zeros(cout) if bias is None else bias.detach().float()
    text = ["  .text"]
    data = ["  .section .rodata"] + _floats("pbj_bias", b)
    names: list[str] = []  # the functions, in table order
    index: list[int | None] = []
    for c in range(nchunks):
        first, last = c == 0, c == nchunks - 1
        for g in range(ngroups):
            co0, nr = g * R, min(R, cout - g * R)
            sub = w[co0 : co0 + nr, c * chunk * k : min(cin, (c + 1) * chunk) * k]
            col, chan = (sub.t() != 0).nonzero(as_tuple=True)  # sorted by column, then channel
            if col.numel() == 0 and not (first or last):
                index.append(None)
                continue
            name, wname = f"pbj_{c}_{g}", f"pbj_w_{c}_{g}"
            vals = sub.t()[col, chan]
            cols: list[tuple[int, list[tuple[int, int]]]] = []
            prev = -1
            for i, (cc, r) in enumerate(zip(col.tolist(), chan.tolist())):
                if cc != prev:
                    cols.append((off[c * chunk * k + cc], []))
                    prev = cc
                cols[-1][1].append((r, i))
            text += _function(name, wname, cols, "pbj_bias", co0, nr, V, row, ostride, first, last, isa, irow,
                              in_place)
            if vals.numel():
                data += _floats(wname, vals)
            else:
                data += [f"{wname}:"]
            index.append(len(names))
            names.append(name)
    table = ["  .section .data.rel.ro", "  .p2align 3", "  .globl pbj_table", "pbj_table:"]
    table += [f"  .quad {n}" for n in names]
    table += ["  .globl pbj_sizes", "pbj_sizes:"] + [f"  .quad {n}_end - {n}" for n in names]
    asm = "\n".join(text + data + table + ['  .section .note.GNU-stack,"",@progbits', ""])
    return asm, index


def load(asm: str) -> tuple[ctypes.CDLL, int]:
    """The shared library of ``asm`` and its size in bytes, assembled and linked by the C++ compiler in a folder
    removed once it is loaded (the loaded code stays mapped), so nothing accumulates on disk."""
    with tempfile.TemporaryDirectory(prefix="prunebench-jit-") as tmp:
        s, so = Path(tmp) / "code.s", Path(tmp) / "code.so"
        s.write_text(asm)
        cxx = os.environ.get("CXX", "c++")
        try:
            done = subprocess.run([cxx, "-shared", "-nostdlib", "-o", str(so), str(s)], capture_output=True, text=True)
        except OSError as e:
            raise PruneBenchError(f"cannot assemble the jit kernel ({e}): it needs a C++ compiler") from None
        if done.returncode:
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            raise PruneBenchError(f"cannot assemble the jit kernel: {first[:200]}")
        return ctypes.CDLL(str(so)), so.stat().st_size


@dataclasses.dataclass
class PackedJit:
    """One conv's generated code: ``table`` holds, per (chunk, group), its function's address (0: none)."""

    lib: ctypes.CDLL
    table: torch.Tensor  # (nchunks * ngroups,) int64
    sizes: torch.Tensor  # (nchunks * ngroups,) int64: each function's bytes of code
    R: int
    cout: int
    ngroups: int
    nchunks: int
    ostride: int  # floats between output channels, as the code was written for
    nbytes: int  # the library's size: code, constants and tables
    in_place: bool = False  # written to add the residual that its output buffer holds

    @classmethod
    def pack(cls, weight: torch.Tensor, bias: torch.Tensor | None, offsets: torch.Tensor, ostride: int,
             row: tuple[int, int], R: int, V: int, chunk: int, isa: str,
             irow: tuple[int, int] | None = None, in_place: bool = False) -> "PackedJit":
        if isa not in ("avx512", "avx2") or not regs_fit(R, V, isa):
            raise PruneBenchError(f"no jit kernel of R={R}, V={V} fits the {isa} build's registers")
        reach = max(int(offsets.abs().max()) if offsets.numel() else 0, R * ostride)  # floats from x or o
        if 4 * reach >= 2**31 - 2**16:  # the code's 32-bit displacements
            raise PruneBenchError("activation too large for the jit kernel's 32-bit offsets: use a smaller batch")
        cout = weight.shape[0]
        asm, index = assembly(weight, bias, offsets, ostride, row, R, V, chunk, isa, irow, in_place)
        lib, size = load(asm)
        n = sum(i is not None for i in index)
        addresses = list((ctypes.c_int64 * n).in_dll(lib, "pbj_table")) if n else []
        sizes = list((ctypes.c_int64 * n).in_dll(lib, "pbj_sizes")) if n else []
        table = torch.tensor([0 if i is None else addresses[i] for i in index], dtype=torch.int64)
        code = torch.tensor([0 if i is None else sizes[i] for i in index], dtype=torch.int64)
        ngroups = -(-cout // R)
        packed = cls(lib, table, code, R, cout, ngroups, len(index) // ngroups, ostride, size, in_place)
        # ctypes never unloads a library: without this, every prepare would keep its code mapped until exit
        weakref.finalize(packed, _ctypes.dlclose, lib._handle)
        return packed
