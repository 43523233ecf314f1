"""Synthetic ResNet-18s pruned otherwise than the suite's default (global magnitude), as checkpoints for bench.ab.

    python experiments/other_pruned.py OUT_FOLDER [--force]

- ``uniform-s90``: every conv (and fc) pruned to 90% by its own magnitudes, so the early, costly layers
  are as sparse as the late ones (90% of the MACs pruned; the limit is 10x).
- ``emptied-s90``: the default 90% model with a quarter of every conv's output channels emptied (whole
  filters zero) and one conv (layer4.1.conv1) left with no weight at all.
- ``iterative-s90``: the dense synthetic model pruned to 90% by ``prune``'s own iterative path (three rounds of
  global magnitude pruning, each followed by one epoch of fine-tuning with the masks attached, on 512 of the
  synthetic data set's images), so its weights have moved between rounds. About a minute on two cores.

Seeded like the suite's models, BatchNorm calibrated on noise, saved with ``prune.checkpoint``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from bench.models import SYNTHETIC_SEED, calibrate_batchnorm_, synthetic_resnet18
from exporters import run_cli
from prune.checkpoint import check_writable, save_checkpoint
from prune.models import prunable_layers


def uniform(sparsity: float) -> nn.Module:
    model = synthetic_resnet18(0.0)
    for layer in prunable_layers(model).values():
        w = layer.weight.data
        k = int(round(sparsity * w.numel()))
        threshold = w.abs().flatten().kthvalue(k).values
        w.mul_(w.abs() > threshold)
    calibrate_batchnorm_(model, seed=SYNTHETIC_SEED)
    return model


def emptied(sparsity: float) -> nn.Module:
    model = synthetic_resnet18(sparsity)
    generator = torch.Generator().manual_seed(SYNTHETIC_SEED)
    for name, layer in prunable_layers(model).items():
        if isinstance(layer, nn.Conv2d) and name != "conv1":
            cout = layer.weight.shape[0]
            layer.weight.data[torch.randperm(cout, generator=generator)[: cout // 4]] = 0
    model.layer4[1].conv1.weight.data.zero_()
    calibrate_batchnorm_(model, seed=SYNTHETIC_SEED)
    return model


def iterative(sparsity: float, images: int = 512) -> nn.Module:
    from prune.data import DataSettings, load_data
    from prune.platform import set_seed
    from prune.train import PruneSettings, TrainSettings, prune_and_finetune

    model = synthetic_resnet18(0.0)
    train = TrainSettings(epochs=1, batch_size=64, lr=5e-4, schedule="cosine", device="cpu", workers=0, progress=False)
    set_seed(train.seed)
    data = load_data(DataSettings(dataset="synthetic", train_limit=images, test_limit=128))
    prune_and_finetune(model, data, PruneSettings(sparsity=sparsity, rounds=3), train)
    return model.cpu().eval()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/other_pruned.py", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for uniform-s90.pt, emptied-s90.pt and iterative-s90.pt")
    parser.add_argument("--force", action="store_true", help="overwrite the files if they exist")
    args = parser.parse_args(argv)
    folder = Path(args.out)  # check_writable creates it, or says in one line why it cannot
    makers = (("uniform-s90", uniform), ("emptied-s90", emptied), ("iterative-s90", iterative))
    for name, _ in makers:
        check_writable(folder / f"{name}.pt", args.force)  # before the work, not after
    for name, make in makers:
        model = make(0.9)
        weights = [layer.weight for layer in prunable_layers(model).values()]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        meta = {"dataset": "synthetic", "sparsity": zeros}
        path = save_checkpoint(folder / f"{name}.pt", model, meta, force=args.force)
        print(f"{path}: {zeros:.1%} of the prunable weights zero")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
