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
    (result,) = record["results"]
    assert result["model"] == "synthetic-s50"
    assert all(len(v) == 2 and min(v) > 0 for v in result["blocks"].values())
    assert set(result["info"]) == {"torch-dense", "torch-dense-folded"}  # what each prepare reported
    assert "torch-dense-folded vs torch-dense" in (tmp_path / "ab-cpu-bs1.md").read_text()
    assert (tmp_path / "ab-cpu-bs1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ab.main(argv) == 2  # the results exist: not without --force
    assert "--force" in capsys.readouterr().err
