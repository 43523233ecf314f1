"""One-off: the stack kernel over three aligned copies of its input, one per kernel column (tried, not kept).

    git apply bench/results/load-rate/stack-aligned-copies.diff
    python bench/results/load-rate/aligned_copies.py 64 32 0.5 2   # layer1's shape at 50% density, two threads
    git apply -R bench/results/load-rate/stack-aligned-copies.diff

The diff adds Variant(..., aligned=True): each call first copies the input into three planes per channel (rows
of W floats, shifted by kx - 1), so that every tap's loads are whole vectors on whole cache lines, then runs the
stack kernel on them. Timed: the layout as it is, the aligned variant, and the aligned variant with the copy
skipped (it reads the copies the first call made), to tell the kernel's speed from the copy's cost; then the
copy alone, as the difference between the two layouts on a conv with a single nonzero weight.
"""
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
from in_turn import fastest_in_turn, layer_from_argv  # noqa: E402  (this folder)

from bench.kernels import Act, ConvGeometry, ConvOp, Variant, from_act, to_act  # noqa: E402

C, H, threads, w, b, x, ref = layer_from_argv()
inp = Act(C, H, H, 1, 1)
geom = ConvGeometry.make(inp, C, (3, 3), 1, 1, out_border=1)
xb, out = to_act(x, inp), geom.out.alloc()
ops = {}
for v in [Variant("stack", 4, 1, 0, c, t, a) for c in (0, 16, 32) for t in (False, True) for a in (False, True)]:
    op = ConvOp(geom, w, b, v, xb, out, None, None, True, threads)
    op()
    torch.testing.assert_close(from_act(out, geom.out), ref, rtol=1e-4, atol=1e-4)
    ops[str(v)] = op
    if v.aligned:
        op2 = ConvOp(geom, w, b, v, xb, out, None, None, True, threads)
        op2()
        a = list(op2._args)
        a[2], a[-3] = op2.copies.data_ptr(), 0  # the copies as input, and no channel to copy (cin = 0)
        op2._args = tuple(a)
        op2()
        ops[str(v) + " no copy"] = op2
best = fastest_in_turn(ops)
for k, t in best.items():
    print(f"{k:46s} {t * 1e3:.3f} ms")
lone = torch.zeros(C, C, 3, 3)
lone[0, 0, 1, 1] = 1.0
ops = {a: ConvOp(geom, lone, b, Variant("stack", 4, 1, 0, 0, False, a), xb, out, None, None, True, threads)
       for a in (False, True)}
best = fastest_in_turn(ops, 50)
print(f"one nonzero weight: as is {best[False] * 1e6:.1f} us, aligned {best[True] * 1e6:.1f} us: "
      f"the copy of {3 * C * (H + 2) * H * 4 // 1024} KiB costs {(best[True] - best[False]) * 1e6:.1f} us")
