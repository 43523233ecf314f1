"""Pruning strategies: given the current weights and mask, return a new mask.

A strategy never trains, loads or saves; it only decides which weights to drop.
``target`` is the total number of weights pruned after the call (across all
layers of the mask), so a strategy can be driven by the arithmetic in
``prune.schedule``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prune.errors import PruneBenchError
from prune.mask import Mask
from prune.nm import fits_nm, from_gemm_view, gemm_view, nm_keep


def _effective_weights(layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    # contiguous: torch's global pruning flattens with .view, which a channels_last weight (CUDA training) refuses
    return {
        name: module.weight.detach().to("cpu", torch.float32).contiguous() for name, module in layers.items()
    }


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


class SemiStructured24:
    """2:4 semi-structured magnitude pruning: of every 4 consecutive weights along the input dimension, keep the 2 largest |w|.

    The groups run along K of the layer's GEMM in ``prune.nm``'s order
    (``(kh, kw, Cin)`` for convs, input channel fastest), which is what sparse
    tensor cores (cuSPARSELt, CUTLASS; ``torch.sparse.to_sparse_semi_structured``)
    accept. Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"
    (arXiv:2104.08378), NVIDIA ASP.

    How ``target`` is treated: the pattern fixes its own count (half of every
    covered layer, pruned all at once; weights already pruned count as |w| = 0,
    so the result stays within ``current``). A ``target`` below that count is a
    one-line error (2:4 cannot be reached gradually: prune one-shot, or to a
    higher sparsity). Weights beyond it are pruned by ``rest`` (global magnitude by
    default) over all layers, so "2:4" at sparsity 0.5 gives exactly the density
    of unstructured 50% and later iterative rounds go on unstructured; with
    ``rest=None`` the target must equal the 2:4 count.

    Args:
        layers: names of the layers to cover; each must fit 2:4 (``prune.nm.fits_nm``).
        filter_fn: ``(module, name) -> bool`` choosing, among the layers that fit
            2:4, the covered ones when ``layers`` is not given; by default all that
            fit (for ResNet-18 every conv but the 3-channel stem, and fc).
        rest: strategy (or registered name) for the weights the schedule asks
            beyond the 2:4 count; None to allow none.
    """

    name = "2:4"

    def __init__(
        self,
        layers: list[str] | None = None,
        filter_fn: Callable[[nn.Module, str], bool] | None = None,
        rest: str | Callable[[dict[str, nn.Module], Mask, int], Mask] | None = "magnitude",
    ):
        if layers is not None and filter_fn is not None:
            raise PruneBenchError("give the 2:4 strategy either layer names or a filter_fn, not both")
        self.layer_names = None if layers is None else list(layers)
        self.filter_fn = filter_fn
        self.rest = get_strategy(rest) if isinstance(rest, str) else rest

    def covered(self, layers: dict[str, nn.Module]) -> list[str]:
        """Names of the layers the 2:4 pattern applies to, in model order."""
        if self.layer_names is None:
            choose = self.filter_fn or (lambda module, name: True)
            return [name for name, module in layers.items() if fits_nm(module) and choose(module, name)]
        unknown = [n for n in self.layer_names if n not in layers]
        if unknown:
            raise PruneBenchError(f"2:4 layers {unknown} are not prunable layers: choose from {', '.join(layers)}")
        unfit = [n for n in self.layer_names if not fits_nm(layers[n])]
        if unfit:
            raise PruneBenchError(f"layers {unfit} cannot take 2:4: their input channels are not a multiple of 4")
        return [n for n in layers if n in self.layer_names]

    def pattern(self, layers: dict[str, nn.Module], current: Mask) -> Mask:
        """``current`` with the 2:4 pattern imposed on the covered layers (the count ``target`` must reach)."""
        current.check_fits(layers)
        covered = set(self.covered(layers))
        if not covered:
            raise PruneBenchError("no layer fits 2:4 (input channels a multiple of 4): nothing to prune")
        weights = _effective_weights(layers)
        new = {}
        for name, keep in current.items():
            if name in covered:
                scores = gemm_view(weights[name].abs() * keep)
                keep = keep & from_gemm_view(nm_keep(scores), keep.shape)
            new[name] = keep.clone()
        return Mask(new)

    def __call__(self, layers: dict[str, nn.Module], current: Mask, target: int) -> Mask:
        new = self.pattern(layers, current)
        if target < new.zeros:
            share = new.zeros / new.numel
            raise PruneBenchError(
                f"2:4 prunes half of each layer it covers at once ({new.zeros} weights, {share:.2%} of all) but this "
                f"round asks for {target} ({target / new.numel:.2%}): prune one-shot, or to a sparsity >= {share:.2%}"
            )
        if target > new.zeros:
            if self.rest is None:
                raise PruneBenchError(
                    f"2:4 alone prunes {new.zeros} weights, the schedule asks {target}: give rest= a strategy for the others"
                )
            new = self.rest(layers, new, target)
        return new


STRATEGIES = {"magnitude": GlobalMagnitude, "random": GlobalRandom, "2:4": SemiStructured24}

# Strategies that change the model's shapes instead of returning a mask (``prune.structured``); their sparsity is
# the fraction of MACs removed.
STRUCTURED = ("channel",)


def get_strategy(name: str, **kwargs):
    """The strategy registered as ``name``; an unknown name lists the valid ones."""
    if name in STRUCTURED:
        raise PruneBenchError(f"{name!r} pruning changes shapes and returns a model, not a mask: use prune.structured")
    try:
        cls = STRATEGIES[name]
    except KeyError:
        valid = ", ".join([*STRATEGIES, *STRUCTURED])
        raise PruneBenchError(f"unknown pruning strategy {name!r}: choose one of {valid}") from None
    return cls(**kwargs)
