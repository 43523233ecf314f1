"""Cutting a model in two at a single tensor: a dense prefix for ONNX Runtime, the rest for sparse-direct.

Global magnitude pruning leaves the early, MAC-heavy layers of a ResNet the least
sparse (layer1 keeps 40-75% of its weights), and there a sparse kernel gains
little or nothing over the best dense engine. The hybrid backend runs a prefix of
the model in ONNX Runtime and hands the one tensor alive at the cut to
sparse-direct for the rest. A cut is a point in the traced graph where exactly
one value (an NCHW tensor) is still needed by what follows: in a ResNet, the stem's
output and the output of every residual block.

Both halves come from graphs that already exist: the suffix is a copy of the
BN-folded fx graph after the cut node; the prefix is extracted from the full
model's verified ONNX file (``onnx.utils.Extractor``) up to the ONNX tensor that
holds the same value. Which ONNX tensor that is gets decided by value, on an
example batch, not by names, which differ from exporter to exporter.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from prune.errors import PruneBenchError

_PASS_MODULES = (nn.ReLU, nn.Identity, nn.Dropout)
_PASS_FUNCS = (F.relu, torch.relu, torch.relu_)


def _passes_through(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` is a ReLU or an identity: what a conv's epilogue absorbs, or nothing at all."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _PASS_MODULES)
    if node.op == "call_function":
        return node.target in _PASS_FUNCS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def cut_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes of ``gm`` after which their own value is the only one still needed, in graph order.

    The input (placeholder) and the output node are not cuts; constants (``get_attr``)
    may stay alive across a cut, since each half holds its own copy. Where a cut feeds only
    a ReLU or an identity right after it (conv -> ReLU -> Identity, add -> ReLU), only the
    last of the run counts: cutting inside it would split a conv from the epilogue it fuses.
    """
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((index[u] for u in n.users), default=index[n]) for n in nodes}
    cuts = []
    for i, node in enumerate(nodes):
        if node.op in ("placeholder", "output", "get_attr") or not node.users:
            continue
        live = [m for m in nodes[: i + 1] if last_use[m] > i and m.op != "get_attr"]
        if live == [node]:
            prev = cuts[-1] if cuts else None
            if prev is not None and list(prev.users) == [node] and nodes[index[prev] + 1] is node \
                    and _passes_through(node, modules):
                cuts.pop()  # the previous cut only feeds this ReLU or identity
            cuts.append(node)
    return cuts


def suffix_module(gm: fx.GraphModule, cut: fx.Node) -> fx.GraphModule:
    """A GraphModule computing the rest of ``gm`` from the value of ``cut`` (its one input).

    Module names stay as in ``gm`` (``layer3.0.conv1``...), so per-layer reports and
    cached choices line up with the whole model's.
    """
    if cut not in cut_nodes(gm):
        raise PruneBenchError(f"cannot cut the model at {cut.name}: more than its value is needed after it")
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {cut: graph.placeholder(cut.name)}
    after = False
    for node in gm.graph.nodes:
        if node is cut:
            after = True
            continue
        if after or node.op == "get_attr":
            env[node] = graph.node_copy(node, lambda n: env[n])
    module = fx.GraphModule(gm, graph)
    module.delete_all_unused_submodules()
    return module.eval()


def cut_values(gm: fx.GraphModule, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """The value of every 4-D cut of ``gm`` on ``example`` (fx node name -> tensor)."""
    cuts = set(cut_nodes(gm))
    values: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in cuts and isinstance(out, torch.Tensor) and out.dim() == 4:
                values[n.name] = out.detach().clone()
            return out

    with torch.no_grad():  # not inference_mode: the values feed ShapeProp, whose in-place ReLUs refuse those
        Recorder(gm).run(example)
    return values


@dataclasses.dataclass
class OnnxCut:
    """One fx cut matched to the ONNX tensor holding the same value."""

    node: str  # fx node name in the BN-folded graph
    tensor: str  # ONNX value name
    max_abs_diff: float  # |ONNX Runtime - PyTorch| at the cut, on the example


@functools.lru_cache(maxsize=2)
def _inferred(path: str, mtime_ns: int):
    """The ONNX model at ``path`` with inferred shapes (loaded once per file version: every prefix reads it)."""
    import onnx

    return onnx.shape_inference.infer_shapes(onnx.load(path))


def _load(path: str | Path):
    return _inferred(str(path), Path(path).stat().st_mtime_ns)


def _onnx_cut_tensors(model) -> list[str]:
    """ONNX values after whose producing node nothing else (but initializers and constants) is still needed."""
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants.update(node.output)
    outputs = {o.name for o in graph.output}
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in constants:
                last_use[name] = i
    for name in outputs:
        last_use[name] = len(graph.node)
    produced = [i.name for i in graph.input if i.name not in constants]
    cuts = []
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant":
            continue
        produced.extend(o for o in node.output if o)
        live = [name for name in produced if last_use.get(name, -1) > i]
        if len(live) == 1 and live[0] in node.output and live[0] not in outputs:
            cuts.append(live[0])
    return cuts


def match_onnx_cuts(onnx_path: str | Path, gm: fx.GraphModule, example: torch.Tensor, atol: float = 1e-4,
                    rtol: float = 1e-4) -> list[OnnxCut]:
    """For each 4-D cut of ``gm``, the ONNX tensor of the model at ``onnx_path`` that holds its value.

    Every candidate ONNX cut tensor is made a graph output for one ONNX Runtime run
    on ``example``; an fx cut matches the first candidate of the same shape and value
    (within atol + rtol * |value|). Several fx cuts with one value (an Identity after
    a ReLU) keep the last of them. fx cuts no ONNX tensor matches are left out.
    """
    import onnx
    import onnxruntime as ort

    model = _load(onnx_path)
    candidates = _onnx_cut_tensors(model)
    infos = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
    extra = [infos[name] for name in candidates if name in infos and name not in {o.name for o in model.graph.output}]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(extra)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every value computed
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    x = np.ascontiguousarray(example.detach().cpu().float().numpy())
    ort_values = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))
    matched: dict[str, OnnxCut] = {}  # ONNX tensor -> the last fx cut with its value
    for node, value in cut_values(gm, example).items():
        want = value.numpy()
        for name in candidates:
            got = ort_values.get(name)
            if got is None or got.shape != want.shape:
                continue
            diff = np.abs(got - want)
            if np.all(diff <= atol + rtol * np.abs(want)):
                matched[name] = OnnxCut(node, name, float(diff.max()))
                break
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    return sorted(matched.values(), key=lambda c: order[c.node])


def onnx_prefix(onnx_path: str | Path, tensor: str) -> bytes:
    """The serialized ONNX model computing ``tensor`` from the model's input: the part of the graph it needs."""
    from onnx.utils import Extractor

    model = _load(onnx_path)
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    prefix = Extractor(model).extract_model(inputs, [tensor])
    return prefix.SerializeToString()
