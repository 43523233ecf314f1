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
