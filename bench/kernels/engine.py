"""Running a lowered model: buffers, threads, batch chunks; ``compile_model`` is the one way in.

``compile_model(model, example, threads)`` lowers the model (``lower``), gives each conv
its variant (``choose``: timed on this machine, or from the cache) and returns an
``Engine``. A batch of several chunks of 16 images with several threads runs as a
``ParallelEngine``: one single-threaded engine per thread, each on its own chunks, all
reading one copy of the packed weights.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bench.kernels import build
from bench.kernels.choose import (  # noqa: F401  (names other modules import from here)
    REFINE_MAX_PASS_MS,
    REFINE_ROUNDS,
    REFINE_TOP,
    REFINE_WITHIN,
    ChoiceCache,
    LayerRecord,
    _Refine,
    cache_key,
    choose,
    offered,
    refine_in_pass,
    sources_digest,
)
from bench.kernels.kinds import DENSE_KINDS, SPARSE_KINDS, ConvOp, kind_of  # noqa: F401
from bench.kernels.layout import from_act
from bench.kernels.lower import ConvSite, PhaseStep, lower
from prune.errors import PruneBenchError

_PhaseStep = PhaseStep  # the name tests and probes use


@dataclasses.dataclass
class EngineSettings:
    """How the sparse-direct engine is prepared."""

    chunk: int = 16  # images per pass through the layers when the batch is a larger multiple of it (cache reuse)
    timing_runs: int = 4  # timed calls per variant when choosing (the fastest counts)
    use_cache: bool = True  # reuse per-layer choices saved on disk from an earlier prepare
    cache_dir: str = dataclasses.field(
        default_factory=lambda: os.environ.get(
            "PRUNEBENCH_CACHE", str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prunebench")
        )
    )
    force: str | None = None  # a kind ("sparse", "dense", "cols", ...): every conv times only that kind's variants
    batch_parallel: bool = True  # with at least as many chunks as threads: one single-threaded engine per thread
    time_everything: bool = False  # also time the dense variants of very sparse layers (per-layer profiles)
    refine_in_pass: bool = True  # time each layer's close candidates again inside the pass (short passes only)
    isa: str | None = None  # the kernels' instruction set ("native", "avx2", "avx512"); None: PRUNEBENCH_ISA


class Engine:
    """A model compiled for one chunk size: ``run(x)`` for inference, ``features(x)`` for parity tests."""

    def __init__(self, chunk: int, threads: int):
        self.chunk = chunk
        self.threads = threads
        self.steps: list[Callable[[], None]] = []
        self.slots: dict[str, Any] = {}
        self.input_slot = ""
        self.output_slot = ""
        self.acts: dict[str, Any] = {}  # fx node name -> buffer holding that node's value
        self.fixed: set[str] = set()  # slots that hold the same preallocated tensor (or a view of one) every run
        self.layers: list[LayerRecord] = []
        self.conv_steps: dict[str, int] = {}  # conv name -> index of its op in steps
        self.cache_hits = 0
        self.isa = ""  # what the kernels it runs vectorise with

    def _run_chunk(self, x: torch.Tensor) -> torch.Tensor:
        self.slots[self.input_slot] = x
        for step in self.steps:
            step()
        return self.slots[self.output_slot]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n == self.chunk:
            return self._run_chunk(x).clone()
        if n % self.chunk:
            raise PruneBenchError(f"batch of {n} does not split into the engine's chunks of {self.chunk}")
        return torch.cat([self._run_chunk(x[i : i + self.chunk]).clone() for i in range(0, n, self.chunk)])

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate activation (fx node name -> NCHW tensor) of one chunk ``x``, each copied right
        after the step that writes it: a conv that adds its residual in place overwrites the residual's."""
        written: dict[int, list[str]] = {}
        for name, v in self.acts.items():
            step = v.producer.op if isinstance(v.producer, ConvSite) else v.producer
            written.setdefault(id(step), []).append(name)
        out = {}
        self.slots[self.input_slot] = x
        for step in self.steps:
            step()
            for name in written.get(id(step), []):
                out[name] = from_act(self.acts[name].buf, self.acts[name].act).clone()
        for name, v in self.acts.items():  # written by no step of their own
            out.setdefault(name, from_act(v.buf, v.act).clone())
        return out

    @property
    def weight_bytes(self) -> int:
        return sum(r.weight_bytes for r in self.layers)

    @property
    def dense_bytes(self) -> int:
        return sum(r.dense_bytes for r in self.layers)

    def choices(self) -> dict[str, str]:
        return {r.name: r.choice for r in self.layers}


def _warm_up(threads: int) -> None:
    """Start the kernel's thread pool, so the first layer's timings do not pay for it."""
    from bench.kernels import sparse_conv2d

    x = torch.ones(1, 16, 8, 8)
    for _ in range(3):
        sparse_conv2d(x, torch.ones(16, 16, 3, 3), padding=1, threads=threads)


class ParallelEngine:
    """Several single-threaded engines, each running its own chunks of the batch at the same time.

    With 16 images per chunk, threads that split one layer both stream its whole
    activations through a cache they share; threads that each own whole chunks keep
    their working sets apart, and scale as one thread does.
    """

    def __init__(self, engines: list[Engine]):
        from concurrent.futures import ThreadPoolExecutor

        self.engines = engines
        self.chunk = engines[0].chunk
        self.threads = len(engines)
        self.layers = engines[0].layers
        self.cache_hits = engines[0].cache_hits
        self.isa = engines[0].isa
        self._pool = ThreadPoolExecutor(max_workers=len(engines), thread_name_prefix="sparse-direct")

    def run(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n % self.chunk:
            raise PruneBenchError(f"batch of {n} does not split into the engine's chunks of {self.chunk}")
        starts = list(range(0, n, self.chunk))
        out: list[torch.Tensor | None] = [None] * len(starts)

        def work(k: int):  # engine k takes chunks k, k + threads, ...
            engine = self.engines[k]
            for j in range(k, len(starts), len(self.engines)):
                out[j] = engine._run_chunk(x[starts[j] : starts[j] + self.chunk]).clone()

        for future in [self._pool.submit(work, k) for k in range(min(len(self.engines), len(starts)))]:
            future.result()
        return torch.cat(out)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.engines[0].features(x)

    @property
    def weight_bytes(self) -> int:
        return self.engines[0].weight_bytes

    @property
    def dense_bytes(self) -> int:
        return self.engines[0].dense_bytes

    def choices(self) -> dict[str, str]:
        return self.engines[0].choices()


OTHER_STEP = "other"  # PassTimes' label of a step that is not a conv (input copy, phase planes, pool, classifier)


@dataclasses.dataclass
class PassTimes:
    """Where a pass goes: ``time_pass``'s times in ms, one per timed pass (or batch) in each list."""

    chunk: int  # images in the timed pass
    labels: list[str]  # per step: its conv's name, or OTHER_STEP
    steps_ms: list[list[float]]  # per step, its time in each pass
    walls_ms: list[float]  # each pass end to end
    batch: int = 0  # images in the whole batch, where it is more than one pass
    engines: int = 1  # engines that ran the batch at once (a ParallelEngine's)
    batch_ms: list[float] = dataclasses.field(default_factory=list)  # each whole batch, as the backend runs it

    def conv_ms(self, name: str) -> list[float]:
        return self.steps_ms[self.labels.index(name)]

    def other_ms(self) -> list[float]:
        """The steps that are not convs, summed per pass."""
        rows = [t for label, t in zip(self.labels, self.steps_ms) if label == OTHER_STEP]
        return [sum(col) for col in zip(*rows)] if rows else [0.0] * len(self.walls_ms)


def time_pass(engine: "Engine | ParallelEngine", example: torch.Tensor, runs: int) -> PassTimes:
    """Time ``runs`` passes of one chunk of ``example`` with every step timed, after two untimed.

    Alone, a layer is timed call after call on the same warm buffers; inside a pass its input was
    just written by the layer before and its weights last read a pass ago. Where ``example`` is
    several chunks, each timed pass is followed by one timed run of the whole batch as the engine
    runs it (a ``ParallelEngine``: its engines side by side), so both see the machine alike.
    """
    if runs < 1:
        raise PruneBenchError(f"time_pass: runs {runs}: give at least 1")
    one = engine.engines[0] if isinstance(engine, ParallelEngine) else engine
    convs = iter(r.name for r in one.layers)
    labels = [next(convs) if isinstance(step, ConvOp) else OTHER_STEP for step in one.steps]
    if sum(label != OTHER_STEP for label in labels) != len(one.layers):
        raise PruneBenchError("time_pass: the engine's conv steps do not match its layers")
    x = example[: one.chunk].float().contiguous()
    whole = example.shape[0] > one.chunk
    steps_ms: list[list[float]] = [[] for _ in one.steps]
    walls, batch = [], []
    with torch.inference_mode():
        for _ in range(2):
            one._run_chunk(x)
            if whole:
                engine.run(example)
        for _ in range(runs):
            one.slots[one.input_slot] = x
            start = time.perf_counter()
            for times, step in zip(steps_ms, one.steps):
                t = time.perf_counter()
                step()
                times.append((time.perf_counter() - t) * 1e3)
            walls.append((time.perf_counter() - start) * 1e3)
            if whole:
                t = time.perf_counter()
                engine.run(example)
                batch.append((time.perf_counter() - t) * 1e3)
    engines = len(engine.engines) if isinstance(engine, ParallelEngine) else 1
    return PassTimes(one.chunk, labels, steps_ms, walls, example.shape[0] if whole else 0, engines, batch)


def _chunk_of(example: torch.Tensor, settings: EngineSettings) -> int:
    n = example.shape[0]
    return settings.chunk if (settings.chunk and n > settings.chunk and n % settings.chunk == 0) else n


def compile_model(model: nn.Module, example: torch.Tensor, threads: int,
                  settings: EngineSettings | None = None, progress: Callable[[str], None] | None = None,
                  choices: dict[str, str] | None = None):
    """Lower ``model`` (eval mode, CPU, fp32) for batches shaped like ``example``: an ``Engine``, or a
    ``ParallelEngine`` of ``threads`` engines when the batch splits into at least that many chunks.

    ``progress(name)`` is called as each conv is prepared (for a progress bar). ``choices``
    (conv name -> variant name) fixes the variant of the convs it names; one this CPU's
    build does not offer for that conv is a one-line PruneBenchError listing those it does.
    """
    settings = settings or EngineSettings()
    if example.dim() != 4:
        raise PruneBenchError(f"sparse-direct runs image models: input of shape {tuple(example.shape)} is not NCHW")
    with build.using(settings.isa):
        chunks = example.shape[0] // _chunk_of(example, settings)
        if settings.batch_parallel and threads > 1 and chunks >= threads:
            first = _compile(model, example, 1, settings, progress, choices)
            rest = [_compile(model, example, 1, settings, None, first.choices(), weights_of=first)
                    for _ in range(threads - 1)]
            torch.set_num_threads(threads)
            return ParallelEngine([first] + rest)
        return _compile(model, example, threads, settings, progress, choices)


def _compile(model: nn.Module, example: torch.Tensor, threads: int, settings: EngineSettings,
             progress: Callable[[str], None] | None = None, choices: dict[str, str] | None = None,
             weights_of: Engine | None = None) -> Engine:
    """One engine: lowered, each conv given its variant, phase splits no chosen variant reads dropped."""
    chunk = _chunk_of(example, settings)
    torch.set_num_threads(threads)
    _warm_up(threads)
    engine = Engine(chunk, threads)
    engine.isa = build.built_isa()
    x = example[:chunk].float().contiguous()
    sites = lower(engine, model, x)
    if choices:  # convs whose given kind adds the residual in place are built so at once, sharing such code
        for site in sites:
            if site.name in choices and _writes_over_residual(site, kind_of(choices[site.name])):
                site.out.set_(site.residual)
    choose(engine, sites, x, settings, progress, choices, weights_of)
    _residuals_in_place(engine, sites)
    engine.steps = [s for s in engine.steps if not (isinstance(s, PhaseStep) and not s.used)]
    where = {id(step): i for i, step in enumerate(engine.steps)}
    engine.conv_steps = {site.name: where[id(site.op)] for site in sites}
    return engine


def _writes_over_residual(site: ConvSite, kind) -> bool:
    """Whether ``site``, run by ``kind``, writes its output over its residual (``_residuals_in_place``)."""
    return site.residual_dead and kind.in_place


def _residuals_in_place(engine: Engine, sites: list[ConvSite]) -> None:
    """Where no later step reads a conv's residual and its chosen kind can, the conv writes its output over the
    residual: one activation fewer streams through the caches (the residual read and a cold output buffer
    become one), and the engine holds one buffer fewer. The output buffer then shares the residual's memory,
    so every step that reads it reads the same tensor as before; each op is bound again to the new pointers."""
    moved = False
    for site in sites:
        if _writes_over_residual(site, site.op.kind) and not site.op.in_place:
            site.out.set_(site.residual)
            moved = True
    if not moved:
        return
    for site in sites:
        site.op = site.make(site.op.variant, site.op.packed)
        engine.steps[site.index] = site.op


def candidates(model: nn.Module, example: torch.Tensor, threads: int,
               settings: EngineSettings | None = None) -> dict[str, list[str]]:
    """What this CPU's build offers each conv of ``model`` at ``example``'s batch (conv name -> variant names, in
    the order they would be timed), without timing anything: for choosing variants by hand (``choices``)."""
    settings = settings or EngineSettings()
    with build.using(settings.isa):
        chunks = example.shape[0] // _chunk_of(example, settings)
        per_engine = 1 if settings.batch_parallel and threads > 1 and chunks >= threads else threads
        engine = Engine(_chunk_of(example, settings), per_engine)
        sites = lower(engine, model, example[: engine.chunk].float())
        return {s.name: [str(v) for v in offered(s, settings.time_everything)] for s in sites}
