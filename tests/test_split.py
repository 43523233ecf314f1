"""Cutting a model at single tensors (bench.split) and the hybrid plans of the sparse-direct backend."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bench import kernels as K
from bench.backends import get_backend
from bench.backends import sparse_direct as sd
from bench.fold import fold_batchnorm
from bench.split import cut_nodes, cut_values, match_onnx_cuts, onnx_prefix, suffix_module
from exporters.onnx import OnnxSettings, export_model
from prune.errors import PruneBenchError
from tests.test_sparse_direct import tiny_model

SHAPE = (3, 12, 12)


@pytest.fixture(scope="module", autouse=True)
def built():
    reason = K.unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model(seed=7)
    return model, fold_batchnorm(model)


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_model(tiny[0], path, OnnxSettings(), input_shape=SHAPE, force=True)
    return path


def fresh(n: int = 3, seed: int = 21) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def test_cuts_are_the_stem_and_block_outputs(tiny):
    _, gm = tiny
    # conv1 -> relu: only the ReLU is a cut (cutting before it would split the conv from its fused ReLU);
    # the blocks' final ReLUs; the conv outside the blocks with its ReLU; then pool, flatten and fc
    assert [n.name for n in cut_nodes(gm)] == ["relu", "layer1_relu_1", "layer2_relu_1", "relu_1", "pool", "flatten", "fc"]


def test_resnet18_cuts_at_every_block(tiny):
    from bench.models import synthetic_resnet18

    names = [n.name for n in cut_nodes(fold_batchnorm(synthetic_resnet18(0.5)))]
    blocks = [f"layer{i}_{j}_relu_1" for i in range(1, 5) for j in range(2)]
    assert names == ["maxpool", *blocks, "avgpool", "flatten", "fc"]


def test_suffix_from_each_cut_gives_the_model_output(tiny):
    model, gm = tiny
    x = fresh()
    with torch.no_grad():
        expected = model(x)
        values = cut_values(gm, x)
        assert set(values) == {"relu", "layer1_relu_1", "layer2_relu_1", "relu_1", "pool"}  # the 4-D cuts
        for name, value in values.items():
            suffix = suffix_module(gm, next(n for n in gm.graph.nodes if n.name == name))
            assert len(list(suffix.graph.nodes)) < len(list(gm.graph.nodes))
            torch.testing.assert_close(suffix(value), expected, atol=1e-5, rtol=1e-5, msg=name)


def test_a_node_that_is_no_cut_is_refused(tiny):
    _, gm = tiny
    inside = next(n for n in gm.graph.nodes if n.name == "layer1_conv1")  # the block's input is needed after it
    with pytest.raises(PruneBenchError, match="more than its value"):
        suffix_module(gm, inside)


def test_every_cut_has_its_onnx_tensor_and_prefix(tiny, tiny_onnx):
    _, gm = tiny
    x = fresh(2)
    cuts = match_onnx_cuts(tiny_onnx, gm, x)
    assert [c.node for c in cuts] == ["relu", "layer1_relu_1", "layer2_relu_1", "relu_1", "pool"]
    values = cut_values(gm, x)
    other = cut_values(gm, fresh(2, seed=3))
    for cut in cuts:
        session = ort.InferenceSession(onnx_prefix(tiny_onnx, cut.tensor), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        torch.testing.assert_close(got, values[cut.node], atol=1e-5, rtol=1e-5, msg=cut.node)
        assert not torch.allclose(got, other[cut.node], atol=1e-3)  # the prefix follows its input


def test_every_plan_matches_dense_on_fresh_inputs(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path))
    model, _ = tiny
    plans, facts = sd.build_plans(model, fresh(2, seed=0), threads=2)
    assert set(plans) == {sd.OWN, sd.ORT} | {f"{sd.ORT}->{c}" for c in ("relu", "layer1_relu_1", "layer2_relu_1")}
    convs = set(plans[sd.OWN].engine.choices())
    for name, plan in plans.items():
        ours = set(plan.engine.choices()) if plan.engine is not None else set()
        assert ours.isdisjoint(plan.onnx_layers) and ours | set(plan.onnx_layers) == convs, name
        for seed in (5, 6):  # twice: a stale buffer would give the first input's answer again
            x = fresh(2, seed=seed)
            with torch.no_grad():
                torch.testing.assert_close(plan.run(x), model(x), atol=1e-4, rtol=1e-4, msg=name)
        y = plan.run(fresh(2, seed=7))
        assert (y[0] - y[1]).abs().max() > 1e-3, name  # the logits see the input
    assert facts["onnx_zero_weights"] > 0


def sleeper(seconds):
    """A fake plan's call: ``seconds`` of sleep, then logits of zeros."""
    def run(x):
        time.sleep(seconds)
        return torch.zeros(x.shape[0], 5)

    return run


def test_the_fastest_plan_is_kept(monkeypatch):
    monkeypatch.setattr(sd, "PLAN_CONFIRM_BLOCK_S", 0.06)  # short blocks: sleeps of a few ms
    plans = {name: sd.Plan(name, sleeper(s), [f"conv{i}" for i in range(k)]) for name, s, k in
             [(sd.OWN, 0.012, 0), (sd.ORT, 0.008, 3), (f"{sd.ORT}->relu", 0.002, 1)]}
    monkeypatch.setattr(sd, "build_plans", lambda model, example, threads, only: (plans, {"onnx_bytes": 1}))
    best, info = sd.plan_hybrid(None, torch.zeros(1, *SHAPE), threads=1, rounds=3, use_cache=False)
    assert best.name == info["plan"] == f"{sd.ORT}->relu"
    assert info["onnxruntime_layers"] == ["conv0"]
    assert list(info["plan_times_ms"]) == [f"{sd.ORT}->relu", sd.ORT, sd.OWN]  # fastest first
    # and again against ONNX Runtime, with our kernels alone
    assert list(info["plan_confirm_ms"]) == [f"{sd.ORT}->relu", sd.ORT, sd.OWN]


def test_a_plan_that_was_fast_only_at_first_is_not_kept(monkeypatch):
    monkeypatch.setattr(sd, "PLAN_CONFIRM_BLOCK_S", 0.06)  # short blocks: sleeps of a few ms
    calls = {"n": 0}

    def lucky(x):  # fast for the first round's calls (a warm-up and 3 x (settle + timed)), slow after
        calls["n"] += 1
        time.sleep(0.002 if calls["n"] <= 7 else 0.02)
        return torch.zeros(x.shape[0], 5)

    plans = {sd.ORT: sd.Plan(sd.ORT, sleeper(0.008), ["conv0"]), f"{sd.ORT}->relu": sd.Plan(f"{sd.ORT}->relu", lucky, [])}
    monkeypatch.setattr(sd, "build_plans", lambda model, example, threads, only: (plans, {"onnx_bytes": 1}))
    best, info = sd.plan_hybrid(None, torch.zeros(1, *SHAPE), threads=1, rounds=3, use_cache=False)
    assert list(info["plan_times_ms"])[0] == f"{sd.ORT}->relu"  # the first round fell for it
    assert list(info["plan_confirm_ms"]) == [sd.ORT, f"{sd.ORT}->relu"]  # the second did not
    assert best.name == info["plan"] == sd.ORT


def test_a_close_runner_up_is_confirmed_too(monkeypatch):
    calls = {"n": 0}

    def lucky(x):  # the round's winner (2 ms), then 6 ms
        calls["n"] += 1
        time.sleep(0.002 if calls["n"] <= 7 else 0.006)
        return torch.zeros(x.shape[0], 5)

    hybrid, near, far = f"{sd.ORT}->relu", f"{sd.ORT}->near", f"{sd.ORT}->far"
    monkeypatch.setattr(sd, "PLAN_RUNNER_UP", 2.0)  # wide, so that sleep's jitter cannot move the plans across it
    monkeypatch.setattr(sd, "PLAN_CONFIRM_BLOCK_S", 0.06)
    plans = {sd.ORT: sd.Plan(sd.ORT, sleeper(0.014), ["conv0"]), hybrid: sd.Plan(hybrid, lucky, []),
             near: sd.Plan(near, sleeper(0.003), []),  # second in the round, within PLAN_RUNNER_UP
             far: sd.Plan(far, sleeper(0.0045), []),  # third: not confirmed
             sd.OWN: sd.Plan(sd.OWN, sleeper(0.009), [])}  # last, and confirmed all the same
    monkeypatch.setattr(sd, "build_plans", lambda model, example, threads, only: (plans, {"onnx_bytes": 1}))
    best, info = sd.plan_hybrid(None, torch.zeros(1, *SHAPE), threads=1, rounds=3, use_cache=False)
    assert list(info["plan_times_ms"])[0] == hybrid  # the round's winner
    assert set(info["plan_confirm_ms"]) == {hybrid, near, sd.OWN, sd.ORT}  # with the runner-up, not the far one
    assert best.name == info["plan"] == near


def test_the_confirmation_times_plans_in_blocks_as_the_ab_does(monkeypatch):
    state = {"last": 0.0, "streak": 0}

    def sprinter(x):  # 1 ms for the first two calls after a rest, 6 ms back to back: single calls flatter it
        now = time.perf_counter()
        state["streak"] = 0 if now - state["last"] > 0.03 else state["streak"] + 1
        time.sleep(0.001 if state["streak"] < 2 else 0.006)
        state["last"] = time.perf_counter()
        return torch.zeros(x.shape[0], 5)

    hybrid = f"{sd.ORT}->relu"  # in the round 3x faster than our kernels alone: far beyond PLAN_RUNNER_UP
    monkeypatch.setattr(sd, "PLAN_CONFIRM_BLOCKS", 4)
    monkeypatch.setattr(sd, "PLAN_CONFIRM_BLOCK_S", 0.06)
    plans = {sd.ORT: sd.Plan(sd.ORT, sleeper(0.012), ["conv0"]), hybrid: sd.Plan(hybrid, sprinter, []),
             sd.OWN: sd.Plan(sd.OWN, sleeper(0.003), [])}
    monkeypatch.setattr(sd, "build_plans", lambda model, example, threads, only: (plans, {"onnx_bytes": 1}))
    best, info = sd.plan_hybrid(None, torch.zeros(1, *SHAPE), threads=1, rounds=3, use_cache=False)
    assert list(info["plan_times_ms"])[0] == hybrid  # the round: one call after an untimed one, after a pause
    assert info["plan_confirm_ms"][hybrid] > 4.5 > info["plan_confirm_ms"][sd.OWN]  # back to back: 6 ms against 3
    assert set(info["plan_confirm_ms"]) == {hybrid, sd.OWN, sd.ORT}  # our kernels alone are always confirmed
    assert best.name == info["plan"] == sd.OWN


def test_a_plan_must_beat_onnx_runtime_by_the_margin():
    assert sd.choose_plan({sd.ORT: 10.0, sd.OWN: 9.0, f"{sd.ORT}->relu": 9.9}) == sd.OWN
    near = 10.0 / sd.PLAN_MARGIN * 1.01  # faster than ONNX Runtime, but by less than the margin: a tie
    assert sd.choose_plan({sd.ORT: 10.0, sd.OWN: near}) == sd.ORT
    assert sd.choose_plan({sd.OWN: 3.0, f"{sd.ORT}->relu": 2.0}) == f"{sd.ORT}->relu"  # no baseline timed


def test_a_prefix_plan_must_beat_our_kernels_alone_by_the_margin():
    prefix = f"{sd.ORT}->relu"
    tie = 8.0 / sd.PLAN_PREFIX_MARGIN * 1.01  # faster than our kernels alone, but by less than the margin
    assert sd.choose_plan({sd.ORT: 10.0, sd.OWN: 8.0, prefix: tie}) == sd.OWN
    assert sd.choose_plan({sd.ORT: 10.0, sd.OWN: 8.0, prefix: 7.0}) == prefix  # by more: the prefix
    # the tie goes to our kernels alone, which must then beat ONNX Runtime by its own margin
    assert sd.choose_plan({sd.ORT: 8.2, sd.OWN: 8.0, prefix: 7.7}) == sd.ORT


def test_backend_runs_the_chosen_plan(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path))
    backend = get_backend("sparse-direct")
    assert backend.unavailable("cpu") is None and backend.unavailable("cuda")
    model, _ = tiny
    prepared = backend.prepare(model, fresh(2, seed=0), "cpu", 2)
    info = prepared.info
    decided_by = info["plan_confirm_ms"] or info["plan_times_ms"]
    assert info["plan"] in info["plan_times_ms"] and info["plan"] == sd.choose_plan(decided_by)
    x = fresh(2, seed=9)
    as_input = (lambda t: t.numpy()) if info["plan"] == sd.ORT else (lambda t: t)  # the ORT plan takes numpy
    with torch.no_grad():
        torch.testing.assert_close(prepared.to_torch(prepared.run(as_input(x))), model(x), atol=1e-4, rtol=1e-4)
    if info["plan"] != sd.ORT:
        assert set(info["layer_choices"]).isdisjoint(info["onnxruntime_layers"])
    assert not info["plan_cached"]
    again = backend.prepare(model, fresh(2, seed=0), "cpu", 2)  # the plan comes from the cache: nothing timed
    assert again.info["plan_cached"] and again.info["plan"] == info["plan"] and again.info["plan_times_ms"] == {}
    with torch.no_grad():
        torch.testing.assert_close(again.to_torch(again.run(as_input(x))), model(x), atol=1e-4, rtol=1e-4)
    other = backend.prepare(model, fresh(3, seed=0), "cpu", 2)  # another batch size: timed afresh
    assert not other.info["plan_cached"]


def test_the_onnx_runtime_plan_is_the_onnxruntime_backends_call(tiny, monkeypatch, tmp_path):
    # where the plan is ONNX Runtime whole, sparse-direct returns what the onnxruntime backend does: numpy in,
    # the session's output out, no torch conversions around it
    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(sd, "choose_plan", lambda times: sd.ORT)
    model, _ = tiny
    example = fresh(2, seed=0)
    prepared = get_backend("sparse-direct").prepare(model, example, "cpu", 2)
    reference = get_backend("onnxruntime").prepare(model, example, "cpu", 2)
    assert prepared.info["plan"] == sd.ORT and prepared.info["onnxruntime_layers"]
    assert isinstance(prepared.inputs, np.ndarray) and np.array_equal(prepared.inputs, reference.inputs)
    y = prepared.run(prepared.inputs)
    assert isinstance(y, np.ndarray) and np.array_equal(y, reference.run(reference.inputs))
    with torch.no_grad():
        torch.testing.assert_close(prepared.to_torch(y), model(example), atol=1e-4, rtol=1e-4)


def test_engine_still_runs_after_its_threads_rest():
    x = torch.randn(1, 16, 8, 8)
    w = torch.randn(16, 16, 3, 3)
    first = K.sparse_conv2d(x, w, padding=1, threads=2)
    K.rest_threads()
    time.sleep(0.01)  # the workers are asleep now, not spinning
    np.testing.assert_allclose(K.sparse_conv2d(x, w, padding=1, threads=2).numpy(), first.numpy(), rtol=1e-6)
