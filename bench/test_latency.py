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
from bench.models import BenchModel, bench_versions, expected_limit
from bench.parity import ParityError, prepare_checked


VERSIONS = bench_versions()
VERSIONS.pop("date", None)  # pytest-benchmark dates the run itself


def _json_safe(value):
    """``value`` if JSON can hold it, else its str (backends may put anything in ``Prepared.info``)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def rounds_for(call_s: float, timing) -> int:
    """Rounds that fill ``timing.target_s`` given one call's duration, within the timing's bounds."""
    wanted = math.ceil(timing.target_s / max(call_s, 1e-6))
    return int(min(timing.max_rounds, max(timing.min_rounds, wanted)))


def test_latency(benchmark, bench_plan, bench_model: BenchModel, batch_size: int, backend_name: str, device: str,
                 capsys):
    backend = get_backend(backend_name)
    what = f"{backend_name} on {device}, {bench_model.spec.id}, batch {batch_size}"
    if backend.sparse and bench_model.facts.get("structure") == "channel":
        pytest.skip(f"{what}: a channel-pruned model has no zero weights for a sparse backend to skip; "
                    "the dense backends time it")
    try:
        with capsys.disabled():  # a backend that tunes for minutes (sparse-direct) shows its progress bar
            prepared, (atol, rtol, tf32), max_abs_diff = prepare_checked(
                backend, bench_model, batch_size, device, bench_plan.threads, what
            )
    except NotApplicable as e:
        pytest.skip(f"{what}: {e}")
    except ParityError as e:
        pytest.fail(str(e), pytrace=False)

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
        "dense_backend": backend.dense,
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
