"""Runs from many hosts, read together: one latency table and one plot, a column (a line) per host.

    python -m bench.report --merge hostA.json hostB.json ... [-o OUTDIR]

(also without ``--merge`` whenever the files come from more than one host).
Each pytest-benchmark JSON file names its host in ``machine_info`` (node, CPU
model, its flags, hence the instruction set) and its cases in ``extra_info``
(device, threads, batch, model). A row is one model (name, weights, sparsity,
nonzeros), backend and batch size, so numbers of different batches or models
never share a row; a model name that stands for different weights on two hosts
becomes one row per host, said under the table. Where threads differ within a
row the cells say how many each used and no ratio is given. Writes
``merged.md`` and ``merged.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Sequence

from prune.errors import PruneBenchError
from prune.platform import isa_of

@dataclasses.dataclass(frozen=True)
class Host:
    """Where a run was made, as its file says."""

    node: str
    cpu: str
    isa: str
    cpus: int | None
    family_model: str  # tells apart CPUs sold under one brand string ("AMD EPYC")

    @property
    def key(self) -> tuple:
        return (self.node, self.cpu, self.isa, self.cpus, self.family_model)


@dataclasses.dataclass(frozen=True)
class Cell:
    ms_per_image: float
    threads: object  # as extra_info records it (an int, or None)
    device: str


@dataclasses.dataclass
class Column:
    """The cases of one host (from one or more files)."""

    host: Host
    files: list[str]
    cells: dict[tuple, Cell]  # (model key, backend, batch) -> cell
    identity: dict[str, tuple]  # model name -> (weights, sparsity, nonzeros) on this host
    label: str = ""

    @property
    def threads(self) -> list:
        return sorted({c.threads for c in self.cells.values()}, key=_by_number)

    @property
    def devices(self) -> list[str]:
        return sorted({c.device for c in self.cells.values()})


def _by_number(value) -> tuple:
    return (not isinstance(value, (int, float)), value if isinstance(value, (int, float)) else 0, str(value))


def host_of(data: dict) -> Host:
    machine = data.get("machine_info") or {}
    cpu = machine.get("cpu") or {}
    info = next((b.get("extra_info") for b in data.get("benchmarks", []) if isinstance(b, dict)
                 and isinstance(b.get("extra_info"), dict)), {})
    isa = isa_of(cpu["flags"]) if cpu.get("flags") else str(info.get("cpu_isa") or cpu.get("arch") or "?")
    fm = f"{cpu.get('family', '?')}/{cpu.get('model', '?')}" if cpu.get("family") is not None else ""
    return Host(
        node=str(machine.get("node") or "?"),
        cpu=str(cpu.get("brand_raw") or machine.get("processor") or "?"),
        isa=isa,
        cpus=cpu.get("count"),
        family_model=fm,
    )


def _read(path: Path) -> dict:
    from bench.report import load_run  # the one reader of pytest-benchmark files and its errors

    load_run(path)
    return json.loads(path.read_text(encoding="utf-8"))


def host_count(paths: Sequence[str | Path]) -> int:
    """How many hosts the files come from (unreadable files count as none: the report says what is wrong)."""
    hosts = set()
    for p in paths:
        try:
            hosts.add(host_of(json.loads(Path(p).read_text(encoding="utf-8"))).key)
        except (OSError, ValueError, AttributeError):
            continue
    return len(hosts)


def columns(paths: Sequence[str | Path]) -> tuple[list[Column], list[str]]:
    """One column per host, in the order the files came; and the notes of what was set aside or replaced."""
    from bench.report import REQUIRED

    cols: dict[tuple, Column] = {}
    notes: list[str] = []
    for p in paths:
        path = Path(p)
        data = _read(path)
        host = host_of(data)
        col = cols.setdefault(host.key, Column(host, [], {}, {}))
        col.files.append(str(p))
        for b in data["benchmarks"]:
            info, stats = b.get("extra_info") or {}, b.get("stats") or {}
            if any(k not in info for k in REQUIRED) or "median" not in stats:
                continue
            model = str(info["model"])
            ident = (str(info.get("weights", "?")), round(float(info["sparsity"]), 6), info.get("nonzeros"))
            col.identity.setdefault(model, ident)
            batch = int(info["batch_size"])
            key = (model, ident, str(info["backend"]), batch)
            if key in col.cells:
                notes.append(f"{path.name}: {model} {info['backend']} batch {batch} is in an earlier file of this host too; the later is shown")
            col.cells[key] = Cell(float(stats["median"]) / batch * 1e3, info.get("threads"), str(info["device"]))
    result = list(cols.values())
    _label(result)
    return result, notes


def _label(cols: list[Column]) -> None:
    for i, c in enumerate(cols):
        threads = ", ".join(str(t) for t in c.threads)
        c.label = f"{c.host.cpu}, {c.host.isa}, {threads} threads, {'/'.join(c.devices)}"
    seen: dict[str, int] = {}
    for c in cols:
        seen[c.label] = seen.get(c.label, 0) + 1
    for i, c in enumerate(cols):
        if seen[c.label] > 1:  # one brand and set-up on two machines: name them apart
            c.label += f" ({c.host.node} {c.host.family_model}, {c.files[0]})"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def merged_markdown(cols: list[Column], notes: list[str]) -> str:
    """The table: rows model x backend x batch, a column per host, and a ratio to the first host where comparable."""
    rows = sorted(
        {k for c in cols for k in c.cells},
        key=lambda k: (k[3], k[2], k[1][1], k[0], k[1]),  # batch, backend, sparsity, name
    )
    names: dict[str, set] = {}
    for c in cols:
        for model, ident in c.identity.items():
            names.setdefault(model, set()).add(ident)
    lines = [
        "# Latency on several hosts",
        "",
        "Median ms per image, one column per host (CPU, instruction set, threads, device, from each file's "
        "machine_info and extra_info). A row is one model, backend and batch size; `Hn/H1` is host n's "
        "time over the first host's, given only where both used the same threads.",
        "",
        "| # | host | files |",
        "|---|---|---|",
    ]
    for i, c in enumerate(cols):
        lines.append(f"| H{i + 1} | {c.label} | {', '.join(c.files)} |")
    head = "| model | sparsity | backend | batch | " + " | ".join(f"H{i + 1}" for i in range(len(cols)))
    head += "".join(f" | H{i + 1}/H1" for i in range(1, len(cols))) + " |"
    lines += ["", head, "|---|---:|---|---:|" + "---:|" * (2 * len(cols) - 1)]
    mixed_threads = 0
    for key in rows:
        model, ident, backend, batch = key
        cells = [c.cells.get(key) for c in cols]
        threads = {cell.threads for cell in cells if cell}
        mixed = len(threads) > 1
        mixed_threads += mixed
        shown = []
        for cell in cells:
            if cell is None:
                shown.append("–")
            else:
                shown.append(_fmt(cell.ms_per_image) + (f" ({cell.threads} thr)" if mixed else ""))
        ratios = []
        for cell in cells[1:]:
            base = cells[0]
            ok = cell is not None and base is not None and cell.threads == base.threads
            ratios.append(_fmt(cell.ms_per_image / base.ms_per_image, 2) if ok else "–")
        name = model if len(names[model]) == 1 else f"{model} [{ident[0]}, {ident[2]} nonzeros]"
        lines.append(f"| {name} | {ident[1]:.1%} | {backend} | {batch} | " + " | ".join(shown + ratios) + " |")
    lines.append("")
    for model, idents in sorted(names.items()):
        if len(idents) > 1:
            lines.append(
                f"- `{model}` is not the same model on every host ({'; '.join(f'{w}, sparsity {s:.1%}, {n} nonzeros' for w, s, n in sorted(idents, key=str))}): "
                "one row each, never side by side."
            )
    if mixed_threads:
        lines.append(
            f"- In {mixed_threads} rows the hosts used different threads (shown in the cells): those rows compare the "
            "machines and their thread counts together, so no ratio is given."
        )
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def plot(cols: list[Column], path: Path) -> Path:
    """ms per image against sparsity: one panel per backend and batch, one line per host."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(k[2], k[3]) for c in cols for k in c.cells}, key=lambda p: (p[1], p[0]))
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, (backend, batch) in zip(axes.flat, panels):
        for i, c in enumerate(cols):
            points = sorted((k[1][1] * 100, cell.ms_per_image) for k, cell in c.cells.items() if k[2] == backend and k[3] == batch)
            if points:
                threads = {cell.threads for k, cell in c.cells.items() if k[2] == backend and k[3] == batch}
                ax.plot(*zip(*points), "o-", color=f"C{i % 10}", label=f"H{i + 1} ({', '.join(map(str, sorted(threads, key=_by_number)))} thr)")
        ax.set_yscale("log")
        ax.set_title(f"{backend}, batch {batch}", fontsize=9)
        ax.set_xlabel("sparsity (%)", fontsize=8)
        ax.set_ylabel("ms per image", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("; ".join(f"H{i + 1}: {c.label}" for i, c in enumerate(cols)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_merged(paths: Sequence[str | Path], outdir: str | Path, force: bool = False) -> tuple[str, Path, Path]:
    """Read the runs, write ``merged.md`` and ``merged.png`` to ``outdir``; returns (markdown, md path, png path)."""
    from prune.checkpoint import check_writable

    if not paths:
        raise PruneBenchError("give at least one pytest-benchmark JSON file to merge")
    cols, notes = columns(paths)
    outdir = Path(outdir)
    md_path = check_writable(outdir / "merged.md", force)
    png_path = check_writable(outdir / "merged.png", force)
    markdown = merged_markdown(cols, notes)
    md_path.write_text(markdown, encoding="utf-8")
    plot(cols, png_path)
    return markdown, md_path, png_path
