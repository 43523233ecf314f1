"""Interleaved A/B timing: backends on the same models, in alternating short blocks of calls.

On a shared machine the speed of a multi-threaded run can move by a third for
seconds at a time (seen on this project's 2-core VM: a 2-thread sparse-direct run
flipped between 2.6 and 3.5 ms per image every few seconds within one process,
while single-threaded runs held steady). The suite times one backend after
another, so such a swing can land on one side of a comparison. Here each
backend runs a block of calls in turn (A B, then B A, ...), the blocks are
short against the swings, and a speedup is taken block pair by block pair,
so both sides see the same machine. A pause between blocks lets the thread
pools that spin after a call (ONNX Runtime's, ours) go quiet before the next
backend starts. Parity against dense PyTorch is checked before any timing.

    python -m bench.ab synthetic:0.9 --batch-size 1
    python -m bench.ab synthetic:0 synthetic:0.5 synthetic:0.9 synthetic:0.95 --batch-size 64 -o results/my-machine
    python -m bench.ab model.pt --backends onnxruntime,sparse-direct,torch-compile --blocks 20
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Sequence

import torch

from bench.timing import alternate_blocks, pair_ratios
from exporters import run_cli
from prune.cli import add_settings, settings_from
from prune.errors import PruneBenchError


@dataclasses.dataclass
class ABSettings:
    """What is compared and how long each block runs."""

    backends: str = dataclasses.field(
        default="onnxruntime,sparse-direct", metadata={"help": "comma-separated; the first is the baseline"}
    )
    batch_size: int = dataclasses.field(default=1, metadata={"help": "images per call"})
    threads: int = dataclasses.field(default=0, metadata={"help": "CPU threads; 0: the physical cores"})
    device: str = dataclasses.field(default="cpu", metadata={"help": "cpu or cuda"})
    blocks: int = dataclasses.field(default=12, metadata={"help": "blocks per backend and model"})
    block_s: float = dataclasses.field(default=0.5, metadata={"help": "seconds of calls per block"})
    pause_ms: float = dataclasses.field(default=50.0, metadata={"help": "idle time before each block"})
    deepsparse_python: str = dataclasses.field(
        default="", metadata={"help": "the Python of a venv with deepsparse, for the deepsparse backend (README)"}
    )

    @property
    def names(self) -> list[str]:
        """The backends, baseline first."""
        return [n.strip() for n in self.backends.split(",") if n.strip()]


@dataclasses.dataclass
class ABResult:
    """One model: per backend, the median ms per image of each block, in block order."""

    model: str
    facts: dict
    blocks: dict[str, list[float]]
    info: dict = dataclasses.field(default_factory=dict)  # per backend: what its prepare reported (choices, plan...)
    dense: dict = dataclasses.field(default_factory=dict)  # per backend: whether it computes every weight

    def median(self, backend: str) -> float:
        return statistics.median(self.blocks[backend])

    def ratios(self, baseline: str, backend: str) -> list[float]:
        """Speedup of ``backend`` over ``baseline`` in each block pair (> 1: faster than the baseline)."""
        return pair_ratios(self.blocks[baseline], self.blocks[backend])


def _jsonable(value):
    """``value`` with what JSON cannot hold (tensors, paths, objects) as its string."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def compare(specs: list, settings: ABSettings, progress: bool = True) -> list[ABResult]:
    """Prepare every backend on every model, check parity, then time them in alternating blocks."""
    from tqdm import tqdm

    from bench import models as bench_models
    from bench.backends import NotApplicable, get_backend
    from bench.parity import prepare_checked

    names = settings.names
    if settings.deepsparse_python:  # the deepsparse backend reads it where it is prepared, as the suite's does
        from bench.backends.external import DEEPSPARSE_PYTHON

        os.environ[DEEPSPARSE_PYTHON] = settings.deepsparse_python
    if len(names) < 2 or len(set(names)) != len(names):
        raise PruneBenchError(f"--backends {settings.backends!r}: give two or more different backends, baseline first")
    backends = [get_backend(n) for n in names]  # an unknown name fails here, listing the known ones
    for backend in backends:  # a device the backend does not run on must not fall back silently
        if settings.device not in backend.devices:
            raise PruneBenchError(
                f"--device {settings.device}: {backend.name} runs on {', '.join(backend.devices)}; choose one of those"
            )
        reason = backend.unavailable(settings.device)
        if reason:
            raise PruneBenchError(f"{backend.name} on {settings.device}: {reason}")
    for value, flag in ((settings.batch_size, "--batch-size"), (settings.blocks, "--blocks")):
        if value < 1:
            raise PruneBenchError(f"{flag} {value}: give at least 1")
    if settings.block_s <= 0 or settings.pause_ms < 0:
        raise PruneBenchError("--block-s must be positive and --pause-ms not negative")
    threads = settings.threads or bench_models.physical_cores()
    torch.set_num_threads(threads)
    results = []
    for spec in specs:
        bm = bench_models.load(spec)
        prepared = {}
        for name, backend in zip(names, backends):
            what = f"{name} on {settings.device}, {spec.id}, batch {settings.batch_size}"
            try:
                prepared[name], _, _ = prepare_checked(backend, bm, settings.batch_size, settings.device, threads, what)
            except NotApplicable as e:
                raise PruneBenchError(f"{what}: {e}") from None
        with torch.inference_mode():
            for p in prepared.values():  # warm-up
                for _ in range(3):
                    p.run(p.inputs)
                p.synchronize()
            calls = {name: (lambda p=p: (p.run(p.inputs), p.synchronize())) for name, p in prepared.items()}

            def bar(rounds, desc=f"{spec.id} bs{settings.batch_size}"):
                return tqdm(rounds, desc=desc, disable=not progress, file=sys.stderr)

            timers = {name: p.time_block for name, p in prepared.items() if p.time_block}
            seconds = alternate_blocks(calls, settings.blocks, settings.block_s, settings.pause_ms / 1e3, bar, timers)
        blocks = {name: [t * 1e3 / settings.batch_size for t in seconds[name]] for name in names}
        info = {name: _jsonable(p.info) for name, p in prepared.items()}
        results.append(ABResult(spec.id, bm.facts, blocks, info, {b.name: b.dense for b in backends}))
        for p in prepared.values():
            p.close()
        del prepared
    return results


TIMED = "interleaved blocks: each round is one block's median run(inputs) + synchronize(), torch.inference_mode"


def benchmark_record(results: list[ABResult], settings: ABSettings, threads: int) -> dict:
    """The A/B in pytest-benchmark's JSON schema, so that ``pytest-benchmark compare`` and ``bench.report`` read it.

    One benchmark per model and backend; its rounds are the blocks (seconds per call of one
    batch, as the suite's), its ``extra_info`` the suite's keys plus the blocks in order and the
    block-pair ratios against every other backend of the same model, which were timed in turn.
    """

    from pytest_benchmark.plugin import get_commit_info, pytest_benchmark_generate_machine_info
    from pytest_benchmark.stats import Stats

    from bench.models import bench_versions, expected_limit

    versions = bench_versions()
    date = versions.pop("date")
    benchmarks = []
    for r in results:
        for name, per_image in r.blocks.items():
            stats = Stats()
            for ms in per_image:
                stats.update(ms * settings.batch_size / 1e3)
            case = f"{r.model}-b{settings.batch_size}-{name}-{settings.device}"
            benchmarks.append({
                "group": f"{r.model} batch {settings.batch_size}",
                "name": f"ab[{case}]",
                "fullname": f"bench.ab::ab[{case}]",
                "params": {"model": r.model, "batch_size": settings.batch_size, "backend_name": name,
                           "device": settings.device},
                "param": case,
                "extra_info": {
                    "backend": name,
                    "dense_backend": r.dense[name],
                    "device": settings.device,
                    "batch_size": settings.batch_size,
                    **r.facts,
                    "speedup_limit": expected_limit(r.facts.get("mac_sparsity", 0.0)),
                    "threads": threads,
                    "timed": TIMED,
                    "interleaved": True,
                    "blocks": settings.blocks,
                    "block_s": settings.block_s,
                    "pause_ms": settings.pause_ms,
                    "blocks_ms_per_image": per_image,
                    "pair_ratios": {other: r.ratios(other, name) for other in r.blocks if other != name},
                    **versions,
                    **{k: v for k, v in r.info.get(name, {}).items() if k not in ("backend", "device")},
                },
                "options": {"timer": "perf_counter", "mode": "interleaved blocks"},
                "stats": {**stats.as_dict(), "iterations": 1},
            })
    return {
        "machine_info": pytest_benchmark_generate_machine_info(),
        "commit_info": get_commit_info(),
        "benchmarks": benchmarks,
        "datetime": date,
        "version": __import__("pytest_benchmark").__version__,
    }


def format_table(results: list[ABResult], settings: ABSettings, threads: int) -> str:
    names = settings.names
    base = names[0]
    head = "| model | sparsity | MAC-weighted | limit | " + " | ".join(f"{n} ms/img" for n in names)
    head += " | " + " | ".join(f"{n} vs {base}" for n in names[1:]) + " |"
    lines = [
        f"Interleaved A/B on {settings.device}, batch {settings.batch_size}, {threads} thread(s): {settings.blocks} "
        f"blocks of {settings.block_s:g} s per backend and model, alternating order, {settings.pause_ms:g} ms pause "
        "before each block. ms/img: median over blocks of each block's median call, per image. Speedup: median over "
        f"block pairs of {base}'s block time over the backend's, with the lowest and highest pair in brackets.",
        "",
        head,
        "|---|---:|---:|---:|" + "---:|" * (2 * len(names) - 1),
    ]
    for r in results:
        s, smac = r.facts.get("sparsity", 0.0), r.facts.get("mac_sparsity", 0.0)
        limit = 1.0 / (1.0 - smac) if smac < 1 else float("inf")
        cells = [f"{r.median(n):.3f}" for n in names]
        for n in names[1:]:
            ratios = r.ratios(base, n)
            cells.append(f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f})")
        lines.append(f"| {r.model} | {s:.1%} | {smac:.1%} | {limit:.2f}x | " + " | ".join(cells) + " |")
    isas = instruction_sets(results, names)
    if isas:
        lines += ["", "Instruction sets the engines ran: " + ", ".join(f"{n} {isa}" for n, isa in isas.items()) + "."]
    return "\n".join(lines)


def instruction_sets(results: list[ABResult], names: Sequence[str]) -> dict[str, str]:
    """backend -> the instruction set(s) its kernels ran, where the backend says (our kernels, an external engine)."""
    from bench.backends.sparse_direct import KERNELS_RAN

    out = {}
    for n in names:
        found = set()
        for r in results:
            info = r.info.get(n, {})
            if info.get("kernel_isa") and info.get("ran", KERNELS_RAN) == KERNELS_RAN:  # else ONNX Runtime ran it
                found.add(str(info["kernel_isa"]))
            if info.get("engine_isa"):
                found.add(str(info["engine_isa"]))
        if found:
            out[n] = " and ".join(sorted(found))
    return out


def plot(results: list[ABResult], settings: ABSettings, path: Path) -> None:
    """Each block's time per backend, in block order: the machine's swings show as steps shared by all lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = settings.names
    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.4), squeeze=False)
    for ax, r in zip(axes[0], results):
        for n in names:
            ax.plot(range(1, len(r.blocks[n]) + 1), r.blocks[n], "o-", markersize=3, label=n)
        ax.set_title(r.model, fontsize=9)
        ax.set_xlabel("block")
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel("ms per image (block median)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"interleaved A/B, {settings.device}, batch {settings.batch_size}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="checkpoint files, or synthetic:S for the suite's synthetic model")
    add_settings(parser, ABSettings)
    parser.add_argument("-o", "--out", default=None, help="folder for the Markdown table, JSON and PNG plot")
    parser.add_argument("--force", action="store_true", help="overwrite earlier results of the same name")
    args = parser.parse_args(argv)

    def work(_argv) -> int:
        from bench import models as bench_models
        from prune.checkpoint import check_writable

        settings = settings_from(args, ABSettings)
        specs = [bench_models.model_spec(m) for m in args.models]
        targets = None
        if args.out:  # refuse before the slow part
            stem = Path(args.out) / f"ab-{settings.device}-bs{settings.batch_size}"
            targets = [check_writable(stem.with_suffix(ext), args.force) for ext in (".md", ".json", ".png")]
        threads = settings.threads or bench_models.physical_cores()
        results = compare(specs, settings)
        table = format_table(results, settings, threads)
        print(table)
        if targets:
            targets[0].write_text(table + "\n")
            record = benchmark_record(results, settings, threads)
            targets[1].write_text(json.dumps(record, indent=1) + "\n")
            plot(results, settings, targets[2])
            print(f"wrote {targets[0]}, {targets[1]} and {targets[2]}", file=sys.stderr)
        return 0

    return run_cli(work, argv)


if __name__ == "__main__":
    sys.exit(main())
