"""The per-layer profile: its arithmetic, its table and plot, and the command line."""

from __future__ import annotations

import pytest

from bench import kernels as K
from bench import layers
from bench.kernels.engine import LayerRecord


CONV_ROWS = ("| conv1 ", "| layer1", "| layer2", "| layer3", "| layer4")  # a table's rows of ResNet-18's convs


def _record(name, macs, sparsity, dense, sparse, choice):
    times = {"dense(R=8,V=3)": dense, "sparse(R=1,V=4)": sparse}
    return LayerRecord(name, (1, 8, 4, 4), (1, 8, 4, 4), (3, 3), 1, macs, sparsity, times, choice, "relu", 100, 400)


def test_profile_arithmetic_by_hand():
    p = layers.Profile("m", 1, 2, 1, [
        _record("a", 100, 0.5, 2.0, 3.0, "dense(R=8,V=3)"),
        _record("b", 300, 0.9, 4.0, 1.0, "sparse(R=1,V=4)"),
    ])
    assert p.mac_sparsity == pytest.approx((50 + 270) / 400)
    assert p.limit == pytest.approx(5.0)
    assert p.totals() == (6.0, 4.0, 3.0)
    table = layers.format_table(p)
    assert "| b | 8x4x4 -> 8x4x4 | 3x3/1 | 300 | 90.0% | 4.000 | 1.000 | sparse(R=1,V=4) | 4.00x |" in table
    assert "at most 5.00x" in table and "2.00x over the best dense" in table


def test_every_kind_is_counted_as_dense_or_sparse():
    times = {"dense(R=6,V=1)": 5.0, "torch": 4.0, "channels(R=16,V=1)": 6.0, "sparse(R=1,V=6)": 3.0,
             "grouped(R=4,V=1)": 3.5, "rows(R=1,V=4,tiles)": 2.0}
    r = LayerRecord("a", (1, 8, 4, 4), (1, 8, 4, 4), (3, 3), 1, 100, 0.5, times, "rows(R=1,V=4,tiles)", "relu", 1, 4)
    assert (r.dense_ms, r.sparse_ms) == (4.0, 2.0)  # the rows kernel skips zeros: it is a sparse variant
    r = LayerRecord("a", (1, 8, 4, 4), (1, 8, 4, 4), (3, 3), 1, 100, 0.5, {**times, "cols(R=1,V=1)": 1.0},
                    "cols(R=1,V=1)", "relu", 1, 4)
    assert r.sparse_ms == 1.0  # so does the cols kernel
    r = LayerRecord("a", (1, 8, 4, 4), (1, 8, 4, 4), (3, 3), 1, 100, 0.5, {**times, "stack(R=4,V=1)": 1.5},
                    "stack(R=4,V=1)", "relu", 1, 4)
    assert r.sparse_ms == 1.5 and r.chosen_sparse  # and the stack kernel
    assert not LayerRecord("a", (1, 8, 4, 4), (1, 8, 4, 4), (3, 3), 1, 100, 0.5, times, "torch", "", 1, 4).chosen_sparse


def test_table_marks_the_layers_chosen_inside_the_pass():
    a = _record("a", 100, 0.5, 2.0, 3.0, "sparse(R=1,V=4)")  # slower alone, faster in the pass
    a.in_pass_ms = {"dense(R=8,V=3)": 2.5, "sparse(R=1,V=4)": 2.2}
    b = _record("b", 300, 0.9, 4.0, 1.0, "sparse(R=1,V=4)")  # the fastest alone kept it in the pass
    b.in_pass_ms = {"sparse(R=1,V=4)": 1.1, "dense(R=8,V=3)": 4.1}
    c = _record("c", 300, 0.9, 4.0, 1.0, "sparse(R=1,V=4)")  # not refined
    table = layers.format_table(layers.Profile("m", 1, 2, 1, [a, b, c]))
    assert "| sparse(R=1,V=4) (in the pass) | 0.67x |" in table
    assert table.count("(in the pass)") == 1
    assert "(2 layers; 1 took another variant" in table


def test_table_says_which_strided_convs_were_charged_their_phase_split():
    # "a" reads phase planes (dense) and won alone at 2.0 + 0.5 ms against jit's 2.6: not moved in the pass
    a = _record("a", 100, 0.5, 2.0, 3.0, "dense(R=8,V=3)")
    a.times_ms["jit(R=24,V=1)"], a.phases_ms = 2.6, 0.5
    a.in_pass_ms = {"dense(R=8,V=3)": 2.0, "jit(R=24,V=1)": 2.6}
    table = layers.format_table(layers.Profile("m", 1, 2, 1, [a, _record("b", 300, 0.9, 4.0, 1.0, "sparse(R=1,V=4)")]))
    assert "(a 0.500 ms)" in table and "(in the pass)" not in table
    a.phases_ms = 1.0  # now jit (2.6) beats dense with its split (3.0): choosing dense would have been a move
    assert a.cost("dense(R=8,V=3)") == 3.0 and a.moved_in_pass


def test_cli_writes_table_and_plot_and_refuses_to_overwrite(tmp_path, capsys):
    reason = K.unavailable()
    if reason:
        pytest.skip(reason)
    argv = ["synthetic:0.9", "--batch-size", "1", "--threads", "1", "--timing-runs", "1", "--pass-runs", "2",
            "-o", str(tmp_path)]
    assert layers.main(argv) == 0
    table = (tmp_path / "layers-synthetic-s90-bs1.md").read_text()
    profile_part, pass_part = table.split("Inside the pass")
    profile_part, roof_part = profile_part.split("Roofline")
    rows = [line for line in profile_part.splitlines() if line.startswith(CONV_ROWS)]
    assert len(rows) == 20  # the stem, 16 block convs and 3 shortcuts
    assert len([line for line in roof_part.splitlines() if line.startswith(CONV_ROWS)]) == 20
    assert "MAC-weighted sparsity of the convolutions" in table
    passes = [line for line in pass_part.splitlines() if line.startswith(CONV_ROWS)]
    assert len(passes) == 20 and "| other steps |" in pass_part
    assert (tmp_path / "layers-synthetic-s90-bs1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "layer4.1.conv2" in capsys.readouterr().out
    assert layers.main(argv) == 2
    assert "exists: pass --force" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [(["synthetic:abc"], "must be a number"), (["synthetic:1.5"], "in [0, 1)"),
                                           (["missing.pt"], "no checkpoint file"),
                                           (["synthetic:0.9", "--pass-runs", "-1"], "--pass-runs -1: give 0"),
                                           (["synthetic:0.9", "--peer", "tvm"], "no per-layer profile of 'tvm'"),
                                           (["synthetic:0.9", "--peer", "deepsparse", "--peer-python", "/no/python"],
                                            "no Python interpreter at /no/python")])
def test_cli_one_line_errors(argv, message, capsys):
    assert layers.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_where_a_pass_goes_by_hand():
    from bench.kernels.engine import OTHER_STEP, PassTimes

    a = _record("a", 100, 0.5, 2.0, 3.0, "dense(R=8,V=3)")  # alone 2.0
    b = _record("b", 300, 0.9, 4.0, 1.0, "sparse(R=1,V=4)")  # alone 1.0
    steps = [[0.5, 0.7, 0.6], [2.0, 3.0, 2.5], [1.5, 1.0, 2.0]]  # other, a, b in three passes
    passes = PassTimes(16, [OTHER_STEP, "a", "b"], steps, [4.2, 4.8, 5.4], batch=64, engines=2,
                       batch_ms=[10.0, 12.0, 9.6])
    table = layers.format_table(layers.Profile("m", 64, 1, 16, [a, b], passes=passes))
    assert "| a | 2.000 | 2.000 | 2.500 | 1.25x |" in table
    assert "| b | 1.000 | 1.000 | 1.500 | 1.50x |" in table
    assert "| other steps | | 0.500 | 0.600 | |" in table
    assert "| **convs** | 3.000 | 3.000 | 4.000 | 1.33x |" in table
    assert "4.200 fastest, 4.800 median (1.14x" in table
    # 64 images = 4 chunks on 2 engines: 2 passes each, 2 x 4.8 = 9.6 ms one after another; the batch's median 10.0
    assert "(2 engine(s) side by side, 2 pass(es) each), timed after each pass: 9.600 fastest, 10.000 median, 1.04x" in table
    no_batch = PassTimes(1, [OTHER_STEP, "a", "b"], steps, [4.2, 4.8, 5.4])
    assert "whole batch" not in layers.format_table(layers.Profile("m", 1, 2, 1, [a, b], passes=no_batch))
    assert "Inside the pass" not in layers.format_table(layers.Profile("m", 1, 2, 1, [a, b]))


def test_roofline_by_hand():
    # 4e6 MACs at 50%: 2e6 nonzero per call in 1 ms = 2 GMAC/s; bytes: 100 of weights + 4 * (128 in + 128 out)
    r = _record("a", 4_000_000, 0.5, 2.0, 1.0, "sparse(R=1,V=4)")
    in_memory = layers.layer_roof(r, layers.Roof(gmacs=10.0, l2_gbs=100.0, mem_gbs=0.001, l2_bytes=1000))
    moved = 100 + 4 * 256
    assert in_memory.gmacs == pytest.approx(2.0)
    assert in_memory.gbs == pytest.approx(moved / 1e-3 / 1e9)
    assert in_memory.intensity == pytest.approx(2e6 / moved)
    assert in_memory.roof_gmacs == pytest.approx(2e6 / moved * 0.001) and in_memory.bound == "memory"
    # the same bytes fit in a larger L2: its bandwidth lifts the memory roof above the compute peak
    in_l2 = layers.layer_roof(r, layers.Roof(gmacs=10.0, l2_gbs=100.0, mem_gbs=10.0, l2_bytes=1 << 20))
    assert in_l2.roof_gmacs == 10.0 and in_l2.bound == "compute"
    assert in_l2.share == pytest.approx(in_l2.gmacs / 10.0)
    p = layers.Profile("m", 1, 1, 1, [r], roof=layers.Roof(10.0, 100.0, 10.0, 1 << 20))
    table = layers.format_table(p)
    assert "| a | sparse(R=1,V=4) | 2.0 |" in table and "| compute | 20% |" in table


def test_peer_steps_match_our_convs_by_name_then_by_order():
    steps = [{"name": "pyramid_0", "op": "pyramid",
              "outputs": ["/conv1/Conv_output_0", "/layer1/layer1.0/conv1/Conv_output_0"]},
             # a conv, named after its ReLU's output
             {"name": "fused", "op": "FusedConv", "outputs": ["/layer1/layer1.0/relu/Relu_output_0"]},
             {"name": "pool", "op": "GlobalAveragePool", "outputs": ["/avgpool/GlobalAveragePool_output_0"]},
             {"name": "ks", "op": "ks_convolution", "outputs": ["/layer1/layer1.0/conv2/Conv_output_0"]}]
    got = layers.match_steps(steps, ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"])
    assert [(s["name"], cs, by_order) for s, cs, by_order in got] == [
        ("pyramid_0", ["conv1", "layer1.0.conv1"], False), ("fused", ["layer1.1.conv1"], True),
        ("pool", [], False), ("ks", ["layer1.0.conv2"], False)]


def test_peer_table_by_hand():
    from bench.backends.external import EngineLayers
    from bench.kernels.engine import OTHER_STEP, PassTimes

    a = _record("a", 100, 0.5, 2.0, 3.0, "dense(R=8,V=3)")  # alone 2.0
    b = _record("b", 300, 0.9, 4.0, 1.0, "sparse(R=1,V=4)")  # alone 1.0
    peer = EngineLayers("deepsparse", "1.8.0", [
        {"name": "pyramid_0", "op": "pyramid", "outputs": ["/a/Conv_output_0"], "ms": 1.0},
        {"name": "ks_1", "op": "ks_convolution", "outputs": ["/b/Conv_output_0"], "ms": 2.0},
        {"name": "gevm", "op": "ks_gevm", "outputs": ["logits"], "ms": 0.25}], total_ms=3.5)
    passes = PassTimes(16, [OTHER_STEP, "a", "b"], [[0.5, 0.5], [3.0, 2.0], [1.0, 1.5]], [4.0, 5.0])
    # without a plain call the steps are read as profiled; with one 0.8x the profiled call, each step at 0.8x
    # its profiled time, and the ratios with it
    for call_ms, lines in (
        (0.0, ["| pyramid_0 | a | 1.000 | 1.000 | 2.000 | 2.500 | 0.50x |",
               "| ks_1 | b | 2.000 | 2.000 | 1.000 | 1.250 | 2.00x |",
               "| everything else | | 0.250 | 0.250 | | | |",
               "| **a call** | | 3.500 |  | 3.000 (convs) | 4.500 (a pass) | |",
               "most time first (ours takes that many times its time, that many ms more): pyramid_0 (2.00x, 1.000 ms)."]),
        (2.8, ["timed plainly right after in the same worker, 2.800 ms (median): profiled calls took 1.25x a plain one",
               "| pyramid_0 | a | 1.000 | 0.800 | 2.000 | 2.500 | 0.40x |",
               "| ks_1 | b | 2.000 | 1.600 | 1.000 | 1.250 | 1.60x |",
               "| **a call** | | 3.500 | 2.800 (a plain call) | 3.000 (convs) | 4.500 (a pass) | |",
               "pyramid_0 (2.50x, 1.200 ms)."]),
    ):
        peer.call_ms = call_ms
        table = layers.format_table(layers.Profile("m", 16, 1, 16, [a, b], passes=passes, peer=peer))
        assert [line for line in lines if line not in table] == []
        assert "no deepsparse step names" not in table
        assert ("a plain one" in table) == (call_ms > 0)
    peer.layers.pop(1)
    assert "Our convs no deepsparse step names: b." in layers.format_table(layers.Profile("m", 16, 1, 16, [a, b], peer=peer))
