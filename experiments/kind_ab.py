"""Whole engines with and without one kernel kind, interleaved in one process (A B, B A, ...).

    python experiments/kind_ab.py KIND BATCH THREADS MODEL [MODEL ...]

MODEL: synthetic:S or a checkpoint. For each model two sparse-direct engines are prepared on this
machine, one offered every kind, one every kind but KIND, each choosing its variants by timing as
usual (no choice cache); both outputs are checked against the model, then their 0.5 s blocks alternate
(12 each, 50 ms idle before each). Prints the median block-pair speedup of the engine with KIND over the
one without, with the lowest and highest pair, and which convs chose KIND.
"""

from __future__ import annotations

import sys

import torch

from exporters import run_cli

from bench.kernels import kinds
from bench.kernels.engine import EngineSettings, compile_model
from bench.models import example_batch, load, model_spec
from bench.timing import alternate_blocks, pair_ratios, summary
from prune.errors import PruneBenchError

def prepare(model, example, threads: int, drop: str | None):
    saved = dict(kinds.KINDS)
    if drop:
        del kinds.KINDS[drop]
    try:
        engine = compile_model(model, example, threads, EngineSettings(use_cache=False))
    finally:
        kinds.KINDS.clear()
        kinds.KINDS.update(saved)
    return engine


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        raise PruneBenchError("usage: python experiments/kind_ab.py KIND BATCH THREADS MODEL [MODEL ...]")
    kind, names = kinds.kind_of(argv[0]).name, argv[3:]
    if not (argv[1].isdigit() and argv[2].isdigit()):
        raise PruneBenchError(f"BATCH and THREADS are whole numbers, not {argv[1]!r} and {argv[2]!r}")
    batch, threads = int(argv[1]), int(argv[2])
    for name in names:
        model = load(model_spec(name)).model.eval()
        example = example_batch(batch)
        with torch.inference_mode():
            expected = model(example)
        engines = {"without": prepare(model, example, threads, kind), "with": prepare(model, example, threads, None)}
        for label, engine in engines.items():
            with torch.inference_mode():
                if not torch.allclose(engine.run(example), expected, atol=1e-3, rtol=1e-3):
                    raise PruneBenchError(f"{name}: the engine {label} {kind} does not match the model: not timed")
        chose = [conv for conv, v in engines["with"].choices().items() if v.startswith(kind)]

        def call(engine):
            return lambda: engine.run(example)

        with torch.inference_mode():
            blocks = alternate_blocks({k: call(e) for k, e in engines.items()}, 12, 0.5, 0.05)
        med, lo, hi = summary(pair_ratios(blocks["without"], blocks["with"]))
        ms = {k: 1e3 * sorted(v)[len(v) // 2] / batch for k, v in blocks.items()}
        print(f"{name} batch {batch}, {threads} thread(s): with {kind} {med:.2f}x ({lo:.2f}-{hi:.2f}) over without; "
              f"ms/img {ms['without']:.3f} -> {ms['with']:.3f}; {len(chose)} convs chose it")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
