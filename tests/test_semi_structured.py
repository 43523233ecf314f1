"""2:4 semi-structured sparsity: the mask, its composition and fine-tuning, and the backend's matmul formulation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bench.backends import semi_structured
from bench.backends.convmm import ConvAsMatmul, im2col_nhwc, why_not_matmul
from prune.errors import PruneBenchError
from prune.mask import Mask, attach_, make_permanent_
from prune.nm import from_gemm_view, gemm_view, is_nm, nm_keep
from prune.pruning import prune_rounds
from prune.strategies import STRATEGIES, GlobalMagnitude, SemiStructured24, get_strategy

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA GPU on this machine: 2:4 sparse kernels run on CUDA only"


def tiny_net() -> nn.Sequential:
    """Stem with 3 input channels (cannot take 2:4), convs that can, a 1x1 strided conv and a linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=True),
        nn.ReLU(),
        nn.Conv2d(64, 32, 1, stride=2, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def layers_of(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def groups(weight: torch.Tensor) -> torch.Tensor:
    """The weight's GEMM matrix as groups of 4 along K: [rows, K/4, 4]."""
    matrix = gemm_view(weight.detach())
    return matrix.reshape(matrix.shape[0], -1, 4)


# -- the layout ------------------------------------------------------------------


def test_gemm_view_runs_input_channel_fastest_and_round_trips():
    w = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).reshape(2, 8, 3, 3)
    matrix = gemm_view(w)
    assert matrix.shape == (2, 72)
    # first group of 4: input channels 0..3 at tap (0, 0) of output channel 0
    assert matrix[0, :4].tolist() == [w[0, c, 0, 0].item() for c in range(4)]
    assert matrix[1, 8].item() == w[1, 0, 0, 1].item()  # K index 8 = tap (0, 1), channel 0
    assert torch.equal(from_gemm_view(matrix, w.shape), w)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 6), groups_=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_nm_keep_keeps_exactly_the_two_largest_of_every_four(rows, groups_, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, 4 * groups_, generator=g).abs()
    keep = nm_keep(scores).reshape(rows, groups_, 4)
    assert bool((keep.sum(-1) == 2).all())
    grouped = scores.reshape(rows, groups_, 4)
    smallest_kept = grouped.masked_fill(~keep, float("inf")).min(-1).values
    largest_dropped = grouped.masked_fill(keep, float("-inf")).max(-1).values
    assert bool((smallest_kept >= largest_dropped).all())


def test_nm_keep_breaks_ties_towards_the_earlier_weight():
    assert nm_keep(torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 3.0, 3.0, 3.0]])).tolist() == [
        [True, True, False, False, False, True, True, False]
    ]


def test_is_nm_checks_groups_along_input_channels():
    w = torch.zeros(1, 4, 1, 2)
    w[0, :2, 0, 0] = 1.0  # tap (0, 0): channels 0, 1 nonzero -> 2 of 4
    assert is_nm(w)
    w[0, 2, 0, 0] = 1.0  # 3 of 4 at one tap
    assert not is_nm(w)
    w = torch.zeros(1, 4, 1, 2)
    w[0, :2, 0, :] = 1.0  # channels 0, 1 at both taps: 2 of 4 along (kh, kw, Cin)
    assert is_nm(w)
    assert not is_nm(w.reshape(1, 8))  # the same numbers in (Cin, kh, kw) order: [1, 1, 1, 1, 0, 0, 0, 0]
    assert not is_nm(torch.zeros(2, 3, 3, 3))  # K = 27 is no multiple of 4


# -- the strategy ----------------------------------------------------------------


def test_registered_as_2_4():
    assert STRATEGIES["2:4"] is SemiStructured24
    assert isinstance(get_strategy("2:4"), SemiStructured24)


def test_pattern_keeps_the_two_largest_of_four_on_covered_layers_only():
    model = tiny_net()
    layers = layers_of(model)
    strategy = SemiStructured24(rest=None)
    assert strategy.covered(layers) == ["3", "6", "8", "11"]  # not the 3-channel stem "0"
    mask = strategy.pattern(layers, Mask.ones_like(layers))
    for name in strategy.covered(layers):
        keep = groups(mask[name])
        assert bool((keep.sum(-1) == 2).all()), name
        scores = groups(layers[name].weight).abs()
        assert bool((scores.masked_fill(~keep, float("inf")).min(-1).values >= scores.masked_fill(keep, -1).max(-1).values).all())
    assert bool(mask["0"].all())
    # the count the schedule must ask for: half of every covered layer
    assert mask.zeros == sum(layers[n].weight.numel() // 2 for n in strategy.covered(layers))
    new = strategy(layers, Mask.ones_like(layers), mask.zeros)
    assert all(torch.equal(new[n], mask[n]) for n in mask)


def test_composes_with_an_existing_mask():
    model = tiny_net()
    layers = layers_of(model)
    current = Mask.ones_like(layers)
    current = GlobalMagnitude()(layers, current, int(0.3 * current.numel))
    strategy = SemiStructured24(rest=None)
    new = strategy.pattern(layers, current)
    assert new.within(current)
    for name in strategy.covered(layers):
        kept = groups(new[name]).sum(-1)
        before = groups(current[name]).sum(-1)
        assert bool((kept <= 2).all())
        assert bool((kept == before.clamp(max=2)).all()), name  # groups with >2 zeros stay as they were
    assert strategy(layers, current, new.zeros).zeros == new.zeros


def test_layer_list_and_filter_fn_choose_the_covered_layers():
    layers = layers_of(tiny_net())
    only = SemiStructured24(layers=["6"], rest=None)
    mask = only.pattern(layers, Mask.ones_like(layers))
    assert [n for n in mask if not bool(mask[n].all())] == ["6"]
    convs = SemiStructured24(filter_fn=lambda module, name: isinstance(module, nn.Conv2d))
    assert convs.covered(layers) == ["3", "6", "8"]
    with pytest.raises(PruneBenchError, match="not a multiple of 4"):
        SemiStructured24(layers=["0"]).covered(layers)
    with pytest.raises(PruneBenchError, match="not prunable layers"):
        SemiStructured24(layers=["nope"]).covered(layers)


def test_target_below_the_pattern_is_a_one_line_error():
    layers = layers_of(tiny_net())
    with pytest.raises(PruneBenchError, match="2:4 prunes half") as info:
        SemiStructured24()(layers, Mask.ones_like(layers), 10)
    assert "\n" not in str(info.value)


def test_target_above_the_pattern_needs_rest_and_then_is_exact():
    layers = layers_of(tiny_net())
    ones = Mask.ones_like(layers)
    count = SemiStructured24().pattern(layers, ones).zeros
    with pytest.raises(PruneBenchError, match="give rest="):
        SemiStructured24(rest=None)(layers, ones, count + 5)
    mask = SemiStructured24()(layers, ones, count + 500)  # rest: global magnitude
    assert mask.zeros == count + 500
    assert mask.within(SemiStructured24().pattern(layers, ones))
    assert all(is_nm(mask[n].float()) for n in ["3", "6", "8", "11"])


def sgd_steps(model: nn.Module, steps: int = 3) -> None:
    """A few SGD steps with momentum and weight decay: the case where unmasked weights would regrow."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=g)
        y = torch.randint(0, 10, (4,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


def test_one_shot_with_prune_rounds_then_fine_tuning_keeps_the_pattern():
    model = tiny_net()
    layers = layers_of(model)
    before = {n: m.weight.detach().clone() for n, m in layers.items()}
    tuned = []
    mask = prune_rounds(layers, get_strategy("2:4"), 0.5, 1, after_round=lambda k, m: (sgd_steps(model), tuned.append(k)))
    assert tuned == [0]
    assert mask.zeros == round(0.5 * mask.numel)  # "2:4" at 50%: the pattern plus a few by magnitude
    for name in ["3", "6", "8", "11"]:
        weight = layers[name].weight.detach()
        assert is_nm(weight), name
        assert not torch.equal(weight[mask[name]], before[name][mask[name]]), "fine-tuning changed nothing"
    assert all(torch.equal(Mask.from_model(layers)[n], mask[n]) for n in mask)  # still attached, unchanged
    make_permanent_(layers)
    assert all(is_nm(layers[n].weight) for n in ["3", "6", "8", "11"])


def test_iterative_rounds_keep_the_pattern_and_only_grow():
    model = tiny_net()
    layers = layers_of(model)
    masks = []
    mask = prune_rounds(layers, get_strategy("2:4"), 0.9, 2, after_round=lambda k, m: (masks.append(m), sgd_steps(model)))
    assert masks[1].within(masks[0])
    assert mask.zeros == round(0.9 * mask.numel)
    assert all(is_nm(layers[n].weight) for n in ["3", "6", "8", "11"])
    with pytest.raises(PruneBenchError, match="prune one-shot"):
        prune_rounds(layers_of(tiny_net()), get_strategy("2:4"), 0.5, 3)


# -- the backend's formulation, with dense weights on the CPU -----------------------


@pytest.mark.parametrize(
    "cin, cout, kernel, stride, padding, bias",
    [(8, 16, 3, 1, 1, False), (8, 16, 1, 2, 0, True), (4, 8, 3, 2, 1, True), (3, 8, (3, 5), (2, 1), (1, 2), False)],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_as_matmul_equals_conv2d(cin, cout, kernel, stride, padding, bias, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=bias)
    x = torch.randn(2, cin, 11, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    as_mm = ConvAsMatmul(conv, gemm_view(conv.weight.detach()).contiguous())
    with torch.no_grad():
        torch.testing.assert_close(as_mm(x), conv(x), atol=1e-5, rtol=1e-5)


def test_im2col_columns_follow_the_gemm_view_order():
    x = torch.randn(1, 4, 3, 3)
    cols, (n, ho, wo) = im2col_nhwc(x, (3, 3), (1, 1), (0, 0))
    assert (n, ho, wo) == (1, 1, 1)
    # one output position: its patch flattened in (kh, kw, Cin) order, input channel fastest
    assert torch.equal(cols[0], x[0].permute(1, 2, 0).reshape(-1))


def test_unsupported_convs_are_named():
    assert "grouped" in why_not_matmul(nn.Conv2d(4, 4, 3, groups=2))
    assert "dilated" in why_not_matmul(nn.Conv2d(4, 4, 3, dilation=2))
    assert why_not_matmul(nn.Conv2d(4, 4, 3, padding=1)) is None


def pruned_24(model: nn.Module) -> nn.Module:
    layers = layers_of(model)
    mask = SemiStructured24(rest=None).pattern(layers, Mask.ones_like(layers))
    attach_(layers, mask)
    return model


def test_prepared_model_with_dense_weights_matches_the_model_on_cpu():
    model = pruned_24(tiny_net()).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics so the BN after a converted conv matters
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    prepared, choices = semi_structured.prepare_model(model, "cpu", torch.float32, "dense")
    assert choices == {
        "0": "in_channels 3 not a multiple of 4",
        "3": "converted",
        "6": "converted",
        "8": "converted",
    }
    assert isinstance(prepared[3], ConvAsMatmul) and isinstance(prepared[0], nn.Conv2d)
    with torch.no_grad():
        y = prepared(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_sparse_kernels_refuse_weights_that_are_not_2_4():
    conv = nn.Conv2d(32, 64, 3, bias=False)
    kwargs = dict(kernel="cusparselt", dtype=torch.float16, device="cpu")
    reason = semi_structured._make_weight("c", conv, gemm_view(conv.weight.detach()), **kwargs)
    assert reason == "not 2:4 sparse along (kh, kw, Cin)"
    odd = nn.Conv2d(4, 24, 1, bias=False)  # [24, 4]: not a multiple of cuSPARSELt's (16, 16)
    assert "not a multiple of (16, 16)" in semi_structured._make_weight("c", odd, gemm_view(odd.weight.detach()), **kwargs)
    assert semi_structured.shape_multiples("cutlass", torch.float16) == (32, 64)


def test_prepare_refuses_a_model_with_no_2_4_conv():
    with pytest.raises(PruneBenchError, match="prune it with the 2:4 strategy"):
        semi_structured._prepare(tiny_net(), torch.randn(1, 3, 8, 8), "cpu", 1, precision="fp16", kernel="cusparselt")


# -- on a GPU -------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
@pytest.mark.parametrize("name", ["torch-2:4", "torch-2:4-bf16", "torch-2:4-cutlass"])
def test_2_4_backend_matches_dense_within_its_precision_on_cuda(name):
    from bench.backends import get_backend

    backend = get_backend(name)
    if backend.unavailable("cuda"):
        pytest.skip(backend.unavailable("cuda"))
    model = pruned_24(tiny_net()).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    prepared = backend.prepare(model, x, "cuda", 1)
    assert prepared.info["sparse_convs"] >= 1
    y = prepared.to_torch(prepared.run(prepared.inputs))
    torch.testing.assert_close(y, ref, atol=backend.atol, rtol=backend.rtol)
