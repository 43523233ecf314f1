"""Turn saved pytest-benchmark runs into the answer: latency per image and speedup per model, backend and batch size.

    python -m bench.report .benchmarks/*/0001_*.json [RUN2.json ...] [-o OUTDIR] [--force]

Two speedups for each case, beside the most any sparse kernel could give:
- vs own dense: the backend's time on the dense (0%) model over its time on
  this model (the seed study's definition: does pruning speed *this* backend up?);
- vs best dense: the fastest backend's time on the dense model, same device and
  batch, over this case's time (the honest one: is the pruned model faster than
  the best way to run the unpruned one?);
- limit: 1 / (1 - s_mac), s_mac the share of multiply-accumulates whose weight
  is pruned (``extra_info["mac_sparsity"]``).
Given several runs, each later run's latency is also shown as a ratio to the
first's. Writes ``report.md`` and ``speedup.png`` to OUTDIR and prints the Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Sequence

from bench import pareto as _pareto
from prune.errors import PruneBenchError

DENSE_SPARSITY = 0.005  # a model with fewer zeros (and fewer MACs removed) than this is the dense (0%) baseline
REQUIRED = ("backend", "device", "batch_size", "model", "sparsity", "mac_sparsity")


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

    @property
    def ms_per_image(self) -> float:
        return self.median_s / self.batch_size * 1e3

    @property
    def limit(self) -> float:
        return math.inf if self.mac_sparsity >= 1 else 1.0 / (1.0 - self.mac_sparsity)


@dataclasses.dataclass
class Run:
    """The prunebench cases of one pytest-benchmark JSON file."""

    label: str
    cases: list[Case]
    machine: str
    date: str
    threads: set


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
                )
            )
        except (KeyError, TypeError, ValueError):
            raise PruneBenchError(f"{path}: case {b.get('name', '?')} has malformed stats or extra_info") from None
    if not cases:
        raise PruneBenchError(
            f"{path} holds no prunebench cases (none has extra_info {', '.join(REQUIRED)}): "
            "was it saved by pytest bench without --benchmark-disable?"
        )
    machine = data.get("machine_info") or {}
    cpu = (machine.get("cpu") or {}).get("brand_raw") or machine.get("processor") or "?"
    threads = {b["extra_info"].get("threads") for b in data["benchmarks"] if isinstance(b.get("extra_info"), dict)}
    return Run(label=path.stem, cases=cases, machine=str(cpu), date=str(data.get("datetime", "?")), threads=threads)


@dataclasses.dataclass(frozen=True)
class Speedup:
    own: float | None  # vs the same backend's dense model; None without a dense model in the run
    best: float | None  # vs the fastest backend's dense model on the same device and batch
    best_backend: str | None


def speedups(cases: list[Case]) -> dict[Case, Speedup]:
    """Both speedups of every case (see the module docstring)."""
    own_base: dict[tuple, float] = {}
    best_base: dict[tuple, tuple[float, str]] = {}
    for c in cases:
        if c.sparsity >= DENSE_SPARSITY or c.mac_sparsity >= DENSE_SPARSITY:  # a channel-pruned model has no zeros
            continue
        key = (c.backend, c.device, c.batch_size)
        own_base[key] = min(own_base.get(key, math.inf), c.median_s)
        dkey = (c.device, c.batch_size)
        if dkey not in best_base or c.median_s < best_base[dkey][0]:
            best_base[dkey] = (c.median_s, c.backend)
    out = {}
    for c in cases:
        own = own_base.get((c.backend, c.device, c.batch_size))
        best = best_base.get((c.device, c.batch_size))
        out[c] = Speedup(
            own=own / c.median_s if own else None,
            best=best[0] / c.median_s if best else None,
            best_backend=best[1] if best else None,
        )
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


def report_markdown(runs: list[Run]) -> str:
    parts = [
        "# Latency report",
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
    """speedup (vs own dense: solid; vs best dense: dotted) against sparsity per backend, with the 1/(1-s_mac) limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for r in runs:
        for device in _ordered(c.device for c in r.cases):
            for batch in sorted({c.batch_size for c in r.cases if c.device == device}):
                panels.append((r, device, batch))
    cols = min(len(panels), 2)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.5 * rows), squeeze=False)
    for ax, (run, device, batch) in zip(axes.flat, panels):
        cases = [c for c in run.cases if c.device == device and c.batch_size == batch]
        sp = speedups(cases)
        limit = sorted({(c.sparsity, c.limit) for c in cases})
        ax.plot([s * 100 for s, _ in limit], [lim for _, lim in limit], "k--", label="limit 1/(1-s_mac)")
        for i, backend in enumerate(_ordered(c.backend for c in cases)):
            pts = sorted(((c.sparsity, sp[c]) for c in cases if c.backend == backend), key=lambda t: t[0])
            color = f"C{i % 10}"
            own = [(s * 100, v.own) for s, v in pts if v.own]
            best = [(s * 100, v.best) for s, v in pts if v.best]
            if own:
                ax.plot(*zip(*own), "o-", color=color, label=backend)
            if best:
                ax.plot(*zip(*best), ":", color=color, alpha=0.7)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("speedup (solid: vs own dense; dotted: vs best dense)")
        ax.set_title(f"{run.label}: {device}, batch {batch}", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
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
    parser.add_argument("--accuracy", help="bench.accuracy file: adds the accuracy-latency plot (accuracy_latency.png)")
    args = parser.parse_args(argv)
    try:
        markdown, md_path, png_path = write_report(args.runs, args.outdir, args.force, args.accuracy)
    except PruneBenchError as e:
        import sys

        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"\nwrote {md_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
