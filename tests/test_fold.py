"""BatchNorm folding is exact in eval mode and keeps pruned weights at zero."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.fold import count_batchnorms, fold_batchnorm, fold_conv_bn
from prune.errors import PruneBenchError
from prune.models import prunable_layers, resnet18_cifar


def _random_stats_(bn: nn.BatchNorm2d, g: torch.Generator) -> None:
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
        bn.weight.copy_(torch.randn(c, generator=g))
        bn.bias.copy_(torch.randn(c, generator=g))


def test_fold_by_hand():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    bn = nn.BatchNorm2d(1, eps=0.0).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0)
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(3.0)
        bn.bias.fill_(0.5)
    folded = fold_conv_bn(conv, bn)
    # (2x - 1) * 3 / 2 + 0.5 = 3x - 1
    assert folded.weight.item() == pytest.approx(3.0)
    assert folded.bias.item() == pytest.approx(-1.0)


@pytest.mark.parametrize("conv_bias", [False, True])
def test_fold_conv_bn_is_exact_and_keeps_zeros(conv_bias):
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=2, bias=conv_bias)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape, generator=g) > 0.7)
    bn = nn.BatchNorm2d(6)
    _random_stats_(bn, g)
    bn.eval()
    folded = fold_conv_bn(conv, bn)
    x = torch.randn(2, 4, 7, 7, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(conv(x)), atol=1e-5, rtol=1e-5)
    assert torch.equal(folded.weight == 0, conv.weight == 0)


def test_fold_resnet18_matches_and_leaves_the_original():
    g = torch.Generator().manual_seed(1)
    model = resnet18_cifar()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            _random_stats_(m, g)
    layers = prunable_layers(model)
    with torch.no_grad():
        for layer in layers.values():
            layer.weight.mul_(torch.rand(layer.weight.shape, generator=g) > 0.5)
    model.eval()
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) == 0
    assert count_batchnorms(model) == 20  # the original keeps its BatchNorms
    x = torch.randn(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert expected.std(0).min() > 0  # the logits depend on the input: the comparison means something
    folded_convs = dict(folded.named_modules())
    for name, layer in layers.items():
        if isinstance(layer, nn.Conv2d):
            assert torch.equal(folded_convs[name].weight == 0, layer.weight == 0)


class _BnNotAfterConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(3, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.bn0(x)  # no conv before it: stays
        y = self.conv(x)
        z = self.conv2(x)
        return self.bn(y) + y + self.bn2(z)  # conv's output has two users: its BN stays; conv2's folds


def test_only_foldable_pairs_are_folded():
    g = torch.Generator().manual_seed(2)
    model = _BnNotAfterConv()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            _random_stats_(m, g)
    model.eval()
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) == 2
    x = torch.randn(2, 3, 5, 5, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_bn_without_running_stats_is_refused():
    conv = nn.Conv2d(2, 2, 1)
    bn = nn.BatchNorm2d(2, track_running_stats=False)
    with pytest.raises(PruneBenchError, match="running statistics"):
        fold_conv_bn(conv, bn)
