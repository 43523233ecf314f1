"""Per-layer profile of the sparse-direct backend: each conv's dense and sparse time, the choice, and its roofline.

For every convolution its shape, MACs, sparsity, the best dense and best sparse
time, the variant the backend chooses, and the MAC-weighted limit; then a
roofline per conv: the nonzero multiply-adds per second it reaches and the bytes
it moves (packed weights, input, output, residual), against this CPU's peaks
measured at the start (``Roof``: fp32 matmul rate on the threads a layer runs on,
copy bandwidth within L2 and from memory), so that each layer's distance from its
own limit shows where the next gain lies. Printed as a Markdown table and, with
``-o``, written with a PNG plot.

    python -m bench.layers model.pt --batch-size 1 -o results/
    python -m bench.layers synthetic:0.9 --batch-size 64 --threads 2
    python -m bench.layers synthetic:0.95 --batch-size 64 --pass-runs 20  # and where a whole pass goes
    python -m bench.layers synthetic:0.9 --batch-size 64 --pass-runs 20 --peer deepsparse --peer-python ~/ds/bin/python

``--peer ENGINE`` sets another engine's own per-layer profile beside ours: DeepSparse (its debug analysis, in
the worker of its own interpreter, as ``bench.ab`` runs it) or ONNX Runtime (its profiler), fed the same
ONNX file and one chunk of the batch on the threads one of our layers ran on, its output checked first.

``model`` is a checkpoint (anything ``bench.models`` loads) or ``synthetic:S``, the
bench suite's own seeded ResNet-18 pruned to sparsity S (no file needed).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from pathlib import Path
from typing import Sequence

import torch

from exporters import run_cli
from prune.cli import add_settings, settings_from
from prune.errors import PruneBenchError
from prune.platform import cache_bytes

@dataclasses.dataclass
class ProfileSettings:
    """How the profile is measured."""

    batch_size: int = dataclasses.field(default=1, metadata={"help": "images per call"})
    threads: int = dataclasses.field(default=0, metadata={"help": "CPU threads; 0: the physical cores"})
    timing_runs: int = dataclasses.field(default=5, metadata={"help": "timed calls per variant (the fastest counts)"})
    pass_runs: int = dataclasses.field(
        default=0,
        metadata={"help": "also time this many passes with every step timed, and the whole batch: where a pass goes "
                          "(0: not)"},
    )
    peer: str = dataclasses.field(
        default="", metadata={"help": "also profile this engine per layer, on the same chunk and threads: deepsparse "
                                      "or onnxruntime (none by default)"})
    peer_python: str = dataclasses.field(
        default="", metadata={"help": "the peer's interpreter (default: $PRUNEBENCH_DEEPSPARSE_PYTHON for deepsparse, "
                                      "this Python for onnxruntime)"})


@dataclasses.dataclass
class Profile:
    """The profile of one model at one batch size."""

    model: str
    batch_size: int
    threads: int  # threads each layer ran on (several engines, one thread each, for big batches)
    chunk: int  # images per pass (the engine splits larger batches)
    layers: list  # bench.kernels.engine.LayerRecord
    passes: object | None = None  # bench.kernels.engine.PassTimes, with --pass-runs
    roof: "Roof | None" = None  # this CPU's peaks, measured before the layers
    peer: object | None = None  # bench.backends.external.EngineLayers, with --peer

    def roofline(self) -> list["LayerRoof"]:
        return [layer_roof(r, self.roof) for r in self.layers] if self.roof else []

    @property
    def mac_sparsity(self) -> float:
        """Share of the convolutions' multiply-accumulates whose weight is zero."""
        total = sum(r.macs for r in self.layers)
        return sum(r.macs * r.sparsity for r in self.layers) / total if total else 0.0

    @property
    def limit(self) -> float:
        s = self.mac_sparsity
        return float("inf") if s >= 1 else 1.0 / (1.0 - s)

    def totals(self) -> tuple[float, float, float]:
        """Summed per-layer times (ms): best dense, best sparse, chosen."""
        dense = sum(r.dense_ms for r in self.layers)
        sparse = sum(r.sparse_ms for r in self.layers)
        chosen = sum(r.times_ms[r.choice] for r in self.layers)
        return dense, sparse, chosen


@dataclasses.dataclass(frozen=True)
class Roof:
    """This CPU's peaks, measured on the threads one layer runs on."""

    gmacs: float  # fp32 multiply-adds per second of a 256 x 256 matmul per thread (torch's), all threads together
    l2_gbs: float  # copy bandwidth (read + write) of a buffer that fits in L2
    mem_gbs: float  # ... of one that does not fit in the last-level cache
    l2_bytes: int  # the L2 size the choice between them uses


def measure_roof(threads: int) -> Roof:
    """The peaks a layer's time is held against (about a second)."""
    from bench.noise import buffers, copy_bandwidth, matmul_rate

    l2, l3 = cache_bytes(2, 1 << 20), cache_bytes(3, 32 << 20)
    # the best of three at two sizes: a peak, not a typical speed (a small product can miss the peak)
    rate = max(matmul_rate(threads, n=n) for n in (256, 1024) for _ in range(3)) / 2
    in_l2 = max(copy_bandwidth(*buffers(l2 // 4)) for _ in range(3))
    from_mem = max(copy_bandwidth(*buffers(4 * l3), seconds=0.2) for _ in range(2))
    return Roof(rate, in_l2, from_mem, l2)


@dataclasses.dataclass(frozen=True)
class LayerRoof:
    """One conv against the roof: what it does per call and what the CPU allows."""

    gmacs: float  # nonzero multiply-adds per second reached by the chosen variant
    gbs: float  # bytes moved per second: packed weights, input, output and residual once each
    intensity: float  # nonzero multiply-adds per byte moved
    roof_gmacs: float  # min(compute peak, intensity x bandwidth of the cache level the bytes fit in)
    bound: str  # "compute" or "memory": which side of the roof the layer sits under

    @property
    def share(self) -> float:
        return self.gmacs / self.roof_gmacs if self.roof_gmacs else 0.0


def layer_roof(r, roof: Roof) -> LayerRoof:
    """The roofline of one ``LayerRecord`` (per chunk, as it was timed)."""
    n, ci, hi, wi = r.in_shape
    _, co, ho, wo = r.out_shape
    seconds = r.times_ms[r.choice] / 1e3
    nz_macs = r.macs * (1.0 - r.sparsity) * n
    moved = r.weight_bytes + 4 * n * (ci * hi * wi + co * ho * wo * (2 if "add" in r.fused else 1))
    intensity = nz_macs / moved
    bandwidth = roof.l2_gbs if moved <= roof.l2_bytes else roof.mem_gbs
    memory_roof = intensity * bandwidth
    bound = "memory" if memory_roof < roof.gmacs else "compute"
    return LayerRoof(nz_macs / seconds / 1e9, moved / seconds / 1e9, intensity, min(roof.gmacs, memory_roof), bound)


def check_settings(settings: ProfileSettings) -> None:
    """A one-line PruneBenchError for settings a profile cannot run with (before anything slow)."""
    if settings.batch_size < 1:
        raise PruneBenchError(f"--batch-size {settings.batch_size}: give at least 1")
    if settings.timing_runs < 1:
        raise PruneBenchError(f"--timing-runs {settings.timing_runs}: give at least 1")
    if settings.pass_runs < 0:
        raise PruneBenchError(f"--pass-runs {settings.pass_runs}: give 0 (no pass timing) or more")
    if settings.peer:
        from bench.backends.external import profiler_python

        profiler_python(settings.peer, settings.peer_python)


def profile(model: torch.nn.Module, label: str, settings: ProfileSettings, progress: bool = True) -> Profile:
    """Time every variant of every conv (no cached choices) as the sparse-direct backend would at this batch size."""
    from tqdm import tqdm

    from bench.kernels.engine import EngineSettings, compile_model, time_pass
    from bench.models import physical_cores
    from prune.models import INPUT_SHAPE

    check_settings(settings)
    threads = settings.threads or physical_cores()
    example = torch.randn(settings.batch_size, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    engine_settings = EngineSettings(timing_runs=settings.timing_runs, use_cache=False, time_everything=True)
    with tqdm(total=convs, desc=f"profiling {label} bs{settings.batch_size}", disable=not progress, file=sys.stderr) as bar:
        engine = compile_model(model, example, threads, engine_settings, progress=lambda name: bar.update(1))
    # a ParallelEngine runs one single-threaded engine per thread: its layers were timed on one thread
    per_layer_threads = 1 if hasattr(engine, "engines") else threads
    passes = time_pass(engine, example, settings.pass_runs) if settings.pass_runs else None
    peer = None
    if settings.peer:
        from bench.backends.external import engine_layers

        peer = engine_layers(model, example[: engine.chunk], per_layer_threads, settings.peer, settings.peer_python)
    return Profile(label, settings.batch_size, per_layer_threads, engine.chunk, engine.layers, passes,
                   measure_roof(per_layer_threads), peer)


def format_table(p: Profile) -> str:
    """The profile as Markdown: one row per conv, then totals and the MAC-weighted limit."""
    lines = [
        f"Per-layer profile of sparse-direct: {p.model}, batch {p.batch_size}"
        + (f" (run as chunks of {p.chunk})" if p.chunk != p.batch_size else "")
        + f", {p.threads} thread(s) per layer; times are the fastest of the timed calls, per chunk.",
        "",
        "| layer | in -> out (C x H x W) | kernel | MACs/image | sparsity | dense ms | sparse ms | chosen | speedup |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in p.layers:
        _, ci, hi, wi = r.in_shape
        _, co, ho, wo = r.out_shape
        chosen = r.times_ms[r.choice]
        label = r.choice + (" (in the pass)" if r.moved_in_pass else "")
        lines.append(
            f"| {r.name} | {ci}x{hi}x{wi} -> {co}x{ho}x{wo} | {r.kernel[0]}x{r.kernel[1]}/{r.stride} | {r.macs:,} | "
            f"{r.sparsity:.1%} | {r.dense_ms:.3f} | {r.sparse_ms:.3f} | {label} | {r.dense_ms / chosen:.2f}x |"
        )
    dense, sparse, chosen = p.totals()
    weight = sum(r.weight_bytes for r in p.layers)
    dense_bytes = sum(r.dense_bytes for r in p.layers)
    lines += [
        f"| **total** | | | {sum(r.macs for r in p.layers):,} | {p.mac_sparsity:.1%} (MACs) | {dense:.3f} | "
        f"{sparse:.3f} | | {dense / chosen:.2f}x |",
        "",
        f"MAC-weighted sparsity of the convolutions {p.mac_sparsity:.2%}: skipping every pruned multiply-accumulate "
        f"could speed them up at most {p.limit:.2f}x; the per-layer choice reaches {dense / chosen:.2f}x over the best "
        f"dense variant of each layer ({chosen:.3f} ms against {dense:.3f} ms summed).",
        f"Weights as run: {weight / 2**20:.2f} MiB against {dense_bytes / 2**20:.2f} MiB dense fp32.",
        "dense = the fastest variant computing every weight (our dense kernels, lanes over positions or over "
        "16 channels, and torch's conv2d on the same layout); sparse = the fastest variant skipping zero weights; "
        "speedup = dense / chosen. sparsity: of the weights as the engine runs them, which drops those reading a "
        "channel that is zero for every input (an empty filter whose bias a ReLU zeroes).",
    ]
    refined = [r for r in p.layers if r.in_pass_ms]
    if refined:
        from bench.kernels.engine import REFINE_WITHIN

        moved = sum(r.moved_in_pass for r in refined)
        lines.append(
            f"Chosen: the fastest alone, except where other variants timed within {REFINE_WITHIN:.2f}x of it: those "
            f"were timed again inside the pass, each call after the layers before it ({len(refined)} layers; "
            f"{moved} took another variant, marked \"in the pass\"; their times above are still those alone)."
        )
    charged = [r for r in p.layers if r.phases_ms]
    if charged:
        lines.append(
            "Strided convs: a variant that reads phase planes was ranked by its time plus the split's ("
            + ", ".join(f"{r.name} {r.phases_ms:.3f} ms" for r in charged)
            + "), which the pass keeps while any conv reading that input needs it; the times above are each "
            "variant's own."
        )
    if p.roof:
        lines += format_roofline(p)
    if p.passes:
        lines += format_passes(p)
    if p.peer:
        lines += format_peer(p)
    return "\n".join(lines)


def match_steps(steps: list[dict], convs: list[str]) -> list[tuple[dict, list[str], bool]]:
    """Each step of an engine's profile with our convs it computes, and whether they were matched by order.

    A step names its ONNX outputs (or nodes); their modules are our convs' names. A conv step named
    after something else (a fused node named after its ReLU's output) takes the first conv no step names."""
    from bench.backends.external import onnx_module

    known = set(convs)
    named = [[m for m in dict.fromkeys(map(onnx_module, s["outputs"])) if m in known] for s in steps]
    taken = {c for cs in named for c in cs}
    left = [c for c in convs if c not in taken]
    out = []
    for step, cs in zip(steps, named):
        by_order = not cs and "conv" in step.get("op", "").lower() and bool(left)
        out.append((step, [left.pop(0)] if by_order else cs, by_order))
    return out


def format_peer(p: Profile) -> list[str]:
    """Our convs beside the peer engine's own steps (fused as it fuses them): where it is faster, and by how much."""
    e = p.peer
    med = statistics.median
    alone = {r.name: r.times_ms[r.choice] for r in p.layers}
    in_pass = {r.name: med(p.passes.conv_ms(r.name)) for r in p.layers} if p.passes else {}
    lines = [
        "",
        f"Beside {e.engine} {e.version}'s own per-layer profile: the same ONNX model on one chunk of {p.chunk} image(s), "
        f"{p.threads} thread(s), timed inside the engine (mean of its profiled calls, ms per chunk); ours: the chosen "
        "variant alone (fastest call) and inside the pass (median):",
        "",
    ]
    k = e.scale
    if e.call_ms > 0:
        lines += [
            f"Profiled, a call of {e.engine}'s took {e.total_ms:.3f} ms; timed plainly right after in the same worker, "
            f"{e.call_ms:.3f} ms (median): profiled calls took {1 / k:.2f}x a plain one. The column \"scaled\" "
            f"multiplies each of its steps by {k:.3f}, as though the difference were spread evenly over them (an "
            "assumption); the ratios use the scaled times.",
            "",
        ]
    lines += [
        f"| {e.engine} step | our convs in it | {e.engine} ms | scaled | ours alone | ours in the pass | "
        f"{e.engine} scaled / ours alone |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    rest, gaps, covered = 0.0, [], set()
    for step, convs, by_order in match_steps(e.layers, list(alone)):
        if not convs:
            rest += step["ms"]
            continue
        covered.update(convs)
        ours, theirs = sum(alone[c] for c in convs), k * step["ms"]
        passed = f"{sum(in_pass[c] for c in convs):.3f}" if in_pass else ""
        gaps.append((ours - theirs, step["name"], ours / theirs))
        lines.append(f"| {step['name']} | {', '.join(convs)}{' (by order)' if by_order else ''} | {step['ms']:.3f} | "
                     f"{theirs:.3f} | {ours:.3f} | {passed} | {theirs / ours:.2f}x |")
    lines.append(f"| everything else | | {rest:.3f} | {k * rest:.3f} | | | |")
    ours_total = med(p.passes.walls_ms) if p.passes else None
    plain = f"{e.call_ms:.3f} (a plain call)" if e.call_ms > 0 else ""
    lines += [
        f"| **a call** | | {e.total_ms:.3f} | {plain} | {sum(alone.values()):.3f} (convs) | "
        f"{'' if ours_total is None else f'{ours_total:.3f} (a pass)'} | |",
        "",
    ]
    slower = sorted(g for g in gaps if g[0] > 0)[::-1][:3]
    if slower:
        lines.append(f"Where {e.engine} is faster than our chosen variants alone, most time first (ours takes that many "
                     "times its time, that many ms more): "
                     + ", ".join(f"{name} ({ratio:.2f}x, {gap:.3f} ms)" for gap, name, ratio in slower) + ".")
    missing = [c for c in alone if c not in covered]
    if missing:
        lines.append(f"Our convs no {e.engine} step names: {', '.join(missing)}.")
    return lines


def format_roofline(p: Profile) -> list[str]:
    """Each conv against this CPU's roof: nonzero GMAC/s reached, bytes moved, and the share of its own limit."""
    roof = p.roof
    lines = [
        "",
        f"Roofline, {p.threads} thread(s) per layer: this CPU's peaks, measured now: {roof.gmacs:.1f} GMAC/s fp32 "
        f"(torch's matmul, the best of 256 and 1024 square), copy {roof.l2_gbs:.0f} GB/s within L2 "
        f"({roof.l2_bytes >> 10} KiB) and "
        f"{roof.mem_gbs:.0f} GB/s from memory. A conv's roof is the lower of the compute peak and its nonzero "
        "multiply-adds per byte times the bandwidth of the level its bytes fit in (packed weights, input, output "
        "and residual, each moved once per call). A share above 100% means the layer outran torch's matmul here: "
        "the compute peak is then a lower bound of this CPU's, or the variant computes fewer multiply-adds than a "
        "direct conv, whose count every rate here uses (winograd: 4x fewer).",
        "",
        "| layer | chosen | nonzero GMAC/s | GB/s | MAC/byte | roof GMAC/s | bound | share of roof |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    rows = p.roofline()
    for r, lr in zip(p.layers, rows):
        lines.append(f"| {r.name} | {r.choice} | {lr.gmacs:.1f} | {lr.gbs:.1f} | {lr.intensity:.1f} | "
                     f"{lr.roof_gmacs:.1f} | {lr.bound} | {lr.share:.0%} |")
    chosen_s = sum(r.times_ms[r.choice] for r in p.layers) / 1e3
    nz = sum(r.macs * (1 - r.sparsity) * r.in_shape[0] for r in p.layers)
    roof_s = sum(r.macs * (1 - r.sparsity) * r.in_shape[0] / lr.roof_gmacs / 1e9 for r, lr in zip(p.layers, rows))
    worst = sorted(zip(p.layers, rows), key=lambda t: t[0].times_ms[t[0].choice] * (1 - t[1].share), reverse=True)[:3]
    lines += [
        f"| **all convs** | | {nz / chosen_s / 1e9:.1f} | | | | | {roof_s / chosen_s:.0%} |",
        "",
        f"At their roofs the convs would take {roof_s * 1e3:.3f} ms against {chosen_s * 1e3:.3f} ms; the most time "
        "lost to its own roof: " + ", ".join(f"{r.name} ({(r.times_ms[r.choice] * (1 - lr.share)):.3f} ms)"
                                             for r, lr in worst) + ".",
    ]
    return lines


def format_passes(p: Profile) -> list[str]:
    """Where a pass goes: each conv alone (the profile's time of its choice) and inside the pass, then the
    other steps, the pass end to end and the whole batch: the factors between the summed layers and a call."""
    t = p.passes
    med = statistics.median
    lines = [
        "",
        f"Inside the pass: {len(t.walls_ms)} passes of one chunk of {t.chunk} image(s) through the engine as chosen "
        "above, every step timed (ms per chunk; alone = the chosen variant's time in the table above):",
        "",
        "| layer | alone | in the pass, fastest | in the pass, median | median / alone |",
        "|---|---:|---:|---:|---:|",
    ]
    alone_sum = fast_sum = med_sum = 0.0
    for r in p.layers:
        alone, ts = r.times_ms[r.choice], t.conv_ms(r.name)
        alone_sum, fast_sum, med_sum = alone_sum + alone, fast_sum + min(ts), med_sum + med(ts)
        lines.append(f"| {r.name} | {alone:.3f} | {min(ts):.3f} | {med(ts):.3f} | {med(ts) / alone:.2f}x |")
    other = t.other_ms()
    lines += [
        f"| other steps | | {min(other):.3f} | {med(other):.3f} | |",
        f"| **convs** | {alone_sum:.3f} | {fast_sum:.3f} | {med_sum:.3f} | {med_sum / alone_sum:.2f}x |",
        "",
        f"The convs sum to {alone_sum:.3f} ms alone, {fast_sum:.3f} fastest and {med_sum:.3f} median inside the pass "
        f"({fast_sum / alone_sum:.2f}x and {med_sum / alone_sum:.2f}x); the other steps (input copy, phase planes, "
        f"pool, classifier) take {med(other):.3f} median. A pass end to end: {min(t.walls_ms):.3f} fastest, "
        f"{med(t.walls_ms):.3f} median ({med(t.walls_ms) / min(t.walls_ms):.2f}x, the spread from call to call).",
    ]
    if t.batch_ms:
        per_engine = math.ceil(t.batch / t.chunk / t.engines)
        one_after_another = per_engine * med(t.walls_ms)
        lines.append(
            f"The whole batch of {t.batch} as the backend runs it ({t.engines} engine(s) side by side, {per_engine} "
            f"pass(es) each), timed after each pass: {min(t.batch_ms):.3f} fastest, {med(t.batch_ms):.3f} median, "
            f"{med(t.batch_ms) / one_after_another:.2f}x the median time of {per_engine} pass(es) on one engine alone "
            "(what running side by side costs)."
        )
    return lines


def plot(p: Profile, path: Path) -> None:
    """Bars of dense and sparse time per layer (log scale), sparsity on a second axis, the choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name.replace("layer", "L").replace(".downsample.0", ".ds") for r in p.layers]
    x = range(len(p.layers))
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(names)), 4.8))
    width = 0.4
    dense = [r.dense_ms for r in p.layers]
    sparse = [r.sparse_ms for r in p.layers]
    ax.bar([i - width / 2 for i in x], dense, width, label="dense (best)", color="#8c8c8c")
    ax.bar([i + width / 2 for i in x], sparse, width, label="sparse (best)", color="#1f77b4")
    for i, r in enumerate(p.layers):
        at = i + (width / 2 if r.chosen_sparse else -width / 2)
        ax.plot(at, r.times_ms[r.choice] * 1.12, "v", color="#d62728", markersize=6, label="chosen" if i == 0 else None)
        if p.passes:
            ax.plot(at, statistics.median(p.passes.conv_ms(r.name)), "_", color="black", markersize=12, mew=2,
                    label="chosen, in the pass (median)" if i == 0 else None)
    ax.set_yscale("log")
    ax.set_ylabel("ms per call (log)")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax2 = ax.twinx()
    ax2.plot(list(x), [100 * r.sparsity for r in p.layers], "o-", color="#ff7f0e", label="sparsity %")
    ax2.set_ylim(0, 100)
    ax2.set_ylabel("weight sparsity %")
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="upper left", fontsize=8)
    dense_t, _, chosen_t = p.totals()
    ax.set_title(
        f"sparse-direct per layer: {p.model}, batch {p.batch_size}, {p.threads} thread(s); "
        f"{dense_t / chosen_t:.2f}x over dense, MAC limit {p.limit:.2f}x",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.layers", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="checkpoint file, or synthetic:S for the suite's synthetic ResNet-18 at sparsity S")
    add_settings(parser, ProfileSettings)
    parser.add_argument("-o", "--out", default=None, help="folder for the Markdown table and the PNG plot")
    parser.add_argument("--force", action="store_true", help="overwrite the table and plot if they exist")
    args = parser.parse_args(argv)

    def work(_argv) -> int:
        from prune.checkpoint import check_writable

        from bench import models as bench_models

        settings = settings_from(args, ProfileSettings)
        check_settings(settings)  # before the model loads
        spec = bench_models.model_spec(args.model)
        targets = None
        if args.out:  # refuse before the slow part
            stem = Path(args.out) / f"layers-{spec.id}-bs{settings.batch_size}"
            targets = (check_writable(stem.with_suffix(".md"), args.force), check_writable(stem.with_suffix(".png"), args.force))
        model = bench_models.load(spec).model
        result = profile(model, spec.id, settings)
        table = format_table(result)
        print(table)
        if targets:
            targets[0].write_text(table + "\n")
            plot(result, targets[1])
            print(f"wrote {targets[0]} and {targets[1]}", file=sys.stderr)
        return 0

    return run_cli(work, argv)


if __name__ == "__main__":
    sys.exit(main())
