"""Turn saved benchmark runs into the answer: speedup over the best dense backend, per CPU kind, batch and sparsity.

    python -m bench.report .benchmarks/*/0001_*.json [RUN2.json ...] [-o OUTDIR] [--force]

It reads pytest-benchmark JSON: what ``pytest bench --benchmark-autosave`` saves and
what ``python -m bench.ab -o DIR`` writes (the same schema, with each round one
block of an interleaved A/B). Per case:
- vs best dense: the fastest dense backend (one that computes every weight,
  ``Backend.dense``) on the same device and batch, over this case. Where the
  case and that backend were timed in turn on the same model (an A/B), it is the
  median over block pairs, the lowest and highest pair its spread; else the
  dense backend's median on the dense (0%) model over the case's median. This is
  the answer: is the pruned model faster than the best way to run the unpruned one?
- vs own dense: the backend's time on its dense (0%) model over its time on this
  model (the seed study's definition: does pruning speed *this* backend up?);
- limit: 1 / (1 - s_mac), s_mac the share of multiply-accumulates whose weight
  is pruned (``extra_info["mac_sparsity"]``).
Several runs of one CPU kind give the range across runs. Given several runs, each
later run's latency is also shown as a ratio to the first's. Writes ``report.md``
and ``speedup.png`` to OUTDIR and prints the Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Sequence

from bench import pareto as _pareto
from prune.errors import PruneBenchError

DENSE_SPARSITY = 0.005  # a model with fewer zeros (and fewer MACs removed) than this is the dense (0%) baseline
REQUIRED = ("backend", "device", "batch_size", "model", "sparsity", "mac_sparsity")
# dense backends of files saved before each case said so (extra_info["dense_backend"])
KNOWN_DENSE = {"torch-dense", "torch-dense-folded", "torch-compile", "onnxruntime", "torch-dense-channels-last",
               "torch-cuda-graph", "torch-compile-cuda", "torch-dense-fp16", "torch-dense-bf16",
               "torch-cuda-graph-fp16", "torch-compile-cuda-fp16", "im2col-dense-fp16"}


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmarked case of a run."""

    model: str
    backend: str
    device: str
    batch_size: int
    median_s: float  # median seconds per call (one batch)
    sparsity: float
    mac_sparsity: float
    weights: str  # "synthetic" or "checkpoint"
    dense: bool = False  # the backend computes every weight
    blocks: tuple[float, ...] = ()  # an A/B's block times in order (ms per image), paired with the other backends'
    structure: str = "unstructured"  # "channel": whole filters removed, a smaller model that no zero is left in
    isa: str = ""  # the instruction set its kernels ran, where the backend says and it is not the CPU's (held back)

    @property
    def ms_per_image(self) -> float:
        return self.median_s / self.batch_size * 1e3

    @property
    def is_full_dense_model(self) -> bool:
        """The unpruned model: no zeros and no channels removed (a channel-pruned model has no zeros either)."""
        return self.sparsity < DENSE_SPARSITY and self.mac_sparsity < DENSE_SPARSITY

    @property
    def limit(self) -> float:
        return math.inf if self.mac_sparsity >= 1 else 1.0 / (1.0 - self.mac_sparsity)


@dataclasses.dataclass
class Run:
    """The prunebench cases of one pytest-benchmark JSON file."""

    label: str
    cases: list[Case]
    machine: str  # the CPU kind: model name and instruction set
    date: str
    threads: set
    interleaved: bool = False  # an A/B: backends timed in turn, block by block
    gpu: str | None = None  # the GPU's name, where the run had one

    def device_kind(self, device: str) -> str:
        """What the figures of ``device`` were measured on: the GPU for CUDA cases, else the CPU kind."""
        return self.gpu if device == "cuda" and self.gpu else self.machine


def _cpu_kind(data: dict) -> str:
    from prune.platform import isa_of

    info = next((b.get("extra_info") for b in data["benchmarks"] if isinstance(b, dict)
                 and isinstance(b.get("extra_info"), dict)), {})
    cpu = (data.get("machine_info") or {}).get("cpu") or {}
    name = info.get("cpu") or cpu.get("brand_raw") or (data.get("machine_info") or {}).get("processor") or "?"
    isa = info.get("cpu_isa") or (isa_of(cpu["flags"]) if isinstance(cpu.get("flags"), list) else None)
    # one brand string ("AMD EPYC") covers several generations: the family and model tell them apart
    generation = f"family {cpu['family']} model {cpu['model']}" if cpu.get("family") is not None else None
    detail = ", ".join(x for x in (isa, generation) if x)
    return f"{name} ({detail})" if detail else str(name)


def _held_isa(info: dict) -> str:
    """The instruction set a case's kernels ran where it is not its CPU's own (``PRUNEBENCH_ISA=avx2``, or an
    external engine held to AVX2), else "": our kernels' ``kernel_isa`` where they ran, an external engine's
    ``engine_isa``."""
    from bench.backends.sparse_direct import KERNELS_RAN

    ran = info.get("engine_isa") or (info.get("kernel_isa") if info.get("ran", KERNELS_RAN) == KERNELS_RAN else None)
    return str(ran) if ran and info.get("cpu_isa") and str(ran) != str(info["cpu_isa"]) else ""


def load_run(path: str | Path) -> Run:
    """Read a pytest-benchmark JSON file; anything else is a one-line error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PruneBenchError(f"no benchmark file at {path}") from None
    except IsADirectoryError:
        raise PruneBenchError(f"{path} is a folder: give the run's .json file") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PruneBenchError(f"{path} is not JSON: give a file saved by pytest --benchmark-autosave/--benchmark-json") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise PruneBenchError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    cases = []
    for b in data["benchmarks"]:
        info = b.get("extra_info") if isinstance(b, dict) else None
        stats = b.get("stats") if isinstance(b, dict) else None
        if not isinstance(info, dict) or not isinstance(stats, dict) or any(k not in info for k in REQUIRED):
            continue
        try:
            cases.append(
                Case(
                    model=str(info["model"]),
                    backend=str(info["backend"]),
                    device=str(info["device"]),
                    batch_size=int(info["batch_size"]),
                    median_s=float(stats["median"]),
                    sparsity=float(info["sparsity"]),
                    mac_sparsity=float(info["mac_sparsity"]),
                    weights=str(info.get("weights", "?")),
                    dense=bool(info.get("dense_backend", info["backend"] in KNOWN_DENSE)),
                    blocks=tuple(float(t) for t in info.get("blocks_ms_per_image") or ()),
                    structure=str(info.get("structure") or "unstructured"),
                    isa=_held_isa(info),
                )
            )
        except (KeyError, TypeError, ValueError):
            raise PruneBenchError(f"{path}: case {b.get('name', '?')} has malformed stats or extra_info") from None
    if not cases:
        raise PruneBenchError(
            f"{path} holds no prunebench cases (none has extra_info {', '.join(REQUIRED)}): "
            "was it saved by pytest bench without --benchmark-disable?"
        )
    threads = {b["extra_info"].get("threads") for b in data["benchmarks"] if isinstance(b.get("extra_info"), dict)}
    gpu = next((b["extra_info"].get("gpu") for b in data["benchmarks"] if isinstance(b.get("extra_info"), dict)
                and b["extra_info"].get("gpu")), None)
    return Run(label=path.stem, cases=cases, machine=_cpu_kind(data), date=str(data.get("datetime", "?")),
               threads=threads, interleaved=any(c.blocks for c in cases), gpu=gpu)


@dataclasses.dataclass(frozen=True)
class Speedup:
    own: float | None  # vs the same backend's dense model; None without a dense model in the run
    best: float | None  # vs the fastest dense backend on the same device and batch
    best_backend: str | None
    best_low: float | None = None  # lowest and highest block pair, where the case was timed in turn with it
    best_high: float | None = None


def best_dense(cases: list[Case]) -> dict[tuple, Case]:
    """(device, batch) -> the fastest dense backend's case on the dense (0%) model; in files that name no
    backend dense, the fastest backend's."""
    out: dict[tuple, Case] = {}
    for c in cases:
        if not c.is_full_dense_model:
            continue
        cur = out.get((c.device, c.batch_size))
        if cur is None or (c.dense, -c.median_s) > (cur.dense, -cur.median_s):
            out[c.device, c.batch_size] = c
    return out


def speedups(cases: list[Case]) -> dict[Case, Speedup]:
    """Both speedups of every case (see the module docstring)."""
    own_base: dict[tuple, float] = {}
    for c in cases:
        if c.is_full_dense_model:
            key = (c.backend, c.device, c.batch_size)
            own_base[key] = min(own_base.get(key, math.inf), c.median_s)
    bases = best_dense(cases)
    by_key = {(c.model, c.backend, c.device, c.batch_size): c for c in cases}
    out = {}
    for c in cases:
        own = own_base.get((c.backend, c.device, c.batch_size))
        base = bases.get((c.device, c.batch_size))
        best = low = high = None
        if base is not None:
            paired = by_key.get((c.model, base.backend, c.device, c.batch_size))
            # paired block by block with the best dense backend on the same model, whose time does not depend
            # on the zeros; a channel-pruned model is smaller, and is measured against the unpruned one
            if (c.blocks and c.structure != "channel" and paired is not None
                    and len(paired.blocks) == len(c.blocks)):
                ratios = [b / x for b, x in zip(paired.blocks, c.blocks)]
                best, low, high = statistics.median(ratios), min(ratios), max(ratios)
            else:
                best = base.median_s / c.median_s
        out[c] = Speedup(own=own / c.median_s if own else None, best=best,
                         best_backend=base.backend if base else None, best_low=low, best_high=high)
    return out


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "–"
    if math.isinf(x):
        return "∞"
    return f"{x:.{digits}f}"


def _ordered(values):
    seen = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def run_tables(run: Run) -> str:
    """Markdown: per device and batch size, a latency table and a speedup table (rows models, columns backends)."""
    sp = speedups(run.cases)
    lines = [
        f"## {run.label}",
        "",
        f"{run.machine}; threads {', '.join(str(t) for t in sorted(run.threads, key=str))}; {run.date}; "
        f"weights: {', '.join(sorted({c.weights for c in run.cases}))}",
        "",
    ]
    for device in _ordered(c.device for c in run.cases):
        for batch in sorted({c.batch_size for c in run.cases if c.device == device}):
            cases = [c for c in run.cases if c.device == device and c.batch_size == batch]
            backends = _ordered(c.backend for c in cases)
            models = sorted(_ordered(c.model for c in cases), key=lambda m: next(c.sparsity for c in cases if c.model == m))
            cell = {(c.model, c.backend): c for c in cases}
            lines += [f"### {device}, batch {batch}", "", "Median latency, ms per image:", ""]
            lines.append("| model | sparsity | MAC-weighted | " + " | ".join(backends) + " |")
            lines.append("|---|---:|---:|" + "---:|" * len(backends))
            for m in models:
                ref = next(c for c in cases if c.model == m)
                row = [_fmt(cell[m, b].ms_per_image, 3) if (m, b) in cell else "–" for b in backends]
                lines.append(f"| {m} | {ref.sparsity:.1%} | {ref.mac_sparsity:.1%} | " + " | ".join(row) + " |")
            best = next((sp[c] for c in cases if sp[c].best_backend), None)
            base = f" ({best.best_backend})" if best else ""
            lines += [
                "",
                f"Speedup vs the same backend's dense model / vs the fastest dense backend{base}; "
                "limit 1/(1-s_mac):",
                "",
                "| model | limit | " + " | ".join(backends) + " |",
                "|---|---:|" + "---:|" * len(backends),
            ]
            for m in models:
                ref = next(c for c in cases if c.model == m)
                row = [
                    f"{_fmt(sp[cell[m, b]].own)} / {_fmt(sp[cell[m, b]].best)}" if (m, b) in cell else "–"
                    for b in backends
                ]
                lines.append(f"| {m} | {_fmt(ref.limit)} | " + " | ".join(row) + " |")
            lines.append("")
    return "\n".join(lines)


def ratio_table(runs: list[Run]) -> str:
    """Markdown: each later run's median latency over the first's, case by case (>1: slower than the first)."""
    first, rest = runs[0], runs[1:]
    devices = [{c.device for c in r.cases} for r in runs]
    # Runs on one device each but different ones (CPU vs GPU) are matched without the device.
    ignore_device = all(len(d) == 1 for d in devices) and len({next(iter(d)) for d in devices}) > 1

    def key(c: Case):
        return (c.model, c.backend, c.batch_size) if ignore_device else (c.model, c.backend, c.batch_size, c.device)

    base = {key(c): c for c in first.cases}
    header = "| model | backend | batch | " + ("" if ignore_device else "device | ") + f"{first.label} ms/image | "
    header += " | ".join(f"{r.label} ms/image | ratio" for r in rest) + " |"
    lines = [
        f"## Ratio of runs (later / {first.label}; below 1: faster)",
        "",
        header,
        "|---|---|---:|" + ("---|" if not ignore_device else "") + "---:|" + "---:|---:|" * len(rest),
    ]
    others = [{key(c): c for c in r.cases} for r in rest]
    matched = 0
    for k, c in base.items():
        cells = []
        for other in others:
            o = other.get(k)
            cells.append(f"{_fmt(o.ms_per_image, 3)} | {_fmt(o.median_s / c.median_s)}" if o else "– | –")
        if any(k in other for other in others):
            matched += 1
        device = "" if ignore_device else f"{c.device} | "
        lines.append(f"| {c.model} | {c.backend} | {c.batch_size} | {device}{_fmt(c.ms_per_image, 3)} | " + " | ".join(cells) + " |")
    if not matched:
        lines.append("")
        lines.append("(no case of the first run appears in the others: different models, backends or batch sizes)")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Figure:
    """One cell of the answer: a backend's speedup over the best dense backend at one sparsity, with its spread."""

    median: float
    low: float
    high: float
    spread: str  # what low-high range: "runs" (several runs), "block pairs" (one A/B) or "" (one suite run)
    base: str  # the best dense backend
    structure: str = "unstructured"  # of the model: "channel" for a channel-pruned one


def answer(runs: list[Run]) -> dict[tuple, dict[tuple, Figure]]:
    """(CPU kind, device, batch) -> (sparsity, mac_sparsity, model, backend) -> Figure, for every backend that
    is not dense, over every run of that CPU kind."""
    per_run: dict[tuple, dict[tuple, list[tuple[Speedup, str]]]] = {}
    for r in runs:
        for c, sp in speedups(r.cases).items():
            # a dense backend is the baseline, not an answer, except on a model with channels removed (smaller)
            if sp.best is None or (c.dense and c.is_full_dense_model) or (c.dense and c.sparsity >= DENSE_SPARSITY):
                continue
            group = per_run.setdefault((r.device_kind(c.device), c.device, c.batch_size), {})
            key = (round(c.sparsity, 3), round(c.mac_sparsity, 3), c.model, c.backend)
            group.setdefault(key, []).append((sp, c.structure))
    out: dict[tuple, dict[tuple, Figure]] = {}
    for group, cells in per_run.items():
        out[group] = {}
        for key, found in cells.items():
            values = [sp.best for sp, _ in found]
            if len(found) > 1:
                fig = Figure(statistics.median(values), min(values), max(values), "runs", found[0][0].best_backend,
                             found[0][1])
            else:
                sp, structure = found[0]
                paired = sp.best_low is not None
                fig = Figure(sp.best, sp.best_low if paired else sp.best, sp.best_high if paired else sp.best,
                             "block pairs" if paired else "", sp.best_backend, structure)
            out[group][key] = fig
    return out


def answer_tables(runs: list[Run]) -> str:
    """Markdown: one table per CPU kind, device and batch: each sparse backend's speedup over the best dense one."""
    lines = []
    for (machine, device, batch), cells in answer(runs).items():
        backends = _ordered(k[3] for k in sorted(cells))
        rows = sorted({k[:3] for k in cells})
        bases = sorted({f.base for f in cells.values()})
        n_runs = sum(1 for r in runs if r.device_kind(device) == machine and any(
            c.device == device and c.batch_size == batch for c in r.cases))
        spreads = sorted({f.spread for f in cells.values() if f.spread})
        lines += [f"### {machine}, {device}, batch {batch}", "",
                  f"Speedup over the best dense backend ({', '.join(bases)}); {n_runs} run(s)"
                  + (f", lowest-highest {' / '.join(spreads)} in brackets" if spreads else "") + ":", "",
                  "| model | sparsity | MAC-weighted | limit 1/(1-s_mac) | " + " | ".join(backends) + " |",
                  "|---|---:|---:|---:|" + "---:|" * len(backends)]
        for sparsity, mac, model in rows:
            limit = math.inf if mac >= 1 else 1 / (1 - mac)
            row = []
            for b in backends:
                f = cells.get((sparsity, mac, model, b))
                if f is None:
                    row.append("–")
                elif f.spread:
                    row.append(f"**{_fmt(f.median)}x** ({_fmt(f.low)}-{_fmt(f.high)})")
                else:
                    row.append(f"**{_fmt(f.median)}x**")
            lines.append(f"| {model} | {sparsity:.0%} | {mac:.1%} | {_fmt(limit)}x | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def report_markdown(runs: list[Run]) -> str:
    parts = [
        "# Latency report",
        "",
        "## The answer: speedup over the best dense backend",
        "",
        answer_tables(runs),
        "## Every run",
        "",
        "Speedup cells read `vs own dense / vs best dense`; the limit is 1/(1-s_mac) with s_mac the share of "
        "multiply-accumulates whose weight is pruned.",
        "",
    ]
    parts += [run_tables(r) for r in runs]
    if len(runs) > 1:
        parts.append(ratio_table(runs))
    return "\n".join(parts)


def plot(runs: list[Run], path: Path) -> Path:
    """Per CPU kind, device and batch: each sparse backend's speedup over the best dense backend against sparsity
    (the range across runs or block pairs as bars), with the 1/(1-s_mac) limit; a smaller panel beside it gives
    each backend against its own dense model, which flatters a slow backend and is no answer on its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = answer(runs)
    held: dict[tuple, set[str]] = {}  # (CPU kind, device, batch, backend) -> the instruction sets its kernels ran
    for r in runs:
        for c in r.cases:
            held.setdefault((r.device_kind(c.device), c.device, c.batch_size, c.backend), set()).add(c.isa)
    own: dict[tuple, dict[str, list]] = {}
    for r in runs:
        for c, sp in speedups(r.cases).items():
            if sp.own is not None and c.structure != "channel":  # the seed study's definition: zeros only
                own.setdefault((r.device_kind(c.device), c.device, c.batch_size), {}).setdefault(c.backend, []).append(
                    (c.mac_sparsity * 100, sp.own))
    panels = list(groups) or list(own)
    if not panels:  # no dense (0%) model in the runs: no speedup to draw
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no dense (0%) model in these runs: no speedup to draw", ha="center", va="center")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 4.2 * len(panels)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1]})
    colors: dict[str, str] = {}
    for (ax, ax_own), key in zip(axes, panels):
        machine, device, batch = key
        cells = groups.get(key, {})
        limit = sorted({(k[1] * 100, 1 / (1 - k[1]) if k[1] < 1 else math.inf) for k in cells})
        if limit:
            ax.plot(*zip(*limit), "k--", linewidth=0.8, label="limit 1/(1-s_mac)")
        series = _ordered((k[3], f.structure) for k, f in sorted(cells.items()))
        for backend, structure in series:  # channel-pruned models: hollow marks, dashed, apart from the rest
            color = colors.setdefault(backend, f"C{len(colors) % 10}")
            pts = sorted(((k[1] * 100, k[2]), f) for k, f in cells.items() if k[3] == backend and f.structure == structure)
            xs = [x for (x, _), _ in pts]
            ys = [f.median for _, f in pts]
            err = [[f.median - f.low for _, f in pts], [f.high - f.median for _, f in pts]]
            channel = structure == "channel"
            isas = held.get((machine, device, batch, backend), set())
            name = f"{backend} ({next(iter(isas))})" if len(isas) == 1 and "" not in isas else backend
            ax.errorbar(xs, ys, yerr=err, fmt="s--" if channel else "o-", color=color, capsize=3,
                        mfc="white" if channel else color, label=f"{name}, channel-pruned" if channel else name)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        bases = sorted({f.base for f in cells.values()})
        ax.set_yscale("log")
        ax.set_xlabel("multiply-adds pruned or removed, s_mac (%)")
        ax.set_ylabel(f"speedup over the best dense backend ({', '.join(bases)})")
        ax.set_title(f"{machine}, {device}, batch {batch}", fontsize=9)
        ax.legend(fontsize=7)
        for backend, pts in own.get(key, {}).items():
            pts = sorted(pts)
            ax_own.plot(*zip(*pts), "o-", markersize=3, color=colors.setdefault(backend, f"C{len(colors) % 10}"),
                        label=backend, alpha=0.8)
        ax_own.axhline(1.0, color="grey", linewidth=0.8)
        ax_own.set_yscale("log")
        ax_own.set_xlabel("s_mac (%)")
        ax_own.set_title("each backend vs its own dense model (not the answer)", fontsize=8)
        ax_own.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    paths: Sequence[str | Path], outdir: str | Path, force: bool = False, accuracy: str | Path | None = None
) -> tuple[str, Path, Path]:
    """Read the runs, write ``report.md`` and ``speedup.png`` to ``outdir``; returns (markdown, md path, png path).

    With ``accuracy`` (a ``bench.accuracy`` file), or where the runs carry accuracies, ``bench.pareto`` adds the
    accuracy-latency section and ``accuracy_latency.png``.
    """
    from prune.checkpoint import check_writable

    runs = [load_run(p) for p in paths]
    labels = [r.label for r in runs]
    for i, r in enumerate(runs):
        if labels.count(r.label) > 1:
            r.label = f"{r.label} ({i + 1})"
    outdir = Path(outdir)
    md_path = check_writable(outdir / "report.md", force)
    png_path = check_writable(outdir / "speedup.png", force)
    markdown = report_markdown(runs)
    if accuracy or _pareto.has_accuracy(paths):  # accuracy beside speed: bench.pareto
        section = _pareto.write(paths, outdir, accuracy, force)
        if section:
            markdown += "\n" + section[0]
    md_path.write_text(markdown + "\n", encoding="utf-8")
    plot(runs, png_path)
    return markdown, md_path, png_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="pytest-benchmark JSON files (.benchmarks/<machine>/NNNN_*.json)")
    parser.add_argument("-o", "--outdir", default="bench-report", help="folder for report.md and speedup.png")
    parser.add_argument("--force", action="store_true", help="overwrite report.md and speedup.png there")
    parser.add_argument(
        "--merge", action="store_true",
        help="also one table and plot with a column per host (merged.md, merged.png; automatic for files from several hosts)",
    )
    parser.add_argument("--accuracy", help="bench.accuracy file: adds the accuracy-latency plot (accuracy_latency.png)")
    args = parser.parse_args(argv)
    try:
        markdown, md_path, png_path = write_report(args.runs, args.outdir, args.force, args.accuracy)
        from bench import merge  # several hosts read together: see bench/merge.py

        if args.merge or merge.host_count(args.runs) > 1:
            merged, merged_md, merged_png = merge.write_merged(args.runs, args.outdir, args.force)
            markdown += "\n" + merged
            png_path = f"{png_path}, {merged_md} and {merged_png}"
    except PruneBenchError as e:
        import sys

        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"\nwrote {md_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
