"""Run under torchrun by tests/test_distributed.py: fine-tune a small pruned net, each rank saving what it holds.

    python -m torch.distributed.run --nproc-per-node N -m tests.ddp_fit OUT [cpu|cuda]   # from the repository root

Every rank writes OUT/rank<R>.pt (its weights and masks, by torch.save); all call save_checkpoint for
OUT/model.pt (the masks made permanent), which only rank 0 writes; rank 0 writes OUT/history.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from prune import distributed
from prune.checkpoint import save_checkpoint
from prune.data import DataSettings, load_data
from prune.mask import Mask, attach_, make_permanent_
from prune.models import prunable_layers
from prune.strategies import get_strategy
from prune.train import TrainSettings, fit

GLOBAL_BATCH = 16


def net() -> nn.Module:
    """Two convs and a linear layer, no BatchNorm: its output does not depend on how a batch is split."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def run(out: Path, device: str = "cpu") -> list[dict]:
    """Fine-tune the net, save what this rank holds, return the history (also called in-process, world of one)."""
    settings = TrainSettings(epochs=2, batch_size=GLOBAL_BATCH, lr=0.05, schedule="cosine", workers=0, progress=False, device=device, seed=3, amp="off")
    world = distributed.setup(settings.device, settings.dist_backend)
    data = load_data(DataSettings("synthetic", train_limit=64, test_limit=16))
    model = net()
    layers = prunable_layers(model, include_downsample=True)
    mask = get_strategy("magnitude")(layers, Mask.ones_like(layers), round(0.5 * sum(m.weight.numel() for m in layers.values())))
    attach_(layers, mask)
    history = fit(model, data, settings, desc="ddp")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({k: v.cpu() for k, v in state.items()}, out / f"rank{world.rank}.pt")
    make_permanent_(layers)
    save_checkpoint(out / "model.pt", model, {"processes": world.size})
    if world.is_main:
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
        (out / "history.json").write_text(json.dumps({"world": world.size, "backend": backend, "history": history}))
    return history


def main(out: Path, device: str = "cpu") -> None:
    torch.set_num_threads(1)
    run(out, device)


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:])
