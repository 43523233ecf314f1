"""Training, fine-tuning of pruned models, evaluation and the study's time per image.

Plain SGD with momentum and weight decay and a per-step learning-rate
schedule. On CUDA: mixed precision (bf16 or fp16 autocast), channels_last and
the data set resident on the GPU (``prune.data.ResidentBatches``); on the CPU:
fp32 and DataLoader workers.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from prune import distributed
from prune.data import DataSet, batches
from prune.errors import PruneBenchError
from prune.mask import Mask, attach_, make_permanent_, reapply_masks_
from prune.models import INPUT_SHAPE, prunable_layers
from prune.platform import resolve_device
from prune.pruning import prune_rounds
from prune.schedule import check_rounds, check_sparsity, round_counts
from prune.strategies import STRATEGIES, STRUCTURED, get_strategy

SCHEDULES = ("onecycle", "cosine", "constant")
AMP = ("bf16", "fp16", "off")


@dataclasses.dataclass
class TrainSettings:
    """How to train (or fine-tune) a model."""

    epochs: int = 30  # passes over the training set (per round when fine-tuning a pruned model)
    batch_size: int = 128  # images per step
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # L2 penalty on all parameters
    schedule: str = "onecycle"  # learning rate per step: onecycle | cosine | constant
    seed: int = 0  # seeds initial weights, shuffling, augmentation and random pruning
    device: str = "auto"  # auto | cpu | cuda
    workers: int = 2  # DataLoader processes on the CPU (the GPU path keeps the data on the GPU and needs none)
    amp: str = "bf16"  # mixed precision on CUDA: bf16 | fp16 | off (the CPU always trains in fp32)
    progress: bool = True  # show progress bars
    dist_backend: str = "auto"  # under torchrun: auto (nccl on CUDA, gloo on the CPU) | gloo | nccl

    def check(self) -> None:
        """Raise a one-line error for impossible settings, before any work starts."""
        distributed.choose_backend(self.dist_backend, resolve_device(self.device))
        distributed.check_batch(self.batch_size)  # under torchrun, before any work
        if self.epochs < 0:
            raise PruneBenchError(f"--epochs {self.epochs} must be >= 0")
        if self.batch_size < 1:
            raise PruneBenchError(f"--batch-size {self.batch_size} must be >= 1")
        if not self.lr > 0:
            raise PruneBenchError(f"--lr {self.lr} must be > 0")
        if self.momentum < 0 or self.weight_decay < 0:
            raise PruneBenchError("--momentum and --weight-decay must be >= 0")
        if self.schedule not in SCHEDULES:
            raise PruneBenchError(f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.amp not in AMP:
            raise PruneBenchError(f"unknown --amp {self.amp!r}: choose one of {', '.join(AMP)}")
        if self.workers < 0:
            raise PruneBenchError(f"--workers {self.workers} must be >= 0")


# Fine-tuning a pruned model: the seed study settled on lr 0.0005 with momentum, 3 or 5 epochs.
FINETUNE_DEFAULTS = {"epochs": 3, "lr": 0.0005, "schedule": "cosine"}


def finetune_settings(**overrides) -> TrainSettings:
    """TrainSettings with the fine-tuning defaults, then ``overrides``."""
    return TrainSettings(**{**FINETUNE_DEFAULTS, **overrides})


@dataclasses.dataclass
class EvalSettings:
    """How to measure accuracy and the study's inference time per image."""

    eval_batch_size: int = 500  # images per evaluation batch
    time_batch: int = 1  # images per timed forward pass (1: the latency of one image)
    time_warmup: int = 10  # untimed forward passes before timing
    time_iters: int = 50  # timed forward passes; the median is reported

    def check(self) -> None:
        if self.eval_batch_size < 1 or self.time_batch < 1 or self.time_iters < 1 or self.time_warmup < 0:
            raise PruneBenchError("--eval-batch-size, --time-batch and --time-iters must be >= 1, --time-warmup >= 0")


@dataclasses.dataclass
class PruneSettings:
    """What to prune and how far."""

    sparsity: float = 0.9  # fraction of the in-scope weights pruned at the end, in [0, 1)
    rounds: int = 1  # pruning rounds, each followed by fine-tuning: 1 is one-shot, more is iterative
    strategy: str = "magnitude"  # which weights go: a name in prune.strategies.STRATEGIES, or channel (sparsity: MACs removed)
    include_downsample: bool = False  # also prune the three 1x1 shortcut convs (the seed pruned 18 tensors)

    def check(self) -> None:
        check_sparsity(self.sparsity)
        check_rounds(self.rounds)
        if self.strategy not in STRATEGIES and self.strategy not in STRUCTURED:
            get_strategy(self.strategy)  # raises the registry's one-line error


def make_strategy(name: str, seed: int = 0):
    """The strategy registered as ``name``, given ``seed`` where its constructor takes one."""
    if name not in STRATEGIES:
        return get_strategy(name)  # raises the one-line error listing the valid names
    try:
        takes_seed = "seed" in inspect.signature(STRATEGIES[name]).parameters
    except (TypeError, ValueError):
        takes_seed = False
    return get_strategy(name, seed=seed) if takes_seed else get_strategy(name)


# -- schedule, precision ---------------------------------------------------------------


def lr_factor(schedule: str, step: int, total: int, warmup: float = 0.25) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total`` steps.

    onecycle: linear rise over the first ``warmup`` of the steps, then linear fall
    towards 0 (Smith & Topin 2018, "Super-Convergence"); cosine: half a cosine
    from 1 towards 0 (Loshchilov & Hutter 2017, "SGDR"); constant: 1.
    """
    if schedule == "constant" or total <= 1:
        return 1.0
    t = (step + 1) / total  # the fraction of training done after this step
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / total))
    if schedule == "onecycle":
        return t / warmup if t <= warmup else max(0.0, (1.0 - t) / (1.0 - warmup))
    raise PruneBenchError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")


def _autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _on_device(model: nn.Module, device: torch.device) -> nn.Module:
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    return model


def _inputs(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


# -- training ------------------------------------------------------------------------------


@dataclasses.dataclass
class Resume:
    """Where ``fit`` keeps its state after every epoch, so that a killed run goes on from there."""

    path: Path  # the state file (written by rank 0, whole, then renamed into place)
    tag: dict = dataclasses.field(default_factory=dict)  # what the saved state must belong to (a case, a round)
    replace: bool = False  # a state of another training there is replaced (the previous round's), not refused
    note: dict = dataclasses.field(default_factory=dict)  # saved along, for the caller (the rounds done so far)


def _resume_tag(resume: Resume, settings: TrainSettings, epochs: int) -> dict:
    keys = ("batch_size", "lr", "momentum", "weight_decay", "schedule", "seed", "amp")
    return {**resume.tag, "epochs": epochs, **{k: getattr(settings, k) for k in keys}}


def _read_resume(resume: Resume, tag: dict) -> dict | None:
    """The saved state of this very training, or None where there is none yet."""
    if not resume.path.exists():
        return None
    try:
        state = torch.load(resume.path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: the atomic rename makes this unlikely, so say so
        raise PruneBenchError(f"{resume.path} is not a readable training state: delete it to start that training afresh") from None
    if not isinstance(state, dict) or state.get("tag") != tag:
        if resume.replace:
            return None
        saved = state.get("tag") if isinstance(state, dict) else None
        diff = sorted(k for k in set(tag) | set(saved or {}) if (saved or {}).get(k) != tag.get(k))
        raise PruneBenchError(
            f"{resume.path} holds the state of another training ({', '.join(diff[:3]) or 'unknown'} differ): "
            "delete it, or rerun with the settings it was made with"
        )
    return state


def fit(
    model: nn.Module,
    data: DataSet,
    settings: TrainSettings,
    epochs: int | None = None,
    desc: str = "train",
    on_step: Callable[[int], None] | None = None,
    resume: Resume | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``data``'s training split; one dict of figures per epoch.

    A fresh SGD optimizer (momentum, weight decay) and schedule are made on every
    call, so each fine-tuning round starts without the previous round's momentum.
    Pruning masks attached with torch.nn.utils.prune stay attached: SGD updates
    ``weight_orig``, the forward pass multiplies by the mask, and the pruned
    entries of ``weight_orig`` are zeroed after every step, so pruned weights
    cannot regrow. Under torchrun the model trains as DistributedDataParallel on
    ``settings.batch_size`` images per step over all ranks (see
    ``prune.distributed``) and the figures are those of all ranks together.
    With ``resume``, the state after every epoch is saved there and a later call
    with the same settings goes on from the last saved epoch.
    """
    settings.check()
    epochs = settings.epochs if epochs is None else epochs
    if epochs == 0:
        return []
    world = distributed.setup(settings.device, settings.dist_backend)
    device = distributed.device(settings.device, world)
    train_split = data.require_train()
    if distributed.launched():
        loader = distributed.ShardedBatches(train_split, data, settings.batch_size, world, device, settings.seed)
    else:
        loader = batches(train_split, data, settings.batch_size, True, device, settings.workers, settings.seed)
    _on_device(model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    total = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(settings.schedule, step, total))
    dtype = _autocast_dtype(device, settings.amp)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    history: list[dict] = []
    first = 0
    tag = _resume_tag(resume, settings, epochs) if resume is not None else {}
    saved = _read_resume(resume, tag) if resume is not None else None
    generator = getattr(loader, "generator", None)  # the shuffling generator of the single-process loaders
    if saved is not None:
        try:
            model.load_state_dict(saved["model"])
        except RuntimeError:
            raise PruneBenchError(f"{resume.path} does not fit this model: delete it to start that training afresh") from None
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"])
        if generator is not None and saved.get("loader_rng") is not None:
            generator.set_state(saved["loader_rng"].to(generator.get_state().device))
        first, history = saved["epoch"], list(saved["history"])
        if world.is_main:
            tqdm.write(f"{desc}: resuming after epoch {first}/{epochs} from {resume.path}")
    net = distributed.wrap(model, world, device)
    step = first * len(loader)
    for epoch in range(first, epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        net.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync per step
        correct = torch.zeros((), device=device, dtype=torch.long)
        step_loss, step_seen = [], []
        seen = 0
        bar = tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False, disable=not settings.progress or not world.is_main)
        for x, y in bar:
            x, y = _inputs(x, device), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = net(x)
                loss = F.cross_entropy(out, y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            reapply_masks_(model)  # the same masks on every rank (DDP keeps rank 0's buffers)
            scheduler.step()
            loss_sum += loss.detach() * y.shape[0]
            step_loss.append(loss.detach().float() * y.shape[0])
            step_seen.append(y.shape[0])
            correct += (out.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            step += 1
            if on_step is not None:
                on_step(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        sums = distributed.all_sum(torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), device=device, dtype=torch.float64)]))
        per_step = distributed.all_sum(torch.stack([torch.stack(step_loss).double(), torch.tensor(step_seen, device=device, dtype=torch.float64)]))
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(sums[0] / sums[2]),
                "train_accuracy": float(sums[1] / sums[2]),
                "seconds": time.perf_counter() - start,
                "lr_end": optimizer.param_groups[0]["lr"],
                "step_losses": (per_step[0] / per_step[1]).tolist(),  # mean loss of each step's global batch
                "ranks": world.size,
            }
        )
        if resume is not None and world.is_main:
            _save_resume(resume, tag, epoch + 1, history, model, optimizer, scheduler, scaler, generator)
        if settings.progress and world.is_main:
            h = history[-1]
            tqdm.write(f"{desc} epoch {epoch + 1}/{epochs}: loss {h['loss']:.4f}, train acc {h['train_accuracy']:.2%}, {h['seconds']:.1f} s")
    distributed.barrier()  # no rank reads the state or the model's files before rank 0 has written them
    return history


def _save_resume(resume: Resume, tag, epoch, history, model, optimizer, scheduler, scaler, generator) -> None:
    path = resume.path
    state = {
        "tag": tag,
        "note": resume.note,
        "epoch": epoch,
        "history": history,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": torch.get_rng_state(),
        "loader_rng": generator.get_state().cpu() if generator is not None else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a run killed mid-save keeps the previous epoch's state


@torch.no_grad()
def evaluate(model: nn.Module, data: DataSet, device: str | torch.device = "cpu", batch_size: int = 500) -> tuple[float, float]:
    """Accuracy (fraction correct) and mean cross-entropy loss on ``data``'s test split, in fp32.

    Under torchrun each rank evaluates its share of the split and the figures are summed over the ranks.
    """
    device = torch.device(device)
    _on_device(model, device)
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in batches(distributed.shard(data.test, distributed.current()), data, batch_size, False, device):
        x, y = _inputs(x, device), y.to(device)
        out = model(x).float()
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        seen += y.shape[0]
    if distributed.current().parallel:
        loss_sum, correct, seen = distributed.all_sum(torch.tensor([loss_sum, correct, seen], dtype=torch.float64)).tolist()
        correct, seen = int(correct), int(seen)
    if seen == 0:
        raise PruneBenchError(f"data set {data.name!r} has no test images to evaluate on")
    return correct / seen, loss_sum / seen


@torch.no_grad()
def time_per_image(
    model: nn.Module,
    device: str | torch.device = "cpu",
    batch: int = 1,
    warmup: int = 10,
    iters: int = 50,
    input_shape: tuple[int, ...] = INPUT_SHAPE,
) -> float:
    """Median seconds per image of an fp32 eval-mode forward pass, after ``warmup`` untimed passes.

    The seed study's "inference time per image" (its speedup is base time /
    pruned time). CUDA work is synchronised inside every timed pass. This is a
    figure for the study table; the bench suite does the latency study properly.
    """
    device = torch.device(device)
    _on_device(model, device)
    model.eval()
    x = _inputs(torch.randn(batch, *input_shape), device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


# -- pruning with fine-tuning ---------------------------------------------------------------


@dataclasses.dataclass
class PruneOutcome:
    """What ``prune_and_finetune`` did: the final mask and each round's figures."""

    mask: Mask
    target_zeros: int  # weights the schedule asked to prune in total
    rounds: list[dict]  # per round: sparsity after pruning and the fine-tuning history


def read_note(path: Path) -> tuple[dict, dict, dict] | None:
    """The tag, note and model state of the training state saved at ``path`` (None where there is none)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state["tag"], state["note"], state["model"]
    except Exception:
        raise PruneBenchError(f"{path} is not a readable training state: delete it to start that training afresh") from None


def prune_and_finetune(
    model: nn.Module,
    data: DataSet,
    prune: PruneSettings,
    train: TrainSettings,
    desc: str = "prune",
    resume: Path | None = None,
) -> PruneOutcome:
    """Prune ``model`` in place (one-shot or iterative), fine-tune after every round, make the masks permanent.

    Each round prunes p = 1 - (1-s)^(1/n) of the weights still unpruned (Han et
    al. 2015; Frankle & Carbin 2019) and fine-tunes ``train.epochs`` epochs with a
    fresh optimizer, masks attached. At the end the achieved sparsity must equal
    the target to within one weight, and the folded weights must be exactly zero
    where the mask says; otherwise a PruneBenchError is raised. With ``resume``
    (a state file), the state after every fine-tuning epoch is kept there, and a
    run killed mid-way goes on from the last epoch saved, round and masks included.
    """
    prune.check()
    train.check()
    world = distributed.setup(train.device, train.dist_backend)
    device = distributed.device(train.device, world)
    model.to(device)
    layers = prunable_layers(model, prune.include_downsample)
    strategy = make_strategy(prune.strategy, seed=train.seed)
    log: list[dict] = []
    start_round = None
    what = {"case": desc, **dataclasses.asdict(prune)}  # a saved state resumes only the very same pruning
    found = read_note(resume) if resume is not None and train.epochs > 0 else None
    if found is not None:
        tag, note, state = found
        keys = [f"{name}.weight_mask" for name in layers]
        if {k: tag.get(k) for k in what} != what or any(k not in state for k in keys):
            raise PruneBenchError(f"{resume} holds the state of another pruning run than this {desc}: delete it to start afresh")
        attach_(layers, Mask({name: state[k] for name, k in zip(layers, keys)}))
        start_round, log = int(tag["round"]), list(note.get("log", []))

    def after_round(k: int, mask: Mask) -> None:
        entry = {"round": k + 1, "sparsity": mask.sparsity, "zeros": mask.zeros}
        if train.epochs > 0:
            tuned = dataclasses.replace(train, seed=train.seed + k)
            state = None
            if resume is not None:
                state = Resume(resume, {**what, "round": k}, replace=k != start_round, note={"log": list(log)})
            entry["epochs"] = fit(model, data, tuned, desc=f"{desc} round {k + 1}/{prune.rounds}", resume=state)
        log.append(entry)

    mask = prune_rounds(layers, strategy, prune.sparsity, prune.rounds, after_round, resume_round=start_round)
    target = round_counts(mask.numel, prune.sparsity, prune.rounds)[-1]
    if abs(mask.zeros - target) > 1:
        raise PruneBenchError(f"pruned {mask.zeros} of {mask.numel} weights, the target is {target}: not saving")
    make_permanent_(layers)
    model.to(memory_format=torch.contiguous_format)
    for name, module in layers.items():
        left = int((module.weight.detach().cpu()[~mask[name]] != 0).sum())
        if left:
            raise PruneBenchError(f"{name}: {left} pruned weights are nonzero after folding the mask: not saving")
    return PruneOutcome(mask, target, log)


# -- training a base model ------------------------------------------------------------------


def train_model(data: DataSet, settings: TrainSettings, resume: Path | None = None) -> tuple[nn.Module, dict]:
    """Train a fresh CIFAR ResNet-18 on ``data``; return it (on the CPU, eval mode) with checkpoint meta.

    With ``resume`` (a state file) a killed run goes on from its last finished epoch.
    """
    from prune.models import ARCH, resnet18_cifar
    from prune.platform import provenance, set_seed

    settings.check()
    set_seed(settings.seed)
    model = resnet18_cifar(num_classes=data.num_classes)
    start = time.perf_counter()
    history = fit(model, data, settings, desc="train", resume=Resume(resume, {"case": "base"}) if resume else None)
    seconds = time.perf_counter() - start
    device = distributed.device(settings.device, distributed.current())
    accuracy, loss = evaluate(model, data, device)
    model.to("cpu", memory_format=torch.contiguous_format).eval()
    meta = {
        "arch": ARCH,
        "dataset": data.name,
        "dataset_note": data.note,
        "method": "dense",
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "momentum": settings.momentum,
        "weight_decay": settings.weight_decay,
        "schedule": settings.schedule,
        "seed": settings.seed,
        "amp": settings.amp if device.type == "cuda" else "off",
        "device": device.type,
        "processes": distributed.current().size,
        "train_images": len(data.require_train()),
        "accuracy": accuracy,
        "loss": loss,
        "train_seconds": seconds,
        "epoch_seconds": [h["seconds"] for h in history],
        "provenance": provenance(),
    }
    return model, meta
