"""One-off: a layer's speed by variant, as benchmarks.md's "The weights' memory traffic" quotes it.

    python bench/results/weights-traffic/layer_speeds.py density 256 8   # GMAC/s of nonzero work by density, 16 images
    python bench/results/weights-traffic/layer_speeds.py chunks 256 8 0.098   # tiles outermost, input chunks 8-64
    python bench/results/weights-traffic/layer_speeds.py cold 512 4      # one picture: weights in cache, then flushed
"""
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
from bench.kernels import KERNELS, Act, ConvGeometry, ConvOp, Variant, candidate_variants, to_act  # noqa: E402

torch.manual_seed(0)
mode, C, H = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
N = 1 if mode == "cold" else 16
inp = Act(C, H, H, N, 1)
geom = ConvGeometry.make(inp, C, (3, 3), 1, 1, out_border=1)
x = to_act(torch.randn(N, C, H, H), inp)
out = geom.out.alloc()


def weights(density: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    w = torch.randn(C, C, 3, 3)
    w *= torch.rand_like(w) < density
    return w, torch.randn(C), int((w != 0).sum())


def fastest(op, calls: int = 8, flush: torch.Tensor | None = None) -> float:
    best = float("inf")
    for _ in range(calls):
        if flush is not None:
            flush.add_(1.0)
        else:
            op()
        t = time.perf_counter()
        op()
        best = min(best, time.perf_counter() - t)
    return best


if mode == "density":
    variants = [Variant("sparse", 1, 6, 0, 32), Variant("sparse", 1, 6, 0, 32, True),
                Variant("rows", 1, 4, 0, 32, True), Variant("sparse", 1, 6)]
    for density in (1.0, 0.5, 0.25, 0.1, 0.05):
        w, b, nnz = weights(density)
        cells = []
        for v in variants:
            t = fastest(ConvOp(geom, w, b, v, x, out, None, None, True, 1))
            cells.append(f"{v}: {t * 1e3:6.2f} ms {nnz * H * H * N / t / 1e9:5.1f} GMAC/s")
        print(density, " | ".join(cells))
elif mode == "chunks":
    w, b, nnz = weights(float(sys.argv[4]))
    variants = [Variant("sparse", 1, v, 0, c, True) for v in (1, 2, 3, 4, 6) if (1, v) in KERNELS
                for c in (4, 8, 16, 32, 64)]
    variants += [Variant("rows", 1, v, 0, c, True) for v in (2, 4) for c in (4, 8, 16, 32, 64)]
    ops = [(v, ConvOp(geom, w, b, v, x, out, None, None, True, 1)) for v in variants]
    best = {str(v): min(fastest(op, 2) for _ in range(4)) for v, op in ops}
    for name, t in sorted(best.items(), key=lambda kv: kv[1]):
        print(f"{t * 1e3:8.3f} ms {nnz * H * H * N / t / 1e9:5.1f} GMAC/s {name}")
else:
    flush = torch.empty(16 << 20)  # 64 MiB touched between calls
    for density in (0.2, 0.057):
        w, b, nnz = weights(density)
        rows = []
        for threads in (1, 2):
            for v in candidate_variants(geom, density, 2):
                if v.kind == "torch":
                    continue
                op = ConvOp(geom, w, b, v, x, out, None, None, True, threads)
                rows.append((fastest(op, 10), fastest(op, 10, flush), threads, str(v), op.nbytes))
        for hot, cold, threads, v, nbytes in sorted(rows)[:4]:
            print(f"density {density} threads {threads} {v:36s} in cache {hot * 1e3:.3f} ms, "
                  f"flushed {cold * 1e3:.3f} ms, weights {nbytes / 2 ** 20:.2f} MiB")
