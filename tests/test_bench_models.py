"""The suite's models and options: synthetic models are pruned as asked and not trivial; options parse or fail clearly."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bench import models as bench_models
from bench.backends import BACKENDS, get_backend
from bench.conftest import BATCH_SIZES, QUICK_BATCH_SIZES, BenchSettings, Timing, make_plan
from bench.parity import ParityError, check_parity
from bench.test_latency import rounds_for
from prune.checkpoint import save_checkpoint
from prune.errors import PruneBenchError
from prune.mask import Mask
from prune.models import prunable_layers, resnet18_cifar


@pytest.fixture(scope="module")
def synthetic95():
    return bench_models.load(bench_models.ModelSpec(id="synthetic-s95", sparsity=0.95))


def test_synthetic_model_is_pruned_as_asked(synthetic95):
    mask = Mask.from_model(prunable_layers(synthetic95.model))
    assert abs(mask.zeros - round(0.95 * mask.numel)) <= 1
    facts = synthetic95.facts
    assert facts["weights"] == "synthetic" and facts["model_file"] == "synthetic"
    assert facts["sparsity"] == pytest.approx(0.95, abs=1e-6)
    assert 0 < facts["mac_sparsity"] < 0.95  # early, MAC-heavy layers keep more weights
    assert facts["nonzeros"] == sum(int((m.weight != 0).sum()) for m in prunable_layers(synthetic95.model, True).values())


def test_synthetic_model_is_not_trivial(synthetic95):
    """Even at 95% fc keeps weights and the logits depend on the input; BatchNorm statistics were measured."""
    model = synthetic95.model
    assert int((model.fc.weight != 0).sum()) > 0.2 * model.fc.weight.numel()
    with torch.inference_mode():
        a = model(bench_models.example_batch(4, seed=0))
        b = model(bench_models.example_batch(4, seed=1))
    assert (a - b).abs().max() > 0.1
    assert (a - a[0]).abs().max() > 0.1  # and across the batch
    assert not torch.allclose(model.bn1.running_var, torch.ones_like(model.bn1.running_var))
    assert torch.isfinite(a).all() and a.abs().max() < 100  # activations kept a sane scale


def test_synthetic_models_repeat():
    a = bench_models.synthetic_resnet18(0.5)
    b = bench_models.synthetic_resnet18(0.5)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


def test_specs_from_folder_and_files(tmp_path):
    for name in ("b.pt", "a.pt"):
        save_checkpoint(tmp_path / name, resnet18_cifar(), {"accuracy": 0.9, "target_sparsity": 0.0})
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    other = tmp_path / "sub"
    other.mkdir()
    save_checkpoint(other / "a.pt", resnet18_cifar(), {})
    specs = bench_models.checkpoint_specs(f"{tmp_path},{other / 'a.pt'}")
    assert [s.id for s in specs] == ["a", "b", "a-2"]
    loaded = bench_models.load(specs[0])
    assert loaded.facts["accuracy"] == 0.9 and loaded.facts["weights"] == "checkpoint"
    assert loaded.facts["model_file"] == str(tmp_path / "a.pt") and loaded.facts["sparsity"] < 1e-5


@pytest.mark.parametrize("arg, message", [("", "empty"), ("/nonexistent/x.pt", "no checkpoint"), ("EMPTY", "no \\*.pt")])
def test_spec_errors(arg, message, tmp_path):
    if arg == "EMPTY":
        arg = str(tmp_path)
    with pytest.raises(PruneBenchError, match=message):
        bench_models.checkpoint_specs(arg)


def test_plan_defaults_and_quick():
    plan = make_plan(BenchSettings())
    assert plan.batch_sizes == list(BATCH_SIZES)
    unstructured = [s.sparsity for s in plan.specs if s.structure == "unstructured"]
    assert unstructured == list(bench_models.SYNTHETIC_SPARSITIES)
    assert [s.sparsity for s in plan.specs if s.structure == "channel"] == list(bench_models.CHANNEL_MATCHES)
    assert plan.backends == [n for n in BACKENDS if get_backend(n).default]
    assert {"torch-dense", "torch-sparse", "onnxruntime"} <= set(plan.backends)
    assert plan.threads == bench_models.physical_cores() >= 1
    quick = make_plan(BenchSettings(quick=True))
    assert quick.batch_sizes == list(QUICK_BATCH_SIZES)
    assert [s.sparsity for s in quick.specs if s.structure == "unstructured"] == list(bench_models.QUICK_SPARSITIES)
    assert [s.id for s in quick.specs if s.structure == "channel"] == ["synthetic-channel-s90"]
    assert quick.timing.max_rounds < plan.timing.max_rounds
    chosen = make_plan(BenchSettings(backends="onnxruntime", batch_sizes="2, 4", threads=3, quick=True))
    assert chosen.backends == ["onnxruntime"] and chosen.batch_sizes == [2, 4] and chosen.threads == 3
    assert [(n, d) for n, d, _ in chosen.cases] == [("onnxruntime", "cpu"), ("onnxruntime", "cuda")]
    assert chosen.cases[0][2] is None  # runs on the CPU here


@pytest.mark.parametrize(
    "settings, message",
    [
        (BenchSettings(backends="nope"), "unknown backend 'nope': choose from"),
        (BenchSettings(batch_sizes="1,x"), "whole numbers"),
        (BenchSettings(batch_sizes="0"), ">= 1"),
        (BenchSettings(devices="tpu"), "unknown device"),
        (BenchSettings(threads=-1), ">= 1"),
        (BenchSettings(backends="torch-2:4", devices="cpu"), "no backend of torch-2:4 runs on cpu"),
    ],
)
def test_plan_errors(settings, message):
    with pytest.raises(PruneBenchError, match=message):
        make_plan(settings)


def test_check_parity_fails_on_wrong_and_on_trivial():
    expected = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    other = torch.tensor([[1.5, 2.0], [3.0, 4.5]])
    check_parity(expected + 1e-6, expected, other, 1e-4, 1e-4, "ok")
    with pytest.raises(ParityError, match="differs from dense") as wrong:
        check_parity(expected + 1e-2, expected, other, 1e-4, 1e-4, "wrong")
    assert "\n" not in str(wrong.value)  # one line, for the CLIs
    with pytest.raises(ParityError, match="pass trivially"):
        check_parity(expected, expected, expected + 1e-6, 1e-4, 1e-4, "constant")


def test_rounds_fill_the_target():
    timing = Timing(target_s=2.0, min_rounds=3, max_rounds=100)
    assert rounds_for(0.1, timing) == 20
    assert rounds_for(10.0, timing) == 3
    assert rounds_for(1e-5, timing) == 100


def test_physical_cores_is_sane():
    import os

    assert 1 <= bench_models.physical_cores() <= (os.cpu_count() or 1)


def test_synthetic_channel_model_matches_its_unstructured_partner_by_macs(one_thread):
    spec = bench_models.model_spec("synthetic-channel:0.9")
    assert spec.id == "synthetic-channel-s90" and spec.structure == "channel"
    channel = bench_models.load(spec)
    partner = bench_models.synthetic_mac_sparsity(0.9)
    facts = channel.facts
    assert facts["structure"] == "channel" and facts["sparsity"] == 0.0  # no zeros: a smaller dense model
    assert abs(facts["mac_sparsity"] - partner) <= 0.02  # channel granularity
    assert facts["macs_per_image"] < 0.35 * 555_422_720  # the full CIFAR ResNet-18's MACs per image


@pytest.mark.skipif(importlib.util.find_spec("foolbox") is None,
                    reason="foolbox is not installed (pip install --no-deps foolbox==3.3.4; make install does it)")
def test_a_checkpoint_is_checked_on_its_own_data_sets_images(tmp_path):
    # foolbox's 20 real CIFAR-10 images: the pool wraps round, and each seed takes another run of it
    save_checkpoint(tmp_path / "m.pt", resnet18_cifar(), {"dataset": "cifar10-samples"})
    (spec,) = bench_models.checkpoint_specs(str(tmp_path / "m.pt"))
    bm = bench_models.load(spec)
    assert bm.facts["inputs"] == "20 test images of cifar10-samples" and bm.images.shape == (20, 3, 32, 32)
    a, b = bm.example(16, seed=0), bm.example(16, seed=1)
    torch.testing.assert_close(a[:4], bm.images[:4])
    torch.testing.assert_close(b[:4], bm.images[16:20])
    torch.testing.assert_close(b[4:8], bm.images[:4])  # wrapped round
    torch.testing.assert_close(bm.reference(16, seed=1), bm.model(b).float())


def test_without_its_data_set_a_checkpoint_is_checked_on_noise_and_says_why(tmp_path, monkeypatch):
    import prune.data

    def absent(settings):
        raise PruneBenchError(f"no {settings.dataset} here")

    monkeypatch.setattr(prune.data, "load_data", absent)
    save_checkpoint(tmp_path / "m.pt", resnet18_cifar(), {"dataset": "fashion-mnist"})
    (spec,) = bench_models.checkpoint_specs(str(tmp_path / "m.pt"))
    bm = bench_models.load(spec)
    assert bm.images is None and "no fashion-mnist here" in bm.facts["inputs"]
    torch.testing.assert_close(bm.example(4, seed=1), bench_models.example_batch(4, seed=1))
