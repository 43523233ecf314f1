"""Channel (filter) pruning: MACs removed as asked, shapes that agree at every residual add, the same function as
the original with the removed channels zeroed, and checkpoints that rebuild the smaller architecture."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from prune.checkpoint import load_checkpoint, load_state, save_checkpoint
from prune.cli import main
from prune.errors import PruneBenchError
from prune.models import layer_macs, resnet18_cifar
from prune.structured import (
    ARCH_CHANNELS,
    ChannelPruning,
    build_resnet18_widths,
    check_widths,
    is_channel_pruned,
    parameter_count,
    widths_of,
)

pytestmark = pytest.mark.usefixtures("one_thread")

MAC_TOLERANCE = 0.02  # channel granularity: one channel of every coupled group is < 2% of ResNet-18's MACs


@pytest.fixture(scope="module")
def base():
    """A seeded random ResNet-18 with distinct BatchNorm statistics per channel (so kept channels can be traced)."""
    torch.manual_seed(0)
    model = resnet18_cifar()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def pruned(base):
    """(scope, target) -> (pruned model, result), each computed once."""
    cache = {}

    def get(scope: str, target: float):
        if (scope, target) not in cache:
            cache[scope, target] = ChannelPruning("l1", scope)(base, target)
        return cache[scope, target]

    return get


def total_macs(model) -> int:
    return sum(layer_macs(model).values())


@pytest.mark.parametrize("scope", ["uniform", "global"])
@pytest.mark.parametrize("target", [0.5, 0.9])
def test_macs_removed_are_as_asked_within_channel_granularity(base, pruned, scope, target):
    model, result = pruned(scope, target)
    achieved = 1.0 - total_macs(model) / total_macs(base)
    assert result.achieved == pytest.approx(achieved)
    assert 0 < result.tolerance < MAC_TOLERANCE
    assert abs(achieved - target) <= result.tolerance
    assert parameter_count(model) == result.params < parameter_count(base)
    assert is_channel_pruned(model) and not is_channel_pruned(base)
    assert widths_of(model)["fc"][0] == 10  # the classes are never pruned


def test_uniform_keeps_the_same_fraction_of_every_group(pruned):
    model, _ = pruned("uniform", 0.5)
    widths = widths_of(model)
    stage = [widths[f"layer{i}.0.conv1"][0] / (64 * 2 ** (i - 1)) for i in range(1, 5)]
    assert max(stage) - min(stage) < 0.02  # whole channels: 45/64 vs 362/512


def test_global_spreads_the_cut_unevenly(pruned):
    model, _ = pruned("global", 0.5)
    widths = widths_of(model)
    kept = {name: w[0] / widths_of(resnet18_cifar())[name][0] for name, w in widths.items() if name != "fc"}
    assert max(kept.values()) - min(kept.values()) > 0.05


def test_shapes_agree_through_every_residual_add(pruned):
    model, _ = pruned("global", 0.9)
    check_widths(widths_of(model))
    seen = []

    def hook(block, inputs, output):
        identity = inputs[0] if block.downsample is None else block.downsample(inputs[0])
        main = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(inputs[0])))))
        seen.append((main.shape, identity.shape, output.shape))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, BasicBlock)]
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    for h in handles:
        h.remove()
    assert logits.shape == (2, 10)
    assert len(seen) == 8
    for main_shape, identity_shape, out_shape in seen:
        assert main_shape == identity_shape == out_shape


def kept_channels(original_bn: nn.BatchNorm2d, pruned_bn: nn.BatchNorm2d) -> list[int]:
    """Which channels of ``original_bn`` survive in ``pruned_bn``, found from the copied running means."""
    index = {float(v): i for i, v in enumerate(original_bn.running_mean)}
    return [index[float(v)] for v in pruned_bn.running_mean]


@pytest.mark.parametrize("scope", ["uniform", "global"])
def test_pruned_model_computes_the_original_with_those_channels_zeroed(base, pruned, scope):
    model, _ = pruned(scope, 0.5)
    zeroed = copy.deepcopy(base)
    pruned_modules = dict(model.named_modules())
    for name, bn in zeroed.named_modules():
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        keep = kept_channels(bn, pruned_modules[name])
        gone = sorted(set(range(bn.num_features)) - set(keep))
        conv_name = name[:-1] + "0" if name.endswith("downsample.1") else name.replace("bn", "conv")
        with torch.no_grad():
            zeroed.get_submodule(conv_name).weight[gone] = 0
            bn.weight[gone] = 0  # eval BatchNorm of a zero channel with zero scale and shift gives exact zeros
            bn.bias[gone] = 0
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got, unpruned = zeroed(x), model(x), base(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unpruned, expected, rtol=1e-4, atol=1e-5)  # the zeroing did change something


def test_iterative_rounds_reach_the_cumulative_target(base):
    strategy = ChannelPruning("l2", "uniform")
    reference = total_macs(base)
    first, r1 = strategy(base, 0.3, reference)
    second, r2 = strategy(first, 0.5, reference)
    assert abs(r1.achieved - 0.3) <= r1.tolerance and abs(r2.achieved - 0.5) <= r2.tolerance
    assert all(w[0] <= v[0] for w, v in zip(widths_of(second).values(), widths_of(first).values()))
    with pytest.raises(PruneBenchError, match="removed already"):
        strategy(second, 0.3, reference)


def test_a_sparsity_that_would_empty_a_layer_is_one_line(base):
    with pytest.raises(PruneBenchError, match="no channel in") as e:
        ChannelPruning("l1", "uniform")(base, 0.9999)
    assert "\n" not in str(e.value)
    with pytest.raises(PruneBenchError, match="outside"):
        ChannelPruning("l1", "uniform")(base, 1.0)
    with pytest.raises(PruneBenchError, match="unknown --importance"):
        ChannelPruning("l3", "uniform")


def test_widths_that_do_not_meet_at_a_residual_add_are_refused():
    widths = widths_of(resnet18_cifar())
    widths["layer2.1.conv2"] = [100, 128]
    with pytest.raises(PruneBenchError, match="residual add"):
        build_resnet18_widths(widths)
    widths = widths_of(resnet18_cifar())
    widths["layer3.0.conv1"] = [0, 128]
    with pytest.raises(PruneBenchError, match="cannot be empty"):
        check_widths(widths)


def test_checkpoint_carries_the_architecture_and_loads_weights_only(tmp_path, pruned):
    model, result = pruned("uniform", 0.5)
    path = save_checkpoint(tmp_path / "c50.pt", model, {"arch": ARCH_CHANNELS, "widths": widths_of(model),
                                                        "mac_fraction_removed": result.achieved})
    raw = torch.load(path, weights_only=True)  # no pickled modules: widths are plain lists in meta
    assert raw["meta"]["widths"] == widths_of(model)
    loaded, meta = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with pytest.raises(PruneBenchError, match="needs the full architecture") as e:
        load_checkpoint(path, full_only="the study's base")
    assert "50.0% of its MACs removed" in str(e.value)


def test_a_channel_pruned_state_dict_without_its_widths_is_named(tmp_path, pruned):
    model, _ = pruned("uniform", 0.5)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(PruneBenchError, match="a channel-pruned model"):
        load_checkpoint(tmp_path / "bare.pt")
    save_checkpoint(tmp_path / "nowidths.pt", model, {"arch": ARCH_CHANNELS})
    with pytest.raises(PruneBenchError, match="no widths"):
        load_checkpoint(tmp_path / "nowidths.pt")


def test_prune_cli_channel_writes_a_smaller_checkpoint(base_checkpoint, tmp_path, capsys):
    out = tmp_path / "c50.pt"
    code = main(["prune", str(base_checkpoint), "--strategy", "channel", "--sparsity", "0.5", "--importance", "l2",
                 "--channel-scope", "global", "--epochs", "0", "--dataset", "synthetic", "--train-limit", "8",
                 "--test-limit", "16", "--workers", "0", "--no-progress", "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "of the MACs removed" in printed
    state, meta = load_state(out)
    assert meta["arch"] == ARCH_CHANNELS and meta["strategy"] == "channel" and meta["channel_scope"] == "global"
    assert abs(meta["mac_fraction_removed"] - 0.5) <= meta["mac_tolerance"]
    assert 0 < meta["param_fraction_removed"] < 1
    model, _ = load_checkpoint(out)
    assert total_macs(model) == meta["macs_per_image"]
    code = main(["prune", str(base_checkpoint), "--strategy", "channel", "--sparsity", "0.5", "--out", str(out),
                 "--dataset", "synthetic"])
    err = capsys.readouterr().err
    assert code == 2 and "exists" in err and err.count("\n") == 1


def test_study_structured_cases_run_and_refuse_a_channel_pruned_base(tmp_path, capsys):
    from prune.study import StudySettings, parse_case, select_cases

    cases = select_cases(StudySettings(cases=("structured",), sparsities=(0.5,), epochs=(1, 2), rounds=(2, 3)))
    assert [c.name for c in cases] == ["50perc_oneshot2_channel", "50perc_iterative1_2_channel"]
    assert all(parse_case(c.name) == c for c in cases)
    tiny = ["study", "--dataset", "synthetic", "--train-limit", "8", "--test-limit", "16", "--batch-size", "8",
            "--workers", "0", "--time-warmup", "0", "--time-iters", "2", "--no-progress", "--base-epochs", "1",
            "--device", "cpu", "--out", str(tmp_path / "study"), "--sparsities", "0.5", "--epochs", "0",
            "--rounds", "2", "--cases", "structured"]
    assert main(tiny) == 0, capsys.readouterr().err
    rows = {r["case"]: r for r in __import__("json").loads((tmp_path / "study" / "results.json").read_text())["rows"]}
    assert set(rows) == {"50perc_oneshot0_channel", "50perc_iterative0_2_channel"}
    for row in rows.values():
        assert abs(row["mac_weighted_sparsity"] - 0.5) < MAC_TOLERANCE and 0 < row["param_fraction_removed"] < 1
        model, meta = load_checkpoint(tmp_path / "study" / row["checkpoint"])
        assert meta["arch"] == ARCH_CHANNELS and is_channel_pruned(model)
    capsys.readouterr()
    pruned_base = str(tmp_path / "study" / "resnet18_prune_50perc_oneshot0_channel.pt")
    assert main([*tiny[:-2], "--cases", "50perc_oneshot0", "--base", pruned_base, "--out", str(tmp_path / "s2")]) == 2
    err = capsys.readouterr().err
    assert "needs the full architecture" in err and err.count("\n") == 1
