"""bench.report: speedups from a hand-made pytest-benchmark JSON, run ratios, the plot, and bad files."""

from __future__ import annotations

import json

import pytest

from bench import report
from prune.errors import PruneBenchError


def case(model, backend, median_s, sparsity, mac_sparsity, batch=1, device="cpu"):
    """One benchmark entry as pytest-benchmark writes it (only the fields the report reads, plus a few more)."""
    return {
        "group": f"{model} batch {batch}",
        "name": f"test_latency[{model}-b{batch}-{backend}-{device}]",
        "fullname": f"bench/test_latency.py::test_latency[{model}-b{batch}-{backend}-{device}]",
        "params": None,
        "extra_info": {
            "backend": backend,
            "device": device,
            "batch_size": batch,
            "model": model,
            "sparsity": sparsity,
            "mac_sparsity": mac_sparsity,
            "weights": "synthetic",
            "threads": 2,
        },
        "stats": {"min": median_s, "max": median_s, "mean": median_s, "median": median_s, "rounds": 5},
    }


def run_file(tmp_path, name, benchmarks):
    path = tmp_path / name
    data = {"machine_info": {"cpu": {"brand_raw": "Test CPU"}}, "datetime": "2026-01-01T00:00:00", "benchmarks": benchmarks}
    path.write_text(json.dumps(data))
    return path


# A dense 10 ms, A at 90% 5 ms; B dense 8 ms, B at 90% 16 ms. s_mac 0.75 -> limit 4.
BASE = [
    case("s00", "A", 0.010, 0.0, 0.0),
    case("s90", "A", 0.005, 0.9, 0.75),
    case("s00", "B", 0.008, 0.0, 0.0),
    case("s90", "B", 0.016, 0.9, 0.75),
    case("s00", "A", 0.640, 0.0, 0.0, batch=64),
    case("s90", "A", 0.320, 0.9, 0.75, batch=64),
]


def test_speedups_by_hand(tmp_path):
    run = report.load_run(run_file(tmp_path, "r.json", BASE))
    sp = {(c.model, c.backend, c.batch_size): v for c, v in report.speedups(run.cases).items()}
    assert sp["s90", "A", 1].own == pytest.approx(2.0)  # 10 / 5
    assert sp["s90", "A", 1].best == pytest.approx(1.6)  # fastest dense is B at 8 ms
    assert sp["s90", "A", 1].best_backend == "B"
    assert sp["s90", "B", 1].own == pytest.approx(0.5)
    assert sp["s90", "B", 1].best == pytest.approx(0.5)
    assert sp["s00", "A", 1].own == pytest.approx(1.0)
    assert sp["s00", "A", 1].best == pytest.approx(0.8)
    assert sp["s90", "A", 64].own == pytest.approx(2.0)  # batch 64 compared with batch 64 only
    assert sp["s90", "A", 64].best == pytest.approx(2.0)
    c = next(c for c in run.cases if c.batch_size == 64 and c.model == "s90")
    assert c.ms_per_image == pytest.approx(5.0)  # 320 ms / 64 images
    assert c.limit == pytest.approx(4.0)


def test_markdown_tables(tmp_path):
    md = report.report_markdown([report.load_run(run_file(tmp_path, "r.json", BASE))])
    assert "### cpu, batch 1" in md and "### cpu, batch 64" in md
    assert "| s90 | 90.0% | 75.0% | 5.000 | 16.000 |" in md  # ms per image, A then B
    assert "| s90 | 4.00 | 2.00 / 1.60 | 0.50 / 0.50 |" in md
    assert "| s90 | 4.00 | 2.00 / 2.00 |" in md


def test_no_dense_model_gives_no_speedup(tmp_path):
    run = report.load_run(run_file(tmp_path, "r.json", [case("s90", "A", 0.005, 0.9, 0.75)]))
    (sp,) = report.speedups(run.cases).values()
    assert sp.own is None and sp.best is None
    assert "– / –" in report.report_markdown([run])


def test_two_runs_ratio(tmp_path):
    first = run_file(tmp_path, "before.json", BASE)
    slower = [dict(b, stats={**b["stats"], "median": b["stats"]["median"] * 2}) for b in BASE]
    second = run_file(tmp_path, "after.json", slower)
    md = report.report_markdown([report.load_run(first), report.load_run(second)])
    assert "Ratio of runs" in md
    assert "| s90 | A | 1 | cpu | 5.000 | 10.000 | 2.00 |" in md


def test_cpu_and_gpu_runs_match_without_device(tmp_path):
    cpu = run_file(tmp_path, "cpu.json", [case("s00", "A", 0.010, 0.0, 0.0)])
    gpu = run_file(tmp_path, "gpu.json", [case("s00", "A", 0.001, 0.0, 0.0, device="cuda")])
    md = report.ratio_table([report.load_run(cpu), report.load_run(gpu)])
    assert "| s00 | A | 1 | 10.000 | 1.000 | 0.10 |" in md


def test_cli_writes_markdown_and_png(tmp_path, capsys):
    path = run_file(tmp_path, "r.json", BASE)
    out = tmp_path / "out"
    assert report.main([str(path), "-o", str(out)]) == 0
    assert "2.00 / 1.60" in capsys.readouterr().out
    assert (out / "report.md").read_text().startswith("# Latency report")
    assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second report into the same folder needs --force.
    assert report.main([str(path), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert report.main([str(path), "-o", str(out), "--force"]) == 0


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json at all", "is not JSON"),
        ('{"hello": 1}', "not a pytest-benchmark JSON"),
        ('{"benchmarks": [{"name": "x", "stats": {"median": 1}, "extra_info": {}}]}', "no prunebench cases"),
        ("[1, 2]", "not a pytest-benchmark JSON"),
    ],
)
def test_bad_files(tmp_path, content, message, capsys):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PruneBenchError, match=message):
        report.load_run(path)
    assert report.main([str(path), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_missing_file(tmp_path):
    with pytest.raises(PruneBenchError, match="no benchmark file"):
        report.load_run(tmp_path / "nope.json")


def test_the_answer_is_against_the_best_dense_backend_not_each_backends_own(tmp_path):
    # a slow sparse backend that speeds itself up 4x is still slower than the best dense backend: the answer says so
    path = run_file(tmp_path, "r.json", [
        case("s00", "onnxruntime", 1.0, 0.0, 0.0), case("s90", "onnxruntime", 1.0, 0.9, 0.7),
        case("s00", "torch-sparse", 20.0, 0.0, 0.0), case("s90", "torch-sparse", 5.0, 0.9, 0.7),
        case("s00", "sparse-direct", 1.0, 0.0, 0.0), case("s90", "sparse-direct", 0.5, 0.9, 0.7),
    ])
    run = report.load_run(path)
    (cells,) = report.answer([run]).values()
    assert cells[(0.9, 0.7, "s90", "torch-sparse")].median == pytest.approx(0.2)  # own dense would say 4x
    assert cells[(0.9, 0.7, "s90", "sparse-direct")].median == pytest.approx(2.0)
    assert cells[(0.9, 0.7, "s90", "sparse-direct")].base == "onnxruntime"
    assert (0.9, 0.7, "s90", "onnxruntime") not in cells  # dense backends are the baseline, not an answer


def test_several_runs_of_one_cpu_give_the_range_across_runs(tmp_path):
    runs = [report.load_run(run_file(tmp_path, f"r{i}.json", [
        case("s00", "onnxruntime", 1.0, 0.0, 0.0), case("s90", "sparse-direct", t, 0.9, 0.7)]))
        for i, t in enumerate((0.5, 0.25, 0.4))]
    (cells,) = report.answer(runs).values()
    fig = cells[(0.9, 0.7, "s90", "sparse-direct")]
    assert (fig.median, fig.low, fig.high, fig.spread) == (pytest.approx(2.5), 2.0, 4.0, "runs")
    assert "**2.50x** (2.00-4.00)" in report.answer_tables(runs)


def test_a_dense_backend_on_a_channel_pruned_model_is_measured_against_the_unpruned_model(tmp_path):
    dense = case("s00", "onnxruntime", 2.0, 0.0, 0.0)
    smaller = case("channel-s90", "onnxruntime", 0.5, 0.0, 0.7)  # no zeros, 70% of the MACs removed
    for c in (dense, smaller):
        c["extra_info"]["dense_backend"] = True
        c["extra_info"]["blocks_ms_per_image"] = [c["stats"]["median"] * 1e3] * 3
    smaller["extra_info"]["structure"] = "channel"
    int8 = case("channel-s90", "onnxruntime-int8", 0.25, 0.0, 0.7)
    int8["extra_info"].update(structure="channel", blocks_ms_per_image=[250.0] * 3)
    (cells,) = report.answer([report.load_run(run_file(tmp_path, "r.json", [dense, smaller, int8]))]).values()
    assert cells[(0.0, 0.7, "channel-s90", "onnxruntime")].median == pytest.approx(4.0)
    # not paired with onnxruntime on the smaller model: against the unpruned model, as every other cell
    assert cells[(0.0, 0.7, "channel-s90", "onnxruntime-int8")].median == pytest.approx(8.0)
    assert (0.0, 0.0, "s00", "onnxruntime") not in cells


def test_kernels_held_below_the_cpus_instruction_set_are_named(tmp_path, monkeypatch):
    def with_isa(entry, **isas):
        entry["extra_info"].update(cpu_isa="avx512", **isas)
        return entry

    path = run_file(tmp_path, "r.json", [
        with_isa(case("s00", "A", 0.010, 0.0, 0.0), kernel_isa="avx2"),
        with_isa(case("s90", "A", 0.005, 0.9, 0.75), kernel_isa="avx2"),
        with_isa(case("s90", "B", 0.006, 0.9, 0.75), engine_isa="avx512"),  # the CPU's own: nothing to say
        with_isa(case("s90", "C", 0.004, 0.9, 0.75), kernel_isa="avx2", ran="onnxruntime"),  # its kernels did not run
    ])
    run = report.load_run(path)
    assert {c.backend: c.isa for c in run.cases} == {"A": "avx2", "B": "", "C": ""}
    labels = []
    import matplotlib.axes

    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, *a, **k: labels.append(k.get("label")) or real(self, *a, **k))
    report.plot([run], tmp_path / "p.png")
    assert "A (avx2)" in labels and "B" in labels
