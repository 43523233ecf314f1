"""The probes in experiments/: the models pruned otherwise, and the kind A/B's refusals."""

from __future__ import annotations

import pytest
import torch

from experiments import kind_ab, other_pruned
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
