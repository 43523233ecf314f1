"""A model lowered onto the flat layout: BN folded, each conv fused with its ReLU and residual add,
and for each conv the fastest of its sparse and dense variants, timed on this machine.

``compile_model(model, example, threads)`` traces the BN-folded model with torch.fx and
walks it once: convolutions (with a following ReLU, or a residual add and then a ReLU)
become ``ConvOp``s between preallocated buffers; identities are aliases; everything else
(pooling, flatten, the classifier) runs as the original torch op on ordinary tensors.
Choices are cached on disk (``EngineSettings.cache_dir``), keyed by the layer's weights,
geometry, fused epilogue, batch, threads, CPU and kernel source, so a second prepare of
the same model is quick; delete the folder to time every layer afresh.

A batch of several chunks of 16 images with several threads runs as a
``ParallelEngine``: one single-threaded engine per thread, each on its own chunks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from bench.fold import fold_batchnorm
from bench.timing import time_ops
from bench.kernels import (
    SOURCE,
    Act,
    ConvGeometry,
    ConvOp,
    PackedRows,
    PackedWeights,
    Variant,
    candidate_variants,
    dense_nbytes,
    from_act,
    global_avg_pool,
    linear,
    to_act,
)
from prune.errors import PruneBenchError
from prune.platform import cpu_name


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
    force: str | None = None  # "sparse", "dense", "channels" or "torch": every conv uses that kind (tests)
    batch_parallel: bool = True  # with at least as many chunks as threads: one single-threaded engine per thread
    time_everything: bool = False  # also time the dense variants of very sparse layers (per-layer profiles)
    refine_in_pass: bool = True  # time each layer's close candidates again inside the pass (short passes only)


SPARSE_KINDS = ("sparse", "grouped", "rows", "stack", "cols")  # variants that skip zero weights
DENSE_KINDS = ("dense", "torch", "channels")  # variants that compute every weight


@dataclasses.dataclass
class LayerRecord:
    """One convolution as the engine runs it: its shape, sparsity, timings and the variant chosen."""

    name: str  # the conv module's name in the model
    in_shape: tuple[int, ...]  # (N, C, H, W) of one chunk
    out_shape: tuple[int, ...]
    kernel: tuple[int, int]
    stride: int
    macs: int  # multiply-accumulates per image, dense
    sparsity: float  # fraction of zero weights
    times_ms: dict[str, float]  # variant -> fastest timed call (empty when the choice came from the cache)
    choice: str
    fused: str  # what the epilogue does: "", "relu", "add", "add+relu"
    weight_bytes: int  # of the chosen variant
    dense_bytes: int
    in_pass_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # close candidates timed inside the pass

    @property
    def sparse_ms(self) -> float | None:
        """The fastest variant that skips zero weights (``SPARSE_KINDS``)."""
        t = [v for k, v in self.times_ms.items() if k.startswith(SPARSE_KINDS)]
        return min(t) if t else None

    @property
    def chosen_sparse(self) -> bool:
        """Whether the chosen variant skips zero weights."""
        return self.choice.startswith(SPARSE_KINDS)

    @property
    def moved_in_pass(self) -> bool:
        """Whether the in-pass timing chose another variant than the fastest alone."""
        return bool(self.in_pass_ms) and self.choice != min(self.times_ms, key=self.times_ms.get)

    @property
    def dense_ms(self) -> float | None:
        """The fastest variant that computes every weight (our dense kernels, torch's conv2d)."""
        t = [v for k, v in self.times_ms.items() if k.startswith(DENSE_KINDS)]
        return min(t) if t else None


READS_INPUT = ("cols", "torch")  # variants of a strided conv that read its input, not its phase planes

# in-pass refinement: candidates within this factor of the fastest alone, at most this many, this many rounds;
# only where the layers' chosen times sum to less than REFINE_MAX_PASS_MS (one picture, not 16)
REFINE_WITHIN = 1.25
REFINE_TOP = 3
REFINE_ROUNDS = 6
REFINE_MAX_PASS_MS = 30.0


@dataclasses.dataclass
class _PhaseStep:
    """Split one input into the phase planes its strided convs read; dropped from the pass if none does."""

    geom: ConvGeometry
    buf: torch.Tensor
    phases: torch.Tensor
    threads: int
    readers: list[LayerRecord] = dataclasses.field(default_factory=list)  # the strided convs after it

    @property
    def used(self) -> bool:
        """Whether a reader's final variant reads the phases (cols and torch read the input itself)."""
        return any(not r.choice.startswith(READS_INPUT) for r in self.readers)

    def __call__(self) -> None:
        self.geom.fill_phases(self.buf, self.phases, self.threads)


@dataclasses.dataclass
class _Refine:
    """One conv whose close candidates are timed again inside the pass, once every layer is chosen."""

    index: int  # where its op is in the engine's steps
    record: LayerRecord
    ops: dict[str, Callable[[], None]]  # variant name -> op on the layer's buffers (the chosen one included)
    key: str  # its choice-cache key


def refine_in_pass(engine: "Engine", items: list[_Refine], example: torch.Tensor, rounds: int = REFINE_ROUNDS) -> None:
    """Choose each listed conv's variant by its time inside the pass: before each timed call the steps
    before it run, so its input, weights and partial sums are in whatever cache a pass leaves them.

    Alone, a layer's variants are timed on the same warm input call after call; in the pass
    that input was just written by the layer before, and the previous layers' weights went
    through the caches in between. At batch 1 the two rankings differed: a variant 0.77-0.92x
    as fast in the pass had won alone. Layers are refined in order, each in the context of
    the earlier layers' final choices; the cost is ``rounds`` x candidates x half a pass per layer.
    """
    engine.slots[engine.input_slot] = example
    for item in items:
        prefix = engine.steps[: item.index]
        best = {name: float("inf") for name in item.ops}
        for _ in range(rounds):
            for name, op in item.ops.items():
                for step in prefix:
                    step()
                t = time.perf_counter()
                op()
                best[name] = min(best[name], time.perf_counter() - t)
        winner = min(best, key=best.get)
        engine.steps[item.index] = item.ops[winner]
        item.record.choice = winner
        item.record.in_pass_ms = {name: t * 1e3 for name, t in best.items()}
        item.record.weight_bytes = item.ops[winner].nbytes


@dataclasses.dataclass
class _ActVal:
    act: Act
    buf: torch.Tensor


@dataclasses.dataclass
class _TensorVal:
    slot: str


@dataclasses.dataclass
class _Pending:
    """A conv not yet emitted, waiting to absorb a ReLU or a residual add."""

    name: str
    module: nn.Conv2d
    inp: _ActVal
    geom: ConvGeometry
    residual: _ActVal | None = None
    relu: bool = False


_RELU_FUNCS = (F.relu, torch.relu, torch.relu_)
_ADD_FUNCS = (operator.add, operator.iadd, torch.add)


def _is_relu(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADD_FUNCS:
        return len(node.args) == 2 and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args)
    return node.op == "call_method" and node.target in ("add", "add_") and len(node.args) == 2 and not node.kwargs


def _is_global_avg_pool(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module" and isinstance(modules[node.target], nn.AdaptiveAvgPool2d):
        size = modules[node.target].output_size
        return size in (1, (1, 1))
    return False


_VIEW_FUNCS = (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze)
_VIEW_METHODS = ("flatten", "view", "reshape", "squeeze", "unsqueeze")


def _is_view(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` only reshapes its input (of a contiguous buffer, the result is a view of it)."""
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.Flatten)
    if node.op == "call_function":
        return node.target in _VIEW_FUNCS
    return node.op == "call_method" and node.target in _VIEW_METHODS


def _supported_conv(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Conv2d)
        and m.groups == 1
        and m.dilation == (1, 1)
        and m.stride[0] == m.stride[1]
        and isinstance(m.padding, tuple)
        and m.padding[0] == m.padding[1]
        and m.padding_mode == "zeros"
    )


def _weights_digest(conv: nn.Conv2d) -> str:
    h = hashlib.sha1(conv.weight.detach().float().contiguous().numpy().tobytes())
    if conv.bias is not None:
        h.update(conv.bias.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


class ChoiceCache:
    """Choices on disk (one JSON file: per-layer variants, and the sparse-direct backend's plans), so repeated
    prepares skip the timing."""

    def __init__(self, settings: EngineSettings):
        self.enabled = settings.use_cache and settings.force is None and not settings.time_everything
        self.path = Path(settings.cache_dir) / "sparse_direct_choices.json"
        self.data: dict[str, str] = {}
        self.dirty = False
        if self.enabled and self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.data = {}  # a damaged cache only costs the timing again

    def get(self, key: str) -> str | None:
        return self.data.get(key) if self.enabled else None

    def put(self, key: str, choice: str) -> None:
        if self.enabled:
            self.data[key] = choice
            self.dirty = True

    def save(self) -> None:
        if not (self.enabled and self.dirty):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data, indent=0, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:
            pass  # an unwritable cache folder only costs the timing next time


KERNEL_DIGEST = hashlib.sha1(SOURCE.read_bytes()).hexdigest()[:10]
_CHOICE_VERSION = 3  # bump when the way choices are timed changes: earlier cached choices are then ignored


class Engine:
    """A model compiled for one chunk size: ``run(x)`` for inference, ``features(x)`` for parity tests."""

    def __init__(self, chunk: int, threads: int):
        self.chunk = chunk
        self.threads = threads
        self.steps: list[Callable[[], None]] = []
        self.slots: dict[str, Any] = {}
        self.input_slot = ""
        self.output_slot = ""
        self.acts: dict[str, _ActVal] = {}  # fx node name -> buffer holding that node's value
        self.fixed: set[str] = set()  # slots that hold the same preallocated tensor (or a view of one) every run
        self.layers: list[LayerRecord] = []
        self.conv_steps: dict[str, int] = {}  # conv name -> index of its op in steps
        self.cache_hits = 0

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
        """Every intermediate activation (fx node name -> NCHW tensor) after running one chunk ``x``."""
        self._run_chunk(x)
        return {name: from_act(v.buf, v.act) for name, v in self.acts.items()}

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


def compile_model(model: nn.Module, example: torch.Tensor, threads: int,
                  settings: EngineSettings | None = None, progress: Callable[[str], None] | None = None,
                  choices: dict[str, str] | None = None):
    """Lower ``model`` (eval mode, CPU, fp32) for batches shaped like ``example``: an ``Engine``, or a
    ``ParallelEngine`` of ``threads`` engines when the batch splits into at least that many chunks.

    ``progress(name)`` is called as each conv is prepared (for a progress bar). ``choices``
    (conv name -> variant, from an engine built alike, e.g. on the whole model when this is
    a part of it) skips the timing of the convs it names.
    """
    settings = settings or EngineSettings()
    n = example.shape[0] if example.dim() == 4 else 0
    chunks = n // settings.chunk if settings.chunk and n > settings.chunk and n % settings.chunk == 0 else 1
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
    """One engine; ``choices`` (conv name -> variant, from an engine built alike) skips the timing.

    ``weights_of``: an engine built alike whose packed weights this one reads too, where a conv
    runs the same variant (the engines of a ``ParallelEngine``: one copy in cache instead of one
    per engine; the weights are only read while running).
    """
    if example.dim() != 4:
        raise PruneBenchError(f"sparse-direct runs image models: input of shape {tuple(example.shape)} is not NCHW")
    n = example.shape[0]
    chunk = settings.chunk if (settings.chunk and n > settings.chunk and n % settings.chunk == 0) else n
    torch.set_num_threads(threads)
    _warm_up(threads)
    gm = fold_batchnorm(model.cpu().float())
    modules = dict(gm.named_modules())
    ShapeProp(gm).propagate(example[:chunk].float())
    border = max([1] + [m.padding[0] for m in modules.values() if isinstance(m, nn.Conv2d) and _supported_conv(m)])
    engine = Engine(chunk, threads)
    cache = ChoiceCache(settings)
    refine: list[_Refine] = []
    env: dict[fx.Node, Any] = {}
    masks: dict[Act, torch.Tensor] = {}
    phase_steps: dict[tuple, _PhaseStep] = {}  # one set of phase planes per (input, stride, output pitch)

    def shape_of(node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise PruneBenchError(f"sparse-direct cannot follow the model at {node.name}: it does not yield a tensor")
        return tuple(meta.shape)

    def new_slot(name: str) -> str:
        return f"{name}#{len(engine.slots)}"

    def as_act(node: fx.Node) -> _ActVal:
        val = materialize(node)
        if isinstance(val, _ActVal):
            return val
        shape = shape_of(node)
        if len(shape) != 4:
            raise PruneBenchError(f"sparse-direct: a convolution reads {node.name}, which is not NCHW ({shape})")
        act = Act(shape[1], shape[2], shape[3], shape[0], border)
        buf = act.alloc()
        slot = val.slot
        engine.steps.append(lambda: to_act(engine.slots[slot], act, buf))
        out = _ActVal(act, buf)
        env[node] = out
        return out

    def as_tensor(node: fx.Node) -> _TensorVal:
        val = materialize(node)
        if isinstance(val, _TensorVal):
            return val
        slot = new_slot(node.name)
        act, buf = val.act, val.buf

        def step():
            engine.slots[slot] = from_act(buf, act)

        engine.steps.append(step)
        return _TensorVal(slot)

    def materialize(node: fx.Node):
        val = env[node]
        if isinstance(val, _Pending):
            val = emit(val, node)
            env[node] = val
        return val

    def emit(p: _Pending, owner: fx.Node) -> _ActVal:
        conv = p.module
        geom = p.geom
        out_act = geom.out
        out = out_act.alloc()
        mask = masks.setdefault(out_act, out_act.mask())
        phases = None
        if not geom.direct:
            key_p = (id(p.inp.buf), geom.stride, geom.out.pitch, geom.phase_rows)
            step = phase_steps.get(key_p)
            if step is None:
                step = phase_steps[key_p] = _PhaseStep(geom, p.inp.buf, geom.alloc_phases(), threads)
                step()  # the variants timed below may read them
                engine.steps.append(step)
            phases = step.phases
        res = p.residual.buf if p.residual is not None else None
        weight = conv.weight.detach()
        density = float((weight != 0).float().mean())
        fused = "+".join(x for x in ("add" if p.residual else "", "relu" if p.relu else "") if x)
        key = "|".join(
            str(x) for x in (_weights_digest(conv), geom, fused, threads, cpu_name(), KERNEL_DIGEST, _CHOICE_VERSION)
        )

        packs: dict[tuple, PackedWeights | PackedRows] = {}  # variants differing only in tiling share their weights
        offsets = geom.tap_offsets()

        twin = None  # the same conv in ``weights_of``, whose packed weights this one reads
        if weights_of is not None and p.name in weights_of.conv_steps:
            twin = weights_of.steps[weights_of.conv_steps[p.name]]

        def make(v: Variant) -> ConvOp:
            packed = None
            if isinstance(twin, ConvOp) and twin.variant == v and hasattr(twin, "packed"):
                packed = twin.packed
            elif v.kind == "rows":
                if ("rows", v.chunk) not in packs:
                    packs[("rows", v.chunk)] = PackedRows.pack(weight, conv.bias, offsets, v.chunk)
                packed = packs[("rows", v.chunk)]
            elif v.kind == "stack":
                if ("stack", v.chunk) not in packs:
                    packs[("stack", v.chunk)] = PackedRows.pack_stack(weight, conv.bias, offsets, v.chunk)
                packed = packs[("stack", v.chunk)]
            elif v.kind == "cols":
                if "cols" not in packs:
                    packs["cols"] = PackedWeights.pack_cols(weight, conv.bias, geom)
                packed = packs["cols"]
            elif v.kind != "torch":
                dense = v.kind in ("dense", "channels")
                key_w = (dense, v.R)
                if key_w not in packs:
                    packs[key_w] = PackedWeights.pack(weight, conv.bias, offsets, v.R, dense=dense)
                packed = packs[key_w]
            return ConvOp(geom, weight, conv.bias, v, p.inp.buf, out, phases, res, p.relu, threads, mask, packed)

        variants = candidate_variants(geom, density, threads, settings.time_everything)
        if settings.force:
            variants = [v for v in variants if v.kind == settings.force] or [
                Variant("dense", 8, 1) if settings.force == "dense" else Variant(settings.force)
            ]
        by_name = {str(v): v for v in variants}
        times: dict[str, float] = {}
        runners_up: dict[str, ConvOp] = {}  # close to the fastest alone: timed again inside the pass
        cached = choices.get(p.name) if choices and p.name in choices else cache.get(key)
        if cached is not None and cached in by_name:
            chosen = by_name[cached]
            op = make(chosen)
            engine.cache_hits += 1
        else:
            # a profile times every variant fully; choosing gives up on clearly slower ones
            ops = {str(v): make(v) for v in variants}
            times = time_ops(ops, settings.timing_runs, None if settings.time_everything else 3.0)
            ranked = sorted(times, key=times.get)
            if len(ranked) > 1 and not settings.time_everything:
                # the two best again, alternately and longer: a disturbed run must not decide the layer
                top = {name: ops[name] for name in ranked[:2]}
                times.update(time_ops(top, 2 * settings.timing_runs, None))
                ranked = sorted(times, key=times.get)
            chosen, op = by_name[ranked[0]], ops[ranked[0]]  # the timed op itself: no second build
            cache.put(key, str(chosen))
            if settings.refine_in_pass:
                runners_up = {n: ops[n] for n in ranked[1:REFINE_TOP] if times[n] <= REFINE_WITHIN * times[ranked[0]]}
            del ops
        engine.steps.append(op)
        engine.conv_steps[p.name] = len(engine.steps) - 1
        if progress:
            progress(p.name)
        kh, kw = geom.kernel
        macs = out_act.H * out_act.W * conv.out_channels * conv.in_channels * kh * kw
        engine.layers.append(
            LayerRecord(
                name=p.name,
                in_shape=(geom.inp.N, geom.inp.C, geom.inp.H, geom.inp.W),
                out_shape=(out_act.N, out_act.C, out_act.H, out_act.W),
                kernel=(kh, kw),
                stride=geom.stride,
                macs=macs,
                sparsity=1.0 - density,
                times_ms=times,
                choice=str(chosen),
                fused=fused,
                weight_bytes=op.nbytes,
                dense_bytes=dense_nbytes(weight, conv.out_channels),
            )
        )
        if phases is not None:
            step.readers.append(engine.layers[-1])
        if runners_up:
            refine.append(_Refine(len(engine.steps) - 1, engine.layers[-1], {str(chosen): op, **runners_up}, key))
        val = _ActVal(out_act, out)
        engine.acts[owner.name] = val
        return val

    def torch_step(node: fx.Node) -> _TensorVal:
        """Run ``node`` as its torch op on ordinary tensors."""
        slot = new_slot(node.name)

        def load(a):
            return engine.slots[env_tensor[a].slot] if isinstance(a, fx.Node) else a

        env_tensor = {a: as_tensor(a) for a in node.all_input_nodes}
        args, kwargs = node.args, node.kwargs
        if node.op == "call_module":
            fn = modules[node.target]
        elif node.op == "call_function":
            fn = node.target
        elif node.op == "call_method":
            fn = getattr(torch.Tensor, node.target)
        else:
            raise PruneBenchError(f"sparse-direct cannot run fx node {node.name} ({node.op})")
        if env_tensor and all(v.slot in engine.fixed for v in env_tensor.values()):
            if _is_view(node, modules):  # a view of a buffer that never moves: taken once, no step
                r = fn(*fx.node.map_arg(args, load), **fx.node.map_arg(kwargs, load))
                bases = {engine.slots[v.slot].untyped_storage().data_ptr() for v in env_tensor.values()}
                if isinstance(r, torch.Tensor) and r.untyped_storage().data_ptr() in bases:
                    engine.slots[slot] = r
                    engine.fixed.add(slot)
                    return _TensorVal(slot)
            if isinstance(fn, nn.Linear) and len(args) == 1 and not kwargs:
                x = load(args[0])
                if x.dim() == 2 and x.is_contiguous() and x.dtype == torch.float32:
                    weight = fn.weight.detach().float().contiguous()
                    bias = None if fn.bias is None else fn.bias.detach().float().contiguous()
                    out = torch.zeros(x.shape[0], weight.shape[0])
                    engine.slots[slot] = out
                    engine.fixed.add(slot)
                    engine.steps.append(lambda x=x, w=weight, b=bias, o=out: linear(x, w, b, o))
                    return _TensorVal(slot)

        def step():
            a = fx.node.map_arg(args, load)
            k = fx.node.map_arg(kwargs, load)
            engine.slots[slot] = fn(*a, **k)

        engine.steps.append(step)
        return _TensorVal(slot)

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if engine.input_slot:
                raise PruneBenchError("sparse-direct runs models with one input")
            engine.input_slot = node.name
            env[node] = _TensorVal(node.name)
        elif node.op == "output":
            (result,) = node.args if isinstance(node.args[0], fx.Node) else (None,)
            if result is None:
                raise PruneBenchError("sparse-direct runs models with one tensor output")
            engine.output_slot = as_tensor(result).slot
        elif node.op == "call_module" and _supported_conv(modules[node.target]):
            conv = modules[node.target]
            inp = as_act(node.args[0])
            geom = ConvGeometry.make(inp.act, conv.out_channels, conv.kernel_size, conv.stride[0], conv.padding[0], border)
            pending = _Pending(node.target, conv, inp, geom)
            env[node] = pending
            if len(node.users) != 1:
                materialize(node)
        elif node.op == "call_module" and isinstance(modules[node.target], (nn.Identity, nn.Dropout)):
            env[node] = materialize(node.args[0])
            if isinstance(env[node], _ActVal):
                engine.acts.setdefault(node.name, env[node])
        elif _is_relu(node, modules) and isinstance(env.get(node.args[0]), _Pending) and not env[node.args[0]].relu:
            pending = env[node.args[0]]
            pending.relu = True
            env[node] = pending
            env[node.args[0]] = None  # absorbed
            materialize(node)
        elif _is_relu(node, modules) and isinstance(env.get(node.args[0]), _ActVal):
            src = env[node.args[0]]
            out = src.act.alloc()
            engine.steps.append(lambda s=src.buf, o=out: torch.clamp_min(s, 0.0, out=o))
            env[node] = _ActVal(src.act, out)
            engine.acts[node.name] = env[node]
        elif _is_add(node):
            a, b = node.args
            fused = False
            for conv_node, other in ((a, b), (b, a)):
                p = env.get(conv_node)
                if not (isinstance(p, _Pending) and p.residual is None and not p.relu and len(conv_node.users) == 1):
                    continue
                if len(shape_of(other)) != 4 or shape_of(other)[1:] != (p.geom.out.C, p.geom.out.H, p.geom.out.W):
                    continue
                p.residual = as_act(other)
                env[node] = p
                env[conv_node] = None  # absorbed
                users = list(node.users)
                if not (len(users) == 1 and _is_relu(users[0], modules)):
                    materialize(node)
                fused = True
                break
            if not fused:
                va, vb = materialize(a), materialize(b)
                if isinstance(va, _ActVal) and isinstance(vb, _ActVal) and va.act == vb.act:
                    out = va.act.alloc()
                    engine.steps.append(lambda x=va.buf, y=vb.buf, o=out: torch.add(x, y, out=o))
                    env[node] = _ActVal(va.act, out)
                    engine.acts[node.name] = env[node]
                else:
                    env[node] = torch_step(node)
        elif _is_global_avg_pool(node, modules) and isinstance(materialize(node.args[0]), _ActVal):
            src = env[node.args[0]]
            slot = new_slot(node.name)
            out = torch.zeros(src.act.N, src.act.C, 1, 1)
            engine.slots[slot] = out
            engine.fixed.add(slot)
            # straight from the layout, no NCHW copy first
            engine.steps.append(lambda a=src.act, buf=src.buf, out=out: global_avg_pool(buf, a, out, threads))
            env[node] = _TensorVal(slot)
        else:
            for a in node.all_input_nodes:
                materialize(a)
            env[node] = torch_step(node)
    chosen_ms = sum(r.times_ms.get(r.choice, 0.0) for r in engine.layers)
    if refine and chosen_ms < REFINE_MAX_PASS_MS:
        refine_in_pass(engine, refine, example[:chunk].float().contiguous())
        for item in refine:
            cache.put(item.key, item.record.choice)
    cache.save()
    # a strided conv whose chosen variant reads its input itself needs no phase planes filled in a pass
    engine.steps = [step for step in engine.steps if not (isinstance(step, _PhaseStep) and not step.used)]
    return engine
