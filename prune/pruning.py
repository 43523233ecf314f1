"""Driving a strategy: one-shot and iterative pruning with masks attached throughout."""

from __future__ import annotations

from typing import Callable

from torch import nn

from prune.errors import PruneBenchError
from prune.mask import Mask, attach_
from prune.schedule import check_sparsity, round_counts


def prune_rounds(
    layers: dict[str, nn.Module],
    strategy: Callable[[dict[str, nn.Module], Mask, int], Mask],
    sparsity: float,
    rounds: int = 1,
    after_round: Callable[[int, Mask], None] | None = None,
    resume_round: int | None = None,
) -> Mask:
    """Prune ``layers`` to ``sparsity`` in ``rounds`` rounds, masks attached (one round is one-shot).

    Each round prunes p = 1 - (1-s)^(1/n) of the weights still unpruned (as whole
    counts from ``prune.schedule.round_counts``), attaches the new mask and calls
    ``after_round(k, mask)`` (fine-tuning goes there: the mask stays attached, so
    pruned weights cannot regrow). After every round the achieved sparsity is
    checked against the schedule, and the new mask against the old (masks only grow).
    With ``resume_round`` k the masks of round k are attached already (a resumed
    run): rounds before k are skipped and round k only calls ``after_round``.
    """
    check_sparsity(sparsity)
    mask = Mask.from_model(layers)
    for k, target in enumerate(round_counts(mask.numel, sparsity, rounds)):
        if resume_round is not None and k < resume_round:
            continue
        if resume_round is not None and k == resume_round:
            if mask.zeros != target:
                raise PruneBenchError(f"resumed round {k + 1} has {mask.zeros} weights pruned, the schedule asks {target}")
        else:
            new = strategy(layers, mask, target)
            if new.zeros != target or not new.within(mask):
                raise PruneBenchError(
                    f"round {k + 1}: strategy pruned {new.zeros} weights, the schedule asks {target} (masks must only grow)"
                )
            attach_(layers, new)
            mask = new
        if after_round is not None:
            after_round(k, mask)
        regrown = sum(int((m.weight.detach().cpu()[~mask[n]] != 0).sum()) for n, m in layers.items())
        if regrown:
            raise PruneBenchError(f"round {k + 1}: {regrown} pruned weights are nonzero after fine-tuning")
    return mask
