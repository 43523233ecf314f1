"""Where a conv loses time inside the pass: each conv of one engine timed three ways, interleaved.

    python experiments/in_pass.py MODEL [BATCH]

MODEL: synthetic:S or a checkpoint; BATCH (default 16) must be one chunk (1, or 16 for the 16-image kernels).
One single-threaded engine is prepared as usual and checked against the model; then, for each conv, 15 rounds of:
every step before it and the conv (in the pass), the step just before it and the conv (after the previous
step), the conv again (alone). Prints the median ms of each and the ratios to alone: a loss that appears only
after the whole prefix comes from caches the earlier layers filled; one that appears after the previous step
alone comes from that step (a phase split, the layer that wrote the input).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from exporters import run_cli

from bench.kernels.engine import compile_model
from bench.kernels.kinds import ConvOp
from bench.models import example_batch, load, model_spec
from prune.errors import PruneBenchError

ROUNDS = 15


def _ms(call) -> float:
    t = time.perf_counter()
    call()
    return (time.perf_counter() - t) * 1e3


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or (len(argv) == 2 and not argv[1].isdigit()):
        raise PruneBenchError("usage: python experiments/in_pass.py MODEL [BATCH] (BATCH a whole number, 1 or 16)")
    batch = int(argv[1]) if len(argv) == 2 else 16
    if batch not in (1, 16):
        raise PruneBenchError(f"batch {batch}: give one chunk, 1 or 16 images")
    model = load(model_spec(argv[0])).model.eval()
    x = example_batch(batch)
    engine = compile_model(model, x, 1)
    with torch.inference_mode():
        if not torch.allclose(engine.run(x), model(x), atol=1e-3, rtol=1e-3):
            raise PruneBenchError(f"{argv[0]}: the engine does not match the model: not timed")
        steps, names = engine.steps, iter(r.name for r in engine.layers)
        engine.slots[engine.input_slot] = x
        for _ in range(3):
            for step in steps:
                step()
        print(f"{'conv':24s} {'alone':>7s} {'after prev':>10s} {'in pass':>8s}   ratios to alone")
        for i, step in enumerate(steps):
            if not isinstance(step, ConvOp):
                continue
            alone, after, full = [], [], []
            for _ in range(ROUNDS):
                for before in steps[:i]:
                    before()
                full.append(_ms(step))
                if i:
                    steps[i - 1]()
                after.append(_ms(step))
                alone.append(_ms(step))
            a, p, f = (statistics.median(v) for v in (alone, after, full))
            print(f"{next(names):24s} {a:7.3f} {p:10.3f} {f:8.3f}   {p / a:.2f}x {f / a:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
