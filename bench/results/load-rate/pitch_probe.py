"""One-off: one picture's rows padded to whole 64-byte lines (benchmarks.md, "What holds the kernels back").

    python bench/results/load-rate/pitch_probe.py 64 32 0.5 2    # layer1's shape at 50% density, two threads
    python bench/results/load-rate/pitch_probe.py 128 16 0.34 2  # layer2's

Times the batch-1 kernels on the layout as it is (a row of W + 1 floats, so rows start at any float offset and
most 32-byte loads cross a cache line) and with each row padded to a multiple of 16 floats (each output row then
starts one float past a line, the kx = 0 taps read whole lines, the kx = 1 and 2 taps still cross them).
Both ops are built, checked against torch's conv2d, then called alternately; fastest of 30 rounds of 3 calls.
"""
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
from in_turn import fastest_in_turn, layer_from_argv  # noqa: E402  (this folder)

from bench.kernels import Act, ConvGeometry, ConvOp, Variant, from_act, to_act  # noqa: E402

C, H, threads, w, b, x, ref = layer_from_argv()
variants = [Variant("stack", 4, 1, 0, 32 if C > 32 else 0, True), Variant("stack", 5, 1, 0, 64 if C > 64 else 0),
            Variant("sparse", 1, 6, 0, 16), Variant("sparse", 1, 4)]
as_is = Act.pitch
padded = property(lambda self: -(-(self.W + self.B) // 16) * 16 if self.N == 1 else self.W + self.B)
ops = {}
for layout, pitch in (("as is", as_is), ("padded", padded)):
    Act.pitch = pitch  # ConvOp reads the geometry once, when it is built
    inp = Act(C, H, H, 1, 1)
    geom = ConvGeometry.make(inp, C, (3, 3), 1, 1, out_border=1)
    xb, out = to_act(x, inp), geom.out.alloc()
    for v in variants:
        op = ConvOp(geom, w, b, v, xb, out, None, None, True, threads)
        op()
        torch.testing.assert_close(from_act(out, geom.out), ref, rtol=1e-4, atol=1e-4)
        ops[layout, str(v)] = op
    print(f"{layout}: row pitch {inp.pitch} floats")
Act.pitch = as_is
best = fastest_in_turn(ops)
for v in variants:
    a, p = best["as is", str(v)], best["padded", str(v)]
    print(f"{str(v):32s} as is {a * 1e3:.3f} ms, padded {p * 1e3:.3f} ms: padded {a / p:.2f}x as fast")
