"""The accuracy-latency view of a benchmark run: one point per variant and batch size, the Pareto frontier marked.

A variant is a model at a precision: fp32 (timed at its fastest fp32 backend
in the run, named beside the point) or INT8 (the ``onnxruntime-int8``
backend). Its accuracy comes from ``bench.accuracy``'s file (fp32 and INT8
top-1 on the same real test images) or, for fp32 only, from the checkpoint's
own ``accuracy`` in ``extra_info``. A point is on the frontier when no other
point of the same device and batch is at least as fast and at least as
accurate, and better in one of the two. ``bench.report`` calls ``write``
when it is given ``--accuracy`` or the run carries accuracies.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from prune.errors import PruneBenchError

INT8_BACKEND = "onnxruntime-int8"


@dataclasses.dataclass(frozen=True)
class Point:
    """One variant at one device and batch size."""

    model: str
    precision: str  # fp32 | int8
    label: str  # e.g. "channel 50% MACs, one-shot + INT8"
    family: str  # dense | unstructured | channel
    device: str
    batch_size: int
    ms_per_image: float
    accuracy: float
    backend: str
    checked: bool = True  # False: an INT8 model that failed its parity criterion (drawn hollow, never on the frontier)


def load_accuracy(path: str | Path | None) -> dict:
    """``bench.accuracy``'s file as model id -> entry ({} without a path)."""
    if not path:
        return {}
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PruneBenchError(f"no accuracy file at {path}: make one with python -m bench.accuracy STUDY_FOLDER") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PruneBenchError(f"{path} is not JSON: give the file python -m bench.accuracy wrote") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise PruneBenchError(f"{path} is not a bench.accuracy file (no 'models')")
    return data["models"]


def describe(info: dict) -> tuple[str, str]:
    """(label, family) of a model from its extra_info or accuracy entry."""
    structure = info.get("structure", "unstructured")
    mac = info.get("mac_sparsity") or 0.0
    sparsity = info.get("sparsity") or 0.0
    method = info.get("method", "")
    how = {"oneshot": ", one-shot", "iterative": ", iterative"}.get(method, "")
    if structure == "channel":
        return f"channel {mac:.0%} MACs{how}", "channel"
    if sparsity < 0.005:
        return "dense", "dense"
    strategy = info.get("strategy") or ""
    name = "" if strategy in ("", "magnitude") else f" {strategy}"
    return f"unstructured{name} {sparsity:.0%}{how}", "unstructured"


def variant_points(paths, accuracy: dict) -> list[Point]:
    """Every variant with a latency and an accuracy, from the runs' JSON and the accuracy entries."""
    best: dict[tuple, tuple[float, str, dict]] = {}  # (model, precision, device, batch) -> (median s, backend, info)
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        for b in data.get("benchmarks", []):
            info, stats = b.get("extra_info") or {}, b.get("stats") or {}
            if not {"model", "backend", "device", "batch_size"} <= set(info) or "median" not in stats:
                continue
            precision = "int8" if info["backend"] == INT8_BACKEND else "fp32"
            key = (info["model"], precision, info["device"], int(info["batch_size"]))
            if key not in best or stats["median"] < best[key][0]:
                best[key] = (float(stats["median"]), info["backend"], info)
    points = []
    for (model, precision, device, batch), (median, backend, info) in best.items():
        entry = accuracy.get(model, {})
        top1 = entry.get(precision)
        if top1 is None and precision == "fp32" and isinstance(info.get("accuracy"), (int, float)):
            top1 = info["accuracy"]
        if top1 is None:
            continue
        label, family = describe({**info, **{k: v for k, v in entry.items() if v is not None}})
        if precision == "int8":
            label += " + INT8"
        checked = not (precision == "int8" and entry.get("int8_checked") is False)
        if not checked:
            label += " (fails parity)"
        points.append(Point(model, precision, label, family, device, batch, median / batch * 1e3, float(top1), backend,
                            checked))
    return points


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other point beats on both latency and accuracy, fastest first (checked points only)."""
    front = []
    for p in sorted((p for p in points if p.checked), key=lambda p: (p.ms_per_image, -p.accuracy)):
        if not front or p.accuracy > front[-1].accuracy:
            front.append(p)
    return front


def _panels(points: list[Point]) -> list[tuple[str, int]]:
    return sorted({(p.device, p.batch_size) for p in points})


def markdown(points: list[Point], source: str) -> str:
    """Per device and batch: the variants, fastest first, frontier marked."""
    lines = ["## Accuracy and latency per variant", "",
             f"Top-1: {source}. fp32 variants are timed at their fastest fp32 backend; INT8 on {INT8_BACKEND}. "
             "★: on the Pareto frontier (nothing else is both as fast and as accurate). \"fails parity\": an INT8 model "
             "outside the INT8 criterion against its fp32 model (measured, never on the frontier).", ""]
    for device, batch in _panels(points):
        panel = [p for p in points if (p.device, p.batch_size) == (device, batch)]
        front = set(pareto_front(panel))
        lines += [f"### {device}, batch {batch}", "", "| variant | backend | ms/image | top-1 | frontier |",
                  "|---|---|---:|---:|:---:|"]
        for p in sorted(panel, key=lambda p: p.ms_per_image):
            lines.append(f"| {p.label} | {p.backend} | {p.ms_per_image:.3f} | {p.accuracy:.2%} | {'★' if p in front else ''} |")
        lines.append("")
    return "\n".join(lines)


def plot(points: list[Point], path: Path, title: str = "") -> Path:
    """Accuracy against latency per image, one panel per device and batch size, the frontier as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(points)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    colors = {"dense": "k", "unstructured": "C0", "channel": "C1"}
    for ax, (device, batch) in zip(axes.flat, panels):
        panel = [p for p in points if (p.device, p.batch_size) == (device, batch)]
        front = pareto_front(panel)
        for p in panel:
            color = colors.get(p.family, "C2")
            ax.scatter(p.ms_per_image, p.accuracy * 100, color=color if p.checked else "none",
                       marker="s" if p.precision == "int8" else "o", s=60 if p in front else 30,
                       edgecolors="red" if p in front else (color if not p.checked else "none"), linewidths=1.5, zorder=3)
            ax.annotate(p.label, (p.ms_per_image, p.accuracy * 100), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.step([p.ms_per_image for p in front], [p.accuracy * 100 for p in front], where="post", color="red",
                linewidth=1, alpha=0.7, label="Pareto frontier")
        for family, color in colors.items():
            ax.scatter([], [], color=color, marker="o", label=family)
        ax.scatter([], [], color="grey", marker="s", label="INT8 (squares)")
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms per image (log)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{title}{device}, batch {batch}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def has_accuracy(paths) -> bool:
    """Whether any case of the runs carries an accuracy in extra_info."""
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if any(isinstance((b.get("extra_info") or {}).get("accuracy"), (int, float)) for b in data.get("benchmarks", [])):
            return True
    return False


def write(paths, outdir: Path, accuracy_file: str | Path | None = None, force: bool = False) -> tuple[str, Path] | None:
    """Markdown section and ``accuracy_latency.png`` in ``outdir``; None where no variant has an accuracy."""
    from prune.checkpoint import check_writable

    accuracy = load_accuracy(accuracy_file)
    points = variant_points(paths, accuracy)
    if not points:
        if accuracy_file:
            raise PruneBenchError(f"no model of the runs appears in {accuracy_file}: were they benchmarked from that study folder?")
        return None
    png = check_writable(Path(outdir) / "accuracy_latency.png", force)
    source = f"{accuracy_file} (bench.accuracy)" if accuracy_file else "the checkpoints' own accuracy (fp32 only)"
    plot(points, png)
    return markdown(points, source), png
