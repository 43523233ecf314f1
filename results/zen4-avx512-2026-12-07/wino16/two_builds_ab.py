"""Whole engines from two kernel sources, interleaved in one process: the one-off harness behind wino16/ab-*.txt.

    git show 89c5b0f:bench/kernels/sparse_conv.cpp > /tmp/before.cpp
    python results/zen4-avx512-2026-12-07/wino16/two_builds_ab.py /tmp/before.cpp 64 2 synthetic:0.9 synthetic:0

"before" is that source with the Winograd tiles it offered ((4, 6), (4, 4) with AVX-512); "after" is the
checkout's. Each engine chooses its own variants afresh (no choice cache); both outputs are checked against
the model; then 12 blocks of 0.5 s each, alternating, twice per model.
"""

import statistics
import sys
from pathlib import Path

import torch

import bench.kernels.build as build
from bench.kernels import kinds
from bench.kernels.engine import EngineSettings, compile_model
from bench.models import example_batch, load, model_spec
from bench.timing import alternate_blocks, pair_ratios, summary

before_src, batch, threads, names = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
BEFORE_TILES, AFTER_TILES, after_src = ((4, 6), (4, 4), (2, 2), (1, 4)), kinds.WINO_TILES, build.SOURCE
for name in names:
    model = load(model_spec(name)).model.eval()
    x = example_batch(batch)
    with torch.inference_mode():
        expected = model(x)
    engines = {}
    for label, src, tiles in (("before", before_src, BEFORE_TILES), ("after", after_src, AFTER_TILES)):
        build.SOURCE = src
        build._load.cache_clear()
        build._loaded.clear()
        kinds.WINO_TILES = kinds.KINDS["winograd"].compiled = tiles
        engines[label] = compile_model(model, x, threads, EngineSettings(use_cache=False))
        with torch.inference_mode():
            assert torch.allclose(engines[label].run(x), expected, atol=1e-3, rtol=1e-3), label
    wide = sum(v == "winograd(R=16,V=1)" for v in engines["after"].choices().values())
    for _ in range(2):
        with torch.inference_mode():
            blocks = alternate_blocks({k: (lambda e=e: e.run(x)) for k, e in engines.items()}, 12, 0.5, 0.05)
        med, lo, hi = summary(pair_ratios(blocks["before"], blocks["after"]))
        ms = {k: round(1e3 * statistics.median(v) / batch, 3) for k, v in blocks.items()}
        print(f"{name} bs{batch} {threads}t: after {med:.3f}x ({lo:.2f}-{hi:.2f}) over before; ms/img {ms}; "
              f"{wide} convs chose winograd(R=16,V=1)", flush=True)
