"""What the second core costs our engine, layer by layer: one engine's steps timed alone and while a second
engine runs its own chunks on the other core, interleaved.

    python experiments/side_by_side.py MODEL [--rounds 6]

MODEL: synthetic:S or a checkpoint. A batch of 64 is prepared as ``bench.ab`` prepares it (two single-threaded
engines, chunks of 16 images, choices from the cache), and the first engine's output checked against the model.
Then, in each round, three passes of one chunk through the first engine with every step timed (``time_pass``,
after its two untimed ones), once with the
second engine idle and once with it running chunks back to back; the rounds alternate which comes first. Prints
the mean ms per chunk of each step over 0.3 ms, alone and beside the other engine, and the whole pass.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import torch

from bench.kernels.engine import EngineSettings, ParallelEngine, compile_model, time_pass
from bench.models import example_batch, load, model_spec
from exporters import run_cli
from prune.errors import PruneBenchError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/side_by_side.py", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="synthetic:S or a checkpoint")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        raise PruneBenchError(f"--rounds {args.rounds}: give at least 1")
    model = load(model_spec(args.model)).model.eval()
    example = example_batch(64)
    with torch.inference_mode():
        engine = compile_model(model, example, 2, EngineSettings())
        if not isinstance(engine, ParallelEngine):
            raise PruneBenchError("this machine prepares one engine for the batch: nothing runs side by side")
        first, second = engine.engines[:2]
        x, y = example[:16].contiguous(), example[16:32].contiguous()
        if not torch.allclose(first._run_chunk(x), model(x), atol=1e-3, rtol=1e-3):
            raise PruneBenchError(f"{args.model}: the engine does not match the model: not timed")
        choices = first.choices()
        passes = {"alone": [], "beside": []}  # per mode, time_pass's PassTimes of each round
        for k in range(args.rounds):
            for mode in ("alone", "beside") if k % 2 == 0 else ("beside", "alone"):
                stop = threading.Event()
                busy = threading.Thread(target=lambda: [second._run_chunk(y) for _ in iter(stop.is_set, True)])
                if mode == "beside":
                    busy.start()
                    time.sleep(0.05)
                passes[mode].append(time_pass(first, x, 3))  # one chunk: that engine's passes, every step timed
                if mode == "beside":
                    stop.set()
                    busy.join()
    labels = passes["alone"][0].labels
    alone, beside = ([statistics.fmean(t for p in passes[m] for t in p.steps_ms[i]) for i in range(len(labels))]
                     for m in ("alone", "beside"))
    print(f"{args.model}: ms per chunk of 16 images, one engine alone and beside a second one on the other core "
          f"(mean of {3 * args.rounds} passes each)")
    for label, a, b in zip(labels, alone, beside):
        if a > 0.3:
            print(f"  {label:24s} {choices.get(label, ''):42s} {a:7.2f} {b:7.2f} {b / a:5.2f}x")
    print(f"  {'a pass':24s} {'':42s} {sum(alone):7.2f} {sum(beside):7.2f} {sum(beside) / sum(alone):5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
