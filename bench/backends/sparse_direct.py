"""Our sparse direct convolution on the CPU: BN folded, epilogues fused, sparse or dense chosen per layer by timing."""

from __future__ import annotations

import torch
from torch import nn

from bench.backends import Backend, Prepared


def _unavailable(device: str) -> str | None:
    if device != "cpu":
        return "sparse-direct is a CPU backend"
    from bench.kernels import unavailable

    return unavailable()


def _prepare(model: nn.Module, example: torch.Tensor, device: str, threads: int) -> Prepared:
    from bench.kernels.engine import compile_model

    engine = compile_model(model, example.cpu(), threads)
    inputs = example.detach().cpu().float().contiguous()

    def run(x):
        with torch.inference_mode():
            return engine.run(x)

    kinds: dict[str, int] = {}
    for choice in engine.choices().values():
        kind = choice.split("(")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    info = {
        "layer_choices": engine.choices(),
        "layer_kinds": kinds,
        "weight_bytes": engine.weight_bytes,
        "dense_weight_bytes": engine.dense_bytes,
        "chunk": engine.chunk,
        "threading": "one engine per thread, each on its own chunks" if hasattr(engine, "engines") else "threads split each layer",
        "choice_cache_hits": engine.cache_hits,
    }
    return Prepared(run=run, inputs=inputs, info=info)


BACKEND = Backend(
    name="sparse-direct",
    devices=("cpu",),
    prepare=_prepare,
    unavailable=_unavailable,
    atol=1e-4,
    rtol=1e-4,
    description="own C++ sparse direct convolution (BN folded, fused epilogues), sparse or dense per layer by timing",
)
