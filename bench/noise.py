"""How steady is this machine? Copy bandwidth from L2-, L3- and DRAM-sized buffers, window after window.

On a shared host another tenant can take the other hyper-thread of the core a
virtual CPU runs on, or the cache it shares: work that lives in cache (a
sparse model whose weights fit in L3) then slows, while work that streams from
memory (a dense model at batch 1) barely moves. If the first column swings
between windows here, latency ratios between backends will swing too; compare
them with ``python -m bench.ab``, which interleaves the backends.

    python -m bench.noise                  # 20 windows
    python -m bench.noise --windows 60 --sizes-kib 256 8192 131072
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
    args = parser.parse_args(argv)

    def work(_argv) -> int:
        result = probe(args.windows, args.sizes_kib)
        for size, values in result.items():
            print(f"{size:>8} KiB: " + " ".join(f"{v:.0f}" for v in values))
        print(format_table(result))
        return 0

    return run_cli(work, argv)


if __name__ == "__main__":
    sys.exit(main())
