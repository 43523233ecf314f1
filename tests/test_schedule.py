"""Schedule arithmetic: per-round rates, cumulative sparsities, whole-weight counts, LR factors."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prune.errors import PruneBenchError
from prune.schedule import check_rounds, check_sparsity, per_round_rate, round_counts, round_sparsities
from prune.train import lr_factor

sparsities = st.floats(min_value=0.0, max_value=0.995, allow_nan=False)
rounds = st.integers(min_value=1, max_value=12)


@given(sparsities, rounds)
def test_n_rounds_of_the_per_round_rate_reach_the_target(s, n):
    p = per_round_rate(s, n)
    assert 0.0 <= p <= s + 1e-12  # never more per round than in total
    assert math.isclose(1.0 - (1.0 - p) ** n, s, abs_tol=1e-12)


def test_the_seed_studys_equation_reached_ten_percent_not_ninety():
    # The seed solved (1-x)^n = s: x = 1 - 0.9^(1/3) ~ 0.0345 per round, 10% after 3 rounds.
    seed_x = 1.0 - 0.9 ** (1 / 3)
    assert seed_x == pytest.approx(0.0345, abs=1e-4)
    assert 1.0 - (1.0 - seed_x) ** 3 == pytest.approx(0.1)
    p = per_round_rate(0.9, 3)
    assert p == pytest.approx(1.0 - 0.1 ** (1 / 3))
    assert 1.0 - (1.0 - p) ** 3 == pytest.approx(0.9)


@given(sparsities, rounds)
def test_round_sparsities_rise_to_exactly_the_target(s, n):
    cumulative = round_sparsities(s, n)
    assert len(cumulative) == n
    assert cumulative[-1] == s
    assert all(a <= b + 1e-15 for a, b in zip(cumulative, cumulative[1:]))
    for k, t in enumerate(cumulative, start=1):
        assert math.isclose(t, 1.0 - (1.0 - s) ** (k / n), abs_tol=1e-12)


@given(st.integers(min_value=1, max_value=20_000_000), sparsities, rounds)
def test_round_counts_are_whole_nondecreasing_and_end_on_the_target(numel, s, n):
    counts = round_counts(numel, s, n)
    assert len(counts) == n
    assert counts[-1] == round(numel * s)
    assert all(isinstance(c, int) and 0 <= c <= numel for c in counts)
    assert all(a <= b for a, b in zip(counts, counts[1:]))
    for c, t in zip(counts, round_sparsities(s, n)):
        assert abs(c - numel * t) <= 1  # rounding never drifts by more than one weight


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.01, float("nan"), "0.5", None])
def test_sparsity_outside_zero_one_is_refused_in_one_line(bad):
    with pytest.raises(PruneBenchError) as e:
        check_sparsity(bad)
    assert "\n" not in str(e.value) and "[0, 1)" in str(e.value)


def test_zero_sparsity_and_whole_rounds_are_accepted():
    assert check_sparsity(0) == 0.0
    assert check_rounds(3) == 3
    for bad in (0, -1, 2.0):
        with pytest.raises(PruneBenchError):
            check_rounds(bad)


@pytest.mark.parametrize("total", [1, 7, 100])
def test_lr_factors(total):
    cos = [lr_factor("cosine", t, total) for t in range(total)]
    one = [lr_factor("onecycle", t, total) for t in range(total)]
    assert all(lr_factor("constant", t, total) == 1.0 for t in range(total))
    assert cos[0] == 1.0
    assert all(a >= b for a, b in zip(cos, cos[1:]))  # cosine only falls
    assert all(0.0 <= f <= 1.0 for f in cos + one)
    if total > 1:
        peak = one.index(max(one))
        assert all(a <= b for a, b in zip(one[:peak], one[1 : peak + 1]))  # rises to the peak...
        assert all(a >= b for a, b in zip(one[peak:], one[peak + 1 :]))  # ...then falls
        assert max(one) == pytest.approx(1.0, abs=1.0 / total * 4)
        assert one[-1] == 0.0


def test_unknown_schedule_is_refused():
    with pytest.raises(PruneBenchError, match="onecycle"):
        lr_factor("step", 0, 10)
