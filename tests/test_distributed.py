"""Data-parallel training: backend choice, the global batch split among ranks, resume, and torchrun with gloo on the CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from prune import distributed
from prune.data import DataSettings, load_data
from prune.distributed import ShardedBatches, World
from prune.errors import PruneBenchError
from prune.train import Resume, TrainSettings, fit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

pytestmark = pytest.mark.usefixtures("one_thread")


def test_backend_is_gloo_on_the_cpu_nccl_on_cuda_and_can_be_chosen():
    assert distributed.choose_backend("auto", torch.device("cpu")) == "gloo"
    assert distributed.choose_backend("auto", torch.device("cuda")) == "nccl"
    assert distributed.choose_backend("gloo", torch.device("cuda")) == "gloo"
    with pytest.raises(PruneBenchError, match="needs CUDA"):
        distributed.choose_backend("nccl", torch.device("cpu"))
    with pytest.raises(PruneBenchError, match="choose one of auto, gloo, nccl"):
        TrainSettings(dist_backend="mpi").check()


def test_the_global_batch_must_divide_among_the_ranks():
    assert distributed.per_rank_batch(128, World(0, 4)) == 32
    with pytest.raises(PruneBenchError) as e:
        distributed.per_rank_batch(10, World(0, 4))
    assert "\n" not in str(e.value) and "multiple of 4" in str(e.value)


def test_without_torchrun_the_world_is_one_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.setup("cpu") == World() and World().is_main and not World().parallel
    assert distributed.broadcast("x") == "x"


@pytest.mark.parametrize("n", [40, 37])  # 37: the last global batch is short (and padded by the sampler at 2 ranks)
def test_ranks_together_see_the_global_batch_of_one_process(n):
    """Two ranks' batches of every step, interleaved, are one process's batch: same images, same augmentation."""
    data = load_data(DataSettings("synthetic", train_limit=n, test_limit=8))
    cpu = torch.device("cpu")
    one = ShardedBatches(data.train, data, 8, World(0, 1), cpu, seed=5)
    two = [ShardedBatches(data.train, data, 8, World(r, 2), cpu, seed=5) for r in (0, 1)]
    for epoch in (0, 1):
        for b in [one, *two]:
            b.set_epoch(epoch)
        steps = list(one)
        shares = [list(b) for b in two]
        assert len(steps) == len(shares[0]) == len(shares[1]) == (n + 7) // 8
        for k, (x, y) in enumerate(steps):
            (x0, y0), (x1, y1) = shares[0][k], shares[1][k]
            m = len(y)  # the ranks' last batches may hold an image more: the sampler pads the order
            xs = torch.stack([x0, x1], 1).flatten(0, 1)[:m]
            ys = torch.stack([y0, y1], 1).flatten(0, 1)[:m]
            assert torch.equal(ys, y)
            assert torch.equal(xs, x)
    one.set_epoch(0)
    first = next(iter(one))[1]
    one.set_epoch(1)
    assert not torch.equal(next(iter(one))[1], first)  # a new order each epoch


def test_a_killed_fit_resumes_from_its_last_epoch_and_ends_where_an_uninterrupted_one_does(synthetic, tmp_path):
    from conftest import tiny_net

    settings = TrainSettings(epochs=3, batch_size=64, lr=0.05, workers=0, progress=False, device="cpu", seed=1)

    def train(resume=None, kill_at=None):
        torch.manual_seed(0)
        model = tiny_net()
        torch.manual_seed(123)  # the augmentation draws from the global generator

        def on_step(step):
            if step == kill_at:
                raise KeyboardInterrupt

        try:
            history = fit(model, synthetic, settings, resume=resume, on_step=on_step)
        except KeyboardInterrupt:
            return None, None
        return model, history

    whole, history = train()
    state = Resume(tmp_path / "fit.resume", {"case": "t"})
    assert train(state, kill_at=4 * 2 + 1) == (None, None)  # killed in the third epoch: two saved
    assert torch.load(state.path, weights_only=True)["epoch"] == 2
    torch.manual_seed(999)  # the resumed run restores the generators itself
    resumed, again = train(state)
    for p, q in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(p, q)
    assert [h["loss"] for h in again] == [h["loss"] for h in history]
    other = Resume(state.path, {"case": "u"})
    with pytest.raises(PruneBenchError, match="another training"):
        fit(tiny_net(), synthetic, settings, resume=other)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n: int, *args, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def world_of_one(monkeypatch):
    """This process as a torchrun world of one (gloo), torn down afterwards."""
    for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())).items():
        monkeypatch.setenv(key, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_torchrun_two_ranks_match_one_process_with_the_same_global_batch(tmp_path, world_of_one):
    """torchrun --nproc-per-node 2 (gloo): both ranks hold the same weights and masks, the sparsity is exact,
    and the loss of every step equals one process's to 1e-5 relative (the all-reduce sums in another order)."""
    from tests import ddp_fit

    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    done = _torchrun(2, "-m", "tests.ddp_fit", two)
    assert done.returncode == 0, done.stderr[-2000:]
    ddp_fit.run(one)  # the same fine-tuning, one process, in this one
    ranks = [torch.load(two / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    reference = torch.load(one / "rank0.pt", weights_only=True)
    assert set(ranks[0]) == set(ranks[1]) == set(reference)
    masks = [k for k in ranks[0] if k.endswith("weight_mask")]
    assert len(masks) == 3
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # identical on both ranks, bit for bit
        torch.testing.assert_close(ranks[0][key], reference[key], rtol=1e-4, atol=1e-6)
    for key in masks:
        keep = ranks[0][key].bool()
        assert torch.equal(keep, reference[key].bool())
        assert not ranks[0][key.replace("_mask", "_orig")][~keep].any()  # pruned weights are exactly zero
    zeros = sum(int((~ranks[0][k].bool()).sum()) for k in masks)
    total = sum(ranks[0][k].numel() for k in masks)
    assert zeros == round(0.5 * total)  # the exact sparsity the strategy was asked for
    saved = torch.load(two / "model.pt", weights_only=True)  # rank 0's checkpoint, masks made permanent
    assert saved["meta"] == {"processes": 2}
    assert sum(int((v == 0).sum()) for k, v in saved["state_dict"].items() if k.endswith("weight")) >= zeros
    curves = [json.loads((d / "history.json").read_text()) for d in (two, one)]
    assert [c["world"] for c in curves] == [2, 1]
    steps = [[s for h in c["history"] for s in h["step_losses"]] for c in curves]
    assert len(steps[0]) == len(steps[1]) == 8  # 64 images, global batch 16, 2 epochs
    assert steps[0] == pytest.approx(steps[1], rel=1e-5)
    assert steps[0][0] != pytest.approx(steps[0][-1], rel=1e-3)  # the curve moves: the comparison is not of constants


def test_under_torchrun_a_batch_that_does_not_divide_is_refused_before_any_work(base_checkpoint, tmp_path, monkeypatch, capsys):
    from prune.cli import main

    for key, value in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0").items():  # as torchrun sets them for rank 0 of 2
        monkeypatch.setenv(key, value)
    argv = ["finetune", base_checkpoint, "--out", tmp_path / "ft.pt", "--dataset", "synthetic", "--batch-size", "3", "--device", "cpu"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err == "error: --batch-size 3 is the global batch and does not divide among 2 processes: use a multiple of 2\n"
    assert not dist.is_initialized() and not (tmp_path / "ft.pt").exists()


def test_a_pruning_run_killed_in_its_second_round_resumes_there_with_its_masks(synthetic, tmp_path, monkeypatch):
    """Iterative pruning, 2 rounds x 2 epochs, killed after round 2's first epoch: the rerun prunes nothing
    again, goes on from that epoch and ends with the weights and masks of an uninterrupted run."""
    from conftest import tiny_net

    import prune.train
    from prune.mask import Mask
    from prune.models import prunable_layers
    from prune.train import PruneSettings, prune_and_finetune

    settings = TrainSettings(epochs=2, batch_size=64, lr=0.01, schedule="cosine", workers=0, progress=False, device="cpu")
    prune_settings = PruneSettings(sparsity=0.75, rounds=2)

    def run(resume=None):
        model = tiny_net()
        torch.manual_seed(7)
        outcome = prune_and_finetune(model, synthetic, prune_settings, settings, desc="case", resume=resume)
        return model, outcome

    whole, outcome = run()
    state = tmp_path / "case.pt"
    real, saves = prune.train._save_resume, []

    def save_then_die(*args):
        real(*args)
        saves.append(1)
        if len(saves) == 3:  # round 1: epochs 1, 2; round 2: epoch 1
            raise KeyboardInterrupt

    monkeypatch.setattr(prune.train, "_save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(state)
    monkeypatch.setattr(prune.train, "_save_resume", real)
    saved = torch.load(state, weights_only=True)
    assert (saved["tag"]["round"], saved["epoch"]) == (1, 1) and len(saved["note"]["log"]) == 1
    resumed, again = run(state)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert Mask.from_model(prunable_layers(resumed)).zeros == outcome.mask.zeros == again.mask.zeros
    assert [r["round"] for r in again.rounds] == [1, 2]
    assert [h["loss"] for r in again.rounds for h in r["epochs"]] == [h["loss"] for r in outcome.rounds for h in r["epochs"]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: NCCL and cuda:LOCAL_RANK need one")
def test_torchrun_on_cuda_uses_nccl_one_gpu_per_rank(tmp_path):
    n = min(2, torch.cuda.device_count())
    done = _torchrun(n, "-m", "tests.ddp_fit", tmp_path, "cuda")
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(n)]
    assert all(torch.equal(ranks[0][k], other[k]) for other in ranks[1:] for k in ranks[0])
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["world"] == n and history["backend"] == "nccl"
