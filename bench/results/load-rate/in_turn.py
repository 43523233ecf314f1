"""The timing the load-rate probes share: every op called in turn, each turn one untimed call then three timed."""
import time


def fastest_in_turn(ops: dict, rounds: int = 30) -> dict:
    """Per key of ``ops`` (callables), the fastest mean of three back-to-back calls over ``rounds`` turns, in s."""
    best = dict.fromkeys(ops, float("inf"))
    for _ in range(rounds):
        for key, op in ops.items():
            op()
            t = time.perf_counter()
            op(), op(), op()
            best[key] = min(best[key], (time.perf_counter() - t) / 3)
    return best
