"""The Python pieces of the one-call GPU job (``bench/gpu_job.sh``): the models it times and the summary it prints.

``python -m bench.gpu_job models FOLDER`` writes the synthetic checkpoints the
bench times on the GPU: dense, unstructured magnitude 50% and 90% (the suite's
own recipe, ``bench.models.synthetic_resnet18``) and 2:4 at 50%, which the
suite's synthetic set lacks and the 2:4 backends need.

``python -m bench.gpu_job summary OUT ...`` turns the bench JSON and the study
folder into ``OUT/summary.md`` (provenance, latency tables, the study's table,
per-layer reports), ``OUT/bench.png`` and a short summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torch import nn

from prune.errors import PruneBenchError

REFERENCE = "torch-dense"  # every latency is also given as a speedup over this backend, same model, batch, device
MODELS = {  # file stem -> (strategy, sparsity)
    "synthetic-s00": ("magnitude", 0.0),
    "synthetic-s50": ("magnitude", 0.5),
    "synthetic-s90": ("magnitude", 0.9),
    "synthetic-24-s50": ("2:4", 0.5),
}


# -- models ----------------------------------------------------------------------------------


def synthetic_24(sparsity: float = 0.5, seed: int = 0) -> nn.Module:
    """``bench.models.synthetic_resnet18``'s recipe with the 2:4 strategy instead of global magnitude."""
    from bench.models import calibrate_batchnorm_
    from prune.mask import make_permanent_
    from prune.models import prunable_layers, resnet18_cifar
    from prune.platform import set_seed
    from prune.pruning import prune_rounds
    from prune.strategies import SemiStructured24

    set_seed(seed)
    model = resnet18_cifar()
    nn.init.kaiming_normal_(model.fc.weight, mode="fan_in", nonlinearity="relu")  # as synthetic_resnet18 does
    nn.init.zeros_(model.fc.bias)
    layers = prunable_layers(model)
    prune_rounds(layers, SemiStructured24(), sparsity, 1)
    make_permanent_(layers)
    calibrate_batchnorm_(model, seed=seed)
    return model


def write_models(folder: str | Path, names: list[str] | None = None, force: bool = False) -> list[Path]:
    """Save the synthetic bench models named in ``names`` (default: all of ``MODELS``) as checkpoints in ``folder``."""
    from bench.models import synthetic_resnet18
    from prune.checkpoint import save_checkpoint
    from prune.models import ARCH
    from prune.platform import provenance

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names or list(MODELS):
        if name not in MODELS:
            raise PruneBenchError(f"unknown bench model {name!r}: choose from {', '.join(MODELS)}")
        strategy, sparsity = MODELS[name]
        model = synthetic_24(sparsity) if strategy == "2:4" else synthetic_resnet18(sparsity)
        meta = {
            "arch": ARCH,
            "weights": "synthetic (seeded random, BatchNorm calibrated on random images)",
            "strategy": strategy,
            "method": "oneshot" if sparsity else "dense",
            "target_sparsity": sparsity,
            "provenance": provenance(),
        }
        paths.append(save_checkpoint(folder / f"{name}.pt", model, meta, force=force))
    return paths


# -- reading results ----------------------------------------------------------------------------


def _first(d: dict, *keys, default=None):
    for k in keys:
        if isinstance(d, dict) and d.get(k) is not None:
            return d[k]
    return default


def merge_bench_json(paths: list[str | Path], target: str | Path) -> int:
    """Concatenate the ``benchmarks`` of pytest-benchmark JSON files into one file; returns how many."""
    merged: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if not merged:
            merged = {**data, "benchmarks": []}
        merged["benchmarks"] += data.get("benchmarks", [])
    if merged:
        Path(target).write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    return len(merged.get("benchmarks", []))


def bench_rows(paths: list[str | Path]) -> tuple[list[dict], dict]:
    """One row per benchmark in pytest-benchmark JSON files: backend, model, batch, device, median ms, info.

    Returns the rows and the first file's ``machine_info``. Missing files are skipped.
    """
    rows, machine = [], {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise PruneBenchError(f"{path} is not JSON: was the bench run cut off?") from None
        machine = machine or data.get("machine_info", {})
        for b in data.get("benchmarks", []):
            info, params = b.get("extra_info") or {}, b.get("params") or {}
            stats = b.get("stats") or {}
            rows.append(
                {
                    "backend": str(_first(info, "backend", default=_first(params, "backend", "backend_name", default="?"))),
                    "model": str(_first(info, "model", default=_first(params, "model", "spec", default="?"))),
                    "batch": int(_first(info, "batch_size", "batch", default=_first(params, "batch_size", "batch", default=0))),
                    "device": str(_first(info, "device", default=_first(params, "device", default="?"))),
                    "median_ms": float(stats.get("median", math.nan)) * 1e3,
                    "iqr_ms": float(stats.get("iqr", math.nan)) * 1e3,
                    "rounds": int(stats.get("rounds", 0)),
                    "info": info,
                }
            )
    return rows, machine


def latency_tables(rows: list[dict]) -> str:
    """Markdown: per device and batch size, one row per backend, one column per model (median ms, speedup)."""
    out = []
    for device, batch in sorted({(r["device"], r["batch"]) for r in rows}):
        subset = [r for r in rows if r["device"] == device and r["batch"] == batch]
        models = sorted({r["model"] for r in subset})
        backends = list(dict.fromkeys(r["backend"] for r in subset))
        cell = {(r["backend"], r["model"]): r for r in subset}
        rounds = [r["rounds"] for r in subset]
        out += [
            f"### {device}, batch {batch}: median ms per batch (speedup over {REFERENCE})",
            "",
            f"Timed rounds per case: {min(rounds)} to {max(rounds)}.",
            "",
            "| backend | " + " | ".join(models) + " |",
            "|---|" + "---:|" * len(models),
        ]
        for backend in backends:
            cells = []
            for model in models:
                r = cell.get((backend, model))
                ref = cell.get((REFERENCE, model))
                if r is None:
                    cells.append("")
                elif ref is None or not ref["median_ms"] > 0:
                    cells.append(f"{r['median_ms']:.3f}")
                else:
                    cells.append(f"{r['median_ms']:.3f} ({ref['median_ms'] / r['median_ms']:.2f}x)")
            out.append(f"| {backend} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot_latency(rows: list[dict], path: str | Path) -> bool:
    """Grouped bars of median latency per model and backend, one panel per (device, batch); False if no rows."""
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["device"], r["batch"]) for r in rows})
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 4 * len(panels)), squeeze=False)
    for ax, (device, batch) in zip(axes[:, 0], panels):
        subset = [r for r in rows if r["device"] == device and r["batch"] == batch]
        models = sorted({r["model"] for r in subset})
        backends = list(dict.fromkeys(r["backend"] for r in subset))
        width = 0.8 / max(1, len(backends))
        for i, backend in enumerate(backends):
            xs, ys = [], []
            for j, model in enumerate(models):
                r = next((r for r in subset if r["backend"] == backend and r["model"] == model), None)
                if r is not None:
                    xs.append(j + i * width)
                    ys.append(r["median_ms"])
            ax.bar(xs, ys, width=width, label=backend)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(models))], models)
        ax.set_yscale("log")
        ax.set_ylabel("median ms per batch (log)")
        ax.set_title(f"ResNet-18 latency, {device}, batch {batch}")
        ax.legend(fontsize=7, ncol=3)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def study_summary(folder: str | Path) -> tuple[dict | None, str]:
    """The study's results (``results.json``) and a Markdown section: its table, base epoch times, per-layer reports."""
    folder = Path(folder)
    path = folder / "results.json"
    if not path.is_file():
        return None, f"No study results at {path}.\n"
    data = json.loads(path.read_text(encoding="utf-8"))
    parts = [(folder / "results.md").read_text(encoding="utf-8") if (folder / "results.md").is_file() else ""]
    base = data.get("base", {})
    base_path = Path(base.get("checkpoint", ""))
    if base_path.is_file():
        from prune.checkpoint import load_state

        try:
            _, meta = load_state(base_path)
        except PruneBenchError as e:
            meta = {}
            parts.append(f"\nBase checkpoint unreadable, so no epoch times: {e}\n")
        seconds = meta.get("epoch_seconds") or []
        if seconds:
            data["base_epoch_seconds"] = seconds
            parts.append(
                f"\nBase model training: {len(seconds)} epochs on {meta.get('train_images', '?')} images, "
                f"{meta.get('device', '?')}, amp {meta.get('amp', '?')}, batch {meta.get('batch_size', '?')}: "
                f"epoch times {', '.join(f'{s:.1f}' for s in seconds)} s (median {sorted(seconds)[len(seconds) // 2]:.1f} s; "
                "the first includes warm-up).\n"
            )
    reports = sorted((folder / "reports").glob("*.md")) if (folder / "reports").is_dir() else []
    if reports:
        parts.append("\n## Per-layer reports\n")
        parts += [r.read_text(encoding="utf-8") for r in reports]
    return data, "\n".join(parts)


def short_summary(rows: list[dict], study: dict | None, env: dict) -> list[str]:
    """The lines printed last: card and versions, the headline latencies, the study's headline accuracies."""
    lines = [f"GPU job summary: {env.get('gpu') or 'no GPU'}; torch {env.get('torch')}, CUDA {env.get('cuda')}"]
    for device, batch in sorted({(r["device"], r["batch"]) for r in rows}):
        subset = [r for r in rows if r["device"] == device and r["batch"] == batch]
        by = {(r["backend"], r["model"]): r["median_ms"] for r in subset}
        picks = []
        for backend, model in [
            (REFERENCE, "synthetic-s00"),
            ("torch-cuda-graph", "synthetic-s00"),
            ("torch-dense-fp16", "synthetic-24-s50"),
            ("im2col-dense-fp16", "synthetic-24-s50"),
            ("torch-2:4", "synthetic-24-s50"),
            ("torch-sparse", "synthetic-s90"),
            ("torch-sparse-bsr", "synthetic-s90"),
        ]:
            if (backend, model) in by:
                picks.append(f"{backend}@{model.removeprefix('synthetic-')} {by[(backend, model)]:.3f}")
        fastest = min(subset, key=lambda r: r["median_ms"])
        lines.append(f"  {device} batch {batch} (ms): " + "; ".join(picks))
        lines.append(f"    fastest: {fastest['backend']} on {fastest['model']} {fastest['median_ms']:.3f} ms")
    if not rows:
        lines.append("  bench: no results (see log.txt)")
    if study:
        done = study.get("rows", [])
        base = study.get("base", {})
        epoch = study.get("base_epoch_seconds")
        line = f"  study ({study.get('dataset')}): base {base.get('accuracy', math.nan):.2%}, {len(done)} cases"
        if epoch:
            line += f", base epoch {sorted(epoch)[len(epoch) // 2]:.1f} s"
        lines.append(line)
        for r in done:
            if r.get("target_sparsity") == 0.5 and not r.get("rounds", 1) > 1:
                lines.append(f"    {r['case']}: {r['accuracy']:.2%} (drop vs base {r['accuracy_drop'] * 100:+.2f} pp)")
    else:
        lines.append("  study: no results (see log.txt)")
    return lines


def write_summary(out: str | Path, bench_json: list[str], study_folder: str | None, env: dict, command: str = "") -> list[str]:
    """Write ``summary.md``, ``bench.json`` (the runs merged), ``bench.png`` and ``study.json`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, machine = bench_rows(bench_json)
    merge_bench_json(bench_json, out / "bench.json")
    study, study_md = study_summary(study_folder) if study_folder else (None, "No study was run.\n")
    parts = [
        "# GPU job: bench on CUDA and the pruning study",
        "",
        f"Card: {env.get('gpu') or 'no GPU'}; capability {env.get('capability')}; cuSPARSELt {env.get('cusparselt')}; "
        f"torch {env.get('torch')}, torchvision {env.get('torchvision')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}; "
        f"Python {env.get('python')}; {env.get('date')}.",
        f"Command: `{command}`" if command else "",
        "",
        "## Latency",
        "",
        "Synthetic weights (seeded random, pruned, BatchNorm calibrated): latency depends on the zeros, not on training. "
        "fp32 cases run PyTorch's defaults (cuDNN convs in TF32).",
        "",
        latency_tables(rows) if rows else "No bench results (see log.txt).\n",
        "## Study",
        "",
        study_md,
    ]
    (out / "summary.md").write_text("\n".join(parts), encoding="utf-8")
    plot_latency(rows, out / "bench.png")
    if study is not None:
        (out / "study.json").write_text(json.dumps(study, indent=2) + "\n", encoding="utf-8")
    if machine:
        env = {**env, "bench_machine": machine.get("cpu", {}).get("brand_raw")}
    return short_summary(rows, study, env)


def environment() -> dict:
    """Provenance plus what the 2:4 kernels need: compute capability and cuSPARSELt."""
    import torchvision

    from prune.platform import provenance

    env = provenance()
    env["torchvision"] = torchvision.__version__
    env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if torch.cuda.is_available():
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        env["cusparselt"] = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
    return env


# -- command line ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_job", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("models", help="write the synthetic bench checkpoints")
    p.add_argument("folder")
    p.add_argument("--names", nargs="+", default=None, help=f"which ({', '.join(MODELS)}; default: all)")
    p.add_argument("--force", action="store_true", help="overwrite existing checkpoints")
    p = sub.add_parser("summary", help="write summary.md, bench.png, study.json under OUT and print the summary")
    p.add_argument("out")
    p.add_argument("--results-json", nargs="*", default=[], help="pytest-benchmark JSON files")
    p.add_argument("--study", default=None, help="the study's output folder")
    p.add_argument("--command", default="", help="the command that ran the job (recorded in summary.md)")
    p = sub.add_parser("env", help="print the environment as JSON")
    args = parser.parse_args(argv)
    try:
        if args.verb == "models":
            for path in write_models(args.folder, args.names, args.force):
                print(path)
        elif args.verb == "summary":
            print("\n".join(write_summary(args.out, args.results_json, args.study, environment(), args.command)))
        else:
            print(json.dumps(environment(), indent=2))
    except PruneBenchError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
