"""Each conv's variant, chosen by timing its candidates on this machine, and the cache of those choices.

A conv's choice is cached on disk (``EngineSettings.cache_dir``) under a key derived from
everything it depends on: the kernel sources and the Python that builds and times the
variants (``sources_digest``), the build (instruction set, flags, CPU), torch's version,
the threads, the geometry (batch included), the fused epilogue and the conv's weights.
Nothing in a key is written by hand, so a change to any of them times afresh.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bench.kernels import build
from bench.kernels.kinds import KINDS, ConvOp, Variant, candidate_variants, kind_of
from bench.kernels.lower import ConvSite
from bench.kernels.pack import dense_nbytes
from bench.timing import time_ops
from prune.errors import PruneBenchError

CACHE_FILE = "sparse_direct_choices.json"

# in-pass refinement: candidates within this factor of the fastest alone, at most this many, this many rounds;
# only where the layers' chosen times sum to less than REFINE_MAX_PASS_MS (one picture, not 16)
REFINE_WITHIN = 1.25
REFINE_TOP = 3
REFINE_ROUNDS = 6
REFINE_MAX_PASS_MS = 30.0


@functools.lru_cache(maxsize=1)
def sources_digest() -> str:
    """A hash of the kernels' C++ and of the Python that lowers, packs, offers, times and runs them."""
    here = Path(__file__).parent
    files = sorted(here.glob("*.py")) + [build.SOURCE, here.parent / "timing.py"]
    h = hashlib.sha1()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def cache_key(*parts: Any) -> str:
    """A key for the choice cache: a hash of ``parts`` and of what every choice depends on (sources, build,
    torch's version)."""
    from prune.platform import cpu_name

    common = (sources_digest(), build.build_name(build.selected_isa()), cpu_name(), torch.__version__)
    return hashlib.sha1(repr((common, parts)).encode()).hexdigest()


def weights_digest(conv: nn.Module) -> str:
    h = hashlib.sha1(conv.weight.detach().float().contiguous().numpy().tobytes())
    if getattr(conv, "bias", None) is not None:
        h.update(conv.bias.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


class ChoiceCache:
    """Choices on disk (one JSON file: key -> choice), so repeated prepares skip the timing."""

    def __init__(self, cache_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(cache_dir) / CACHE_FILE
        self.data: dict[str, Any] = {}
        self.dirty: dict[str, Any] = {}
        if self.enabled and self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.data = {}  # a damaged cache only costs the timing again

    def get(self, key: str):
        return self.data.get(key) if self.enabled else None

    def put(self, key: str, choice) -> None:
        if self.enabled:
            self.data[key] = self.dirty[key] = choice

    def save(self) -> None:
        """Write the new entries, merged into what is on disk now (another prepare may have written meanwhile)."""
        if not (self.enabled and self.dirty):
            return
        try:
            on_disk = json.loads(self.path.read_text()) if self.path.exists() else {}
        except (OSError, ValueError):
            on_disk = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**on_disk, **self.dirty}, indent=0, sort_keys=True))
            os.replace(tmp, self.path)
            self.dirty = {}
        except OSError:
            pass  # an unwritable cache folder only costs the timing next time


def phase_charge(variant: str, phases_ms: float) -> float:
    """What choosing ``variant`` of a strided conv adds beyond its own time: the split into phase planes
    (``phases_ms``), where its kind reads them; the pass keeps the split while any conv reading that input needs it."""
    return phases_ms if phases_ms and kind_of(variant).reads_phases else 0.0


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
    phases_ms: float = 0.0  # a strided conv: splitting its input into phase planes, which some kinds read

    def charge(self, variant: str) -> float:
        """What choosing ``variant`` adds beyond its own time (``phase_charge``)."""
        return phase_charge(variant, self.phases_ms)

    def cost(self, variant: str) -> float:
        """The chosen-by figure of a variant timed alone: its time plus its charge."""
        return self.times_ms[variant] + self.charge(variant)

    def _fastest(self, sparse: bool) -> float | None:
        t = [v for k, v in self.times_ms.items() if kind_of(k).skips_zeros == sparse]
        return min(t) if t else None

    @property
    def sparse_ms(self) -> float | None:
        """The fastest variant that skips zero weights."""
        return self._fastest(True)

    @property
    def dense_ms(self) -> float | None:
        """The fastest variant that computes every weight (our dense kernels, torch's conv2d)."""
        return self._fastest(False)

    @property
    def chosen_sparse(self) -> bool:
        """Whether the chosen variant skips zero weights."""
        return kind_of(self.choice).skips_zeros

    @property
    def moved_in_pass(self) -> bool:
        """Whether the in-pass timing chose another variant than the fastest alone."""
        return bool(self.in_pass_ms) and self.choice != min(self.times_ms, key=self.cost)


@dataclasses.dataclass
class _Refine:
    """One conv whose close candidates are timed again inside the pass, once every layer is chosen."""

    index: int  # where its op is in the engine's steps
    record: LayerRecord
    ops: dict[str, Callable[[], None]]  # variant name -> op on the layer's buffers (the chosen one included)
    key: str  # its choice-cache key


def refine_in_pass(engine: Any, items: list[_Refine], example: torch.Tensor, rounds: int = REFINE_ROUNDS) -> None:
    """Choose each listed conv's variant by its time inside the pass: before each timed call the steps
    before it run, so its input, weights and partial sums are in whatever cache a pass leaves them.

    Layers are refined in order, each in the context of the earlier layers' final choices;
    the cost is ``rounds`` x candidates x half a pass per layer.
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
        winner = min(best, key=lambda name: best[name] + item.record.charge(name) / 1e3)
        engine.steps[item.index] = item.ops[winner]
        item.record.choice = winner
        item.record.in_pass_ms = {name: t * 1e3 for name, t in best.items()}
        item.record.weight_bytes = item.ops[winner].nbytes


def offered(site: ConvSite, everything: bool = False, density: float | None = None) -> list[Variant]:
    """The variants this CPU's build offers for ``site`` (at ``density``: the conv's own unless given)."""
    return candidate_variants(site.geom, site.density if density is None else density, site.threads, everything)


def _forced(site: ConvSite, force: str) -> list[Variant]:
    """The variants of kind ``force`` that apply to ``site`` on this build, or a one-line error saying what does.

    Where the kind is not worth offering at the conv's density (a sparse kind for an empty conv), its variants
    for a dense one: forcing a kind runs it wherever it can run."""
    kind_of(force)
    every = offered(site, everything=True)
    variants = [v for v in every if v.kind == force] or [v for v in offered(site, True, 1.0) if v.kind == force]
    if not variants:
        kinds = ", ".join(dict.fromkeys(v.kind for v in every))
        raise PruneBenchError(f"sparse-direct: no {force} variant applies to {site.name} on this CPU's "
                              f"{build.built_isa()} build; it offers {kinds}")
    return variants


def _named(site: ConvSite, name: str, variants: list[Variant]) -> Variant:
    """The variant called ``name`` among ``variants``, or a one-line error listing them."""
    for v in variants:
        if str(v) == name:
            return v
    raise PruneBenchError(f"sparse-direct: {name} is not offered for {site.name} on this CPU's {build.built_isa()} "
                          f"build; it offers {', '.join(map(str, variants))}")


def _progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, leave=False, bar_format="{desc} {bar:12} {elapsed}<{remaining}")


def choose(engine: Any, sites: list[ConvSite], example: torch.Tensor, settings: Any,
           progress: Callable[[str], None] | None = None, choices: dict[str, str] | None = None,
           weights_of: Any = None) -> None:
    """Give every conv site of ``engine`` its op: the named one in ``choices`` (conv name -> variant, which must
    be offered here), the cached one, or the fastest of its candidates timed on its own buffers (refined inside
    the pass for short passes); ``settings.force`` (a kind) times only that kind's variants.

    ``weights_of``: an engine built alike whose packed weights a conv running the same variant reads too.
    ``progress(name)`` is called as each conv is done; without it a progress bar shows the convs being timed.
    """
    cache = ChoiceCache(settings.cache_dir, settings.use_cache and settings.force is None
                        and not settings.time_everything)
    keys = {site.name: cache_key("conv", weights_digest(site.module), site.geom, site.fused, site.threads)
            for site in sites}
    plan: dict[str, tuple[list[Variant], Variant | None]] = {}  # conv -> (candidates, the choice if known)
    for site in sites:
        variants = _forced(site, settings.force) if settings.force else offered(site, settings.time_everything)
        if choices and site.name in choices:
            known = _named(site, choices[site.name], variants)
        else:
            cached = cache.get(keys[site.name])
            known = next((v for v in variants if str(v) == cached), None)
        plan[site.name] = (variants, known)
    to_time = [s.name for s in sites if plan[s.name][1] is None]
    bar = _progress_bar(len(to_time)) if to_time and progress is None else None
    refine: list[_Refine] = []
    for site in sites:
        variants, known = plan[site.name]
        at = weights_of.conv_steps.get(site.name) if weights_of is not None else None
        twin = weights_of.steps[at] if at is not None else None  # the same conv in ``weights_of``
        packs: dict[tuple, Any] = {}  # variants differing only in tiling share their packed weights

        def make(v: Variant) -> ConvOp:
            kind = KINDS[v.kind]
            if isinstance(twin, ConvOp) and twin.variant == v:
                return site.make(v, twin.packed)
            key = kind.pack_key(v)
            if key not in packs:
                packs[key] = kind.pack(site.module.weight.detach().float().contiguous(), site.module.bias,
                                       site.geom, v)
            return site.make(v, packs[key])

        phases_ms = 0.0
        if site.phase_step is not None and known is None:  # the variants timed below may read the phases
            phases_ms = time_ops({"phases": site.phase_step}, settings.timing_runs, None)["phases"]
        times: dict[str, float] = {}
        runners_up: dict[str, ConvOp] = {}  # close to the fastest alone: timed again inside the pass
        if known is not None:
            op = make(known)
            engine.cache_hits += 1
        else:
            if bar is not None:
                bar.set_description_str(f"sparse-direct: choosing {site.name} [{to_time.index(site.name) + 1}/"
                                        f"{len(to_time)}]")
            op, times, runners_up = _time(variants, make, settings, phases_ms)
            cache.put(keys[site.name], str(op.variant))
            if bar is not None:
                bar.update(1)
        site.op = op
        engine.steps[site.index] = op
        record = _record(site, op, times)
        record.phases_ms = phases_ms
        engine.layers.append(record)
        if runners_up:
            refine.append(_Refine(site.index, record, {str(op.variant): op, **runners_up}, keys[site.name]))
        if progress:
            progress(site.name)
    if bar is not None:
        bar.close()
    chosen_ms = sum(r.times_ms.get(r.choice, 0.0) for r in engine.layers)
    if refine and chosen_ms < REFINE_MAX_PASS_MS:
        refine_in_pass(engine, refine, example)
        for item in refine:
            cache.put(item.key, item.record.choice)
        by_index = {site.index: site for site in sites}
        for item in refine:
            by_index[item.index].op = engine.steps[item.index]
    cache.save()


def _time(variants: list[Variant], make: Callable[[Variant], ConvOp], settings: Any, phases_ms: float = 0.0):
    """The fastest of ``variants`` (ops from ``make``), those reading phase planes charged ``phases_ms`` for
    them: (its op, every variant's own time, the close runners-up)."""
    ops = {str(v): make(v) for v in variants}
    # a profile times every variant fully; choosing gives up on clearly slower ones
    times = time_ops(ops, settings.timing_runs, None if settings.time_everything else 3.0)
    cost = lambda name: times[name] + phase_charge(name, phases_ms)  # noqa: E731
    ranked = sorted(times, key=cost)
    if len(ranked) > 1 and not settings.time_everything:
        # the two best again, alternately and longer: a disturbed run must not decide the layer
        top = {name: ops[name] for name in ranked[:2]}
        times.update(time_ops(top, 2 * settings.timing_runs, None))
        ranked = sorted(times, key=cost)
    runners_up = {}
    if settings.refine_in_pass:
        runners_up = {n: ops[n] for n in ranked[1:REFINE_TOP] if cost(n) <= REFINE_WITHIN * cost(ranked[0])}
    return ops[ranked[0]], times, runners_up


def _record(site: ConvSite, op: ConvOp, times: dict[str, float]) -> LayerRecord:
    g, conv = site.geom, site.module
    kh, kw = g.kernel
    return LayerRecord(
        name=site.name,
        in_shape=(g.inp.N, g.inp.C, g.inp.H, g.inp.W),
        out_shape=(g.out.N, g.out.C, g.out.H, g.out.W),
        kernel=(kh, kw),
        stride=g.stride,
        macs=g.out.H * g.out.W * conv.out_channels * conv.in_channels * kh * kw,
        sparsity=1.0 - site.density,
        times_ms=times,
        choice=str(op.variant),
        fused=site.fused,
        weight_bytes=op.nbytes,
        dense_bytes=dense_nbytes(conv.weight, conv.out_channels),
    )
