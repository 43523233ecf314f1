"""Pruning schedules: how much to prune in each round. Plain arithmetic, no models.

Iterative magnitude pruning (Han et al. 2015, "Learning both Weights and
Connections for Efficient Neural Networks"; Frankle & Carbin 2019) removes a
fixed fraction p of the weights still unpruned in each of n rounds, so after n
rounds the density is (1-p)^n. Reaching sparsity s means (1-p)^n = 1-s, i.e.
p = 1 - (1-s)^(1/n). (The seed study solved (1-p)^n = s and reached ~10%
instead of 90%.)
"""

from __future__ import annotations

from prune.errors import PruneBenchError


def check_sparsity(s: float) -> float:
    """Return ``s`` if it is a sparsity in [0, 1), else raise a one-line error."""
    if not isinstance(s, (int, float)) or not 0.0 <= float(s) < 1.0:
        raise PruneBenchError(f"sparsity {s!r} is outside [0, 1): give the fraction of weights to prune, e.g. 0.9")
    return float(s)


def check_rounds(n: int) -> int:
    if not isinstance(n, int) or n < 1:
        raise PruneBenchError(f"rounds {n!r} must be a whole number >= 1")
    return n


def per_round_rate(s: float, n: int) -> float:
    """Fraction p of the remaining weights pruned each round: 1 - (1-s)^(1/n)."""
    check_sparsity(s)
    check_rounds(n)
    return 1.0 - (1.0 - s) ** (1.0 / n)


def round_sparsities(s: float, n: int) -> list[float]:
    """Cumulative sparsity after each of the n rounds: 1 - (1-s)^(k/n), the last exactly s."""
    check_sparsity(s)
    check_rounds(n)
    return [1.0 - (1.0 - s) ** (k / n) for k in range(1, n)] + [s]


def round_counts(numel: int, s: float, n: int) -> list[int]:
    """Whole weights pruned in total after each round; the last is round(numel * s).

    Counting in whole weights (rather than passing fractions round by round)
    keeps rounding from accumulating: the final count is within one weight of
    the target, and the counts never decrease.
    """
    counts = [round(numel * t) for t in round_sparsities(s, n)]
    for i in range(1, len(counts)):
        counts[i] = max(counts[i], counts[i - 1])
    return counts
