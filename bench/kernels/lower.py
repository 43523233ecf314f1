"""A model lowered onto the flat layout: BatchNorm folded, each conv fused with its ReLU and residual add.

``lower(engine, model, example)`` traces the BN-folded model with torch.fx and walks it
once, filling the engine's steps: convolutions (with a following ReLU, or a residual add
and then a ReLU) become ``ConvSite``s between preallocated buffers, to be given a variant
by ``choose``; identities are aliases; the global average pool and the classifier run
straight from the layout; everything else runs as the original torch op on ordinary
tensors.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from bench.fold import fold_batchnorm
from bench.kernels.kinds import ConvOp, Variant
from bench.kernels.layout import Act, ConvGeometry, from_act, global_avg_pool, linear, to_act
from prune.errors import PruneBenchError


@dataclasses.dataclass
class PhaseStep:
    """Split one input into the phase planes its strided convs read; dropped from the pass if none does."""

    geom: ConvGeometry
    buf: torch.Tensor
    phases: torch.Tensor
    threads: int
    readers: list["ConvSite"] = dataclasses.field(default_factory=list)  # the strided convs after it

    @property
    def used(self) -> bool:
        """Whether a reader's chosen kind reads the phases (cols and torch read the input itself)."""
        return any(r.op is None or r.op.kind.reads_phases for r in self.readers)

    def __call__(self) -> None:
        self.geom.fill_phases(self.buf, self.phases, self.threads)


@dataclasses.dataclass(eq=False)
class ConvSite:
    """One conv of the lowered model, between its buffers, waiting for ``choose`` to give it a variant."""

    name: str  # the conv module's name in the model
    module: nn.Conv2d
    geom: ConvGeometry
    inp: torch.Tensor
    out: torch.Tensor
    mask: torch.Tensor
    threads: int
    phase_step: PhaseStep | None = None
    residual: torch.Tensor | None = None
    relu: bool = False
    index: int = -1  # where it sits in the engine's steps
    op: ConvOp | None = None  # the chosen variant's op, once chosen
    residual_dead: bool = False  # no step after this conv reads its residual: the output may overwrite it

    @property
    def fused(self) -> str:
        """What the epilogue does: "", "relu", "add", "add+relu"."""
        return "+".join(x for x in ("add" if self.residual is not None else "", "relu" if self.relu else "") if x)

    @property
    def density(self) -> float:
        return float((self.module.weight.detach() != 0).float().mean())

    def make(self, variant: Variant, packed=None) -> ConvOp:
        """The op of ``variant`` on this conv's buffers (``packed``: weights packed for it already)."""
        phases = self.phase_step.phases if self.phase_step else None
        return ConvOp(self.geom, self.module.weight.detach(), self.module.bias, variant, self.inp, self.out, phases,
                      self.residual, self.relu, self.threads, self.mask, packed)

    def __call__(self) -> None:
        raise PruneBenchError(f"sparse-direct: conv {self.name} was lowered but never given a variant")


@dataclasses.dataclass
class _ActVal:
    act: Act
    buf: torch.Tensor
    producer: Any = None  # the step that writes it (a ConvSite until its variant is chosen)
    zero: torch.Tensor | None = None  # per channel, whether it is zero for every input (None: none known to be)


def _zero_channels(conv: nn.Conv2d, relu: bool, residual: _ActVal | None) -> torch.Tensor | None:
    """The output channels of ``conv`` (BN folded, with its fused epilogue) that are zero whatever the input: an
    empty filter whose bias is zero, or not above zero before a ReLU, and whose residual channel (if any) is
    zero too. An emptied filter with BatchNorm's bias left at zero gives one."""
    w = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0])
    zero = (w.flatten(1) == 0).all(1) & ((bias == 0) | ((bias <= 0) if relu else False))
    if residual is not None:
        zero &= residual.zero if residual.zero is not None else False
    return _some(zero)


def _some(zero: torch.Tensor | None) -> torch.Tensor | None:
    """``zero`` where it marks a channel, else None (what ``_ActVal.zero`` holds when none is known)."""
    return zero if zero is not None and bool(zero.any()) else None


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
_VIEW_FUNCS = (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze)
_VIEW_METHODS = ("flatten", "view", "reshape", "squeeze", "unsqueeze")


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
        return modules[node.target].output_size in (1, (1, 1))
    return False


def _is_view(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` only reshapes its input (of a contiguous buffer, the result is a view of it)."""
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.Flatten)
    if node.op == "call_function":
        return node.target in _VIEW_FUNCS
    return node.op == "call_method" and node.target in _VIEW_METHODS


def supported_conv(m: nn.Module) -> bool:
    """Whether the kernels run this module: a plain 2-D convolution, square stride and padding, zeros padded."""
    return (
        isinstance(m, nn.Conv2d)
        and m.groups == 1
        and m.dilation == (1, 1)
        and m.stride[0] == m.stride[1]
        and isinstance(m.padding, tuple)
        and m.padding[0] == m.padding[1]
        and m.padding_mode == "zeros"
    )


def lower(engine: Any, model: nn.Module, example: torch.Tensor) -> list[ConvSite]:
    """Fill ``engine`` (its steps, slots, acts and fixed slots) with ``model`` lowered for one chunk shaped like
    ``example``; the convs' steps are ``ConvSite``s, returned in the order they run."""
    if example.dim() != 4:
        raise PruneBenchError(f"sparse-direct runs image models: input of shape {tuple(example.shape)} is not NCHW")
    threads = engine.threads
    gm = fold_batchnorm(model.cpu().float())
    modules = dict(gm.named_modules())
    ShapeProp(gm).propagate(example.float())
    border = max([1] + [m.padding[0] for m in modules.values() if supported_conv(m)])
    env: dict[fx.Node, Any] = {}
    masks: dict[Act, torch.Tensor] = {}
    phase_steps: dict[tuple, PhaseStep] = {}  # one set of phase planes per (input, stride, output pitch)
    sites: list[ConvSite] = []
    last_read: dict[int, float] = {}  # id of a layout buffer -> index of the last step reading it
    # module -> how many nodes call it: weights shared between calls stay as they are
    calls = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")

    def reads(*bufs: torch.Tensor, forever: bool = False) -> None:  # the step about to be appended reads bufs
        for b in bufs:
            last_read[id(b)] = math.inf if forever else len(engine.steps)

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
        out = _ActVal(act, buf, engine.steps[-1])
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

        reads(buf, forever=True)  # torch steps later may read it through the slot
        engine.steps.append(step)
        return _TensorVal(slot)

    def materialize(node: fx.Node):
        val = env[node]
        if isinstance(val, _Pending):
            val = emit(val, node)
            env[node] = val
        return val

    def emit(p: _Pending, owner: fx.Node) -> _ActVal:
        geom = p.geom
        if p.inp.zero is not None and calls[p.name] == 1:
            # weights on input channels that are zero for every input multiply nothing: dropped, exactly, so that
            # the sparse kinds skip them (the folded model is the engine's own copy)
            with torch.no_grad():
                p.module.weight[:, p.inp.zero] = 0
        phase_step = None
        if not geom.direct:
            key = (id(p.inp.buf), geom.stride, geom.out.pitch, geom.phase_rows)
            phase_step = phase_steps.get(key)
            if phase_step is None:
                phase_step = phase_steps[key] = PhaseStep(geom, p.inp.buf, geom.alloc_phases(), threads)
                reads(p.inp.buf)
                engine.steps.append(phase_step)
        site = ConvSite(p.name, p.module, geom, p.inp.buf, geom.out.alloc(), masks.setdefault(geom.out, geom.out.mask()),
                        threads, phase_step, p.residual.buf if p.residual is not None else None, p.relu,
                        index=len(engine.steps))
        if phase_step is not None:
            phase_step.readers.append(site)
        reads(p.inp.buf, *([p.residual.buf] if p.residual is not None else []))
        engine.steps.append(site)
        sites.append(site)
        val = _ActVal(geom.out, site.out, site, _zero_channels(p.module, p.relu, p.residual))
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
        elif node.op == "call_module" and supported_conv(modules[node.target]):
            conv = modules[node.target]
            inp = as_act(node.args[0])
            geom = ConvGeometry.make(inp.act, conv.out_channels, conv.kernel_size, conv.stride[0], conv.padding[0], border)
            env[node] = _Pending(node.target, conv, inp, geom)
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
            reads(src.buf)
            engine.steps.append(lambda s=src.buf, o=out: torch.clamp_min(s, 0.0, out=o))
            env[node] = _ActVal(src.act, out, engine.steps[-1], src.zero)
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
                    reads(va.buf, vb.buf)
                    engine.steps.append(lambda x=va.buf, y=vb.buf, o=out: torch.add(x, y, out=o))
                    both = _some(va.zero & vb.zero) if va.zero is not None and vb.zero is not None else None
                    env[node] = _ActVal(va.act, out, engine.steps[-1], both)
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
            reads(src.buf)
            engine.steps.append(lambda a=src.act, buf=src.buf, out=out: global_avg_pool(buf, a, out, threads))
            env[node] = _TensorVal(slot)
        else:
            for a in node.all_input_nodes:
                materialize(a)
            env[node] = torch_step(node)
    for site in sites:
        site.residual_dead = (site.residual is not None and site.residual is not site.inp
                              and last_read.get(id(site.residual), math.inf) <= site.index)
    return sites
