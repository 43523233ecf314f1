"""Data-parallel training under ``torchrun``: the process group, batches per rank, rank-0 writing, reduced figures.

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``),
training runs as DistributedDataParallel: gloo on the CPU, NCCL on CUDA (one GPU
per process, ``cuda:LOCAL_RANK``), unless ``--dist-backend`` says otherwise. The
batch size is the global one: each rank takes ``batch_size / world_size``
images of every step's batch. Without torchrun everything here is a no-op for
a world of one process.

``ShardedBatches`` draws each epoch's order from ``seed + epoch``
(``DistributedSampler`` with ``set_epoch``) and the augmentation of each step
from ``(seed, epoch, step)``, for the whole global batch, each rank taking its
share. So a step's global batch, augmentation included, is the same whatever
the number of ranks, and a run resumed at an epoch boundary repeats an
uninterrupted one. BatchNorm statistics are per rank, as DDP keeps them by
default (the CPU has no SyncBatchNorm).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import sys
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from prune.data import PAD, DataSet, Split, normalize
from prune.errors import PruneBenchError
from prune.platform import resolve_device

BACKENDS = ("auto", "gloo", "nccl")
TIMEOUT = _dt.timedelta(minutes=30)  # collectives wait this long: rank 0 may train a base model while others wait


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the training processes (a world of one without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, results and progress bars."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets its variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def choose_backend(name: str, device: torch.device) -> str:
    """``auto`` is NCCL on CUDA and gloo on the CPU; NCCL is refused where there is no CUDA device."""
    if name not in BACKENDS:
        raise PruneBenchError(f"unknown --dist-backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise PruneBenchError("--dist-backend nccl needs CUDA devices: use gloo on the CPU (or --dist-backend auto)")
    return name


def current() -> World:
    """The world of the initialised process group (a world of one if there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def setup(device: str = "auto", backend: str = "auto") -> World:
    """Join torchrun's process group once (later calls return the same world); a world of one otherwise."""
    if not launched():
        return World()
    if dist.is_initialized():
        return current()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device)
    chosen = choose_backend(backend, target)
    if target.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise PruneBenchError(
                f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): "
                "start no more processes per node than GPUs (torchrun --nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(chosen, timeout=TIMEOUT)
    world = current()
    if not world.is_main:
        # Every rank runs the same command; rank 0 alone speaks (messages go to stdout, errors still to stderr).
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - open for the life of the process
    return world


def device(name: str, world: World) -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` under torchrun on CUDA."""
    base = resolve_device(name)
    if base.type == "cuda" and launched():
        return torch.device("cuda", world.local_rank)
    return base


def per_rank_batch(global_batch: int, world: World) -> int:
    """Images per rank and step; the global batch must divide among the ranks."""
    if global_batch % world.size:
        raise PruneBenchError(
            f"--batch-size {global_batch} is the global batch and does not divide among {world.size} processes: "
            f"use a multiple of {world.size}"
        )
    return global_batch // world.size


def check_batch(global_batch: int) -> None:
    """Under torchrun, refuse a global batch that does not divide among its processes (before a process group exists)."""
    if launched() and global_batch >= 1:
        per_rank_batch(global_batch, World(size=int(os.environ["WORLD_SIZE"])))


def is_main() -> bool:
    return current().is_main


def barrier() -> None:
    if current().parallel:
        dist.barrier()


def broadcast(value):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not current().parallel:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the ranks (in float64 on the CPU with gloo, on the device with NCCL)."""
    if not current().parallel:
        return values
    on = values.device if dist.get_backend() == "nccl" else torch.device("cpu")
    total = values.detach().to(on, torch.float64).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(values.device)


def wrap(model: nn.Module, world: World, on: torch.device) -> nn.Module:
    """``model`` as DistributedDataParallel where there are several ranks (parameters and buffers from rank 0)."""
    if not world.parallel:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[on.index] if on.type == "cuda" else None)


def shard(split: Split, world: World) -> Split:
    """This rank's share of an evaluation split (every ``size``-th image); the shares sum to the whole."""
    if not world.parallel:
        return split
    return Split(split.images[world.rank :: world.size], split.labels[world.rank :: world.size])


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**63


class ShardedBatches:
    """Training batches of one rank: a DistributedSampler's share, augmented as the global batch would be.

    Every rank draws the same crop offsets and flips for the whole global batch
    of a step and keeps those of its own images, so the global batch is the
    same for any world size. Call ``set_epoch`` before each pass.
    """

    def __init__(self, split: Split, data: DataSet, global_batch: int, world: World, on: torch.device, seed: int = 0):
        from torch.utils.data import DistributedSampler

        self.world = world
        self.batch = per_rank_batch(global_batch, world)
        self.global_batch = global_batch
        self.device = on
        self.split = split.to(on) if on.type == "cuda" else split
        self.mean, self.std = data.mean, data.std
        self.seed = seed
        self.epoch = 0
        # drop_last=False pads the order with its own start so every rank gets as many images
        self.sampler = DistributedSampler(range(len(split)), num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(self.sampler.num_samples / self.batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        for step in range(len(self)):
            idx = order[step * self.batch : (step + 1) * self.batch]
            # draws for a whole global batch (also for a short last one, so no world size shifts them), then this rank's
            n, mine = self.global_batch, slice(self.world.rank, None, self.world.size)
            dy = torch.randint(0, 2 * PAD + 1, (n,), generator=generator)[mine][: len(idx)]
            dx = torch.randint(0, 2 * PAD + 1, (n,), generator=generator)[mine][: len(idx)]
            flip = (torch.rand(n, generator=generator) < 0.5)[mine][: len(idx)]
            images = self.split.images[idx.to(self.split.images.device)]
            images = crop_flip(images, dy.to(images.device), dx.to(images.device), flip.to(images.device))
            yield normalize(images, self.mean, self.std), self.split.labels[idx.to(self.split.labels.device)]


def crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """``prune.data.augment`` with its random draws given: crop at (dy, dx) of the padded image, then flip."""
    import torch.nn.functional as F

    n, _, h, w = images.shape
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    dev = images.device
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]
    batch = torch.arange(n, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    return torch.where(flip[:, None, None, None], out.flip(3), out).contiguous()
