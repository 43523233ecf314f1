"""One-shot and iterative pruning: exact counts every round, masks only grow, no regrowth through fine-tuning."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn.utils import prune as torch_prune

from conftest import tiny_net
from prune.errors import PruneBenchError
from prune.mask import Mask, make_permanent_
from prune.models import prunable_layers, resnet18_cifar
from prune.pruning import prune_rounds
from prune.schedule import round_counts
from prune.strategies import STRATEGIES, GlobalMagnitude, GlobalRandom
from prune.train import PruneSettings, TrainSettings, fit, make_strategy, prune_and_finetune

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: faster on shared 2-core machines


@pytest.mark.parametrize("strategy", [GlobalMagnitude(), GlobalRandom(seed=3)], ids=["magnitude", "random"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.75, 0.9, 0.987])
def test_one_shot_prunes_exactly_the_target_count(strategy, sparsity):
    layers = prunable_layers(tiny_net())
    numel = sum(m.weight.numel() for m in layers.values())
    mask = prune_rounds(layers, strategy, sparsity, rounds=1)
    assert mask.zeros == round(numel * sparsity)
    assert Mask.from_model(layers).zeros == mask.zeros  # what the model computes with


def test_magnitude_drops_the_smallest_weights_across_layers():
    layers = prunable_layers(tiny_net())
    weights = {n: m.weight.detach().abs().clone() for n, m in layers.items()}
    mask = prune_rounds(layers, GlobalMagnitude(), 0.6)
    kept = torch.cat([weights[n][mask[n]] for n in weights])
    dropped = torch.cat([weights[n][~mask[n]] for n in weights])
    assert dropped.max() <= kept.min()
    assert len(set(mask.layer_sparsity().values())) > 1  # global, not the same share in every layer


@pytest.mark.parametrize("strategy", [GlobalMagnitude(), GlobalRandom(seed=3)], ids=["magnitude", "random"])
def test_channels_last_weights_prune_like_contiguous_ones(strategy):
    # training on CUDA keeps the model channels_last; torch's global pruning flattens weights with .view, which
    # failed on such weights in the first GPU run of the study (H200, 2026-11-26)
    plain = prunable_layers(tiny_net())
    packed = prunable_layers(tiny_net().to(memory_format=torch.channels_last))
    assert any(not m.weight.is_contiguous() for m in packed.values())
    expected = prune_rounds(plain, strategy, 0.6, rounds=2)
    got = prune_rounds(packed, strategy, 0.6, rounds=2)
    assert all(torch.equal(got[n], expected[n]) for n in expected)


@pytest.mark.parametrize("sparsity,rounds", [(0.5, 3), (0.75, 3), (0.9, 3), (0.9, 5), (0.6, 7)])
def test_iterative_hits_the_schedule_every_round_and_masks_only_grow(sparsity, rounds):
    model = tiny_net()
    layers = prunable_layers(model)
    numel = sum(m.weight.numel() for m in layers.values())
    expected = round_counts(numel, sparsity, rounds)
    seen: list[Mask] = []

    def after_round(k, mask):
        assert mask.zeros == expected[k]
        assert Mask.from_model(layers).zeros == expected[k]
        if seen:
            assert mask.within(seen[-1])
        seen.append(mask)
        with torch.no_grad():  # weights change between rounds, as fine-tuning would change them
            for m in layers.values():
                m.weight_orig.add_(torch.randn_like(m.weight_orig) * 0.05)

    final = prune_rounds(layers, GlobalMagnitude(), sparsity, rounds, after_round)
    assert len(seen) == rounds
    assert final.zeros == round(numel * sparsity)
    # iterative reaches s, unlike the seed's (1-x)^n = s, which stopped near 1 - s
    assert abs(final.sparsity - sparsity) <= 1.0 / numel


def finetune(epochs=1, **kw) -> TrainSettings:
    base = dict(epochs=epochs, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-3, workers=0, progress=False, device="cpu")
    return TrainSettings(**{**base, **kw})


def test_no_regrowth_through_fine_tuning_with_momentum_and_weight_decay(synthetic):
    model = tiny_net()
    before = {n: m.weight.detach().clone() for n, m in prunable_layers(model).items()}
    outcome = prune_and_finetune(model, synthetic, PruneSettings(0.8, rounds=2), finetune())
    layers = prunable_layers(model)
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    for n, m in layers.items():
        w = m.weight.detach()
        assert torch.count_nonzero(w[~outcome.mask[n]]) == 0  # pruned stay exactly zero
        assert not torch.equal(w[outcome.mask[n]], before[n][outcome.mask[n]])  # kept ones did train
    assert Mask.from_model(layers).zeros == outcome.target_zeros
    assert [r["round"] for r in outcome.rounds] == [1, 2]
    assert all(len(r["epochs"]) == 1 for r in outcome.rounds)


def test_the_seeds_order_lets_pruned_weights_regrow(synthetic):
    # The seed study called prune.remove before fine-tuning: the check above must be able to fail.
    model = tiny_net()
    layers = prunable_layers(model)
    mask = prune_rounds(layers, GlobalMagnitude(), 0.8)
    make_permanent_(layers)
    fit(model, synthetic, finetune())
    regrown = sum(int(torch.count_nonzero(m.weight.detach()[~mask[n]])) for n, m in layers.items())
    assert regrown > 0.5 * mask.zeros


def test_each_round_gets_a_fresh_optimizer(synthetic, monkeypatch):
    made = []
    real = torch.optim.SGD

    def counting(*args, **kwargs):
        opt = real(*args, **kwargs)
        made.append(opt)
        return opt

    monkeypatch.setattr(torch.optim, "SGD", counting)
    prune_and_finetune(tiny_net(), synthetic, PruneSettings(0.5, rounds=3), finetune())
    assert len(made) == 3 and len({id(o) for o in made}) == 3


def test_zero_epochs_prunes_without_training(synthetic):
    model = tiny_net()
    before = {n: m.weight.detach().clone() for n, m in prunable_layers(model).items()}
    outcome = prune_and_finetune(model, synthetic, PruneSettings(0.5), finetune(epochs=0))
    for n, m in prunable_layers(model).items():
        keep = outcome.mask[n]
        assert torch.equal(m.weight.detach()[keep], before[n][keep])
    assert "epochs" not in outcome.rounds[0]


def test_random_control_is_seeded_and_differs_from_magnitude():
    def random_mask(seed):
        return prune_rounds(prunable_layers(tiny_net()), make_strategy("random", seed=seed), 0.5)

    a, b, c = random_mask(1), random_mask(1), random_mask(2)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    magnitude = prune_rounds(prunable_layers(tiny_net()), GlobalMagnitude(), 0.5)
    assert any(not torch.equal(a[n], magnitude[n]) for n in a)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_strategy_can_be_made(name):
    strategy = make_strategy(name, seed=0)
    assert callable(strategy)


def test_bad_prune_settings_are_refused_before_any_work():
    for bad in (dict(sparsity=1.0), dict(sparsity=-0.5), dict(rounds=0), dict(strategy="l2")):
        with pytest.raises(PruneBenchError):
            dataclasses.replace(PruneSettings(), **bad).check()


def test_resnet18_scope_is_the_seeds_eighteen_tensors_unless_asked():
    model = resnet18_cifar()
    assert len(prunable_layers(model)) == 18
    assert len(prunable_layers(model, include_downsample=True)) == 21
    assert torch_prune.is_pruned(model) is False
