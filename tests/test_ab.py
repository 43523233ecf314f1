"""Interleaved A/B timing: its arithmetic, its refusals and the command line (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

from bench import ab


def test_ratios_pair_blocks_and_the_table_reports_their_median_and_range():
    r = ab.ABResult("m", {"sparsity": 0.9, "mac_sparsity": 0.75}, {"a": [4.0, 6.0, 8.0], "b": [2.0, 2.0, 8.0]})
    assert r.ratios("a", "b") == [2.0, 3.0, 1.0]  # pair by pair, so a swing shared by both cancels
    assert r.median("a") == 6.0
    settings = ab.ABSettings(backends="a,b", blocks=3)
    table = ab.format_table([r], settings, threads=2)
    assert "| m | 90.0% | 75.0% | 4.00x | 6.000 | 2.000 | **2.00x** (1.00-3.00) |" in table
    assert "Instruction sets" not in table  # neither backend said which it ran


def test_the_table_names_the_instruction_set_each_engine_ran():
    blocks = {"onnxruntime": [2.0], "sparse-direct": [1.0], "deepsparse": [1.0]}
    kernels = {"ran": "sparse-direct-kernels", "kernel_isa": "avx2"}
    ran_kernels = ab.ABResult("m", {}, blocks, info={"sparse-direct": kernels, "deepsparse": {"engine_isa": "avx2"}})
    ran_ort = ab.ABResult("n", {}, blocks, info={"sparse-direct": {"ran": "onnxruntime", "kernel_isa": "avx512"},
                                                  "deepsparse": {"engine_isa": "avx512"}})
    settings = ab.ABSettings(backends="onnxruntime,sparse-direct,deepsparse", blocks=1)
    assert ab.instruction_sets([ran_kernels], settings.names) == {"sparse-direct": "avx2", "deepsparse": "avx2"}
    # where ONNX Runtime ran the model, our kernels' build ran nothing
    assert ab.instruction_sets([ran_kernels, ran_ort], settings.names) == {"sparse-direct": "avx2",
                                                                           "deepsparse": "avx2 and avx512"}
    assert "Instruction sets the engines ran: sparse-direct avx2, deepsparse avx2." in ab.format_table(
        [ran_kernels], settings, threads=2)


@pytest.mark.parametrize("backends, message", [("torch-dense", "two or more"), ("torch-dense,torch-dense", "two or more"),
                                               ("torch-dense,no-such", "unknown backend")])
def test_bad_backend_lists_are_refused(backends, message):
    with pytest.raises(ab.PruneBenchError, match=message):
        ab.compare([], ab.ABSettings(backends=backends))


def test_a_device_a_backend_does_not_run_on_is_refused():
    # "gpu" is no device; sparse-direct never runs on CUDA: neither may fall back to the CPU silently
    with pytest.raises(ab.PruneBenchError, match="--device gpu: onnxruntime runs on cpu, cuda"):
        ab.compare([], ab.ABSettings(device="gpu"))
    with pytest.raises(ab.PruneBenchError, match="sparse-direct runs on cpu"):
        ab.compare([], ab.ABSettings(backends="sparse-direct,onnxruntime", device="cuda"))


def test_cli_times_checks_parity_writes_and_refuses_to_overwrite(tmp_path, capsys):
    argv = ["synthetic:0.5", "--backends", "torch-dense,torch-dense-folded", "--blocks", "2", "--block-s", "0.01",
            "--pause-ms", "0", "--threads", "1", "-o", str(tmp_path)]
    assert ab.main(argv) == 0
    record = json.loads((tmp_path / "ab-cpu-bs1.json").read_text())
    cases = {b["extra_info"]["backend"]: b for b in record["benchmarks"]}  # pytest-benchmark's schema
    assert set(cases) == {"torch-dense", "torch-dense-folded"}
    for b in cases.values():
        assert b["extra_info"]["model"] == "synthetic-s50" and b["stats"]["rounds"] == 2
        assert b["extra_info"]["interleaved"] and len(b["extra_info"]["blocks_ms_per_image"]) == 2
        assert b["stats"]["median"] > 0 and "cpu" in record["machine_info"]
    pair = cases["torch-dense-folded"]["extra_info"]["pair_ratios"]["torch-dense"]
    dense, folded = (cases[n]["extra_info"]["blocks_ms_per_image"] for n in ("torch-dense", "torch-dense-folded"))
    assert pair == pytest.approx([d / f for d, f in zip(dense, folded)])
    assert "torch-dense-folded vs torch-dense" in (tmp_path / "ab-cpu-bs1.md").read_text()
    assert (tmp_path / "ab-cpu-bs1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ab.main(argv) == 2  # the results exist: not without --force
    assert "--force" in capsys.readouterr().err


def test_the_record_reads_in_bench_report_and_pytest_benchmark_compare(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from bench import report

    facts = {"model": "synthetic-s90", "sparsity": 0.9, "mac_sparsity": 0.75}
    results = [ab.ABResult("synthetic-s90", facts, {"onnxruntime": [4.0, 8.0, 4.0], "sparse-direct": [2.0, 2.0, 4.0]},
                           {}, {"onnxruntime": True, "sparse-direct": False}),
               ab.ABResult("synthetic-s00", {**facts, "model": "synthetic-s00", "sparsity": 0.0, "mac_sparsity": 0.0},
                           {"onnxruntime": [4.0, 4.0, 4.0], "sparse-direct": [4.0, 4.0, 4.0]},
                           {}, {"onnxruntime": True, "sparse-direct": False})]
    record = ab.benchmark_record(results, ab.ABSettings(backends="onnxruntime,sparse-direct", blocks=3), threads=2)
    path = tmp_path / "ab-cpu-bs1.json"
    path.write_text(json.dumps(record))
    run = report.load_run(path)
    assert run.interleaved
    (cells,) = report.answer([run]).values()
    fig = cells[(0.9, 0.75, "synthetic-s90", "sparse-direct")]
    # the block pairs, not the ratio of medians (8/2 = 2.0 would be the same here; the range tells them apart)
    assert (fig.median, fig.low, fig.high, fig.spread, fig.base) == (2.0, 1.0, 4.0, "block pairs", "onnxruntime")
    compare = Path(sys.executable).with_name("pytest-benchmark")
    out = subprocess.run([str(compare), "compare", str(path), "--columns=median"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ab[synthetic-s90-b1-sparse-direct-cpu]" in out.stdout
