"""One-off: what aligned loads would give the batch-1 stack kernel (benchmarks.md, "What holds the kernels back").

    python bench/results/load-rate/kx_probe.py 64 32 2    # layer1's shape, two threads

The stack kernel on one picture's layout with borders of B = 1 (as run: rows of W + 1 floats, at any offset), 2, 4,
8 and 16 floats (rows of W + B; with B = 8 or 16 every row starts on a 32- or 64-byte boundary). Weights: either
only the kx = 0 taps or only the kx = 1 taps nonzero (90% of them; the same structure, so only the loads'
alignment differs: on aligned rows the kx = 1 taps read whole lines, the kx = 0 taps cross them), or all taps at
30% (the mix a pruned layer has). Each op is checked against torch's conv2d, then all are called in turn; fastest
of 30 rounds of 3 calls.
"""
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
from in_turn import fastest_in_turn  # noqa: E402  (this folder)

from bench.kernels import Act, ConvGeometry, ConvOp, Variant, from_act, to_act  # noqa: E402

torch.manual_seed(0)
C, H, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
x = torch.randn(1, C, H, H)
variants = [Variant("stack", 4, 1, 0, 32, True), Variant("stack", 5, 1)]
ops = {}
for B in (1, 2, 4, 8, 16):
    inp = Act(C, H, H, 1, B)
    geom = ConvGeometry.make(inp, C, (3, 3), 1, 1, out_border=B)
    xb = to_act(x, inp)
    for taps in ("kx=0", "kx=1", "all"):
        if taps == "all":
            w = torch.randn(C, C, 3, 3) * (torch.rand(C, C, 3, 3) < 0.3)
        else:
            w = torch.zeros(C, C, 3, 3)
            w[:, :, :, int(taps[-1])] = torch.randn(C, C, 3) * (torch.rand(C, C, 3) < 0.9)
        b = torch.randn(C)
        ref = torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1))
        out = geom.out.alloc()
        for v in variants:
            op = ConvOp(geom, w, b, v, xb, out, None, None, True, threads)
            op()
            torch.testing.assert_close(from_act(out, geom.out), ref, rtol=1e-4, atol=1e-4)
            ops[B, taps, str(v)] = op
best = fastest_in_turn(ops)
for v in variants:
    print(v)
    for B in (1, 2, 4, 8, 16):
        cells = ", ".join(f"{taps} {best[B, taps, str(v)] * 1e3:.3f} ms" for taps in ("kx=0", "kx=1", "all"))
        print(f"  B={B:2d} (row of {H + B} floats): {cells}")
