"""One-off: a batch-64 ParallelEngine with one shared copy of the weights against one copy per engine.

    python bench/results/weights-traffic/shared_weights.py 0.9 16     # sparsity, blocks of 1.5 s each
"""
import pathlib
import statistics
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
import bench.kernels.engine as E  # noqa: E402
from bench.ab import alternate_blocks  # noqa: E402
from bench.models import example_batch, synthetic_resnet18  # noqa: E402

sparsity, blocks = float(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(2)
net = synthetic_resnet18(sparsity).eval()
x = example_batch(64)
with torch.no_grad():
    shared = E.compile_model(net, x, 2)
    separate = E.ParallelEngine([E._compile(net, x, 1, E.EngineSettings(), None, shared.choices()) for _ in range(2)])
    assert torch.equal(shared.run(x), separate.run(x))
    calls = {"shared": lambda: shared.run(x), "separate": lambda: separate.run(x)}
    medians = alternate_blocks(calls, blocks, 1.5, 0.05)  # 50 ms of rest before each block of 1.5 s
    one, two = medians["shared"], medians["separate"]
    r = [q / p for p, q in zip(one, two)]
    print(f"S={sparsity} bs64: shared {statistics.median(one) * 1e3:.1f} ms, "
          f"separate {statistics.median(two) * 1e3:.1f} ms; separate/shared median {statistics.median(r):.3f} "
          f"(range {min(r):.3f}-{max(r):.3f})")
