"""The sparse-direct engine and backend: same outputs and intermediate activations as dense PyTorch."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import fx, nn
from torchvision.models.resnet import BasicBlock

from bench.backends import get_backend
from bench.fold import fold_batchnorm
from bench.kernels import build
from bench.kernels.engine import EngineSettings, candidates, compile_model
from prune.errors import PruneBenchError


pytestmark = pytest.mark.usefixtures("isa")  # every test under each instruction set (tests/conftest.py)


class TinyResNet(nn.Module):
    """Stem, an identity block and a strided block with a 1x1 shortcut, pool, fc: ResNet-18's parts, small."""

    def __init__(self, groups: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(8, 8)
        shortcut = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.layer2 = BasicBlock(8, 16, stride=2, downsample=shortcut)
        self.extra = nn.Conv2d(16, 16, 3, padding=1, groups=groups)  # groups > 1: not ours, runs as torch
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.pool(torch.relu(self.extra(x))), 1))


def tiny_model(seed: int = 0, groups: int = 1) -> nn.Module:
    """Random weights and BN statistics; one conv 100% sparse, one dense, the rest pruned 50-95% at random."""
    g = torch.Generator().manual_seed(seed)
    model = TinyResNet(groups)
    sparsity = {"conv1": 0.5, "layer1.conv1": 1.0, "layer1.conv2": 0.0, "layer2.conv1": 0.9, "layer2.conv2": 0.95,
                "layer2.downsample.0": 0.0, "extra": 0.5}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.rand(m.weight.shape, generator=g) >= sparsity[name])
    return model.eval()


def node_values(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every fx node's value when the BN-folded model runs ``x`` (the reference for intermediates)."""
    gm = fold_batchnorm(model)
    values = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                values[n.name] = out.detach().clone()
            return out

    with torch.no_grad():
        Recorder(gm).run(x)
    return values


def assert_matches(engine, model: nn.Module, x: torch.Tensor, tol: float = 1e-5) -> None:
    """The engine's logits and every intermediate activation it keeps match the BN-folded model's on ``x``."""
    with torch.no_grad():
        torch.testing.assert_close(engine.run(x), model(x), atol=tol, rtol=tol)
    reference = node_values(model, x)
    for name, value in engine.features(x).items():
        torch.testing.assert_close(value, reference[name], atol=tol, rtol=tol, msg=f"activation {name}")


def no_cache(**kw) -> EngineSettings:
    return EngineSettings(use_cache=False, timing_runs=1, **kw)


@pytest.mark.parametrize("force", [None, "sparse", "dense", "torch"])
def test_outputs_and_every_intermediate_match(force):
    model = tiny_model()
    engine = compile_model(model, torch.randn(2, 3, 12, 12), threads=2, settings=no_cache(force=force))
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))  # fresh, not the example
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(engine.run(x), expected, atol=1e-5, rtol=1e-5)
    reference = node_values(model, x)
    features = engine.features(x)
    # the stem, both blocks' fused outputs and the shortcut: every conv output is checked
    assert len(features) >= 6
    for name, value in features.items():
        torch.testing.assert_close(value, reference[name], atol=1e-5, rtol=1e-5, msg=f"activation {name}")
    if force:
        assert all(c.startswith(force) for c in engine.choices().values())


@pytest.mark.parametrize("force", ["cols", "sparse"])
def test_phase_planes_are_filled_only_for_variants_that_read_them(force):
    # one 8x8 picture: every conv's output is whole vectors (8x8, 4x4), so each can run the cols kernel,
    # which gathers its taps from the input itself; the strided block's phase split is then dropped
    from bench.kernels.engine import _PhaseStep

    model = tiny_model(seed=2)
    engine = compile_model(model, torch.randn(1, 3, 8, 8), threads=2, settings=no_cache(force=force))
    assert all(c.startswith(force) for c in engine.choices().values())
    phase_steps = [s for s in engine.steps if isinstance(s, _PhaseStep)]
    assert len(phase_steps) == (0 if force == "cols" else 1)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    assert_matches(engine, model, x)


def test_one_picture_through_the_stack_kernel():
    # a 32x32 picture: the stride-1 3x3 convs with nonzeros (32x32 and 16x16 outputs) take a stack variant this
    # CPU's build offers, tile-major or not, with input chunks or not; the rest are timed as usual, and every
    # intermediate still matches
    model = tiny_model(seed=4)
    example = torch.randn(1, 3, 32, 32)
    offered = candidates(model, example, threads=2)
    stack = {name: [v for v in names if v.startswith("stack(")] for name, names in offered.items()}
    assert {name for name, v in stack.items() if v} == {"conv1", "layer1.conv2", "layer2.conv2", "extra"}
    # a different pick for each conv: tile-major and not alternate in the order offered
    stacked = {name: v[i % len(v)] for i, (name, v) in enumerate((n, v) for n, v in stack.items() if v)}
    assert any(v.endswith(",tiles)") for v in stacked.values()) and not all(v.endswith(",tiles)") for v in stacked.values())
    engine = compile_model(model, example, threads=2, settings=no_cache(), choices=stacked)
    assert {k: v for k, v in engine.choices().items() if k in stacked} == stacked
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    assert_matches(engine, model, x)


def test_a_forced_choice_this_cpu_does_not_offer_is_a_one_line_error():
    model = tiny_model(seed=4)
    example = torch.randn(1, 3, 32, 32)
    offered = candidates(model, example, threads=1)
    with pytest.raises(PruneBenchError, match=r"stack\(R=99,V=1\) is not offered for conv1 on this CPU's") as e:
        compile_model(model, example, threads=1, settings=no_cache(), choices={"conv1": "stack(R=99,V=1)"})
    assert ", ".join(offered["conv1"]) in str(e.value) and "\n" not in str(e.value)  # it lists what it offers
    # a kind that does not apply: the cols kernel needs output planes of whole vectors (10 x 10 is not)
    with pytest.raises(PruneBenchError, match="no cols variant applies to conv1 on this CPU's .* build; it offers"):
        compile_model(model, torch.randn(1, 3, 10, 10), threads=1, settings=no_cache(force="cols"))
    with pytest.raises(PruneBenchError, match="unknown kernel kind 'nonsense'"):
        compile_model(model, example, threads=1, settings=no_cache(force="nonsense"))


def test_the_engine_runs_the_build_it_was_compiled_with(isa):
    engine = compile_model(tiny_model(seed=4), torch.randn(1, 3, 8, 8), threads=1, settings=no_cache())
    assert engine.isa == build.widest(isa)
    if "avx2" in build.cpu_isas():  # the instruction set as a setting, beside the environment variable
        other = compile_model(tiny_model(seed=4), torch.randn(1, 3, 8, 8), threads=1,
                              settings=no_cache(isa="avx2"))
        assert other.isa == "avx2" and build.selected_isa() == isa  # the selection is left as it was


def test_outputs_depend_on_the_input():
    model = tiny_model(seed=3)
    engine = compile_model(model, torch.randn(4, 3, 12, 12), threads=1, settings=no_cache())
    y = engine.run(torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(9)))
    assert (y.std(0) > 1e-4).all()


def test_classifier_head_runs_in_the_kernel_and_follows_each_input():
    model = tiny_model(seed=4)
    engine = compile_model(model, torch.randn(3, 3, 12, 12), threads=2, settings=no_cache())
    # pool, flatten and fc leave no torch step: pool and fc write preallocated buffers, flatten is a view
    assert engine.output_slot in engine.fixed
    assert not any(getattr(step, "__qualname__", "").endswith("torch_step.<locals>.step") for step in engine.steps)
    for seed in (1, 2):  # a stale view or buffer would return the first input's answer for the second
        x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            torch.testing.assert_close(engine.run(x), model(x), atol=1e-5, rtol=1e-5)


def test_fused_epilogues_and_choices_cover_every_conv():
    engine = compile_model(tiny_model(), torch.randn(1, 3, 12, 12), threads=1, settings=no_cache())
    fused = {r.name: r.fused for r in engine.layers}
    assert fused == {
        "conv1": "relu",
        "layer1.conv1": "relu",
        "layer1.conv2": "add+relu",
        "layer2.conv1": "relu",
        "layer2.downsample.0": "",
        "layer2.conv2": "add+relu",
        "extra": "relu",  # torch.relu (a function, not a module) fuses too
    }
    sparsity = {r.name: r.sparsity for r in engine.layers}
    # layer1.conv2 is dense, but reads layer1.conv1's empty filters: where their bias is not above zero, the ReLU
    # makes those channels zero for every input, and the engine drops the weights that read them
    assert sparsity["layer1.conv1"] == 1.0 and sparsity["layer2.downsample.0"] == 0.0
    assert 0.0 < sparsity["layer1.conv2"] < 1.0
    assert all(r.times_ms and r.choice in r.times_ms for r in engine.layers)


def test_grouped_conv_runs_as_torch_op():
    model = tiny_model(seed=6, groups=2)
    x = torch.randn(2, 3, 12, 12)
    engine = compile_model(model, x, threads=1, settings=no_cache())
    assert "extra" not in engine.choices()
    with torch.no_grad():
        torch.testing.assert_close(engine.run(x), model(x), atol=1e-5, rtol=1e-5)


def test_batch_runs_in_chunks():
    model = tiny_model(seed=1)
    x = torch.randn(32, 3, 8, 8)
    engine = compile_model(model, x, threads=2, settings=no_cache(chunk=16))
    assert engine.chunk == 16 and len(engine.engines) == 2  # two chunks, two threads: one engine each
    first, second = engine.engines
    assert first.conv_steps.keys() == second.conv_steps.keys() and len(first.conv_steps) == len(first.layers)
    packs = [(getattr(first.steps[i], "packed", None), getattr(second.steps[second.conv_steps[name]], "packed", None))
             for name, i in first.conv_steps.items()]  # torch's conv2d, if chosen, packs nothing
    assert any(a is not None for a, _ in packs) and all(a is b for a, b in packs)  # one copy, read by both engines
    assert first.steps[0] is not second.steps[0]  # ... through ops of their own, on buffers of their own
    with torch.no_grad():
        torch.testing.assert_close(engine.run(x), model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(PruneBenchError, match="chunks of 16"):
        engine.run(x[:24])


def test_sixteen_image_chunks_through_the_winograd_kernel():
    # engines side by side share the transformed weights but each op has its own scratch
    model = tiny_model(seed=3)
    x = torch.randn(32, 3, 8, 8)
    offered = candidates(model, x, threads=2)
    chosen = {name: next(v for v in variants if v.startswith("winograd"))
              for name, variants in offered.items() if any(v.startswith("winograd") for v in variants)}
    assert {"conv1", "layer1.conv2", "extra"} <= chosen.keys()
    engine = compile_model(model, x, threads=2, settings=no_cache(chunk=16), choices=chosen)
    assert len(engine.engines) == 2 and all(engine.choices()[name] == v for name, v in chosen.items())
    with torch.no_grad():
        torch.testing.assert_close(engine.run(x), model(x), atol=1e-4, rtol=1e-4)
    reference = node_values(model, x[:16])
    for name, value in engine.features(x[:16]).items():
        torch.testing.assert_close(value, reference[name], atol=1e-4, rtol=1e-4, msg=f"activation {name}")


class ResidualReadTwice(nn.Module):
    """Two residual adds of the same stem output x: the first conv's add must leave x as it is."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = (nn.Conv2d(c, 8, 3, padding=1) for c in (3, 8, 8))

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.a(x) + x)
        return torch.relu(self.b(y) + x)


@pytest.mark.skipif(build.built_isa() == "generic", reason="the in-place kinds (winograd, jit) need AVX2 or AVX-512")
def test_a_conv_adds_its_residual_in_place_only_where_nothing_reads_it_later():
    model = ResidualReadTwice().eval()
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    offered = candidates(model, x, threads=2)
    chosen = {name: next(v for v in offered[name] if v.startswith("winograd")) for name in ("a", "b")}
    engine = compile_model(model, x, threads=2, settings=no_cache(chunk=16), choices=chosen)
    for one in engine.engines:
        ops = {name: one.steps[i] for name, i in one.conv_steps.items()}
        assert not ops["a"].in_place  # x is read again by b's add
        assert ops["b"].in_place and ops["b"].out.data_ptr() == ops["b"].residual.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(engine.run(x), model(x), atol=1e-4, rtol=1e-4)
    reference = node_values(model, x[:16])  # x itself too, though b's output has overwritten it since
    for name, value in engine.features(x[:16]).items():
        torch.testing.assert_close(value, reference[name], atol=1e-4, rtol=1e-4, msg=f"activation {name}")


class OwnInputAsResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.a = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return torch.relu(self.a(x) + x)


@pytest.mark.skipif(build.built_isa() == "generic", reason="the in-place kinds (winograd, jit) need AVX2 or AVX-512")
def test_a_conv_never_writes_over_a_residual_that_is_its_own_input():
    model = OwnInputAsResidual().eval()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    chosen = {"a": next(v for v in candidates(model, x, threads=1)["a"] if v.startswith("winograd"))}
    engine = compile_model(model, x, threads=1, settings=no_cache(chunk=16), choices=chosen)
    assert not engine.steps[engine.conv_steps["a"]].in_place  # nothing reads x after a, but a reads x itself
    with torch.no_grad():
        torch.testing.assert_close(engine.run(x), model(x), atol=1e-4, rtol=1e-4)


class DeadChannels(nn.Module):
    """a's channels 0 and 1 are zero for every input (empty filters, BatchNorm's bias zero, a ReLU), 3 too (its bias
    below zero); 2 is a constant 0.5, not zero. b's filter 5 is empty with a bias below zero, and its filter 6 reads
    only a's zero channels: both zero after b's ReLU, so c drops them too."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(8)
        self.stem, self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, bias=False), \
            nn.Conv2d(8, 8, 3, padding=1)
        self.bn, self.c = nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.a.weight[:4] = 0
            self.bn.bias.copy_(torch.tensor([0.0, 0.0, 0.5, -0.3, 0.1, 0.2, 0.3, 0.4]))
            self.b.weight[5] = 0
            self.b.bias[5] = -1.0
            self.b.weight[6] = 0
            self.b.weight[6, [0, 1, 3]] = torch.randn(3, 3, 3, generator=g)
            self.b.bias[6] = 0.0

    def forward(self, x):
        y = torch.relu(self.bn(self.a(torch.relu(self.stem(x)))))
        return self.c(torch.relu(self.b(y)))


def test_weights_on_channels_that_are_always_zero_are_dropped():
    model = DeadChannels().eval()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    engine = compile_model(model, x, threads=1, settings=no_cache(chunk=16))
    weight = {name: engine.steps[i].weight for name, i in engine.conv_steps.items()}
    assert (weight["b"][:, [0, 1, 3]] == 0).all() and (weight["b"][:, 2] == model.b.weight[:, 2]).all()
    assert (weight["c"][:, [5, 6]] == 0).all() and (weight["c"][:, :5] == model.c.weight[:, :5]).all()
    assert (model.b.weight[:, [0, 1, 3]] != 0).any()  # the model itself is left as it was
    with torch.no_grad():
        torch.testing.assert_close(engine.run(x), model(x), atol=1e-4, rtol=1e-4)


def test_choices_are_cached_on_disk(tmp_path, capsys):
    model = tiny_model(seed=2)
    example = torch.randn(1, 3, 12, 12)
    settings = EngineSettings(timing_runs=1, cache_dir=str(tmp_path))
    first = compile_model(model, example, threads=1, settings=settings)
    assert first.cache_hits == 0 and (tmp_path / "sparse_direct_choices.json").exists()
    shown = capsys.readouterr().err  # a progress bar names the layer being timed and how many there are
    assert "sparse-direct: choosing conv1 [1/7]" in shown and "choosing extra [7/7]" in shown
    second = compile_model(model, example, threads=1, settings=settings)
    assert second.cache_hits == len(second.layers) == 7
    assert "choosing" not in capsys.readouterr().err  # quiet when every choice comes from the cache
    assert second.choices() == first.choices()
    other_batch = compile_model(model, torch.randn(2, 3, 12, 12), threads=1, settings=settings)
    assert other_batch.cache_hits == 0  # keyed by batch size too


def test_backend_prepare_reports_choices_and_bytes(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path))
    backend = get_backend("sparse-direct-kernels")
    assert backend.unavailable("cpu") is None
    assert backend.unavailable("cuda")
    model = tiny_model(seed=4)
    prepared = backend.prepare(model, torch.randn(2, 3, 12, 12), "cpu", 1)
    with torch.no_grad():
        torch.testing.assert_close(prepared.to_torch(prepared.run(prepared.inputs)), model(prepared.inputs),
                                   atol=backend.atol, rtol=backend.rtol)
    info = prepared.info
    assert set(info["layer_choices"]) == {"conv1", "layer1.conv1", "layer1.conv2", "layer2.conv1",
                                          "layer2.downsample.0", "layer2.conv2", "extra"}
    assert sum(info["layer_kinds"].values()) == 7
    assert 0 < info["weight_bytes"] and info["dense_weight_bytes"] > 0


@functools.lru_cache(maxsize=1)
def resnet18_at_95_percent() -> nn.Module:
    """The suite's synthetic ResNet-18 pruned to 95%, made once for every instruction set tested (seconds)."""
    from bench.models import synthetic_resnet18

    return synthetic_resnet18(0.95)


def test_pruned_resnet18_at_95_percent_matches_in_every_layer():
    model = resnet18_at_95_percent()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    engine = compile_model(model, x, threads=2, settings=no_cache(force="sparse"))
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(engine.run(x), expected, atol=1e-4, rtol=1e-4)
    assert (expected[0] - expected[1]).abs().max() > 1e-3  # fc is not empty: the logits see the input
    reference = node_values(model, x)
    features = engine.features(x)
    assert len(features) >= 17  # stem, 8 blocks x 2 convs, with the shortcuts fused or separate
    for name, value in features.items():
        torch.testing.assert_close(value, reference[name], atol=1e-4, rtol=1e-4, msg=f"activation {name}")


def test_variants_are_timed_round_robin_and_slow_ones_dropped():
    # one call of each variant per round: a slow spell of the machine then falls on all variants alike
    import time

    from bench.timing import time_ops

    calls = []

    def op(name, seconds):
        def run():
            calls.append(name)
            time.sleep(seconds)

        return run

    times = time_ops({"fast": op("fast", 0.001), "slow": op("slow", 0.02), "near": op("near", 0.0015)}, rounds=4)
    assert calls[:3] == ["fast", "slow", "near"]  # the warm-up call of each
    assert calls[3:9] == ["fast", "slow", "near"] * 2  # two full rounds, interleaved
    assert calls[9:] == ["fast", "near"] * 2  # then "slow" (over 3x the best) is no longer timed
    assert times["fast"] < times["near"] < times["slow"]
    calls.clear()
    time_ops({"fast": op("fast", 0.001), "slow": op("slow", 0.02)}, rounds=4, keep=("slow",))
    assert calls.count("slow") == 5  # a baseline is timed every round, however slow it looks


def test_a_pause_keeps_one_ops_lingering_threads_off_the_next():
    import time

    from bench.timing import time_ops

    last = {"end": 0.0}

    def spinner():  # like ONNX Runtime: its threads go on spinning for a while after the call returns
        time.sleep(0.001)
        last["end"] = time.perf_counter()

    def victim():  # slowed while they do
        time.sleep(0.01 if time.perf_counter() - last["end"] < 0.02 else 0.001)

    ops = {"spinner": spinner, "victim": victim}
    assert time_ops(ops, rounds=3, give_up=None)["victim"] > 5
    assert time_ops(ops, rounds=3, give_up=None, pause=0.03)["victim"] < 5


class _FakeOp:
    """A stand-in conv op whose time depends on whether the step before it just ran (a cold cache)."""

    def __init__(self, state: dict, warm_s: float, cold_s: float):
        self.state, self.warm_s, self.cold_s, self.nbytes = state, warm_s, cold_s, 100

    def __call__(self):
        import time

        time.sleep(self.cold_s if self.state["cold"] else self.warm_s)
        self.state["cold"] = False


def test_in_pass_refinement_times_each_candidate_after_the_steps_before_it():
    # "quick" wins alone (1 ms on a warm cache) but takes 6 ms right after the step before it, which evicts
    # what it reads; "steady" takes 3 ms either way. Alone "quick" was chosen; inside the pass "steady" wins.
    from bench.kernels.engine import Engine, LayerRecord, _Refine, refine_in_pass

    state = {"cold": False}

    def evict():
        state["cold"] = True

    quick, steady = _FakeOp(state, 0.001, 0.006), _FakeOp(state, 0.003, 0.003)
    engine = Engine(1, 1)
    engine.input_slot = "x"
    engine.steps = [evict, quick]
    record = LayerRecord("c", (1, 1, 4, 4), (1, 1, 4, 4), (3, 3), 1, 144, 0.5, {"quick": 1.0, "steady": 3.0},
                         "quick", "", 0, 0)
    refine_in_pass(engine, [_Refine(1, record, {"quick": quick, "steady": steady}, "key")], torch.zeros(1),
                   rounds=3)
    assert engine.steps[1] is steady and record.choice == "steady"
    assert record.in_pass_ms["quick"] > 5 and 2.5 < record.in_pass_ms["steady"] < 5
    assert record.weight_bytes == 100


@pytest.mark.parametrize("refine", [True, False])
def test_one_picture_is_refined_in_the_pass_and_still_matches(refine, monkeypatch):
    import bench.kernels.choose as C

    if not refine:  # a pass too long to refine: every layer keeps the variant that won alone
        monkeypatch.setattr(C, "REFINE_MAX_PASS_MS", 0.0)
    model = tiny_model(seed=5)
    engine = compile_model(model, torch.randn(1, 3, 16, 16), threads=2, settings=no_cache())
    refined = [r for r in engine.layers if r.in_pass_ms]
    if refine:
        assert refined and all(r.choice in r.in_pass_ms and r.choice in r.times_ms for r in refined)
        # the fastest inside the pass, once charged for the phase planes its kind would keep in the pass
        cost = lambda r, k: r.in_pass_ms[k] + r.charge(k)  # noqa: E731
        assert all(cost(r, r.choice) == min(cost(r, k) for k in r.in_pass_ms) for r in refined)
    else:
        assert not refined
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    assert_matches(engine, model, x)


def test_a_timed_pass_attributes_every_step_and_times_the_batch_side_by_side():
    from bench.kernels.engine import OTHER_STEP, time_pass

    model = tiny_model(seed=2)
    x = torch.randn(32, 3, 8, 8)
    engine = compile_model(model, x, threads=2, settings=no_cache(chunk=16))
    t = time_pass(engine, x, runs=3)
    one = engine.engines[0]
    assert [label for label in t.labels if label != OTHER_STEP] == [r.name for r in one.layers]
    assert len(t.labels) == len(one.steps) and OTHER_STEP in t.labels  # the input copy, pool and classifier
    assert all(len(ts) == 3 and min(ts) > 0 for ts in t.steps_ms)
    for k, wall in enumerate(t.walls_ms):  # each pass end to end holds its steps
        assert sum(ts[k] for ts in t.steps_ms) <= wall
    assert (t.chunk, t.batch, t.engines, len(t.batch_ms)) == (16, 32, 2, 3)
    assert t.conv_ms(one.layers[0].name) == t.steps_ms[t.labels.index(one.layers[0].name)]
    with torch.no_grad():  # timing leaves the engine as it was
        torch.testing.assert_close(engine.run(x), model(x), atol=1e-5, rtol=1e-5)
    single = time_pass(compile_model(model, x[:1], threads=1, settings=no_cache()), x[:1], runs=2)
    assert (single.batch, single.batch_ms, single.engines) == (0, [], 1)  # one chunk: no batch timing
    with pytest.raises(PruneBenchError, match="at least 1"):
        time_pass(engine, x, runs=0)


def test_a_timed_pass_refuses_an_engine_whose_steps_do_not_match_its_layers():
    from bench.kernels.engine import time_pass

    engine = compile_model(tiny_model(seed=2), torch.randn(1, 3, 8, 8), threads=1, settings=no_cache())
    engine.layers.append(engine.layers[-1])
    with pytest.raises(PruneBenchError, match="do not match its layers"):
        time_pass(engine, torch.randn(1, 3, 8, 8), runs=1)


def test_a_near_tie_goes_to_onnx_runtime():
    from bench.backends import sparse_direct as sd

    assert sd.pick(9.0, 10.0) == sd.KERNELS_RAN  # 10% faster
    assert sd.pick(9.8, 10.0) == sd.ORT_RAN  # 2% faster: within the margin
    assert sd.pick(11.0, 10.0) == sd.ORT_RAN
    assert sd.pick(9.8, 10.0, margin=1.0) == sd.KERNELS_RAN


@pytest.mark.parametrize("margin, ran", [(1e-9, "sparse-direct-kernels"), (1e9, "onnxruntime")])
def test_sparse_direct_runs_the_whole_model_in_what_timed_faster_and_caches_it(monkeypatch, tmp_path, margin, ran):
    # the margin decides the outcome here, so that both ways are run: our kernels whole, or ONNX Runtime whole
    from bench.backends import sparse_direct as sd

    backend = get_backend("sparse-direct")
    reason = backend.unavailable("cpu")
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(sd, "BLOCKS", 2)
    monkeypatch.setattr(sd, "BLOCK_S", 0.01)
    monkeypatch.setattr(sd, "PAUSE_S", 0.0)
    monkeypatch.setattr(sd, "MARGIN", margin)
    model = tiny_model(seed=4)
    example = torch.randn(2, 3, 12, 12)
    timed = []
    monkeypatch.setattr(sd, "decide", lambda *a, real=sd.decide: timed.append(1) or real(*a))
    for attempt in range(2):
        prepared = backend.prepare(model, example, "cpu", 1)
        info = prepared.info
        assert info["ran"] == ran and info["ran_cached"] == (attempt == 1)
        assert set(info["ran_medians_ms"]) == {"sparse-direct-kernels", "onnxruntime"}
        assert all(ms > 0 for ms in info["ran_medians_ms"].values())
        assert ("layer_choices" in info) == (ran == "sparse-direct-kernels")
        with torch.no_grad():  # ONNX Runtime takes numpy inputs, our kernels tensors: the same example
            torch.testing.assert_close(prepared.to_torch(prepared.run(prepared.inputs)), model(example),
                                       atol=backend.atol, rtol=backend.rtol)
    assert timed == [1]  # the second prepare took the decision from the cache
    other = backend.prepare(model, torch.randn(3, 3, 12, 12), "cpu", 1)
    assert not other.info["ran_cached"]  # keyed by the batch too


def test_cache_keys_follow_the_sources_the_build_and_the_versions(monkeypatch):
    import bench.kernels.choose as C

    base = C.cache_key("conv", 1)
    assert C.cache_key("conv", 1) == base and C.cache_key("conv", 2) != base
    with monkeypatch.context() as m:
        m.setattr(C, "sources_digest", lambda: "edited")  # any kernel source or choosing code edited
        assert C.cache_key("conv", 1) != base
    with monkeypatch.context() as m:
        m.setattr(torch, "__version__", "0.0")
        assert C.cache_key("conv", 1) != base
    other = "avx2" if build.selected_isa() != "avx2" else "native"
    if other in build.cpu_isas():
        with build.using(other):
            assert C.cache_key("conv", 1) != base
    assert C.cache_key("conv", 1) == base


def test_strided_convs_of_the_jit_kind_read_their_input_in_place():
    # 16 images: the strided block's 3x3 conv (90% sparse) and its dense 1x1 shortcut both run code written for
    # them (jit), which steps through the input itself, so the pass splits no phase planes
    from bench.kernels.engine import _PhaseStep

    if build.built_isa() == "generic":
        pytest.skip("the jit kernel needs an AVX2 or AVX-512 build of the kernels")
    model = tiny_model(seed=3)
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    offers = candidates(model, x, threads=1)
    pin = {name: next(v for v in offers[name] if v.startswith("jit")) for name in ("layer2.conv1", "layer2.downsample.0")}
    engine = compile_model(model, x, threads=1, settings=no_cache(), choices=pin)
    assert not [s for s in engine.steps if isinstance(s, _PhaseStep)]
    assert_matches(engine, model, x, tol=1e-4)


def test_choosing_charges_the_phase_planes_to_the_variants_that_read_them():
    # "phased" (reads phase planes) takes 2 ms, "inplace" 3 ms; with 2 ms of phase planes charged to "phased",
    # "inplace" wins, and is recorded with each variant's own time
    from bench.kernels import choose as C
    from bench.kernels import kinds as K

    state = {"cold": False}
    phased, inplace = _FakeOp(state, 0.002, 0.002), _FakeOp(state, 0.003, 0.003)
    phased.kind, inplace.kind = K.KINDS["sweep"], K.KINDS["jit"]
    ops = {"sweep(R=1,V=4)": phased, "jit(R=24,V=1)": inplace}
    variants = [K.Variant("sweep", 1, 4), K.Variant("jit", 24, 1)]
    make = lambda v: ops[str(v)]  # noqa: E731
    settings = no_cache(refine_in_pass=False)
    assert C._time(variants, make, settings, 0.0)[0] is phased
    op, times, _ = C._time(variants, make, settings, 2.0)
    assert op is inplace and times["sweep(R=1,V=4)"] < times["jit(R=24,V=1)"]
