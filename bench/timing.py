"""The one timing loop of every harness (the A/B, the per-layer choice, the engine decision) and its statistics.

Two ways of timing, both interleaved, because a shared machine can run at two
speeds for seconds at a time and a comparison must not let a slow spell fall on
one side alone:

- ``alternate_blocks``: backends take turns in short blocks of back-to-back calls
  (A B, then B A, ...); each block's median call is one sample, and a speedup is
  taken block pair by block pair (``pair_ratios``). Whole models are compared so.
- ``time_ops``: ops take turns one call at a time, and each op's fastest call counts.
  Kernel variants of one layer (microseconds to milliseconds) are chosen so.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable


def time_block(call: Callable[[], None], seconds: float, least: int = 3) -> float:
    """Median seconds per call over back-to-back calls filling ``seconds`` (at least ``least`` calls)."""
    times = []
    end = time.perf_counter() + seconds
    while len(times) < least or time.perf_counter() < end:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternate_blocks(calls: dict[str, Callable[[], None]], blocks: int, block_s: float, pause_s: float,
                     wrap: Callable[[Iterable[int]], Iterable[int]] = iter,
                     timers: dict[str, Callable[[float], float]] | None = None) -> dict[str, list[float]]:
    """Each call's median seconds per call in each of ``blocks`` blocks: the calls take turns (A B, then
    B A, ...), each block fills ``block_s`` seconds with back-to-back calls (at least 3) after ``pause_s``
    seconds of sleep, so that thread pools that spin after a call go quiet before the next backend starts.
    ``wrap`` wraps the rounds (a progress bar). ``timers`` time some calls' blocks themselves (an engine in
    a worker process: (seconds) -> median seconds per call)."""
    names = list(calls)
    timers = timers or {}
    times: dict[str, list[float]] = {n: [] for n in names}
    for k in wrap(range(blocks)):
        for name in names if k % 2 == 0 else names[::-1]:
            time.sleep(pause_s)
            timer = timers.get(name)
            times[name].append(timer(block_s) if timer else time_block(calls[name], block_s))
    return times


def pair_ratios(baseline: list[float], other: list[float]) -> list[float]:
    """Speedup of ``other`` over ``baseline`` in each block pair (> 1: ``other`` is faster)."""
    if len(baseline) != len(other) or not baseline:
        raise ValueError("pair_ratios needs two equally long, non-empty lists of block times")
    return [b / x for b, x in zip(baseline, other)]


def summary(ratios: list[float]) -> tuple[float, float, float]:
    """(median, lowest, highest) of block-pair ratios: the figure and its spread."""
    return statistics.median(ratios), min(ratios), max(ratios)


def time_ops(ops: dict[str, Callable[[], None]], rounds: int, give_up: float | None = 3.0,
             settle: int = 0, keep: tuple[str, ...] = (), pause: float = 0.0) -> dict[str, float]:
    """The fastest call of each op in ms, timed round-robin: one call of each op per round, after a
    warm-up call each (the first call of an op can be many times slower).

    After two rounds, ops slower than ``give_up`` times the best so far stop being timed
    (they will not be chosen), which keeps preparing quick. ``settle`` untimed calls
    precede each timed one, for ops whose threads linger after a call. ``pause`` seconds
    of sleep precede each op's calls. Ops named in ``keep`` are timed every round.
    """
    for op in ops.values():
        op()
    best = {name: float("inf") for name in ops}
    alive = list(ops)
    for k in range(rounds):
        for name in alive:
            if pause:
                time.sleep(pause)
            for _ in range(settle):
                ops[name]()
            t = time.perf_counter()
            ops[name]()
            best[name] = min(best[name], time.perf_counter() - t)
        if give_up and k >= 1:  # two calls each: one disturbed call does not rule a variant out
            floor = min(best.values())
            alive = [n for n in alive if best[n] <= give_up * floor or n in keep]
    return {name: t * 1e3 for name, t in best.items()}
