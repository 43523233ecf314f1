"""Masks as a type: which weights of which layers are kept.

Modelled on open_lth's ``pruning/mask.py``. ``True`` means kept, ``False`` pruned.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prune.errors import PruneBenchError


@dataclasses.dataclass
class LayerRow:
    """One line of the per-layer sparsity report."""

    name: str
    params: int  # weights in the layer
    nonzeros: int  # weights kept
    macs: int  # multiply-accumulates per image
    in_scope: bool  # whether the layer is pruned at all

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0


class Mask(dict):
    """Layer name -> boolean keep-tensor, validated on construction."""

    def __init__(self, layers: dict[str, torch.Tensor] | None = None):
        super().__init__()
        for name, keep in (layers or {}).items():
            if not isinstance(keep, torch.Tensor):
                raise PruneBenchError(f"mask for layer {name!r} is a {type(keep).__name__}, not a tensor")
            if keep.dtype != torch.bool:
                values = torch.unique(keep)
                if not bool(((values == 0) | (values == 1)).all()):
                    raise PruneBenchError(f"mask for layer {name!r} holds values other than 0 and 1")
                keep = keep != 0
            self[name] = keep.detach().to("cpu")

    # -- construction ---------------------------------------------------
    @classmethod
    def ones_like(cls, layers: dict[str, nn.Module]) -> "Mask":
        """A mask that keeps every weight of ``layers``."""
        return cls({n: torch.ones_like(m.weight, dtype=torch.bool, device="cpu") for n, m in layers.items()})

    @classmethod
    def from_model(cls, layers: dict[str, nn.Module]) -> "Mask":
        """The mask a model carries: its ``weight_mask`` buffers where attached, else its nonzero weights."""
        keep = {}
        for name, module in layers.items():
            if hasattr(module, "weight_mask"):
                keep[name] = module.weight_mask != 0
            else:
                keep[name] = module.weight.detach() != 0
        return cls(keep)

    # -- figures --------------------------------------------------------
    @property
    def numel(self) -> int:
        return sum(k.numel() for k in self.values())

    @property
    def nonzeros(self) -> int:
        return sum(int(k.sum()) for k in self.values())

    @property
    def zeros(self) -> int:
        return self.numel - self.nonzeros

    @property
    def sparsity(self) -> float:
        """Fraction of weights pruned, over all layers of the mask."""
        return self.zeros / self.numel if self.numel else 0.0

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    def layer_sparsity(self) -> dict[str, float]:
        return {n: 1.0 - int(k.sum()) / k.numel() for n, k in self.items()}

    def within(self, other: "Mask") -> bool:
        """True where every weight this mask keeps is also kept by ``other`` (pruning only grew)."""
        if set(self) != set(other):
            return False
        return all(bool((self[n] & ~other[n]).sum() == 0) for n in self)

    # -- reports --------------------------------------------------------
    def report(self, macs: dict[str, int]) -> list[LayerRow]:
        """Per-layer rows for the mask's layers, in model order (``macs`` from ``prune.models.layer_macs``)."""
        rows = []
        for name, layer_macs in macs.items():
            if name in self:
                keep = self[name]
                rows.append(LayerRow(name, keep.numel(), int(keep.sum()), layer_macs, True))
        return rows

    def mac_weighted_sparsity(self, macs: dict[str, int]) -> float:
        """Share of the model's multiply-accumulates whose weight is pruned.

        1 / (1 - this) is the most any sparse kernel could speed the model up.
        """
        total = sum(macs.values())
        pruned = sum(m * (1.0 - int(self[n].sum()) / self[n].numel()) for n, m in macs.items() if n in self)
        return pruned / total if total else 0.0

    # -- persistence ----------------------------------------------------
    def save(self, path: str | Path) -> None:
        torch.save({n: k.clone() for n, k in self.items()}, path)

    @classmethod
    def load(cls, path: str | Path) -> "Mask":
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise PruneBenchError(f"no mask file at {path}") from None
        if not isinstance(data, dict):
            raise PruneBenchError(f"{path} holds a {type(data).__name__}, not a mask (a dict of layer name -> tensor)")
        return cls(data)

    def check_fits(self, layers: dict[str, nn.Module]) -> None:
        """Raise a one-line error unless the mask names exactly ``layers`` with the right shapes."""
        if set(self) != set(layers):
            missing = sorted(set(layers) - set(self))
            extra = sorted(set(self) - set(layers))
            raise PruneBenchError(f"mask does not fit the model: missing layers {missing}, unknown layers {extra}")
        for name, module in layers.items():
            if self[name].shape != module.weight.shape:
                raise PruneBenchError(
                    f"mask for {name} has shape {tuple(self[name].shape)}, the weight {tuple(module.weight.shape)}"
                )


def attach_(layers: dict[str, nn.Module], mask: Mask) -> None:
    """Attach ``mask`` to the layers' weights with torch.nn.utils.prune (combined with any mask already there)."""
    mask.check_fits(layers)
    for name, module in layers.items():
        device = module.weight.device
        torch_prune.custom_from_mask(module, "weight", mask[name].to(device))


def make_permanent_(layers: dict[str, nn.Module]) -> None:
    """Fold attached masks into plain weights with exact zeros (``prune.remove``)."""
    for module in layers.values():
        if torch_prune.is_pruned(module) and hasattr(module, "weight_orig"):
            torch_prune.remove(module, "weight")


def format_report(rows: list[LayerRow], mac_weighted: float | None = None) -> str:
    """The per-layer report as a Markdown table, with the totals line."""
    lines = [
        "| layer | params | nonzeros | sparsity | MACs/image |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.name} | {r.params} | {r.nonzeros} | {r.sparsity:.2%} | {r.macs} |")
    params = sum(r.params for r in rows)
    nonzeros = sum(r.nonzeros for r in rows)
    total = 1.0 - nonzeros / params if params else 0.0
    lines.append(f"| **total** | {params} | {nonzeros} | {total:.2%} | {sum(r.macs for r in rows)} |")
    if mac_weighted is not None:
        lines.append("")
        limit = f"{1.0 / (1.0 - mac_weighted):.2f}x" if mac_weighted < 1.0 else "unbounded (every MAC pruned)"
        lines.append(f"MAC-weighted sparsity {mac_weighted:.2%}; speedup limit 1/(1-s) = {limit}")
    return "\n".join(lines)


@torch.no_grad()
def reapply_masks_(model: nn.Module) -> None:
    """Zero the pruned entries of every attached mask's ``weight_orig`` (after an optimizer step).

    The forward pass multiplies by the mask anyway; zeroing the stored weights too
    keeps them exact on every rank, whatever momentum and weight decay did.
    """
    for module in model.modules():
        if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
            module.weight_orig.mul_(module.weight_mask)
