"""Kernel variants of one synthetic conv timed against each other, one core, 16 images (or one picture).

    python experiments/conv_variants.py COUT HW DENSITY VARIANT [VARIANT ...] [--stride 2] [--batch 16]

A 3x3 conv of COUT output channels on an HW x HW output (COUT / stride input channels of stride * HW), its
weights seeded random with DENSITY of them left, ReLU after. VARIANT as the engine prints it, e.g.
"sweep(R=1,V=8,chunk=16,tiles)". Every variant's output is checked against torch's conv2d first; then one call
of each in turn, 20 rounds, the fastest call counting (``bench.timing.time_ops``, as the engine chooses). Prints ms and GMAC/s of nonzero
work per variant, fastest first.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys

import torch
import torch.nn.functional as F

from bench.kernels import Act, ConvGeometry, Variant
from bench.kernels.kinds import ConvOp, kind_of
from bench.kernels.layout import from_act, to_act
from bench.timing import time_ops
from exporters import run_cli
from prune.errors import PruneBenchError

_FIELD = re.compile(r"(R|V|block|chunk)=(\d+)")


def parse(text: str) -> Variant:
    """A variant from its printed form: kind(R=..,V=..[,block=..][,chunk=..][,tiles])."""
    m = re.fullmatch(r"([a-z-]+)(?:\((.*)\))?", text.strip())
    if not m:
        raise PruneBenchError(f"variant {text!r}: write it as the engine prints it, e.g. sweep(R=1,V=8,chunk=16,tiles)")
    kind = kind_of(m.group(1)).name
    fields = {k: int(v) for k, v in _FIELD.findall(m.group(2) or "")}
    return Variant(kind, fields.get("R", 1), fields.get("V", 1), fields.get("block", 0), fields.get("chunk", 0),
                   "tiles" in (m.group(2) or ""))


@dataclasses.dataclass
class SyntheticConv:
    """A seeded random 3x3 conv and its input in the layout, with torch's answer (ReLU after, a residual before
    it where one was asked for)."""

    weight: torch.Tensor
    geom: ConvGeometry
    src: torch.Tensor  # the input, in the layout
    residual: torch.Tensor | None  # in the layout
    expected: torch.Tensor  # NCHW


def synthetic_conv(cout: int, hw: int, density: float, stride: int = 1, batch: int = 16,
                   residual: bool = False) -> SyntheticConv:
    """COUT output channels on an HW x HW output (COUT / stride input channels of stride * HW), DENSITY of the
    weights left at random (seed 0)."""
    torch.manual_seed(0)
    cin = cout // stride
    weight = torch.randn(cout, cin, 3, 3) * (torch.rand(cout, cin, 3, 3) < density)
    x = torch.randn(batch, cin, hw * stride, hw * stride)
    res = torch.randn(batch, cout, hw, hw) if residual else None
    expected = F.conv2d(x, weight, stride=stride, padding=1)
    expected = (expected if res is None else expected + res).relu()
    geom = ConvGeometry.make(Act(cin, hw * stride, hw * stride, batch, 1), cout, (3, 3), stride, 1, 1)
    return SyntheticConv(weight, geom, to_act(x, geom.inp), None if res is None else to_act(res, geom.out), expected)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/conv_variants.py", description=__doc__.splitlines()[0])
    parser.add_argument("cout", type=int)
    parser.add_argument("hw", type=int, help="output height and width")
    parser.add_argument("density", type=float, help="fraction of the weights left, in (0, 1]")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--stride", type=int, default=1, choices=(1, 2))
    parser.add_argument("--batch", type=int, default=16, choices=(1, 16))
    args = parser.parse_args(argv)
    if not (0 < args.density <= 1) or args.cout < args.stride or args.hw < 1:
        raise PruneBenchError("COUT >= stride, HW >= 1 and DENSITY in (0, 1], e.g. 256 8 0.18")
    variants = [parse(v) for v in args.variants]
    conv = synthetic_conv(args.cout, args.hw, args.density, args.stride, args.batch)
    weight, geom, src, expected = conv.weight, conv.geom, conv.src, conv.expected
    cin, s, n = geom.inp.C, args.stride, args.batch
    phases = geom.alloc_phases()
    if phases is not None:
        geom.fill_phases(src, phases)
    ops = {}
    for v in variants:
        op = ConvOp(geom, weight, torch.zeros(args.cout), v, src, geom.out.alloc(), phases, None, True, 1)
        op()
        if not torch.allclose(from_act(op.out, geom.out), expected, atol=1e-3, rtol=1e-3):
            raise PruneBenchError(f"{v}: output differs from torch's conv2d: not timed")
        ops[str(v)] = op
    best_ms = time_ops(ops, rounds=20, give_up=None)
    macs = args.cout * cin * 9 * args.hw * args.hw * n * args.density
    shape = f"{cin}->{args.cout} x {args.hw}x{args.hw}, stride {s}, {n} image(s), {args.density:.0%} left"
    for name, ms in sorted(best_ms.items(), key=lambda kv: kv[1]):
        print(f"{shape}: {name:42s} {ms:7.3f} ms {macs / ms * 1e-6:5.1f} GMAC/s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
