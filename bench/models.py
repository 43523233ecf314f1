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

Beside them, channel-pruned (structured) synthetic models, each matched to an
unstructured one by MACs removed: ``synthetic-channel-s90`` is the dense
random ResNet-18 with whole filters removed (``prune.structured``, L1, the
same fraction of every coupled group) until it has the MACs of
``synthetic-s90``'s nonzero weights, so "at equal MACs, which is fastest"
compares a smaller dense model with a sparse one. Two of them (matching 50%
and 90%; the quick run only 90%): 50% is where channel pruning is usually
used at little accuracy cost, 90% is where unstructured sparse kernels start
to win, so it is their real competitor; more would lengthen ``make bench``
for little. INT8 is not a model but a backend (``onnxruntime-int8``), so it
runs on every model here: dense, unstructured and channel-pruned.
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
CHANNEL_MATCHES = (0.5, 0.9)  # unstructured sparsities whose MACs the channel-pruned synthetic models match
QUICK_CHANNEL_MATCHES = (0.9,)
SYNTHETIC_SEED = 0
CALIBRATION_BATCHES = 2  # train-mode forwards on random images that set BatchNorm's running statistics...
CALIBRATION_BATCH_SIZE = 32  # ...of this many images each (every channel averages >= 32*4*4 values per batch)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model a bench case runs: a synthetic sparsity or a checkpoint file."""

    id: str  # test id and report label, e.g. "synthetic-s90" or the checkpoint's file stem
    path: str | None = None  # checkpoint file; None: synthetic
    sparsity: float | None = None  # target sparsity of a synthetic model (channel: the unstructured one it matches)
    structure: str = "unstructured"  # synthetic: unstructured (masked zeros) | channel (whole filters removed)


@dataclasses.dataclass
class BenchModel:
    """A model ready to benchmark (CPU, fp32, eval mode) and the facts every case reports about it."""

    spec: ModelSpec
    model: nn.Module
    facts: dict  # extra_info entries: sparsity, MACs, nonzeros, file, accuracy...
    references: dict = dataclasses.field(default_factory=dict)  # (batch size, seed) -> dense CPU output
    # normalised test images of the checkpoint's own data set, where it is here: a trained model answers
    # nearly alike to every noise input, too alike for a check with INT8's tolerance to tell inputs apart
    images: torch.Tensor | None = None

    def example(self, batch_size: int, seed: int = 0) -> torch.Tensor:
        """The input every backend gets: ``batch_size`` of the model's test images (seed ``s`` takes the s-th
        run of them, wrapping round), or ``example_batch``'s seeded noise for a model without them."""
        if self.images is None:
            return example_batch(batch_size, seed)
        index = (torch.arange(batch_size) + seed * batch_size) % self.images.shape[0]
        return self.images[index].contiguous()

    def reference(self, batch_size: int, seed: int = 0) -> torch.Tensor:
        """Dense fp32 PyTorch on the CPU on ``example(batch_size, seed)``: what every backend must reproduce."""
        key = (batch_size, seed)
        if key not in self.references:
            with torch.inference_mode():
                self.references[key] = self.model(self.example(batch_size, seed)).float()
        return self.references[key]


def synthetic_specs(sparsities=SYNTHETIC_SPARSITIES, channel_matches=()) -> list[ModelSpec]:
    """Unstructured synthetic models at ``sparsities``, then channel-pruned ones matching ``channel_matches``' MACs."""
    specs = [ModelSpec(id=f"synthetic-s{round(s * 100):02d}", sparsity=float(s)) for s in sparsities]
    specs += [ModelSpec(id=f"synthetic-channel-s{round(s * 100):02d}", sparsity=float(s), structure="channel")
              for s in channel_matches]
    return specs


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
    every = prunable_layers(model, include_downsample=True)
    _MAC_SPARSITY[sparsity, seed] = Mask.from_model(every).mac_weighted_sparsity(layer_macs(model))
    calibrate_batchnorm_(model, seed=seed)
    return model


_MAC_SPARSITY: dict[tuple[float, int], float] = {}  # (sparsity, seed) -> MAC-weighted sparsity, filled as models are built


def synthetic_mac_sparsity(sparsity: float, seed: int = SYNTHETIC_SEED) -> float:
    """The share of MACs whose weight ``synthetic_resnet18(sparsity)`` prunes (built once if not built yet)."""
    if (sparsity, seed) not in _MAC_SPARSITY:
        synthetic_resnet18(sparsity, seed)
    return _MAC_SPARSITY[sparsity, seed]


def synthetic_channel_resnet18(match: float, seed: int = SYNTHETIC_SEED) -> tuple[nn.Module, dict]:
    """The dense synthetic ResNet-18 channel-pruned (L1, uniform) to the MACs removed by ``synthetic_resnet18(match)``.

    Uniform: random weights give global ranking nothing to go on, and a
    uniform cut is the common recipe (a width multiplier chosen by importance).
    BatchNorm is recalibrated afterwards, as fine-tuning would leave it.
    Returns the model and its meta (as a channel-pruned checkpoint carries).
    """
    from prune.structured import ARCH_CHANNELS, ChannelPruning, widths_of

    target = synthetic_mac_sparsity(match, seed)
    model, result = ChannelPruning("l1", "uniform")(synthetic_resnet18(0.0, seed), target)
    calibrate_batchnorm_(model, seed=seed)
    meta = {
        "arch": ARCH_CHANNELS,
        "widths": widths_of(model),
        "strategy": "channel",
        "method": "oneshot",
        "matched_sparsity": match,
        "target_mac_fraction": target,
        "mac_fraction_removed": result.achieved,
        "mac_tolerance": result.tolerance,
    }
    return model, meta


def model_facts(model: nn.Module, meta: dict, spec: ModelSpec) -> dict:
    """What every case reports about its model (``extra_info``)."""
    include_downsample = bool(meta.get("include_downsample", False))
    scope = Mask.from_model(prunable_layers(model, include_downsample))  # the study's definition of sparsity
    every = Mask.from_model(prunable_layers(model, include_downsample=True))  # every conv and fc
    macs = layer_macs(model)
    # MACs skipped, of the full ResNet-18's: pruned weights' MACs plus, for a channel-pruned model, the removed
    # channels' (so unstructured and channel models compare at equal MACs, and 1/(1-s) stays the speedup limit)
    full = sum(layer_macs(resnet18_cifar(num_classes=model.fc.out_features)).values())
    kept = sum(macs.values()) * (1.0 - every.mac_weighted_sparsity(macs))
    facts = {
        "model": spec.id,
        "weights": "synthetic" if spec.path is None else "checkpoint",
        "model_file": "synthetic" if spec.path is None else str(spec.path),
        "target_sparsity": spec.sparsity if spec.path is None else meta.get("target_sparsity"),
        "sparsity": scope.sparsity,
        "sparsity_scope": "stem, block convs and fc" + (" and shortcuts" if include_downsample else ""),
        "mac_sparsity": 1.0 - kept / full,
        "structure": "channel" if meta.get("arch") == "resnet18-cifar-channels" else "unstructured",
        "mac_fraction_removed": meta.get("mac_fraction_removed", 0.0),  # by channel pruning
        "nonzeros": every.nonzeros,
        "weights_total": every.numel,
        "macs_per_image": sum(macs.values()),
        "accuracy": meta.get("accuracy"),
    }
    for key in ("dataset", "method", "strategy", "rounds", "matched_sparsity"):
        if key in meta:
            facts[key] = meta[key]
    return facts


def load(spec: ModelSpec) -> BenchModel:
    """Build (synthetic) or load (checkpoint, dense or ``exporters.sparse`` format) the model of ``spec``."""
    if spec.path is None and spec.structure == "channel":
        model, meta = synthetic_channel_resnet18(spec.sparsity)
    elif spec.path is None:
        model, meta = synthetic_resnet18(spec.sparsity), {}
    else:
        from exporters.sparse import load_model

        model, meta = load_model(spec.path)
    model = model.float().eval()
    facts = model_facts(model, meta, spec)
    for layer in prunable_layers(model, include_downsample=True).values():
        layer.weight.requires_grad_(False)
    images, facts["inputs"] = parity_images(meta.get("dataset"))
    if images is not None:  # its training images calibrate INT8 (bench.backends.onnxruntime_int8)
        from bench.backends.onnxruntime_int8 import CALIBRATION_DATASET

        setattr(model, CALIBRATION_DATASET, meta["dataset"])
    return BenchModel(spec=spec, model=model, facts=facts, images=images)


PARITY_IMAGES = 128  # test images kept per checkpoint: two batches of 64, one for each parity input


def parity_images(dataset: str | None) -> tuple[torch.Tensor | None, str]:
    """The first ``PARITY_IMAGES`` test images of ``dataset``, normalised as for evaluation, and what the
    inputs are; seeded noise where the model names no data set or its data is not on this machine."""
    if dataset in (None, "", "synthetic"):
        return None, "seeded N(0,1) noise"
    from prune.data import DataSettings, load_data, normalize

    try:
        data = load_data(DataSettings(dataset=dataset, test_limit=PARITY_IMAGES))
    except PruneBenchError as e:
        return None, f"seeded N(0,1) noise ({dataset} is not here: {e})"
    return normalize(data.test.images, data.mean, data.std).contiguous(), f"{len(data.test)} test images of {dataset}"


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
    """The ``bench.models.ModelSpec`` named by ``text``: a checkpoint path, ``synthetic:S`` or ``synthetic-channel:S``."""
    if text.startswith("synthetic-channel:"):
        spec = model_spec("synthetic:" + text.split(":", 1)[1])
        return synthetic_specs([], [spec.sparsity])[0]
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
