"""The probes in experiments/: the models pruned otherwise, the kind A/B's refusals, the peer layer probe."""

from __future__ import annotations

import pytest
import torch

import re
import sys

from experiments import conv_variants, in_pass, jit_probe, kind_ab, other_pruned, peer_layers, side_by_side
from prune.errors import PruneBenchError
from prune.models import prunable_layers


def test_uniform_pruning_gives_every_layer_the_same_sparsity():
    model = other_pruned.uniform(0.9)
    for name, layer in prunable_layers(model).items():
        zeros = float((layer.weight == 0).float().mean())
        assert zeros == pytest.approx(0.9, abs=1e-3), name


def test_emptied_model_has_whole_filters_and_one_conv_empty():
    model = other_pruned.emptied(0.9)
    convs = {n: m for n, m in prunable_layers(model).items() if isinstance(m, torch.nn.Conv2d)}
    assert not convs["layer4.1.conv1"].weight.any()
    for name, conv in convs.items():
        if name == "conv1":
            continue
        empty = int((conv.weight.flatten(1) == 0).all(1).sum())
        assert empty >= conv.weight.shape[0] // 4, name  # a quarter emptied, besides those pruning emptied


def test_iterative_pruning_reaches_the_target_through_rounds_of_fine_tuning():
    from bench.models import synthetic_resnet18

    model = other_pruned.iterative(0.9, images=64)
    layers = prunable_layers(model)
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values()) / sum(m.weight.numel() for m in layers.values())
    assert zeros == pytest.approx(0.9, abs=1e-3)
    # the weights moved between rounds: the survivors are not the dense model's own values
    dense = prunable_layers(synthetic_resnet18(0.0))["layer1.0.conv1"].weight
    kept = layers["layer1.0.conv1"].weight != 0
    assert not torch.equal(layers["layer1.0.conv1"].weight[kept], dense[kept])


def test_other_pruned_refuses_to_overwrite(tmp_path):
    (tmp_path / "uniform-s90.pt").write_bytes(b"mine")
    with pytest.raises(PruneBenchError, match="--force"):
        other_pruned.main([str(tmp_path)])
    assert (tmp_path / "uniform-s90.pt").read_bytes() == b"mine"


@pytest.mark.parametrize("argv, message", [
    (["nokind", "16", "1", "synthetic:0.9"], "unknown kernel kind"),
    (["rows", "x", "1", "synthetic:0.9"], "whole numbers"),
    (["rows", "16"], "usage"),
])
def test_kind_ab_bad_input_is_a_one_line_error(argv, message):
    with pytest.raises(PruneBenchError, match=message):
        kind_ab.main(argv)


def test_peer_layers_times_a_worker_and_our_kernels_on_each_shape(monkeypatch, capsys):
    # the project's own ONNX Runtime worker stands in for DeepSparse; one small shape, one round
    monkeypatch.setattr(peer_layers, "SHAPES", ((16, 8, 0.5),))
    assert peer_layers.main([sys.executable, "--engine", "onnxruntime", "--batch", "16", "--rounds", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 16x8x8")]
    cells = rows[0].strip("|").split("|")
    assert len(rows) == 1 and len(cells) == 10
    assert all(float(cells[i]) > 0 for i in (2, 3, 4, 6, 8, 9))  # ms and GMAC/s, the engine's and ours
    with pytest.raises(PruneBenchError, match="multiple of 16"):
        peer_layers.main([sys.executable, "--batch", "8"])
    with pytest.raises(PruneBenchError, match="no Python interpreter at /no/python"):
        peer_layers.main(["/no/python"])


def test_conv_variants_reads_printed_variants_and_times_them(capsys):
    v = conv_variants.parse("sweep(R=2,V=4,block=2048,chunk=16,tiles)")
    assert (v.kind, v.R, v.V, v.block, v.chunk, v.tiles) == ("sweep", 2, 4, 2048, 16, True)
    assert str(conv_variants.parse(str(v))) == str(v)
    assert conv_variants.main(["16", "4", "0.5", "sweep(R=1,V=4,chunk=8,tiles)", "dense(R=4,V=4)"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("GMAC/s" in line for line in lines)
    with pytest.raises(PruneBenchError, match="unknown kernel kind 'nokind'"):
        conv_variants.parse("nokind(R=1)")
    with pytest.raises(PruneBenchError, match="as the engine prints it"):
        conv_variants.parse("sweep R=1")
    with pytest.raises(PruneBenchError, match="DENSITY in"):
        conv_variants.main(["16", "4", "1.5", "sweep(R=1,V=4,chunk=8,tiles)"])


def test_side_by_side_bad_input_is_a_one_line_error(tmp_path):
    with pytest.raises(PruneBenchError, match="at least 1"):
        side_by_side.main(["synthetic:0.9", "--rounds", "0"])
    with pytest.raises(PruneBenchError, match="no checkpoint file"):
        side_by_side.main([str(tmp_path / "missing.pt")])


def test_in_pass_bad_input_is_a_one_line_error(tmp_path):
    with pytest.raises(PruneBenchError, match="usage"):
        in_pass.main([])
    with pytest.raises(PruneBenchError, match="1 or 16 images"):
        in_pass.main(["synthetic:0.9", "64"])
    with pytest.raises(PruneBenchError, match="no checkpoint file"):
        in_pass.main([str(tmp_path / "missing.pt")])


def test_in_pass_times_every_conv_three_ways(capsys):
    assert in_pass.main(["synthetic:0.9", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(rows) == 20 and all(float(r[1]) > 0 and r[-1].endswith("x") for r in rows)  # ResNet-18's 20 convs


def test_jit_probe_alterations_touch_only_what_they_name():
    assert jit_probe.ALTERATIONS["inputs-in-L1"]("  vmovups 4480(%rdi), %zmm31\n") == "  vmovups 0(%rdi), %zmm31\n"
    assert jit_probe.ALTERATIONS["inputs-in-L1"]("  vmovups 4512(%rdi), %ymm14\n") == "  vmovups 32(%rdi), %ymm14\n"
    assert jit_probe.ALTERATIONS["no-inputs"]("  vmovups -64(%rdi), %zmm31\n  vmovups 64(%rsi), %zmm0\n") == (
        "  vmovups 64(%rsi), %zmm0\n")
    fma = "  vfmadd231ps -12(%r11){1to16}, %zmm31, %zmm3\n"
    assert jit_probe.ALTERATIONS["one-weight"](fma) == "  vfmadd231ps 0(%r11){1to16}, %zmm31, %zmm3\n"
    pair = "  vfmadd231ps %ymm11, %ymm12, %ymm4\n  vfmadd231ps %ymm11, %ymm13, %ymm5\n"
    assert jit_probe.ALTERATIONS["half-fma"](pair) == "  vfmadd231ps %ymm11, %ymm12, %ymm4\n"
    two = ("pbj_0_0:\n  vmovups 0(%rsi), %zmm0\n  vmovups %zmm0, 0(%rsi)\n"
           "pbj_1_0:\n  vmovups 0(%rsi), %zmm0\n  vmulps %zmm30, %zmm0, %zmm0\n  vmovups %zmm0, 0(%rsi)\n")
    assert jit_probe.ALTERATIONS["no-partials"](two) == (  # the last chunk's function, which masks, keeps its own
        "pbj_0_0:\n  vxorps %zmm0, %zmm0, %zmm0\n"
        "pbj_1_0:\n  vmovups 0(%rsi), %zmm0\n  vmulps %zmm30, %zmm0, %zmm0\n  vmovups %zmm0, 0(%rsi)\n")


def test_jit_probe_times_the_real_code_against_altered_copies(capsys):
    from bench.kernels import build

    if build.built_isa() not in ("avx2", "avx512"):
        pytest.skip(f"this CPU's {build.built_isa()} build has no jit kind")
    assert jit_probe.main(["32", "4", "0.3", "--residual", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "residual" in out and "jit(R=" in out
    timed = dict(re.findall(r"(\S+) [\d.]+ \(([\d.]+)x\)", out))
    assert timed["real"] == "1.00" and {"inputs-in-L1", "no-inputs", "one-weight", "no-partials"} <= set(timed)
    with pytest.raises(PruneBenchError, match="DENSITY in"):
        jit_probe.main(["16", "4", "1.5"])
