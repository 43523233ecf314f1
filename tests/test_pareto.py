"""bench.pareto: variants from a hand-made run and accuracy file, the frontier by hand, and the report's hook."""

from __future__ import annotations

import json

import pytest

from bench import pareto, report
from prune.errors import PruneBenchError


def entry(model, backend, median_s, batch=1, **info):
    return {
        "name": f"test_latency[{model}-b{batch}-{backend}-cpu]",
        "extra_info": {"backend": backend, "device": "cpu", "batch_size": batch, "model": model, "threads": 2,
                       "weights": "checkpoint", **info},
        "stats": {"median": median_s},
    }


DENSE = {"sparsity": 0.0, "mac_sparsity": 0.0, "structure": "unstructured", "accuracy": 0.90}
S90 = {"sparsity": 0.9, "mac_sparsity": 0.7, "structure": "unstructured", "method": "oneshot", "accuracy": 0.85}
C50 = {"sparsity": 0.0, "mac_sparsity": 0.5, "structure": "channel", "method": "oneshot", "accuracy": 0.88}

RUN = [
    entry("base", "torch-dense", 0.010, **DENSE),
    entry("base", "onnxruntime", 0.008, **DENSE),  # the fastest fp32 backend of base
    entry("base", "onnxruntime-int8", 0.004, **DENSE),
    entry("s90", "torch-dense", 0.010, **S90),  # slower and less accurate than base on onnxruntime: dominated
    entry("c50", "onnxruntime", 0.005, **C50),
    entry("c50", "onnxruntime-int8", 0.003, **C50),
    entry("base", "onnxruntime", 0.256, batch=64, **DENSE),
]
ACCURACY = {"models": {"base": {"fp32": 0.90, "int8": 0.89}, "c50": {"fp32": 0.88, "int8": 0.80},
                       "s90": {"fp32": 0.85, "int8": None}}}


@pytest.fixture
def files(tmp_path):
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "Test CPU"}}, "datetime": "2026", "benchmarks": RUN}))
    acc = tmp_path / "accuracy.json"
    acc.write_text(json.dumps(ACCURACY))
    return run, acc


def test_points_take_the_fastest_fp32_backend_and_int8_apart(files):
    run, acc = files
    points = {(p.model, p.precision, p.batch_size): p for p in pareto.variant_points([run], pareto.load_accuracy(acc))}
    assert points["base", "fp32", 1].backend == "onnxruntime" and points["base", "fp32", 1].ms_per_image == pytest.approx(8.0)
    assert points["base", "int8", 1].accuracy == 0.89 and points["base", "int8", 1].label == "dense + INT8"
    assert points["c50", "fp32", 1].label == "channel 50% MACs, one-shot"
    assert points["base", "fp32", 64].ms_per_image == pytest.approx(4.0)
    assert ("s90", "int8", 1) not in points  # neither timed nor measured in INT8


def test_frontier_by_hand(files):
    run, acc = files
    panel = [p for p in pareto.variant_points([run], pareto.load_accuracy(acc)) if p.batch_size == 1]
    front = [(p.model, p.precision) for p in pareto.pareto_front(panel)]
    # c50 int8 (3 ms, 80%) < base int8 (4 ms, 89%) < base fp32 (8 ms, 90%); c50 fp32 (5 ms, 88%) is beaten by base int8
    assert front == [("c50", "int8"), ("base", "int8"), ("base", "fp32")]


def test_without_an_accuracy_file_fp32_points_use_the_checkpoints_accuracy(files):
    run, _ = files
    points = pareto.variant_points([run], {})
    assert {p.precision for p in points} == {"fp32"} and len(points) == 4
    assert pareto.has_accuracy([run])


def test_report_hook_writes_the_plot_and_section(files, tmp_path):
    run, acc = files
    markdown, md, png = report.write_report([run], tmp_path / "out", accuracy=acc)
    assert (tmp_path / "out" / "accuracy_latency.png").stat().st_size > 0
    assert "## Accuracy and latency per variant" in markdown and "| dense + INT8 | onnxruntime-int8 | 4.000 | 89.00% | ★ |" in markdown


def test_a_bad_accuracy_file_is_one_line(files, tmp_path):
    run, _ = files
    with pytest.raises(PruneBenchError, match="no accuracy file"):
        report.write_report([run], tmp_path / "o1", accuracy=tmp_path / "absent.json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"models": {"elsewhere": {"fp32": 0.5}}}))
    stripped = tmp_path / "stripped.json"
    stripped.write_text(json.dumps({"benchmarks": [{**b, "extra_info": {k: v for k, v in b["extra_info"].items()
                                                                         if k != "accuracy"}} for b in RUN]}))
    with pytest.raises(PruneBenchError, match="no model of the runs"):
        report.write_report([stripped], tmp_path / "o2", accuracy=other)


def test_bench_accuracy_measures_fp32_and_int8_of_a_folder(base_checkpoint, tmp_path, capsys, one_thread):
    import shutil

    from bench import accuracy

    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(base_checkpoint, folder / "resnet18_base.pt")
    code = accuracy.main([str(folder), "--test-limit", "32", "--calibration-images", "16"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads((folder / "accuracy.json").read_text())
    assert data["dataset"] == "synthetic" and data["test_images"] == 32 and "16 training images" in data["calibration"]
    (entry,) = data["models"].values()
    assert 0 <= entry["fp32"] <= 1
    assert (entry["int8"] is not None) != ("int8_error" in entry)  # measured, or the reason it was not
    assert accuracy.main([str(folder)]) == 2 and "exists" in capsys.readouterr().err
