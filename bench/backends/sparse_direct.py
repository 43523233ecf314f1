"""Our sparse direct convolution on the CPU: BN folded, epilogues fused, sparse or dense chosen per layer by timing.

Two registry entries:

- ``sparse-direct-kernels``: the whole model in our kernels (``bench.kernels``), each
  conv's variant chosen by timing; where sparsity does not pay, our own dense kernels.
- ``sparse-direct``: the whole model in our kernels or the whole model in ONNX Runtime,
  whichever ran faster on this machine at this batch size in an interleaved check
  (``bench.timing.alternate_blocks``: short alternating blocks of back-to-back calls, the
  median over blocks); a near tie (within ``MARGIN``) goes to ONNX Runtime. What ran is
  recorded in the prepared info (``ran``, with both medians); the decision is cached
  beside the per-layer choices.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.backends import Backend, Prepared

KERNELS_RAN = "sparse-direct-kernels"  # the whole model in our kernels
ORT_RAN = "onnxruntime"  # the whole model in ONNX Runtime
BLOCKS = 4  # rounds of the check: one block of each per round, in alternating order
BLOCK_S = 0.2  # seconds of back-to-back calls per block
PAUSE_S = 0.05  # sleep before each block: ONNX Runtime's threads spin on after a call
MARGIN = 1.03  # our kernels run only where their median is at least this much faster than ONNX Runtime's


def _unavailable(device: str) -> str | None:
    if device != "cpu":
        return "sparse-direct is a CPU backend"
    from bench.kernels import unavailable

    return unavailable()


def _whole_unavailable(device: str) -> str | None:
    from bench.backends.onnxruntime import unavailable as ort_unavailable

    return _unavailable(device) or ort_unavailable(device)


def _engine_info(engine) -> dict:
    kinds: dict[str, int] = {}
    for choice in engine.choices().values():
        kind = choice.split("(")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "layer_choices": engine.choices(),
        "layer_kinds": kinds,
        "weight_bytes": engine.weight_bytes,
        "dense_weight_bytes": engine.dense_bytes,
        "chunk": engine.chunk,
        "threading": "one engine per thread, each on its own chunks" if hasattr(engine, "engines") else "threads split each layer",
        "choice_cache_hits": engine.cache_hits,
        "kernel_isa": engine.isa,
    }


def _kernels_prepared(engine, example: torch.Tensor, info: dict) -> Prepared:
    inputs = example.detach().cpu().float().contiguous()

    def run(x):
        with torch.inference_mode():
            return engine.run(x)

    return Prepared(run=run, inputs=inputs, info={**info, **_engine_info(engine)})


def _prepare(model: nn.Module, example: torch.Tensor, device: str, threads: int) -> Prepared:
    from bench.kernels.engine import compile_model

    return _kernels_prepared(compile_model(model, example.cpu(), threads), example, {})


def pick(kernels_ms: float, ort_ms: float, margin: float | None = None) -> str:
    """What runs the model: our kernels where their median beat ONNX Runtime's by ``margin`` (default
    ``MARGIN``), else ONNX Runtime."""
    return KERNELS_RAN if kernels_ms * (MARGIN if margin is None else margin) < ort_ms else ORT_RAN


def _decision_key(model: nn.Module, example: torch.Tensor, threads: int) -> str:
    """The cache key of the decision: the model's weights, the batch, threads, ONNX Runtime's version and how the
    decision is made (this file, ONNX Runtime's session options), besides what every choice depends on."""
    import onnxruntime as ort

    from bench.backends.onnxruntime import fingerprint
    from bench.kernels.choose import cache_key

    here = Path(__file__)
    code = hashlib.sha1(here.read_bytes() + here.with_name("onnxruntime.py").read_bytes()).hexdigest()
    return cache_key("whole-model", fingerprint(model), tuple(example.shape), threads, ort.__version__, code)


def decide(engine, session, example: torch.Tensor) -> dict[str, float]:
    """Median ms per call of our engine and of the ONNX Runtime ``session`` on ``example``, interleaved."""
    from tqdm import tqdm

    from bench.timing import alternate_blocks

    x = np.ascontiguousarray(example.numpy())
    name = session.get_inputs()[0].name

    def kernels():
        with torch.inference_mode():
            engine.run(example)

    calls = {KERNELS_RAN: kernels, ORT_RAN: lambda: session.run(None, {name: x})}
    blocks = alternate_blocks(calls, BLOCKS, BLOCK_S, PAUSE_S, wrap=lambda rounds: tqdm(
        rounds, desc="sparse-direct: our kernels or ONNX Runtime", file=sys.stderr, leave=False))
    return {n: statistics.median(b) * 1e3 for n, b in blocks.items()}


def _prepare_whole(model: nn.Module, example: torch.Tensor, device: str, threads: int) -> Prepared:
    """The whole model in our kernels or in ONNX Runtime, whichever is faster here (cached)."""
    import onnxruntime as ort

    from bench.backends.convmm import inference_copy
    from bench.backends.onnxruntime import cpu_prepared, exported, providers, session_options
    from bench.kernels.choose import ChoiceCache
    from bench.kernels.engine import EngineSettings, compile_model

    model = inference_copy(model).cpu().float()
    example = example.detach().cpu().float().contiguous()
    settings = EngineSettings()
    cache = ChoiceCache(settings.cache_dir, settings.use_cache)
    key = _decision_key(model, example, threads)
    cached = cache.get(key)
    cached = cached if isinstance(cached, dict) and cached.get("ran") in (KERNELS_RAN, ORT_RAN) else None
    engine = session = None
    facts: dict = {}
    if cached is None or cached["ran"] == KERNELS_RAN:
        engine = compile_model(model, example, threads, settings)
    if cached is None or cached["ran"] == ORT_RAN:
        path, facts = exported(model, tuple(example.shape[1:]))
        session = ort.InferenceSession(str(path), session_options(threads), providers=providers("cpu"))
    if cached is None:
        medians = decide(engine, session, example)
        cached = {"ran": pick(medians[KERNELS_RAN], medians[ORT_RAN]), "medians_ms": medians}
        cache.put(key, cached)
        cache.save()
        from_cache = False
    else:
        from_cache = True
    info = {
        **facts,
        "ran": cached["ran"],
        "ran_medians_ms": {k: round(v, 4) for k, v in cached["medians_ms"].items()},
        "ran_margin": MARGIN,
        "ran_cached": from_cache,
    }
    if cached["ran"] == KERNELS_RAN:
        return _kernels_prepared(engine, example, info)
    # ONNX Runtime whole: the onnxruntime backend's own call, numpy in and out
    return cpu_prepared(session, example, info)


BACKEND = Backend(
    name="sparse-direct",
    sparse=True,
    devices=("cpu",),
    prepare=_prepare_whole,
    unavailable=_whole_unavailable,
    atol=1e-4,
    rtol=1e-4,
    description="own C++ sparse direct convolution, sparse or dense per layer by timing, or ONNX Runtime for the "
    "whole model where that timed faster (info 'ran' says which)",
)

KERNELS_ONLY = Backend(
    name=KERNELS_RAN,
    sparse=True,
    devices=("cpu",),
    prepare=_prepare,
    unavailable=_unavailable,
    atol=1e-4,
    rtol=1e-4,
    description="own C++ sparse direct convolution (BN folded, fused epilogues), sparse or dense per layer by timing; "
    "every layer in our kernels",
    default=False,
)
