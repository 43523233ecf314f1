"""The Mask type: validation, figures, reports, persistence, attaching and making permanent."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import tiny_net
from prune.errors import PruneBenchError
from prune.mask import Mask, attach_, format_report, make_permanent_
from prune.models import layer_macs, prunable_layers

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: faster on shared 2-core machines


def hand_mask() -> Mask:
    return Mask({"a": torch.tensor([[1, 0], [0, 0]]), "b": torch.tensor([True, True, False, True])})


def test_figures_of_a_hand_checked_mask():
    m = hand_mask()
    assert m["a"].dtype == torch.bool
    assert (m.numel, m.nonzeros, m.zeros) == (8, 4, 4)
    assert m.sparsity == 0.5 and m.density == 0.5
    assert m.layer_sparsity() == {"a": 0.75, "b": 0.25}


def test_invalid_masks_are_refused():
    with pytest.raises(PruneBenchError, match="other than 0 and 1"):
        Mask({"a": torch.tensor([0.0, 2.0])})
    with pytest.raises(PruneBenchError, match="not a tensor"):
        Mask({"a": [1, 0]})


def test_within_means_every_kept_weight_was_kept_before():
    old = hand_mask()
    new = Mask({"a": torch.tensor([[0, 0], [0, 0]]), "b": torch.tensor([True, False, False, True])})
    assert new.within(old) and old.within(old)
    assert not old.within(new)
    grown = Mask({"a": torch.tensor([[1, 1], [0, 0]]), "b": old["b"]})
    assert not grown.within(old)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 1.0))
def test_per_layer_report_sums_to_the_global_figure(seed, density):
    model = tiny_net()
    layers = prunable_layers(model)
    g = torch.Generator().manual_seed(seed)
    mask = Mask({n: torch.rand(m.weight.shape, generator=g) < density for n, m in layers.items()})
    macs = layer_macs(model)
    rows = mask.report(macs)
    assert [r.name for r in rows] == list(layers)
    assert sum(r.params for r in rows) == mask.numel
    assert sum(r.nonzeros for r in rows) == mask.nonzeros
    assert 1.0 - sum(r.nonzeros for r in rows) / sum(r.params for r in rows) == pytest.approx(mask.sparsity)
    # MAC-weighted sparsity is the MAC-weighted mean of the per-layer sparsities
    expected = sum(r.macs * r.sparsity for r in rows) / sum(macs.values())
    assert mask.mac_weighted_sparsity(macs) == pytest.approx(expected)
    text = format_report(rows, mask.mac_weighted_sparsity(macs))
    assert f"| **total** | {mask.numel} | {mask.nonzeros} | {mask.sparsity:.2%} |" in text


def test_mac_weighted_sparsity_by_hand():
    mask = Mask({"big": torch.tensor([False, False, True, True]), "small": torch.tensor([True, True])})
    # "big" costs 30 MACs and is half pruned, "small" 10 and untouched: 15 of 40 MACs are pruned
    assert mask.mac_weighted_sparsity({"big": 30, "small": 10}) == pytest.approx(15 / 40)


def test_save_and_load_round_trip(tmp_path):
    m = hand_mask()
    m.save(tmp_path / "mask.pt")
    back = Mask.load(tmp_path / "mask.pt")
    assert set(back) == set(m) and all(torch.equal(back[k], m[k]) for k in m)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(PruneBenchError, match="not a mask"):
        Mask.load(tmp_path / "list.pt")
    with pytest.raises(PruneBenchError, match="no mask file"):
        Mask.load(tmp_path / "absent.pt")


def test_check_fits_names_the_mismatch():
    layers = prunable_layers(tiny_net())
    with pytest.raises(PruneBenchError, match="missing layers"):
        Mask({"0": torch.ones(16, 3, 3, 3, dtype=torch.bool)}).check_fits(layers)
    wrong = Mask.ones_like(layers)
    wrong["8"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(PruneBenchError, match="shape"):
        wrong.check_fits(layers)


def test_attached_then_permanent_gives_plain_weights_with_exact_zeros():
    model = tiny_net()
    layers = prunable_layers(model)
    g = torch.Generator().manual_seed(1)
    mask = Mask({n: torch.rand(m.weight.shape, generator=g) < 0.3 for n, m in layers.items()})
    attach_(layers, mask)
    assert any(k.endswith("weight_mask") for k in model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        before = model(x)
    make_permanent_(layers)
    state = model.state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    assert isinstance(layers["0"].weight, nn.Parameter)
    assert Mask.from_model(layers).zeros >= mask.zeros
    for n, m in layers.items():
        assert torch.count_nonzero(m.weight.detach()[~mask[n]]) == 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
