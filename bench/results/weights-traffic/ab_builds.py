"""One-off: time the committed kernel build (A) against a changed copy of its source (B) in one process.

Not part of prunebench; kept so that the figures of benchmarks.md's "The weights' memory traffic" can be
rerun. From the repository root, with the changed source written out first
(e.g. `git show HEAD:bench/kernels/sparse_conv.cpp > /tmp/a.cpp && cp /tmp/a.cpp /tmp/b.cpp &&
patch /tmp/b.cpp bench/results/weights-traffic/prefetch-per-entry.diff`):

    python bench/results/weights-traffic/ab_builds.py layer /tmp/b.cpp C H N DENSITY    # every candidate variant
    python bench/results/weights-traffic/ab_builds.py model /tmp/b.cpp SPARSITY BATCH [BLOCKS]

Environment: BASE (A's source, default the repository's), THR (threads of a layer, default 1), FLUSH_MB (MiB
touched between a layer's calls: its weights come from memory), ROUNDS (calls per variant and build).
Each build has its own thread pool; the other one is put to rest before each turn, else its spinning
threads take the cores (identical builds then measured 0.5-1.8x against each other).
"""
import hashlib
import os
import pathlib
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils import cpp_extension

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
import bench.kernels as K  # noqa: E402
import bench.kernels.engine as E  # noqa: E402
from bench.ab import alternate_blocks  # noqa: E402
from bench.kernels import Act, ConvGeometry, ConvOp, candidate_variants, to_act  # noqa: E402
from bench.models import example_batch, synthetic_resnet18  # noqa: E402

if os.environ.get("BASE"):
    K.SOURCE = pathlib.Path(os.environ["BASE"])
mode, src_b = sys.argv[1], sys.argv[2]
mod_a = K._load()
text = pathlib.Path(src_b).read_text()
digest = hashlib.sha1((text + " ".join(K.CFLAGS)).encode()).hexdigest()[:10]
mod_b = cpp_extension.load_inline(name=f"pbtest_{digest}", cpp_sources=[text], extra_cflags=K.CFLAGS,
                                  extra_ldflags=["-pthread"], no_implicit_headers=True)
current = [mod_a]
K.kernel_module = lambda: current[0]  # ops bind their kernel when built; pool, phases and copies look it up per call
torch.manual_seed(0)


def layer(C: int, H: int, N: int, density: float) -> None:
    threads = int(os.environ.get("THR", "1"))
    rounds = int(os.environ.get("ROUNDS", "30"))
    flush = np.zeros(int(os.environ.get("FLUSH_MB", "0")) << 18, dtype=np.float32)
    inp = Act(C, H, H, N, 1)
    geom = ConvGeometry.make(inp, C, (3, 3), 1, 1, out_border=1)
    x = to_act(torch.randn(N, C, H, H), inp)
    w = torch.randn(C, C, 3, 3)
    w *= torch.rand_like(w) < density
    b = torch.randn(C)
    variants = [v for v in candidate_variants(geom, density, threads) if v.kind != "torch"]
    out_a, out_b = geom.out.alloc(), geom.out.alloc()
    ops_a = [ConvOp(geom, w, b, v, x, out_a, None, None, True, threads) for v in variants]
    current[0] = mod_b
    ops_b = [ConvOp(geom, w, b, v, x, out_b, None, None, True, threads) for v in variants]
    for v, a, bb in zip(variants, ops_a, ops_b):
        a()
        bb()
        assert torch.equal(out_a, out_b), "the two builds' outputs differ"
        ta, tb = [], []
        for r in range(rounds):
            turns = ((a, ta, mod_b), (bb, tb, mod_a))
            for op, times, other in turns if r % 2 == 0 else turns[::-1]:
                other.rest()
                if flush.size:
                    flush += 1.0
                else:
                    op()
                t = time.perf_counter()
                op()
                times.append(time.perf_counter() - t)
        ratio = statistics.median(p / q for p, q in zip(ta, tb))
        print(f"{str(v):40s} A {min(ta) * 1e3:7.3f}/{statistics.median(ta) * 1e3:7.3f}  "
              f"B {min(tb) * 1e3:7.3f}/{statistics.median(tb) * 1e3:7.3f} ms (fastest/median)  A/B median {ratio:.3f}")


def model(sparsity: float, batch: int, blocks: int) -> None:
    torch.set_num_threads(2)
    net = synthetic_resnet18(sparsity).eval()
    x = example_batch(batch)
    with torch.no_grad():
        current[0] = mod_a
        eng_a = E.compile_model(net, x, 2)
        current[0] = mod_b
        eng_b = E.compile_model(net, x, 2, choices=eng_a.choices())  # the same per-layer choices
        current[0] = mod_a
        y_a = eng_a.run(x)
        current[0] = mod_b
        assert torch.equal(y_a, eng_b.run(x)), "the two builds' outputs differ"

        def turn(engine, mine, other):  # a block's calls: the other build's pool at rest, this build's helpers
            def call():
                other.rest()
                current[0] = mine
                engine.run(x)
            return call

        medians = alternate_blocks({"A": turn(eng_a, mod_a, mod_b), "B": turn(eng_b, mod_b, mod_a)}, blocks,
                                   0.5 if batch == 1 else 1.5, 0.05)
        ba, bb = medians["A"], medians["B"]
        r = [p / q for p, q in zip(ba, bb)]
        print(f"S={sparsity} bs={batch}: A {statistics.median(ba) * 1e3:.3f} ms  "
              f"B {statistics.median(bb) * 1e3:.3f} ms  A/B median {statistics.median(r):.3f} "
              f"(range {min(r):.3f}-{max(r):.3f})")


if mode == "layer":
    layer(int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
else:
    model(float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 16)
