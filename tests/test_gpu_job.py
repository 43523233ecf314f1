"""The GPU job's pieces: its options match the CLIs it drives, and its summary reads what they write.

The whole job in tiny mode takes minutes on the CPU, too long for the suite; run it by hand:
``GPU_JOB_TINY=1 OUT=/tmp/gpu_job_out bash bench/gpu_job.sh`` (see the script's header).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import gpu_job
from bench.conftest import BenchSettings
from prune.errors import PruneBenchError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_job.sh"


def test_script_is_valid_bash():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash on this machine")
    subprocess.run([bash, "-n", str(SCRIPT)], check=True)


def test_bench_options_used_by_the_script_exist():
    used = set(re.findall(r"--bench-([a-z-]+)", SCRIPT.read_text()))
    known = {f.name.replace("_", "-") for f in dataclasses.fields(BenchSettings)}
    assert used and used <= known, used - known


def test_study_options_used_by_the_script_exist():
    from prune.cli import build_parser

    study = build_parser()._subparsers._group_actions[0].choices["study"]
    known = {opt for action in study._actions for opt in action.option_strings}
    text = SCRIPT.read_text()
    parts = re.findall(r"STUDY_ARGS=\((.*?)\)\n", text, re.S) + re.findall(r"-m prune study(.*?)\n\n", text, re.S)
    used = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", " ".join(parts)))
    assert used and used <= known, used - known


def test_backends_named_by_the_script_are_registered():
    from bench.backends import BACKENDS

    text = SCRIPT.read_text()
    names = set()
    for listing in re.findall(r"--bench-backends ([\w:,-]+)|BENCH_BACKENDS:-([\w:,-]+)", text):
        for item in listing:
            names |= {n for n in item.split(",") if n}
    assert names and names <= set(BACKENDS), names - set(BACKENDS)


def test_unknown_model_name_is_a_one_line_error(tmp_path):
    with pytest.raises(PruneBenchError, match="unknown bench model"):
        gpu_job.write_models(tmp_path, ["synthetic-s33"])


def fake_bench_json(path: Path, rows: list[tuple[str, str, int, str, float]]) -> Path:
    """A pytest-benchmark JSON with the fields the suite writes (backend, model, batch_size, device in extra_info)."""
    benchmarks = [
        {
            "group": f"{model} batch {batch}",
            "params": {"batch_size": batch, "backend_name": backend, "device": device},
            "extra_info": {"backend": backend, "model": model, "batch_size": batch, "device": device},
            "stats": {"median": seconds, "iqr": seconds / 10, "rounds": 10},
        }
        for backend, model, batch, device, seconds in rows
    ]
    path.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "test"}}, "benchmarks": benchmarks}))
    return path


def test_latency_tables_give_medians_and_speedups_over_torch_dense(tmp_path):
    a = fake_bench_json(
        tmp_path / "a.json",
        [("torch-dense", "synthetic-s00", 1, "cuda", 0.002), ("torch-cuda-graph", "synthetic-s00", 1, "cuda", 0.001)],
    )
    b = fake_bench_json(tmp_path / "b.json", [("torch-2:4", "synthetic-24-s50", 1, "cuda", 0.004)])
    rows, machine = gpu_job.bench_rows([a, b, tmp_path / "missing.json"])
    assert machine["cpu"]["brand_raw"] == "test"
    assert [(r["backend"], r["median_ms"]) for r in rows] == [
        ("torch-dense", 2.0),
        ("torch-cuda-graph", 1.0),
        ("torch-2:4", 4.0),
    ]
    table = gpu_job.latency_tables(rows)
    assert "| backend | synthetic-24-s50 | synthetic-s00 |" in table
    assert "| torch-cuda-graph |  | 1.000 (2.00x) |" in table
    assert "| torch-2:4 | 4.000 |  |" in table  # no torch-dense on that model: no speedup claimed
    assert gpu_job.merge_bench_json([a, b], tmp_path / "bench.json") == 3
    assert len(json.loads((tmp_path / "bench.json").read_text())["benchmarks"]) == 3


def test_summary_writes_its_files_and_says_what_is_missing(tmp_path):
    bench = fake_bench_json(tmp_path / "a.json", [("torch-dense", "synthetic-s00", 1, "cuda", 0.002)])
    study = tmp_path / "study"
    (study / "reports").mkdir(parents=True)
    results = {
        "dataset": "fashion-mnist",
        "base": {"accuracy": 0.9, "checkpoint": str(study / "absent.pt")},
        "rows": [
            {"case": "50perc_oneshot1", "target_sparsity": 0.5, "rounds": 1, "accuracy": 0.89, "accuracy_drop": 0.01},
            {"case": "50perc_oneshot1_2-4", "target_sparsity": 0.5, "rounds": 1, "accuracy": 0.88, "accuracy_drop": 0.02},
        ],
    }
    (study / "results.json").write_text(json.dumps(results))
    (study / "results.md").write_text("| the study table |\n")
    (study / "reports" / "50perc_oneshot1.md").write_text("# 50perc_oneshot1: per-layer sparsity\n")
    out = tmp_path / "out"
    lines = gpu_job.write_summary(out, [str(bench)], str(study), {"gpu": "Test GPU", "torch": "x", "cuda": "y"})
    assert lines[0].startswith("GPU job summary: Test GPU")
    assert any("50perc_oneshot1_2-4: 88.00% (drop vs base +2.00 pp)" in line for line in lines)
    summary = (out / "summary.md").read_text()
    assert "| the study table |" in summary and "per-layer sparsity" in summary and "torch-dense" in summary
    assert (out / "bench.png").stat().st_size > 0 and (out / "bench.json").is_file()
    assert json.loads((out / "study.json").read_text())["dataset"] == "fashion-mnist"
    empty = gpu_job.write_summary(tmp_path / "empty", [], None, {})
    assert any("bench: no results" in line for line in empty) and any("study: no results" in line for line in empty)


def test_the_2_4_profile_script_runs_its_cpu_check(tmp_path, capsys):
    # without CUDA it times and profiles the dense control at a tiny size: the script itself must keep working
    import torch

    from bench import gpu_profile_24

    if torch.cuda.is_available():
        pytest.skip("with CUDA this runs the full GPU profile; the CPU check is for machines without one")
    assert gpu_profile_24.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gemm batch 1" in out and "model batch 2, dense:" in out
    assert "aten::mm" in (tmp_path / "profile_24.txt").read_text()
