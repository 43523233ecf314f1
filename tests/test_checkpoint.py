"""Checkpoints: permanence, weights-only loading, torchvision key compatibility, the forms the loader accepts."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from prune.checkpoint import load_checkpoint, load_state, save_checkpoint
from prune.errors import PruneBenchError
from prune.mask import Mask, attach_, make_permanent_
from prune.models import prunable_layers, resnet18_cifar

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: faster on shared 2-core machines


def torchvision_cifar_resnet18() -> nn.Module:
    """torchvision's resnet18(num_classes=10) with the CIFAR stem changes made by hand (as PyTorch_CIFAR10 does)."""
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@pytest.fixture
def pruned():
    """A ResNet-18 with a random 70% mask attached, its mask, and an input."""
    torch.manual_seed(0)
    model = resnet18_cifar().eval()
    layers = prunable_layers(model)
    g = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(m.weight.shape, generator=g) >= 0.7 for n, m in layers.items()})
    attach_(layers, mask)
    return model, mask, torch.randn(2, 3, 32, 32)


def test_permanent_checkpoint_is_plain_exact_and_reloads_equal(pruned, tmp_path):
    model, mask, x = pruned
    with pytest.raises(PruneBenchError, match="masks attached"):
        save_checkpoint(tmp_path / "masked.pt", model, {})
    layers = prunable_layers(model)
    make_permanent_(layers)
    path = save_checkpoint(tmp_path / "p.pt", model, {"method": "oneshot", "accuracy": 0.5, "provenance": {"gpu": None}})
    raw = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code in the file
    assert set(raw) == {"state_dict", "meta"}
    assert not any(k.endswith(("_orig", "_mask")) for k in raw["state_dict"])
    assert raw["meta"]["method"] == "oneshot"
    back, meta = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    for n, m in prunable_layers(back).items():
        assert torch.count_nonzero(m.weight[~mask[n]]) == 0
    assert Mask.from_model(prunable_layers(back)).zeros == mask.zeros
    with torch.no_grad():
        torch.testing.assert_close(back(x), model.eval()(x), rtol=0, atol=0)


def test_no_overwrite_without_force(tmp_path):
    model = resnet18_cifar()
    path = save_checkpoint(tmp_path / "a.pt", model, {})
    with pytest.raises(PruneBenchError, match="--force"):
        save_checkpoint(path, model, {})
    save_checkpoint(path, model, {"again": True}, force=True)
    assert load_state(path)[1]["again"] is True


def test_keys_match_torchvisions_resnet18_both_ways(tmp_path):
    tv = torchvision_cifar_resnet18().eval()
    ours = resnet18_cifar().eval()
    assert list(tv.state_dict()) == list(ours.state_dict())
    assert all(tv.state_dict()[k].shape == v.shape for k, v in ours.state_dict().items())
    torch.save(tv.state_dict(), tmp_path / "tv.pt")  # a bare state_dict, as PyTorch_CIFAR10 publishes
    loaded, meta = load_checkpoint(tmp_path / "tv.pt")
    assert meta["source"] == "bare state_dict"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), tv(x), rtol=0, atol=0)
    tv2 = torchvision_cifar_resnet18().eval()
    tv2.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(tv2(x), ours(x), rtol=0, atol=0)


def test_a_state_dict_with_masks_attached_is_folded(pruned, tmp_path):
    model, mask, x = pruned
    state = model.state_dict()
    assert any(k.endswith("weight_mask") for k in state)
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "masked.pt")  # DataParallel prefix too
    loaded, meta = load_checkpoint(tmp_path / "masked.pt")
    assert meta["folded_masks"] is True
    for n, m in prunable_layers(loaded).items():
        assert torch.count_nonzero(m.weight[~mask[n]]) == 0
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_an_imagenet_stem_is_named(tmp_path):
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "imagenet.pt")
    with pytest.raises(PruneBenchError, match="7x7 stem"):
        load_checkpoint(tmp_path / "imagenet.pt")


def one_line(error: PruneBenchError) -> str:
    text = str(error)
    assert "\n" not in text
    return text


def test_what_is_not_a_checkpoint_gets_one_line_naming_it(tmp_path):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save(torchvision.models.resnet18(num_classes=10), tmp_path / "whole_model.pt")  # pickled code
    torch.save({"epoch": 3, "notes": "x"}, tmp_path / "other.pt")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other_net.pt")
    cases = {
        "text.pt": "not a weights-only PyTorch checkpoint",
        "whole_model.pt": "not a weights-only PyTorch checkpoint",
        "other.pt": "holds a dict with keys",
        "other_net.pt": "not a CIFAR ResNet-18 checkpoint",
        "absent.pt": "no checkpoint at",
        "": "is a folder",
    }
    for name, expected in cases.items():
        with pytest.raises(PruneBenchError) as e:
            load_checkpoint(tmp_path / name)
        assert expected in one_line(e.value)
