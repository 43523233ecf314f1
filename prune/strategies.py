"""Pruning strategies: given the current weights and mask, return a new mask.

A strategy never trains, loads or saves; it only decides which weights to drop.
``target`` is the total number of weights pruned after the call (across all
layers of the mask), so a strategy can be driven by the arithmetic in
``prune.schedule``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prune.errors import PruneBenchError
from prune.mask import Mask


def _effective_weights(layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {name: module.weight.detach().to("cpu", torch.float32) for name, module in layers.items()}


def _global_with_torch(
    layers: dict[str, nn.Module], current: Mask, target: int, method: type[torch_prune.BasePruningMethod], **kwargs
) -> Mask:
    """Run ``torch.nn.utils.prune.global_unstructured`` on stand-in copies of the weights.

    The copies carry the current mask, so ``amount`` (a count) applies to the
    weights still unpruned, and the caller's model is left untouched.
    """
    current.check_fits(layers)
    extra = target - current.zeros
    if extra < 0:
        raise PruneBenchError(f"cannot prune to {target} weights: {current.zeros} are pruned already")
    holders = []
    for name, weight in _effective_weights(layers).items():
        holder = nn.Module()
        holder.weight = nn.Parameter(weight.clone(), requires_grad=False)
        torch_prune.custom_from_mask(holder, "weight", current[name])
        holders.append((name, holder))
    if extra > 0:
        torch_prune.global_unstructured(
            [(h, "weight") for _, h in holders], pruning_method=method, amount=int(extra), **kwargs
        )
    return Mask({name: h.weight_mask.bool() for name, h in holders})


class GlobalMagnitude:
    """Global unstructured L1 magnitude pruning: drop the smallest |w| across all layers.

    Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks".
    """

    name = "magnitude"

    def __call__(self, layers: dict[str, nn.Module], current: Mask, target: int) -> Mask:
        return _global_with_torch(layers, current, target, torch_prune.L1Unstructured)


class GlobalRandom:
    """Control: drop weights uniformly at random across all layers (same count as magnitude)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, layers: dict[str, nn.Module], current: Mask, target: int) -> Mask:
        state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        try:
            return _global_with_torch(layers, current, target, torch_prune.RandomUnstructured)
        finally:
            torch.random.set_rng_state(state)


STRATEGIES = {"magnitude": GlobalMagnitude, "random": GlobalRandom}


def get_strategy(name: str, **kwargs):
    """The strategy registered as ``name``; an unknown name lists the valid ones."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise PruneBenchError(f"unknown pruning strategy {name!r}: choose one of {', '.join(STRATEGIES)}") from None
    return cls(**kwargs)
