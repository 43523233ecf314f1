"""The models the bench suite times: synthetic pruned ResNet-18s by default, or given checkpoints.

The synthetic models need no data and no downloads: a seeded random ResNet-18,
pruned by our own global magnitude pruning (``prune.pruning.prune_rounds`` with
``GlobalMagnitude``, one shot) to each sparsity, with BatchNorm statistics
measured on random images after pruning so activations keep a sane scale (as
fine-tuning would leave them). Their weights are not trained; every result
says ``weights: synthetic``. Latency does not depend on what the weights mean,
only on their count, their zeros and where the zeros are; unstructured
magnitude pruning of random weights spreads zeros much as it does on trained
ones, but the per-layer split differs (see ``synthetic_resnet18``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
from torch import nn

from prune.errors import PruneBenchError
from prune.mask import Mask, make_permanent_
from prune.models import INPUT_SHAPE, layer_macs, prunable_layers, resnet18_cifar
from prune.platform import set_seed
from prune.pruning import prune_rounds
from prune.strategies import GlobalMagnitude

SYNTHETIC_SPARSITIES = (0.0, 0.5, 0.75, 0.9, 0.95)
QUICK_SPARSITIES = (0.0, 0.9)
SYNTHETIC_SEED = 0
CALIBRATION_BATCHES = 2  # train-mode forwards on random images that set BatchNorm's running statistics...
CALIBRATION_BATCH_SIZE = 32  # ...of this many images each (every channel averages >= 32*4*4 values per batch)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model a bench case runs: a synthetic sparsity or a checkpoint file."""

    id: str  # test id and report label, e.g. "synthetic-s90" or the checkpoint's file stem
    path: str | None = None  # checkpoint file; None: synthetic
    sparsity: float | None = None  # target sparsity of a synthetic model


@dataclasses.dataclass
class BenchModel:
    """A model ready to benchmark (CPU, fp32, eval mode) and the facts every case reports about it."""

    spec: ModelSpec
    model: nn.Module
    facts: dict  # extra_info entries: sparsity, MACs, nonzeros, file, accuracy...
    references: dict = dataclasses.field(default_factory=dict)  # (batch size, seed) -> dense CPU output

    def reference(self, batch_size: int, seed: int = 0) -> torch.Tensor:
        """Dense fp32 PyTorch on the CPU on ``example_batch(batch_size, seed)``: what every backend must reproduce."""
        key = (batch_size, seed)
        if key not in self.references:
            with torch.inference_mode():
                self.references[key] = self.model(example_batch(batch_size, seed)).float()
        return self.references[key]


def synthetic_specs(sparsities=SYNTHETIC_SPARSITIES) -> list[ModelSpec]:
    return [ModelSpec(id=f"synthetic-s{round(s * 100):02d}", sparsity=float(s)) for s in sparsities]


def checkpoint_specs(arg: str | list[str]) -> list[ModelSpec]:
    """Specs for checkpoint files named in ``arg`` (comma-separated files or folders; a folder gives its ``*.pt``)."""
    items = [a.strip() for a in (arg.split(",") if isinstance(arg, str) else arg) if a.strip()]
    if not items:
        raise PruneBenchError("--bench-models is empty: give checkpoint files or a folder of *.pt files")
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.pt"))
            if not found:
                raise PruneBenchError(f"folder {p} holds no *.pt checkpoints")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise PruneBenchError(f"no checkpoint or folder at {p}: check --bench-models")
    specs, seen = [], {}
    for p in paths:
        stem = p.name.removesuffix(".pt")
        seen[stem] = seen.get(stem, 0) + 1
        label = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"  # two folders may hold the same file name
        specs.append(ModelSpec(id=label, path=str(p)))
    return specs


def calibrate_batchnorm_(model: nn.Module, batches: int = CALIBRATION_BATCHES, batch_size: int = CALIBRATION_BATCH_SIZE,
                         seed: int = SYNTHETIC_SEED, input_shape: tuple[int, ...] = INPUT_SHAPE) -> None:
    """Set every BatchNorm's running mean/var to the statistics of its inputs on random N(0,1) images.

    Train-mode forwards with ``momentum=None`` (a plain average over the batches);
    no weight changes. Leaves the model in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    generator = torch.Generator().manual_seed(seed)
    model.train()
    try:
        with torch.no_grad():
            for _ in range(batches):
                model(torch.randn(batch_size, *input_shape, generator=generator))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()


def synthetic_resnet18(sparsity: float, seed: int = SYNTHETIC_SEED) -> nn.Module:
    """A seeded random CIFAR ResNet-18, globally magnitude-pruned to ``sparsity`` (one shot), BatchNorm calibrated.

    The convs keep torchvision's He-normal (fan-out) init; fc is redrawn He-normal
    (fan-in, std 0.0625) with zero bias. torchvision's own fc init (uniform, at
    most 0.044) sits below the convs' spread, so global magnitude pruning at 95%
    removes fc entirely and every input gets the same logits (the bias), which
    would make the parity checks pass trivially. In trained networks fc weights
    are likewise larger than those of the wide late convs.
    """
    set_seed(seed)
    model = resnet18_cifar()
    nn.init.kaiming_normal_(model.fc.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(model.fc.bias)
    if sparsity > 0:
        layers = prunable_layers(model)
        prune_rounds(layers, GlobalMagnitude(), sparsity, 1)
        make_permanent_(layers)
    calibrate_batchnorm_(model, seed=seed)
    return model


def model_facts(model: nn.Module, meta: dict, spec: ModelSpec) -> dict:
    """What every case reports about its model (``extra_info``)."""
    include_downsample = bool(meta.get("include_downsample", False))
    scope = Mask.from_model(prunable_layers(model, include_downsample))  # the study's definition of sparsity
    every = Mask.from_model(prunable_layers(model, include_downsample=True))  # every conv and fc
    macs = layer_macs(model)
    facts = {
        "model": spec.id,
        "weights": "synthetic" if spec.path is None else "checkpoint",
        "model_file": "synthetic" if spec.path is None else str(spec.path),
        "target_sparsity": spec.sparsity if spec.path is None else meta.get("target_sparsity"),
        "sparsity": scope.sparsity,
        "sparsity_scope": "stem, block convs and fc" + (" and shortcuts" if include_downsample else ""),
        "mac_sparsity": every.mac_weighted_sparsity(macs),
        "nonzeros": every.nonzeros,
        "weights_total": every.numel,
        "macs_per_image": sum(macs.values()),
        "accuracy": meta.get("accuracy"),
    }
    for key in ("dataset", "method", "strategy", "rounds"):
        if key in meta:
            facts[key] = meta[key]
    return facts


def load(spec: ModelSpec) -> BenchModel:
    """Build (synthetic) or load (checkpoint, dense or ``exporters.sparse`` format) the model of ``spec``."""
    if spec.path is None:
        model, meta = synthetic_resnet18(spec.sparsity), {}
    else:
        from exporters.sparse import load_model

        model, meta = load_model(spec.path)
    model = model.float().eval()
    facts = model_facts(model, meta, spec)
    for layer in prunable_layers(model, include_downsample=True).values():
        layer.weight.requires_grad_(False)
    return BenchModel(spec=spec, model=model, facts=facts)


def example_batch(batch_size: int, seed: int = 0, input_shape: tuple[int, ...] = INPUT_SHAPE) -> torch.Tensor:
    """The seeded random input every backend gets for a batch size (N(0,1), like normalised CIFAR images)."""
    return torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(1000 * seed + batch_size))


def physical_cores() -> int:
    """Physical CPU cores (hyper-threads not counted), from /proc/cpuinfo where it says; else os.cpu_count()."""
    cores = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            physical = core = None
            for line in f:
                if line.startswith("physical id"):
                    physical = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":", 1)[1].strip()
                elif not line.strip():
                    if core is not None:
                        cores.add((physical, core))
                    physical = core = None
            if core is not None:
                cores.add((physical, core))
    except OSError:
        pass
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(len(cores) or available, available))


def expected_limit(mac_sparsity: float) -> float:
    """1 / (1 - s_mac): the most skipping pruned multiply-accumulates could speed the model up."""
    return math.inf if mac_sparsity >= 1 else 1.0 / (1.0 - mac_sparsity)


def bench_versions() -> dict:
    """Provenance (machine, torch, ...) plus the ONNX and ONNX Runtime versions, for every timed result."""
    from prune.platform import provenance

    info = provenance()
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    try:
        import onnx

        info["onnx"] = onnx.__version__
    except ImportError:
        info["onnx"] = None
    return info


def model_spec(text: str):
    """The ``bench.models.ModelSpec`` named by ``text``: a checkpoint path or ``synthetic:S``."""
    if text.startswith("synthetic:"):
        value = text.split(":", 1)[1]
        try:
            sparsity = float(value)
        except ValueError:
            raise PruneBenchError(f"synthetic:{value}: the sparsity must be a number in [0, 1), e.g. synthetic:0.9") from None
        if not 0.0 <= sparsity < 1.0:
            raise PruneBenchError(f"synthetic:{value}: the sparsity must be in [0, 1)")
        return synthetic_specs([sparsity])[0]
    if not Path(text).is_file():
        raise PruneBenchError(f"no checkpoint file at {text}: give a checkpoint or synthetic:S (e.g. synthetic:0.9)")
    return checkpoint_specs(text)[0]
