"""Checkpoints: ``torch.save`` of ``{"state_dict", "meta"}`` that loads with ``weights_only=True``.

The loader also takes a bare ResNet-18 state_dict (such as PyTorch_CIFAR10's
``resnet18.pt``) and a state_dict saved with pruning masks still attached
(``weight_orig``/``weight_mask``), which it folds into plain weights.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from prune.errors import PruneBenchError
from prune.models import ARCH, resnet18_cifar


def check_writable(path: str | Path, force: bool = False) -> Path:
    """Refuse to overwrite without ``force`` and fail early where the folder cannot be written."""
    path = Path(path)
    if path.exists() and not force:
        raise PruneBenchError(f"{path} exists: pass --force to overwrite it")
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise PruneBenchError(f"cannot write {path}: {folder} is not a folder")
    if not folder.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PruneBenchError(f"cannot create folder {folder} for {path}: {e.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise PruneBenchError(f"cannot write {path}: folder {folder} is not writable")
    return path


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict, force: bool = False) -> Path:
    """Save plain weights and metadata; refuses masks still attached and existing files without ``force``.

    Under torchrun only rank 0 writes.
    """
    state = model.state_dict()
    leftover = [k for k in state if k.endswith(("_orig", "_mask"))]
    if leftover:
        raise PruneBenchError(f"model still has pruning masks attached ({leftover[0]}): make them permanent first")
    from prune.distributed import is_main

    if not is_main():  # under torchrun every rank holds the same weights; rank 0 checks and writes them
        return Path(path)
    path = check_writable(path, force)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in state.items()}, "meta": dict(meta)}, tmp)
    os.replace(tmp, path)  # a run killed mid-save leaves no half-written checkpoint
    return path


def _fold_masks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    folded = {}
    for key, value in state.items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            mask = state.get(base + "_mask")
            if mask is None:
                raise PruneBenchError(f"checkpoint has {key} but no {base}_mask: it is not a masked ResNet-18")
            folded[base] = value * mask
        else:
            folded[key] = value
    return folded


def _read(path: Path):
    if not path.exists():
        raise PruneBenchError(f"no checkpoint at {path}: check the path")
    if path.is_dir():
        raise PruneBenchError(f"{path} is a folder, not a checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types here; all mean "not a checkpoint we can read safely"
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch colours parts of its message
        # the weights-only unpickler's own line says what it refused; torch's first line is generic
        found = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
        first = found.group(1) if found else (text.splitlines()[0] if text else type(e).__name__)
        raise PruneBenchError(
            f"{path} is not a weights-only PyTorch checkpoint ({first[:120]}): save model.state_dict(), not the model"
        ) from None


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint file into (plain state_dict, meta), without building a model."""
    path = Path(path)
    data = _read(path)
    if isinstance(data, dict) and "state_dict" in data:
        state, meta = data["state_dict"], dict(data.get("meta") or {})
    elif isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        state, meta = data, {"source": "bare state_dict"}
    else:
        found = type(data).__name__ if not isinstance(data, dict) else f"a dict with keys {sorted(data)[:5]}"
        raise PruneBenchError(f"{path} holds {found}, not a prunebench checkpoint or a ResNet-18 state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PruneBenchError(f"{path}: its state_dict is not a dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.endswith("_mask") for k in state):
        state = _fold_masks(state)
        meta.setdefault("folded_masks", True)
    meta.setdefault("arch", ARCH)
    return state, meta


def load_checkpoint(path: str | Path, full_only: str = "") -> tuple[nn.Module, dict]:
    """Build the CIFAR ResNet-18 (or its channel-pruned form) and load a checkpoint into it (eval mode, CPU).

    A channel-pruned checkpoint (``arch: resnet18-cifar-channels``) is rebuilt
    from the widths in its meta (``prune.structured``). ``full_only`` names a
    tool that needs the full architecture: given a channel-pruned checkpoint it
    refuses with a one-line error saying so.
    """
    from prune.structured import ARCH_CHANNELS, build_resnet18_widths

    state, meta = load_state(path)
    arch = meta.get("arch", ARCH)
    if arch == ARCH_CHANNELS:
        if full_only:
            removed = meta.get("mac_fraction_removed")
            share = f", {removed:.1%} of its MACs removed" if isinstance(removed, float) else ""
            raise PruneBenchError(
                f"{path} is a channel-pruned ResNet-18{share}; {full_only} needs the full architecture: "
                "give it an unpruned (or unstructured-pruned) checkpoint"
            )
        if "widths" not in meta:
            raise PruneBenchError(f"{path} says {ARCH_CHANNELS} but its meta has no widths: it cannot be rebuilt")
        model = build_resnet18_widths(meta["widths"], where=str(path))
    elif arch != ARCH:
        raise PruneBenchError(f"{path} is a {meta['arch']!r} checkpoint; prunebench handles {ARCH!r} and {ARCH_CHANNELS!r}")
    else:
        fc = state.get("fc.weight")
        num_classes = fc.shape[0] if isinstance(fc, torch.Tensor) and fc.dim() == 2 else 10
        model = resnet18_cifar(num_classes=num_classes)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise PruneBenchError(
            f"{path} is not a CIFAR ResNet-18 checkpoint: {len(missing)} keys missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    for k, v in expected.items():
        if state[k].shape != v.shape:
            hint = " (an ImageNet 7x7 stem?)" if k == "conv1.weight" and state[k].shape[-1] == 7 else ""
            if arch == ARCH and not hint:
                hint = " (a channel-pruned model? save it with prune.checkpoint.save_checkpoint and its widths in meta)"
            raise PruneBenchError(
                f"{path}: {k} has shape {tuple(state[k].shape)}, the {'channel-pruned ' if arch != ARCH else ''}"
                f"CIFAR ResNet-18 needs {tuple(v.shape)}{hint}"
            )
    model.load_state_dict(state)
    model.eval()
    return model, meta
