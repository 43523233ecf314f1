"""bench.merge: runs from several hosts in one table and plot, never comparing unlike numbers silently."""

from __future__ import annotations

import json

from bench import merge, report


def entry(model, backend, median_s, batch=1, threads=2, device="cpu", sparsity=0.9, nonzeros=100):
    return {
        "name": f"test_latency[{model}-b{batch}-{backend}]",
        "extra_info": {
            "backend": backend, "device": device, "batch_size": batch, "model": model, "sparsity": sparsity,
            "mac_sparsity": sparsity, "weights": "synthetic", "threads": threads, "nonzeros": nonzeros,
        },
        "stats": {"median": median_s, "min": median_s, "max": median_s, "mean": median_s, "rounds": 3},
    }  # fmt: skip


def host_file(tmp_path, name, flags, benchmarks, node="box", brand="Test CPU", count=2):
    data = {
        "machine_info": {"node": node, "cpu": {"brand_raw": brand, "flags": flags, "count": count, "family": 25, "model": 17}},
        "datetime": "2026-01-01T00:00:00",
        "benchmarks": benchmarks,
    }
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def two_hosts(tmp_path):
    a = host_file(tmp_path, "zen4.json", ["avx2", "fma", "avx512f", "avx512bw", "avx512vl"], [
        entry("s90", "A", 0.004), entry("s90", "A", 0.128, batch=64), entry("s90", "B", 0.010),
        entry("s95", "A", 0.002, sparsity=0.95, nonzeros=50),
    ])  # fmt: skip
    b = host_file(tmp_path, "xeon.json", ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "amx_tile"], [
        entry("s90", "A", 0.002), entry("s90", "A", 0.064, batch=64), entry("s90", "B", 0.005, threads=16),
        entry("s95", "A", 0.001, sparsity=0.95, nonzeros=60),
    ], node="xeon", brand="Xeon")  # fmt: skip
    return a, b


def test_hosts_are_told_apart_by_their_machine_info(tmp_path):
    a, b = two_hosts(tmp_path)
    cols, notes = merge.columns([a, b])
    assert [c.label for c in cols] == ["Test CPU, avx512, 2 threads, cpu", "Xeon, avx512+amx, 2, 16 threads, cpu"]
    assert merge.host_count([a, b]) == 2 and merge.host_count([a, a]) == 1
    assert notes == []


def test_one_row_per_model_backend_and_batch_and_a_ratio_only_at_equal_threads(tmp_path):
    md = merge.merged_markdown(*merge.columns(two_hosts(tmp_path)))
    assert "| s90 | 90.0% | A | 1 | 4.000 | 2.000 | 0.50 |" in md
    assert "| s90 | 90.0% | A | 64 | 2.000 | 1.000 | 0.50 |" in md  # batch 64 in a row of its own, per image
    assert "| s90 | 90.0% | B | 1 | 10.000 (2 thr) | 5.000 (16 thr) | – |" in md  # threads differ: said, no ratio
    assert "In 1 rows the hosts used different threads" in md


def test_a_model_name_meaning_other_weights_is_never_side_by_side(tmp_path):
    md = merge.merged_markdown(*merge.columns(two_hosts(tmp_path)))
    assert "| s95 [synthetic, 50 nonzeros] | 95.0% | A | 1 | 2.000 | – | – |" in md
    assert "| s95 [synthetic, 60 nonzeros] | 95.0% | A | 1 | – | 1.000 | – |" in md
    assert "`s95` is not the same model on every host" in md


def test_two_files_of_one_host_share_its_column(tmp_path):
    first = host_file(tmp_path, "r1.json", ["avx2"], [entry("s90", "A", 0.004)])
    second = host_file(tmp_path, "r2.json", ["avx2"], [entry("s90", "A", 0.003), entry("s90", "B", 0.005)])
    cols, notes = merge.columns([first, second])
    assert len(cols) == 1 and len(cols[0].cells) == 2
    assert notes and "the later is shown" in notes[0]


def test_the_report_merges_files_of_several_hosts_by_itself(tmp_path, capsys):
    a, b = two_hosts(tmp_path)
    out = tmp_path / "out"
    assert report.main([str(a), str(b), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "# Latency on several hosts" in printed and "merged.png" in printed
    assert (out / "merged.md").read_text().startswith("# Latency on several hosts")
    assert (out / "merged.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = tmp_path / "single"
    assert report.main([str(a), "-o", str(single)]) == 0
    assert not (single / "merged.md").exists()  # one host: the plain report only
    assert report.main([str(a), "-o", str(single), "--merge", "--force"]) == 0
    assert (single / "merged.md").exists()
