"""What the load-rate probes share: a seeded 3x3 layer from the command line, and the timing (every op called in
turn, each turn one untimed call then three timed)."""
import sys
import time

import torch


def layer_from_argv() -> tuple:
    """argv C H DENSITY THREADS -> (C, H, threads, weight, bias, x, ref): a random C -> C 3x3 conv at that density, a
    picture of C x H x H, and torch's relu(conv2d) of it, seeded."""
    torch.manual_seed(0)
    C, H, density, threads = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    w = torch.randn(C, C, 3, 3)
    w *= torch.rand_like(w) < density
    b = torch.randn(C)
    x = torch.randn(1, C, H, H)
    return C, H, threads, w, b, x, torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1))


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
