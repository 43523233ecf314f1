"""Where the time of the 2:4 backend goes on a GPU: one short, prepared device run.

The H200 run (results/h200-2026-11-26) timed ``torch-2:4`` at 10.9 ms (batch 1) and
11.6 ms (batch 256) against 2.0 and 5.2 ms for the same im2col path with dense
fp16 weights. This script times, on CUDA, (a) one 2:4 matrix product of a
ResNet-18 layer against the dense one, with and without torch's
``to_sparse_semi_structured`` linear in between, (b) the whole 2:4 model
and its dense control under ``torch.profiler``, printing the ops that take
the time, and (c) both captured in a CUDA graph, to see whether replay removes
the per-call host set-up. On a machine without CUDA it runs the dense control on the CPU at a
tiny size, to check the script itself.

    python -m bench.gpu_profile_24 [--out DIR] [--graphs-only]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _time(fn, cuda: bool, iters: int = 20, warmup: int = 5) -> float:
    """Median ms per call (CUDA events on CUDA, the wall clock otherwise)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


@functools.lru_cache(maxsize=1)
def _model_24():
    """The synthetic 2:4 ResNet-18 at 50% the GPU job times (seeded, BatchNorm calibrated: built once)."""
    from bench.gpu_job import synthetic_24

    return synthetic_24(0.5)


def gemm_lines(cuda: bool) -> list[str]:
    """One layer's matrix product (layer3 conv: M = batch * 8 * 8 rows, K = 2304, N = 256), dense vs 2:4."""
    from prune.nm import nm_keep

    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    lines = []
    for batch in (1, 256) if cuda else (1,):
        m, k, n = batch * 64, 2304, 256
        x = torch.randn(m, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype)
        w = w * nm_keep(w.float().abs()).to(device=device, dtype=dtype)  # 2 of every 4 along K
        dense_ms = _time(lambda: F.linear(x, w), cuda)
        line = f"gemm batch {batch} (M={m}, K={k}, N={n}): dense F.linear {dense_ms:.4f} ms"
        if cuda:
            from torch.sparse import to_sparse_semi_structured

            ws = to_sparse_semi_structured(w)
            sparse_ms = _time(lambda: F.linear(x, ws), cuda)
            line += f"; 2:4 F.linear {sparse_ms:.4f} ms ({dense_ms / sparse_ms:.2f}x)"
            try:
                compressed = torch._cslt_compress(w)
                direct_ms = _time(lambda: torch._cslt_sparse_mm(compressed, x.t()), cuda)
                line += f"; torch._cslt_sparse_mm direct {direct_ms:.4f} ms ({dense_ms / direct_ms:.2f}x)"
            except Exception as e:  # a build without cuSPARSELt: say so and go on
                line += f"; _cslt_sparse_mm unavailable ({type(e).__name__})"
        lines.append(line)
    return lines


def model_lines(cuda: bool, out: Path | None) -> list[str]:
    """The whole 2:4 model and its dense control: median time and the top ops under the profiler."""
    from bench.backends.semi_structured import prepare_model

    base = _model_24()
    device = "cuda" if cuda else "cpu"
    dtype = torch.float16 if cuda else torch.float32
    lines = []
    kernels = ("cusparselt", "dense") if cuda else ("dense",)
    for batch in (1, 256) if cuda else (2,):
        x = torch.randn(batch, 3, 32, 32, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        for kernel in kernels:
            model, _ = prepare_model(base, device, dtype, kernel)
            with torch.inference_mode():
                ms = _time(lambda: model(x), cuda, iters=10, warmup=3)
                activities = [torch.profiler.ProfilerActivity.CPU]
                if cuda:
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                with torch.profiler.profile(activities=activities) as prof:
                    for _ in range(3):
                        model(x)
                    if cuda:
                        torch.cuda.synchronize()
            sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            table = prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=60)
            label = f"model batch {batch}, {kernel}: {ms:.3f} ms per call"
            lines.append(label)
            if out:
                with open(out / "profile_24.txt", "a") as f:
                    f.write(f"== {label}\n{table}\n")
            lines += ["    " + row for row in table.splitlines()[:16]]
    return lines


def graph_lines(cuda: bool) -> list[str]:
    """The 2:4 model and its dense control captured in a CUDA graph: does replay remove the per-call host set-up?"""
    if not cuda:
        return ["graphs: no CUDA here, skipped"]
    from bench.backends.cuda_dense import capture_graph
    from bench.backends.semi_structured import prepare_model

    base = _model_24()
    lines = []
    for batch in (1, 256):
        x = torch.randn(batch, 3, 32, 32, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        for kernel in ("cusparselt", "dense"):
            model, _ = prepare_model(base, "cuda", torch.float16, kernel)
            with torch.inference_mode():
                eager_ms = _time(lambda: model(x), cuda, iters=10, warmup=3)
                expected = model(x).float()
            try:
                replay, _ = capture_graph(model, x)
            except Exception as e:  # capture can refuse ops that sync or allocate: say which
                lines.append(f"graph batch {batch}, {kernel}: eager {eager_ms:.3f} ms; capture failed: "
                             f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
                continue
            with torch.inference_mode():
                graph_ms = _time(lambda: replay(x), cuda)
                err = float((replay(x).float() - expected).norm() / expected.norm())
            lines.append(f"graph batch {batch}, {kernel}: eager {eager_ms:.3f} ms, CUDA graph {graph_ms:.3f} ms "
                         f"(relative difference to eager {err:.1e})")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_profile_24", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for the full profiler tables")
    parser.add_argument("--graphs-only", action="store_true", help="only the CUDA-graph experiment")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile_24.txt").write_text("")
    cuda = torch.cuda.is_available()
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu (no CUDA: dense control only, tiny)'}; "
          f"torch {torch.__version__}")
    parts = [graph_lines] if args.graphs_only else [gemm_lines, lambda c: model_lines(c, out), graph_lines]
    for part in parts:
        for line in part(cuda):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
