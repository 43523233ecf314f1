"""The machine-steadiness probe: its arithmetic and its command line (no bandwidth is asserted)."""

from __future__ import annotations

from bench import noise


def test_table_reports_median_range_and_swing():
    table = noise.format_table({256: [40.0, 80.0, 90.0], 8192: [30.0, 30.0, 45.0]})
    assert "| 256 KiB | 80.0 | 40.0 | 90.0 | 2.25 |" in table
    assert "| 8 MiB | 30.0 | 30.0 | 45.0 | 1.50 |" in table


def test_probe_gives_one_positive_value_per_window():
    result = noise.probe(2, [4, 64], pause_s=0)
    assert list(result) == [4, 64] and all(len(v) == 2 and min(v) > 0 for v in result.values())


def test_bad_arguments_are_one_line_errors(capsys):
    assert noise.main(["--windows", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: give --windows >= 1")


def test_every_window_copies_the_same_buffers(monkeypatch):
    # fresh buffers per window measured the allocator (3-4 GB/s after the first window on a Zen 3 host)
    seen = []
    monkeypatch.setattr(noise, "copy_bandwidth", lambda src, dst, seconds=0.05: seen.append((id(src), id(dst))) or 1.0)
    noise.probe(3, [4, 64], pause_s=0)
    assert len(seen) == 6 and len(set(seen)) == 2  # two sizes, one pair of buffers each, reused in every window


def test_cores_table_by_hand():
    table = noise.format_cores([(50.0, 100.0), (60.0, 90.0), (40.0, 80.0)])
    assert "| one thread, GFLOP/s | 50.0 | 40.0 | 60.0 |" in table
    assert "| two threads together, GFLOP/s | 90.0 | 80.0 | 100.0 |" in table
    assert "| what the second thread adds (two / one, per window) | 2.00x | 1.50x | 2.00x |" in table


def test_each_thread_of_the_compute_probe_runs_torch_on_one_thread(monkeypatch):
    # OpenMP's thread count is per calling thread: set only in the main thread, each worker's
    # product ran on every core, and "two threads together" measured the same work as one
    import torch

    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n) or real(n))
    assert noise.matmul_rate(2, seconds=0.01, n=32) > 0
    assert seen == [1, 1]  # once in each worker thread


def test_cli_prints_the_cores_table(capsys):
    assert noise.main(["--windows", "1", "--sizes-kib", "4", "--cores"]) == 0
    out = capsys.readouterr().out
    assert "what the second thread adds" in out and "second thread adds: " in out
