"""Training, evaluation and time per image."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_net
from prune.data import batches
from prune.errors import PruneBenchError
from prune.train import EvalSettings, TrainSettings, evaluate, finetune_settings, fit, time_per_image

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: faster on shared 2-core machines


def settings(**kw) -> TrainSettings:
    return TrainSettings(**{**dict(epochs=1, batch_size=32, lr=0.1, workers=0, progress=False, device="cpu"), **kw})


def test_fit_lowers_the_loss_and_reports_each_epoch(synthetic):
    model = tiny_net()
    _, loss_before = evaluate(model, synthetic)
    history = fit(model, synthetic, settings(epochs=2))
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["seconds"] > 0 and 0 <= h["train_accuracy"] <= 1 for h in history)
    assert history[-1]["lr_end"] < 0.1 * 0.05  # one-cycle ends near zero
    assert evaluate(model, synthetic)[1] < loss_before


def test_the_same_seed_trains_the_same_weights(synthetic):
    def run(seed):
        torch.manual_seed(0)  # the seed also drives the augmentation done in the main process
        model = tiny_net()
        fit(model, synthetic, settings(seed=seed, schedule="cosine"))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    a, b = run(0), run(0)
    assert torch.equal(a, b)
    assert not torch.equal(a, run(1))


def test_zero_epochs_changes_nothing(synthetic):
    model = tiny_net()
    before = [p.detach().clone() for p in model.parameters()]
    assert fit(model, synthetic, settings(epochs=0)) == []
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_evaluate_matches_a_hand_computation(synthetic):
    model = tiny_net().eval()
    accuracy, loss = evaluate(model, synthetic, batch_size=37)
    x = torch.cat([x for x, _ in batches(synthetic.test, synthetic, 1000, False, "cpu")])
    with torch.no_grad():
        out = model(x)
    assert accuracy == pytest.approx(float((out.argmax(1) == synthetic.test.labels).float().mean()))
    assert loss == pytest.approx(float(F.cross_entropy(out, synthetic.test.labels)), rel=1e-5)


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.fc(x.flatten(1))


def test_time_per_image_warms_up_then_times_in_eval_mode():
    model = Counting().train()
    seconds = time_per_image(model, "cpu", batch=4, warmup=3, iters=5)
    assert seconds > 0
    assert model.calls == [4] * 8
    assert not model.training


@pytest.mark.parametrize(
    "bad",
    [dict(schedule="step"), dict(amp="fp8"), dict(epochs=-1), dict(batch_size=0), dict(lr=0.0), dict(workers=-1), dict(device="tpu")],
)
def test_bad_train_settings_are_one_line_errors(bad):
    with pytest.raises(PruneBenchError) as e:
        dataclasses.replace(TrainSettings(), **bad).check()
    assert "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so --device cuda is valid here")
def test_asking_for_cuda_without_a_gpu_says_so():
    with pytest.raises(PruneBenchError, match="no CUDA GPU"):
        TrainSettings(device="cuda").check()


def test_bad_eval_settings_are_refused():
    with pytest.raises(PruneBenchError):
        EvalSettings(time_iters=0).check()


def test_finetune_defaults_are_the_seed_studys_learning_rate():
    s = finetune_settings()
    assert s.lr == 0.0005 and s.momentum > 0 and s.epochs == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: AMP, channels_last and resident data need one")
@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_cuda_training_with_mixed_precision(synthetic, amp):
    model = tiny_net()
    _, before = evaluate(model, synthetic, "cuda")
    fit(model, synthetic, settings(epochs=3, device="cuda", amp=amp))
    assert next(model.parameters()).is_cuda
    assert evaluate(model, synthetic, "cuda")[1] < before
    assert time_per_image(model, "cuda", warmup=2, iters=3) > 0
