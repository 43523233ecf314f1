"""BatchNorm folding: each eval-mode BatchNorm2d that directly follows a Conv2d goes into its weight and bias.

In eval mode BN is the per-channel affine map y = (x - mean) * g / sqrt(var + eps) + beta,
so conv followed by BN equals one conv with weight w * g / sqrt(var + eps) (scaled per
output channel, so pruned zeros stay zero) and bias (b - mean) * g / sqrt(var + eps) + beta.
Ioffe & Szegedy 2015, "Batch Normalization"; folding as in Jacob et al. 2018,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference".
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from prune.errors import PruneBenchError


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d equal to ``bn(conv(x))`` with ``bn`` in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise PruneBenchError("cannot fold a BatchNorm2d without running statistics (track_running_stats=False)")
    if bn.num_features != conv.out_channels:
        raise PruneBenchError(f"BatchNorm2d has {bn.num_features} channels, the conv before it {conv.out_channels}")
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        bias = conv.bias.double() * scale + shift if conv.bias is not None else shift
        folded = copy.deepcopy(conv)
        folded.weight = nn.Parameter(
            (conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype), requires_grad=False
        )
        folded.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    return folded


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """An eval-mode copy of ``model`` (traced with torch.fx) with every conv -> BN pair folded.

    A BN is folded where its input is a Conv2d's output used by nothing else; other
    BNs stay as they are. The original model is left untouched.
    """
    model = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises many kinds of errors for untraceable code
        raise PruneBenchError(f"cannot trace the model to fold BatchNorm: {str(e).splitlines()[0][:160]}") from None
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and isinstance(modules[prev.target], nn.Conv2d)):
            continue
        if len(prev.users) != 1:
            continue
        folded = fold_conv_bn(modules[prev.target], modules[node.target])
        _set_module(gm, prev.target, folded)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()


def _set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, name, module)


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
