"""What holds the `jit` kind's generated code: one conv's code timed against copies with one thing left out.

    python experiments/jit_probe.py COUT HW DENSITY [--stride 2] [--residual] [--rounds 3]

A 3x3 conv of COUT output channels on an HW x HW output (COUT / stride input channels), its weights seeded
random with DENSITY of them left, 16 images, ReLU after (and a residual added, with --residual), as the engine
would run it with the `jit` kind on this CPU's build (its group size, block and input chunk of 16). The code is
checked against torch's conv2d; then its assembly is altered before it is assembled, one thing at a time:

    inputs-in-L1   every input column read from the position's own first vector (lines always in L1)
    no-inputs      no input loads at all (the multiply-adds read whatever the registers hold)
    one-weight     every multiply-add reads the same weight
    no-partials    partial sums neither loaded nor stored between input chunks
    half-fma       (AVX2) one multiply-add per use instead of two: half the arithmetic, the same loads

The altered copies compute wrong sums: only their times count. One call of each in turn, 20 calls a round,
the fastest counting, for each round (``bench.timing.time_ops``). Prints nominal GMAC/s of nonzero work per
copy and its ratio to the real code: a copy much faster than the real one names what holds it.
"""

from __future__ import annotations

import argparse
import re
import sys

import torch

from bench.kernels import Variant, build
from bench.kernels import jit as jit_module
from bench.kernels.kinds import JIT_R, VEC, ConvOp, jit_block
from bench.kernels.layout import from_act
from bench.timing import time_ops
from exporters import run_cli
from prune.errors import PruneBenchError

try:
    from experiments.conv_variants import synthetic_conv
except ImportError:  # run as a script: its own folder is on the path, the repository's root may not be
    from conv_variants import synthetic_conv

_INPUT = re.compile(r"^(\s*vmovups\s+)(-?\d+)\(%rdi\)(, %[yz]mm\d+)$")


def _inputs_in_l1(line: str) -> str:
    m = _INPUT.match(line)
    # keep a ymm pair's second half 32 bytes on, so both halves stay one aligned line
    return f"{m.group(1)}{int(m.group(2)) % 64 if 'ymm' in m.group(3) else 0}(%rdi){m.group(3)}" if m else line


def _one_weight(line: str) -> str:
    return re.sub(r"-?\d+\(%r11\)", "0(%r11)", line)


def _half_fma(line: str) -> str | None:
    # AVX2: the multiply-add into the second ymm of each accumulator pair (odd register numbers)
    m = re.match(r"^\s*vfmadd231ps %ymm\d+, %ymm\d+, %ymm(\d+)$", line)
    return None if m and int(m.group(1)) % 2 else line


def _no_partials(asm: str) -> str:
    out = []
    for fn in re.split(r"(?=^pbj_\d+_\d+:$)", asm, flags=re.M):
        last = "vmulps" in fn  # the last chunk's function applies the mask, and must still store
        for line in fn.splitlines():
            if not last and re.match(r"^\s*vmovups -?\d+\(%rsi\), (%[yz]mm\d+)$", line):
                reg = line.split(", ")[-1]
                line = f"  vxorps {reg}, {reg}, {reg}"
            elif not last and re.match(r"^\s*vmovups %[yz]mm\d+, -?\d+\(%rsi\)$", line):
                continue
            out.append(line)
    return "\n".join(out) + "\n"


def _per_line(fn):
    def alter(asm: str) -> str:
        lines = (fn(line) for line in asm.splitlines())
        return "\n".join(line for line in lines if line is not None) + "\n"
    return alter


ALTERATIONS = {
    "inputs-in-L1": _per_line(_inputs_in_l1),
    "no-inputs": _per_line(lambda line: None if _INPUT.match(line) else line),
    "one-weight": _per_line(_one_weight),
    "no-partials": _no_partials,
    "half-fma": _per_line(_half_fma),
}


def _packed_with(alter, make):
    """``make()`` with the jit code's assembly passed through ``alter`` before it is assembled."""
    real = jit_module.load
    jit_module.load = lambda asm: real(alter(asm))
    try:
        return make()
    finally:
        jit_module.load = real


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/jit_probe.py", description=__doc__.splitlines()[0])
    parser.add_argument("cout", type=int)
    parser.add_argument("hw", type=int, help="output height and width")
    parser.add_argument("density", type=float, help="fraction of the weights left, in (0, 1]")
    parser.add_argument("--stride", type=int, default=1, choices=(1, 2))
    parser.add_argument("--residual", action="store_true", help="add a residual before the ReLU, as a block's second conv")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if not (0 < args.density <= 1) or args.cout < args.stride or args.hw < 1 or args.rounds < 1:
        raise PruneBenchError("COUT >= stride, HW >= 1, DENSITY in (0, 1] and ROUNDS >= 1, e.g. 256 8 0.1")
    isa = build.built_isa()
    if isa not in ("avx512", "avx2"):
        raise PruneBenchError(f"this CPU's {isa} build has no jit kind: it needs AVX2 or AVX-512")
    conv = synthetic_conv(args.cout, args.hw, args.density, args.stride, VEC, args.residual)
    weight, geom, src, res, expected = conv.weight, conv.geom, conv.src, conv.residual, conv.expected
    cin, s = geom.inp.C, args.stride
    variant = Variant("jit", JIT_R[isa == "avx512"], 1, jit_block(geom), 16 if cin > 16 else 0)

    def op():
        return ConvOp(geom, weight, torch.zeros(args.cout), variant, src, geom.out.alloc(), None, res, True, 1)

    ops = {"real": op()}
    ops["real"]()
    if not torch.allclose(from_act(ops["real"].out, geom.out), expected, atol=1e-3, rtol=1e-3):
        raise PruneBenchError(f"{variant}: output differs from torch's conv2d: not timed")
    for name, alter in ALTERATIONS.items():
        if (name == "half-fma" and isa != "avx2") or (name == "no-partials" and not variant.chunk):
            continue  # nothing there to leave out
        ops[name] = _packed_with(alter, op)
        ops[name]()
        if torch.equal(ops[name].out, ops["real"].out):  # it would time the real code under another name
            raise PruneBenchError(f"{name}: the altered code computes what the real code does: nothing was left out")
    macs = args.cout * cin * 9 * args.hw * args.hw * VEC * args.density
    shape = (f"{cin}->{args.cout} x {args.hw}x{args.hw}, stride {s}, {args.density:.0%} left"
             f"{', residual' if res is not None else ''}, {isa}, {variant}")
    print(shape)
    for k in range(args.rounds):
        best = time_ops(ops, rounds=20, give_up=None)
        print(f"round {k + 1}: " + "  ".join(f"{n} {macs / ms * 1e-6:.1f} ({best['real'] / ms:.2f}x)"
                                             for n, ms in best.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
