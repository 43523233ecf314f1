"""Options and fixtures of the latency suite (``pytest bench``).

Every ``--bench-*`` option is a field of ``BenchSettings``; the cases
(backend x device x model x batch size) are generated in
``pytest_generate_tests`` from the backend registry, so a backend added to
``bench.backends.BACKENDS`` is benchmarked with no change here.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench import models as bench_models
from bench.backends import BACKENDS, get_backend
from prune.errors import PruneBenchError

DEVICES = ("cpu", "cuda")


@dataclasses.dataclass
class BenchSettings:
    """What ``pytest bench`` runs; each field is the option ``--bench-<field>``."""

    models: str = dataclasses.field(
        default="", metadata={"help": "checkpoint files or folders (their *.pt), comma-separated; default: synthetic"}
    )
    backends: str = dataclasses.field(
        default="", metadata={"help": "backend names, comma-separated, or 'all'; default: every default backend"}
    )
    devices: str = dataclasses.field(default="cpu,cuda", metadata={"help": "devices, comma-separated"})
    batch_sizes: str = dataclasses.field(
        default="", metadata={"help": "batch sizes, comma-separated; default: 1,64 (quick: 1,4)"}
    )
    threads: int = dataclasses.field(default=0, metadata={"help": "CPU threads for torch and ONNX Runtime; 0: physical cores"})
    quick: bool = dataclasses.field(
        default=False, metadata={"help": "smoke run: synthetic 0%, 90% and channel-pruned to 90%'s MACs, batch 1 and 4, few rounds"}
    )


@dataclasses.dataclass(frozen=True)
class Timing:
    """How many rounds a case is timed for: enough to fill ``target_s``, within [min_rounds, max_rounds]."""

    target_s: float = 1.0  # timed seconds per case, estimated from one call
    min_rounds: int = 3
    max_rounds: int = 100
    warmup_rounds: int = 2  # untimed calls after the parity call and the calibration call...
    slow_s: float = 1.0  # ...unless the calibration call took longer than this (seconds)


QUICK_TIMING = Timing(target_s=0.2, min_rounds=1, max_rounds=10, warmup_rounds=1, slow_s=0.2)
BATCH_SIZES = (1, 64)
QUICK_BATCH_SIZES = (1, 4)


@dataclasses.dataclass
class BenchPlan:
    """The parsed options: what the suite will generate."""

    specs: list  # bench.models.ModelSpec
    backends: list[str]
    devices: list[str]
    cases: list[tuple[str, str, str | None]]  # (backend, device, why it cannot run here or None)
    batch_sizes: list[int]
    threads: int
    timing: Timing
    quick: bool


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def make_plan(settings: BenchSettings) -> BenchPlan:
    """Validate the options into a plan; bad values raise a one-line ``PruneBenchError``."""
    if settings.models:
        specs = bench_models.checkpoint_specs(settings.models)
    else:
        specs = bench_models.synthetic_specs(
            bench_models.QUICK_SPARSITIES if settings.quick else bench_models.SYNTHETIC_SPARSITIES,
            bench_models.QUICK_CHANNEL_MATCHES if settings.quick else bench_models.CHANNEL_MATCHES,
        )
    names = _csv(settings.backends)
    if names == ["all"]:
        backends = list(BACKENDS)
    elif names:
        for name in names:
            get_backend(name)  # an unknown name lists the valid ones
        backends = names
    else:
        backends = [name for name in BACKENDS if get_backend(name).default]
    devices = _csv(settings.devices)
    for d in devices:
        if d not in DEVICES:
            raise PruneBenchError(f"unknown device {d!r} in --bench-devices: choose from {', '.join(DEVICES)}")
    if not settings.batch_sizes:
        batch_sizes = list(QUICK_BATCH_SIZES if settings.quick else BATCH_SIZES)
    else:
        try:
            batch_sizes = [int(b) for b in _csv(settings.batch_sizes)]
        except ValueError:
            raise PruneBenchError(f"--bench-batch-sizes {settings.batch_sizes!r}: give whole numbers, e.g. 1,64") from None
        if not batch_sizes or min(batch_sizes) < 1:
            raise PruneBenchError(f"--bench-batch-sizes {settings.batch_sizes!r}: give whole numbers >= 1, e.g. 1,64")
    cases = []
    for name in backends:
        backend = get_backend(name)
        cases += [(name, d, backend.unavailable(d)) for d in backend.devices if d in devices]
    if not cases:
        raise PruneBenchError(f"no backend of {', '.join(backends)} runs on {', '.join(devices)}: check --bench-devices")
    if settings.threads < 0:
        raise PruneBenchError(f"--bench-threads {settings.threads} must be >= 1 (0: physical cores)")
    threads = settings.threads or bench_models.physical_cores()
    return BenchPlan(
        specs=specs,
        backends=backends,
        devices=devices,
        cases=cases,
        batch_sizes=batch_sizes,
        threads=threads,
        timing=QUICK_TIMING if settings.quick else Timing(),
        quick=settings.quick,
    )


def pytest_addoption(parser):
    group = parser.getgroup("prunebench", "prunebench latency suite")
    for f in dataclasses.fields(BenchSettings):
        flag = "--bench-" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            group.addoption(flag, action="store_true", default=f.default, help=f.metadata["help"])
        else:
            group.addoption(flag, type=type(f.default), default=f.default, help=f.metadata["help"])


def pytest_configure(config):
    values = {f.name: config.getoption("--bench-" + f.name.replace("_", "-")) for f in dataclasses.fields(BenchSettings)}
    try:
        plan = make_plan(BenchSettings(**values))
    except PruneBenchError as e:
        raise pytest.UsageError(str(e)) from None
    config.bench_plan = plan
    torch.set_num_threads(plan.threads)


def pytest_generate_tests(metafunc):
    if "bench_model" not in metafunc.fixturenames:
        return
    plan: BenchPlan = metafunc.config.bench_plan
    metafunc.parametrize("bench_model", plan.specs, ids=[s.id for s in plan.specs], indirect=True, scope="module")
    metafunc.parametrize("batch_size", plan.batch_sizes, ids=[f"b{b}" for b in plan.batch_sizes])
    cases = []
    for name, device, why in plan.cases:
        marks = [pytest.mark.skip(reason=f"{name} on {device}: {why}")] if why else []
        cases.append(pytest.param(name, device, id=f"{name}-{device}", marks=marks))
    metafunc.parametrize(("backend_name", "device"), cases)


@pytest.fixture(scope="session")
def bench_plan(request) -> BenchPlan:
    return request.config.bench_plan


@pytest.fixture(scope="session")
def model_cache() -> dict:
    """Models built or loaded in this pytest run, by spec id (synthetic ones take seconds to prune and calibrate)."""
    return {}


@pytest.fixture(scope="module")
def bench_model(request, model_cache) -> bench_models.BenchModel:
    spec = request.param
    if spec.id not in model_cache:
        try:
            model_cache[spec.id] = bench_models.load(spec)
        except PruneBenchError as e:
            pytest.fail(f"{spec.id}: {e}", pytrace=False)
    return model_cache[spec.id]
