"""THE latency suite: every backend x device x model x batch size, checked against dense PyTorch, then timed.

    pytest bench --benchmark-autosave                 # the default run (synthetic models)
    pytest bench --bench-models runs/study/ --benchmark-autosave
    pytest bench --benchmark-disable --bench-quick    # CI: every parity check, no timing

What is timed: one ``prepared.run(prepared.inputs)`` plus ``prepared.synchronize()``
(a no-op on the CPU; waits for the GPU on CUDA), under ``torch.inference_mode``,
with inputs already on the device and in the backend's format. Model building,
conversion, export and session creation happen before, outside the timing.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from bench.backends import NotApplicable, get_backend
from bench.models import BenchModel, example_batch, expected_limit
from prune.platform import provenance


def _versions() -> dict:
    info = provenance()
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    try:
        import onnx

        info["onnx"] = onnx.__version__
    except ImportError:
        info["onnx"] = None
    info.pop("date", None)  # pytest-benchmark dates the run itself
    return info


VERSIONS = _versions()


def _json_safe(value):
    """``value`` if JSON can hold it, else its str (backends may put anything in ``Prepared.info``)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def check_parity(got: torch.Tensor, expected: torch.Tensor, other: torch.Tensor, atol: float, rtol: float, what: str):
    """Fail unless ``got`` matches ``expected`` within the tolerance, and the match could not happen by accident.

    ``other`` is the dense output for a different input. If it too lies within the
    tolerance of ``expected``, the model's logits barely depend on the input (e.g.
    an fc pruned to nothing leaves only the bias) and a backend returning garbage
    of the right shape could pass: that fails as well, saying why.
    """
    if torch.allclose(other, expected, atol=atol, rtol=rtol):
        spread = float((other - expected).abs().max())
        pytest.fail(
            f"{what}: the parity check would pass trivially: dense logits for two different inputs differ by at most "
            f"{spread:.3g}, within the tolerance (atol {atol:g}, rtol {rtol:g}); the model's output does not depend "
            "on its input (is fc pruned to nothing?)",
            pytrace=False,
        )
    try:
        torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)
    except AssertionError as e:
        pytest.fail(f"{what} differs from dense PyTorch: {e}", pytrace=False)


# cuDNN runs fp32 convolutions in TF32 by default (10-bit mantissa, as fp16's): on CUDA an fp32 backend is held to
# fp16's tolerance against the CPU fp32 reference while TF32 is allowed; the case records which applied. (5e-3 was
# too tight: on an H200 one logit in 2560 of a 50%-sparse model at batch 256 was 6.3e-3 off in TF32.)
TF32_ATOL, TF32_RTOL = 2e-2, 1e-2


def parity_tolerance(backend, device: str) -> tuple[float, float, bool]:
    """(atol, rtol, tf32) for ``backend`` on ``device``: the backend's own, widened to TF32's where it applies."""
    tf32 = device == "cuda" and bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
    if tf32:
        return max(backend.atol, TF32_ATOL), max(backend.rtol, TF32_RTOL), True
    return backend.atol, backend.rtol, False


def rounds_for(call_s: float, timing) -> int:
    """Rounds that fill ``timing.target_s`` given one call's duration, within the timing's bounds."""
    wanted = math.ceil(timing.target_s / max(call_s, 1e-6))
    return int(min(timing.max_rounds, max(timing.min_rounds, wanted)))


def test_latency(benchmark, bench_plan, bench_model: BenchModel, batch_size: int, backend_name: str, device: str):
    backend = get_backend(backend_name)
    what = f"{backend_name} on {device}, {bench_model.spec.id}, batch {batch_size}"
    example = example_batch(batch_size, seed=0)
    expected = bench_model.reference(batch_size, seed=0)
    other = bench_model.reference(batch_size, seed=1)  # a different input: proves the check is not trivial

    try:
        prepared = backend.prepare(bench_model.model, example, device, bench_plan.threads)
    except NotApplicable as e:
        pytest.skip(f"{what}: {e}")
    atol, rtol, tf32 = parity_tolerance(backend, device)

    with torch.inference_mode():
        got = prepared.to_torch(prepared.run(prepared.inputs))
        prepared.synchronize()
    check_parity(got, expected, other, atol, rtol, what)
    max_abs_diff = float((got - expected).abs().max())

    def timed():
        prepared.run(prepared.inputs)
        prepared.synchronize()

    # Rounds and warm-up: the parity call is the first warm-up (it absorbs lazy compilation and allocation),
    # a second, calibration call sizes the rounds. Slow calls (seconds: sparse kernels at low sparsity and
    # large batches) are warm by then and get no further warm-up; fast ones get ``warmup_rounds`` more.
    timing = bench_plan.timing
    rounds, warmup = 1, 0
    if not benchmark.disabled:
        with torch.inference_mode():
            start = time.perf_counter()
            timed()
            call_s = time.perf_counter() - start
        rounds = rounds_for(call_s, timing)
        warmup = 0 if call_s > timing.slow_s else timing.warmup_rounds

    facts = bench_model.facts
    benchmark.group = f"{facts['model']} batch {batch_size}"
    extra = {
        "backend": backend_name,
        "device": device,
        "batch_size": batch_size,
        **facts,
        "speedup_limit": expected_limit(facts["mac_sparsity"]),
        "threads": bench_plan.threads,
        "atol": atol,
        "rtol": rtol,
        "tf32_allowed": tf32,
        "max_abs_diff": max_abs_diff,
        "rounds": rounds,
        "warmup_rounds": warmup,
        "timed": "run(inputs) + synchronize(), torch.inference_mode",
        **VERSIONS,
    }
    for key, value in prepared.info.items():
        extra[key if key not in extra else f"backend_{key}"] = _json_safe(value)
    benchmark.extra_info.update(extra)

    with torch.inference_mode():  # with --benchmark-disable this runs the call once, untimed
        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup, iterations=1)
