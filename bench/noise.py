"""How steady is this machine? Copy bandwidth from L2-, L3- and DRAM-sized buffers, window after window.

On a shared host another tenant can take the other hyper-thread of the core a
virtual CPU runs on, or the cache it shares: work that lives in cache (a
sparse model whose weights fit in L3) then slows, while work that streams from
memory (a dense model at batch 1) barely moves. If the first column swings
between windows here, latency ratios between backends will swing too; compare
them with ``python -m bench.ab``, which interleaves the backends.

``--cores`` also measures what the second CPU adds to compute-bound work: a
small matrix product (256 x 256, fp32) on one thread, then on two at once. On a machine
with two free cores the two together do about twice the work; where the two
virtual CPUs share a physical core, or a tenant takes part of one, they do
less, and an engine that runs one single-threaded pass per core gains less
from its second thread than one whose threads wait on memory.

    python -m bench.noise                  # 20 windows
    python -m bench.noise --windows 60 --sizes-kib 256 8192 131072
    python -m bench.noise --windows 10 --cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Sequence

import numpy as np

from exporters import run_cli
from prune.errors import PruneBenchError

SIZES_KIB = (256, 8 << 10, 128 << 10)  # fits L2, fits L3, neither (on the Zen 3 and Zen 4 VMs seen here)


def buffers(nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    """A source and a destination of ``nbytes`` each, touched once."""
    src = np.ones(max(1, nbytes // 4), np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # first touch outside the timing
    return src, dst


def copy_bandwidth(src: np.ndarray, dst: np.ndarray, seconds: float = 0.05) -> float:
    """GB/s of copying ``src`` into ``dst`` (bytes read plus bytes written), repeated for ``seconds``.

    The buffers are the caller's, the same in every window: buffers allocated afresh
    for each window measured the allocator, not the machine (on a Zen 3 host, 256 KiB
    copies ran 43-57 GB/s in the first window and 3-4 GB/s in every later one with
    fresh buffers, 52-56 GB/s throughout with the same ones).
    """
    np.copyto(dst, src)
    copies, start = 0, time.perf_counter()
    while copies < 2 or time.perf_counter() - start < seconds:
        np.copyto(dst, src)
        copies += 1
    return 2 * src.nbytes * copies / (time.perf_counter() - start) / 1e9


def probe(windows: int, sizes_kib: Sequence[int], pause_s: float = 0.2) -> dict[int, list[float]]:
    """Copy bandwidth (GB/s) per size, one value per window."""
    if windows < 1 or not sizes_kib or min(sizes_kib) < 1:
        raise PruneBenchError("give --windows >= 1 and sizes of at least 1 KiB")
    out: dict[int, list[float]] = {size: [] for size in sizes_kib}
    pairs = {size: buffers(size << 10) for size in sizes_kib}
    for _ in range(windows):
        for size in sizes_kib:
            out[size].append(copy_bandwidth(*pairs[size]))
        time.sleep(pause_s)
    return out


def matmul_rate(threads: int, seconds: float = 0.1, n: int = 256) -> float:
    """GFLOP/s of ``threads`` Python threads each multiplying its own n x n fp32 matrices on one
    torch thread for ``seconds``, all together."""
    import threading

    import torch

    flops = 2 * n**3
    counts = [0] * threads
    start = threading.Barrier(threads + 1, timeout=30)  # a worker that fails breaks it instead of hanging the probe

    def work(k: int) -> None:
        torch.set_num_threads(1)  # per thread (OpenMP's setting is the calling thread's); the GIL is released in mm
        a, b = torch.rand(n, n), torch.rand(n, n)
        c = torch.empty(n, n)
        torch.mm(a, b, out=c)
        start.wait()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            torch.mm(a, b, out=c)
            counts[k] += 1

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    return sum(counts) * flops / (time.perf_counter() - t0) / 1e9


def second_core(windows: int, pause_s: float = 0.2) -> list[tuple[float, float]]:
    """(one thread, two threads together) GFLOP/s of ``matmul_rate``, one pair per window."""
    if windows < 1:
        raise PruneBenchError("give --windows >= 1")
    out = []
    for _ in range(windows):
        out.append((matmul_rate(1), matmul_rate(2)))
        time.sleep(pause_s)
    return out


def format_cores(pairs: list[tuple[float, float]]) -> str:
    rows = [("one thread, GFLOP/s", [one for one, _ in pairs], "{:.1f}"),
            ("two threads together, GFLOP/s", [two for _, two in pairs], "{:.1f}"),
            ("what the second thread adds (two / one, per window)", [two / one for one, two in pairs], "{:.2f}x")]
    lines = ["| compute (256x256 fp32 matmul, one torch thread each) | median | lowest | highest |", "|---|---:|---:|---:|"]
    for label, values, fmt in rows:
        cells = (fmt.format(v) for v in (statistics.median(values), min(values), max(values)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(result: dict[int, list[float]]) -> str:
    lines = ["| buffer | median GB/s | lowest | highest | highest / lowest |", "|---|---:|---:|---:|---:|"]
    for size, values in result.items():
        label = f"{size >> 10} MiB" if size >= 1024 else f"{size} KiB"
        lo, hi = min(values), max(values)
        lines.append(f"| {label} | {statistics.median(values):.1f} | {lo:.1f} | {hi:.1f} | {hi / lo:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.noise", description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20, help="measurements per size (default: 20)")
    parser.add_argument("--sizes-kib", type=int, nargs="+", default=list(SIZES_KIB), help="buffer sizes in KiB")
    parser.add_argument("--cores", action="store_true",
                        help="also measure what a second thread adds to compute-bound work, window by window")
    args = parser.parse_args(argv)

    def work(_argv) -> int:
        result = probe(args.windows, args.sizes_kib)
        for size, values in result.items():
            print(f"{size:>8} KiB: " + " ".join(f"{v:.0f}" for v in values))
        print(format_table(result))
        if args.cores:
            pairs = second_core(args.windows)
            print("second thread adds: " + " ".join(f"{two / one:.2f}" for one, two in pairs))
            print(format_cores(pairs))
        return 0

    return run_cli(work, argv)


if __name__ == "__main__":
    sys.exit(main())
