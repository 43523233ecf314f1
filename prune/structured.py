"""Structured (filter) pruning: remove whole output channels, giving a smaller dense ResNet-18.

Unlike the mask strategies of ``prune.strategies`` this changes shapes, so the
result runs faster on any dense runtime. Channels that meet in a residual add
(a stage's stem/shortcut output and every block's second conv) are one group
and go together; Torch-Pruning (Fang et al. 2023, "DepGraph: Towards Any
Structural Pruning", package ``torch-pruning``) finds the groups and does the
surgery. Filters are ranked by the L1 or L2 norm of their weights summed over
the group (Li et al. 2017, "Pruning Filters for Efficient ConvNets").

The amount is the fraction of the model's multiply-accumulates removed, the
figure comparable with unstructured sparsity and INT8. It is reached to
channel granularity: the achieved fraction is the closest that whole channels
allow, within ``ChannelResult.tolerance`` (the MACs of one channel of every
group, well under 2% of the model for ResNet-18 on 32x32 images).

A channel-pruned checkpoint says ``arch: resnet18-cifar-channels`` and carries
every conv/linear width in ``meta["widths"]``; ``build_resnet18_widths`` makes
the architecture from them, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from prune.errors import PruneBenchError
from prune.models import INPUT_SHAPE, NUM_CLASSES, layer_macs, resnet18_cifar

ARCH_CHANNELS = "resnet18-cifar-channels"
IMPORTANCES = {"l1": 1, "l2": 2}  # name -> the norm's p
SCOPES = ("uniform", "global")
STAGES = ("layer1", "layer2", "layer3", "layer4")


@dataclasses.dataclass
class ChannelSettings:
    """How channel pruning (--strategy channel) ranks filters and spreads the cut."""

    importance: str = "l1"  # filter ranking: l1 | l2 (norm of the weights, summed over each coupled group)
    channel_scope: str = "uniform"  # uniform: the same fraction of every group; global: one ranking over all groups

    def check(self) -> None:
        if self.importance not in IMPORTANCES:
            raise PruneBenchError(f"unknown --importance {self.importance!r}: choose one of {', '.join(IMPORTANCES)}")
        if self.channel_scope not in SCOPES:
            raise PruneBenchError(f"unknown --channel-scope {self.channel_scope!r}: choose one of {', '.join(SCOPES)}")


# -- the architecture of a channel-pruned ResNet-18 ------------------------------------------------


def widths_of(model: nn.Module) -> dict[str, list[int]]:
    """``[out, in]`` of every conv and linear layer, by module name: what a checkpoint needs to rebuild the model."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            widths[name] = [int(m.out_channels), int(m.in_channels)]
        elif isinstance(m, nn.Linear):
            widths[name] = [int(m.out_features), int(m.in_features)]
    return widths


def check_widths(widths: dict, where: str = "widths") -> None:
    """Raise a one-line error unless ``widths`` describe a ResNet-18 whose shapes agree at every join.

    Joins: each conv takes what the layer before it gives; a block's second conv
    gives as many channels as its shortcut (the residual add); fc takes the last
    stage's channels.
    """
    full = widths_of(resnet18_cifar())
    if not isinstance(widths, dict) or set(widths) != set(full):
        missing = sorted(set(full) - set(widths or {}))[:2]
        extra = sorted(set(widths or {}) - set(full))[:2]
        raise PruneBenchError(f"{where}: not the layers of a ResNet-18 (missing {missing}, unknown {extra})")
    for name, pair in widths.items():
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(v, int) for v in pair)):
            raise PruneBenchError(f"{where}: {name} must be [out, in] whole numbers, not {pair!r}")
        if min(pair) < 1:
            raise PruneBenchError(f"{where}: {name} has {pair[0]} output and {pair[1]} input channels: a layer cannot be empty")
    if widths["conv1"][1] != 3:
        raise PruneBenchError(f"{where}: conv1 takes {widths['conv1'][1]} channels, the images have 3")
    carried, source = widths["conv1"][0], "conv1"
    for stage in STAGES:
        for block in (f"{stage}.0", f"{stage}.1"):
            c1, c2, ds = f"{block}.conv1", f"{block}.conv2", f"{block}.downsample.0"
            if widths[c1][1] != carried:
                raise PruneBenchError(f"{where}: {c1} takes {widths[c1][1]} channels, {source} gives {carried}")
            if widths[c2][1] != widths[c1][0]:
                raise PruneBenchError(f"{where}: {c2} takes {widths[c2][1]} channels, {c1} gives {widths[c1][0]}")
            shortcut = carried
            if ds in widths:
                if widths[ds][1] != carried:
                    raise PruneBenchError(f"{where}: {ds} takes {widths[ds][1]} channels, {source} gives {carried}")
                shortcut = widths[ds][0]
            if widths[c2][0] != shortcut:
                raise PruneBenchError(
                    f"{where}: {block}'s residual add joins {widths[c2][0]} channels of {c2} with {shortcut} of its shortcut"
                )
            carried, source = shortcut, c2
    if widths["fc"][1] != carried:
        raise PruneBenchError(f"{where}: fc takes {widths['fc'][1]} features, {source} gives {carried}")


def build_resnet18_widths(widths: dict, where: str = "widths") -> nn.Module:
    """The CIFAR ResNet-18 with every conv, its BatchNorm and fc resized to ``widths`` (checked first)."""
    check_widths(widths, where)
    model = resnet18_cifar(num_classes=widths["fc"][0])
    for name, (out, inp) in widths.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        if isinstance(old, nn.Linear):
            setattr(parent, attr, nn.Linear(inp, out, bias=old.bias is not None))
            continue
        setattr(parent, attr, nn.Conv2d(inp, out, old.kernel_size, old.stride, old.padding, bias=old.bias is not None))
        # the BatchNorm after each conv: bn1 after conv1, bn2 after conv2, downsample.1 after downsample.0
        bn_name = name[: -len("0")] + "1" if name.endswith("downsample.0") else name.replace("conv", "bn")
        bn_parent_name, _, bn_attr = bn_name.rpartition(".")
        bn_parent = model.get_submodule(bn_parent_name) if bn_parent_name else model
        setattr(bn_parent, bn_attr, nn.BatchNorm2d(out))
    return model


def is_channel_pruned(model: nn.Module) -> bool:
    """True where ``model``'s conv/linear widths differ from the full ResNet-18's."""
    full = widths_of(resnet18_cifar(num_classes=NUM_CLASSES))
    mine = widths_of(model)
    mine["fc"], full["fc"] = mine.get("fc", [0, 0])[1:], full["fc"][1:]  # the class count is not a width
    return mine != full


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- the pruning ---------------------------------------------------------------------------------


@dataclasses.dataclass
class ChannelGroup:
    """Channels that must go together: the layers whose outputs (and inputs) they are."""

    root: str  # the module Torch-Pruning roots the group at
    outputs: list[str]  # convs whose output channels are the group's
    inputs: list[str]  # convs / linear whose input channels are the group's
    channels: int  # channels now
    scores: torch.Tensor  # importance of each channel (higher: kept first)


@dataclasses.dataclass
class ChannelResult:
    """What one call of ``ChannelPruning`` did."""

    target: float  # fraction of the reference MACs asked to be removed
    achieved: float  # fraction removed
    tolerance: float  # MACs of one channel of every group, as a fraction of the reference: the granularity
    macs: int  # MACs per image after
    reference_macs: int  # MACs per image of the unpruned model
    params: int  # parameters after
    kept: dict[str, list[int]]  # per group root: the indices (into the channels before the call) kept


class ChannelPruning:
    """Filter pruning to a fraction of the MACs removed, respecting ResNet's residual adds.

    ``__call__(model, target, reference_macs)`` returns a pruned copy (the input is
    left alone) and what it did. ``target`` counts against ``reference_macs`` (the
    unpruned model's), so iterative rounds can ask for cumulative fractions.
    ``scope="uniform"`` keeps the same fraction of every group (rounded to whole
    channels, then the fraction is tuned until the MACs match); ``"global"`` ranks
    every channel of every group by its mean-normalised importance and removes the
    lowest first (Torch-Pruning's ``global_pruning``). fc's outputs (the classes)
    are never pruned.
    """

    name = "channel"

    def __init__(self, importance: str = "l1", scope: str = "uniform"):
        ChannelSettings(importance, scope).check()
        self.importance = importance
        self.scope = scope

    def groups(self, model: nn.Module, graph) -> list[ChannelGroup]:
        import torch_pruning as tp

        names = {m: n for n, m in model.named_modules()}
        rank = tp.importance.GroupMagnitudeImportance(p=IMPORTANCES[self.importance])
        found = []
        for group in graph.get_all_groups(ignored_layers=[model.fc], root_module_types=[nn.Conv2d]):
            outputs, inputs = [], []
            for item in group:
                module = item.dep.target.module
                if not isinstance(module, (nn.Conv2d, nn.Linear)):
                    continue
                handler = getattr(item.dep.handler, "__name__", str(item.dep.handler))
                (outputs if "out_channels" in handler else inputs).append(names[module])
            root = group[0].dep.target.module
            scores = rank(group).detach().float().cpu()
            found.append(ChannelGroup(names[root], outputs, inputs, root.out_channels, scores))
        return found

    @staticmethod
    def macs_with(kept: list[int], groups: list[ChannelGroup], macs: dict[str, int]) -> float:
        """MACs per image with ``kept[i]`` channels in group i (each layer's MACs scale with in x out)."""
        scale = dict.fromkeys(macs, 1.0)
        for k, g in zip(kept, groups):
            for name in g.outputs + g.inputs:
                scale[name] *= k / g.channels
        return sum(m * scale[n] for n, m in macs.items())

    def _uniform(self, groups, macs, reference, target) -> list[int]:
        def kept_at(r: float) -> list[int]:
            return [round(g.channels * (1.0 - r)) for g in groups]

        lo, hi = 0.0, 1.0
        for _ in range(60):  # the removed fraction only grows with r; bisect to the first r that reaches the target
            mid = (lo + hi) / 2
            removed = 1.0 - self.macs_with(kept_at(mid), groups, macs) / reference
            lo, hi = (mid, hi) if removed < target else (lo, mid)
        candidates = [kept_at(lo), kept_at(hi)]
        best = min(candidates, key=lambda k: abs(1.0 - self.macs_with(k, groups, macs) / reference - target))
        empty = [g.root for k, g in zip(best, groups) if k < 1]
        if empty:
            raise PruneBenchError(
                f"removing {target:.2%} of the MACs uniformly would leave no channel in {empty[0]}: choose a lower sparsity"
            )
        return best

    def _global(self, groups, macs, reference, target) -> list[int]:
        # every channel once, least important first; removing the first n is one candidate per n
        order = sorted(
            ((float(s), gi) for gi, g in enumerate(groups) for s in (g.scores / g.scores.mean().clamp_min(1e-12))),
            key=lambda t: t[0],
        )

        def kept_after(n: int) -> list[int]:
            kept = [g.channels for g in groups]
            for _, gi in order[:n]:
                kept[gi] -= 1
            return kept

        lo, hi = 0, len(order)
        while lo < hi:  # the first n whose removal reaches the target
            mid = (lo + hi) // 2
            if 1.0 - self.macs_with(kept_after(mid), groups, macs) / reference < target:
                lo = mid + 1
            else:
                hi = mid
        candidates = [kept_after(max(lo - 1, 0)), kept_after(lo)]
        best = min(candidates, key=lambda k: abs(1.0 - self.macs_with(k, groups, macs) / reference - target))
        empty = [g.root for k, g in zip(best, groups) if k < 1]
        if empty:
            raise PruneBenchError(
                f"removing {target:.2%} of the MACs by global ranking would leave no channel in {empty[0]}: "
                "choose a lower sparsity or --channel-scope uniform"
            )
        return best

    def __call__(
        self, model: nn.Module, target: float, reference_macs: int | None = None, input_shape=INPUT_SHAPE
    ) -> tuple[nn.Module, ChannelResult]:
        import torch_pruning as tp

        if not 0.0 <= target < 1.0:
            raise PruneBenchError(f"channel sparsity {target!r} is outside [0, 1): give the fraction of MACs to remove, e.g. 0.5")
        model = copy.deepcopy(model).cpu().eval()
        macs = layer_macs(model, input_shape)
        reference = reference_macs or sum(macs.values())
        now = 1.0 - sum(macs.values()) / reference
        if target < now - 1e-9:
            raise PruneBenchError(f"the model has {now:.2%} of its MACs removed already, more than the {target:.2%} asked")
        example = torch.zeros(1, *input_shape)
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
        groups = self.groups(model, graph)
        choose = self._uniform if self.scope == "uniform" else self._global
        kept = choose(groups, macs, reference, target)
        modules = dict(model.named_modules())
        kept_idx = {}
        for k, g in zip(kept, groups):
            keep = torch.argsort(g.scores, descending=True, stable=True)[:k].sort().values
            drop = sorted(set(range(g.channels)) - set(keep.tolist()))
            kept_idx[g.root] = keep.tolist()
            if drop:
                root = modules[g.root]
                graph.get_pruning_group(root, tp.prune_conv_out_channels, drop).prune()
        check_widths(widths_of(model), "pruned model")
        after = sum(layer_macs(model, input_shape).values())
        one_channel = sum(self.macs_with([g.channels - (i == j) for j, g in enumerate(groups)], groups, macs)
                          for i in range(len(groups)))
        tolerance = (len(groups) * sum(macs.values()) - one_channel) / reference
        result = ChannelResult(
            target=target,
            achieved=1.0 - after / reference,
            tolerance=tolerance,
            macs=after,
            reference_macs=reference,
            params=parameter_count(model),
            kept=kept_idx,
        )
        return model.eval(), result


# -- pruning with fine-tuning ------------------------------------------------------------------------


@dataclasses.dataclass
class ChannelOutcome:
    """What ``prune_channels_and_finetune`` did: the smaller model and each round's figures."""

    model: nn.Module
    mac_fraction: float  # MACs removed, of the unpruned model's
    param_fraction: float  # parameters removed, of the unpruned model's
    tolerance: float  # channel granularity of the last round (fraction of MACs)
    reference_macs: int
    reference_params: int
    rounds: list[dict]


def prune_channels_and_finetune(model: nn.Module, data, prune, channel: ChannelSettings, train, desc: str = "prune"):
    """Channel-prune ``model`` to ``prune.sparsity`` of its MACs in ``prune.rounds`` rounds, fine-tuning after each.

    Round k removes 1 - (1-s)^(k/n) of the unpruned model's MACs in total (the
    schedule of ``prune.schedule.round_sparsities``, on MACs instead of weights).
    ``model`` is not changed; the pruned model is returned in the outcome. If the
    model is channel-pruned already, the fractions count against its own MACs.
    """
    from prune.schedule import round_sparsities
    from prune.train import fit

    prune.check()
    channel.check()
    train.check()
    strategy = ChannelPruning(channel.importance, channel.channel_scope)
    model = copy.deepcopy(model).cpu().eval()
    reference_macs = sum(layer_macs(model).values())
    reference_params = parameter_count(model)
    log = []
    result = None
    for k, target in enumerate(round_sparsities(prune.sparsity, prune.rounds)):
        model, result = strategy(model, target, reference_macs)
        entry = {"round": k + 1, "target": target, "mac_fraction": result.achieved, "params": result.params}
        if train.epochs > 0:
            tuned = dataclasses.replace(train, seed=train.seed + k)
            entry["epochs"] = fit(model, data, tuned, desc=f"{desc} round {k + 1}/{prune.rounds}")
            model.to("cpu").eval()
        log.append(entry)
    model.to("cpu", memory_format=torch.contiguous_format).eval()
    if abs(result.achieved - prune.sparsity) > result.tolerance + 1e-9:
        raise PruneBenchError(
            f"channel pruning removed {result.achieved:.2%} of the MACs, the target is {prune.sparsity:.2%} "
            f"(granularity {result.tolerance:.2%}): not saving"
        )
    return ChannelOutcome(
        model=model,
        mac_fraction=result.achieved,
        param_fraction=1.0 - result.params / reference_params,
        tolerance=result.tolerance,
        reference_macs=reference_macs,
        reference_params=reference_params,
        rounds=log,
    )


def channel_meta(outcome: ChannelOutcome, channel: ChannelSettings) -> dict:
    """Checkpoint meta entries of a channel-pruned model (the widths rebuild it)."""
    return {
        "arch": ARCH_CHANNELS,
        "widths": widths_of(outcome.model),
        "importance": channel.importance,
        "channel_scope": channel.channel_scope,
        "mac_fraction_removed": outcome.mac_fraction,
        "mac_tolerance": outcome.tolerance,
        "param_fraction_removed": outcome.param_fraction,
        "params": parameter_count(outcome.model),
        "reference_params": outcome.reference_params,
        "macs_per_image": sum(layer_macs(outcome.model).values()),
        "reference_macs_per_image": outcome.reference_macs,
    }


def format_widths(widths: dict) -> str:
    """One line: the output channels per stage, e.g. ``conv1 32 | layer1 32/32 32/32 | ...``."""
    parts = [f"conv1 {widths['conv1'][0]}"]
    for stage in STAGES:
        parts.append(f"{stage} " + " ".join(f"{widths[f'{stage}.{b}.conv1'][0]}/{widths[f'{stage}.{b}.conv2'][0]}" for b in (0, 1)))
    return " | ".join(parts)



CARRIED = ("widths", "importance", "channel_scope", "mac_fraction_removed", "mac_tolerance", "param_fraction_removed",
           "params", "reference_params", "macs_per_image", "reference_macs_per_image")


def carried_meta(meta: dict) -> dict:
    """The entries a channel-pruned checkpoint's meta must keep when it is pruned or fine-tuned further."""
    if meta.get("arch") != ARCH_CHANNELS:
        return {}
    return {"arch": ARCH_CHANNELS, **{k: meta[k] for k in CARRIED if k in meta}}


def run_channel_case(case, base_model, data, train, evals, study, header: dict, ckpt, fingerprint: dict) -> dict:
    """One study case of channel pruning (``prune.study.run_case`` hands these here); returns its results row.

    The row's ``target_sparsity``/``achieved_sparsity`` and ``mac_weighted_sparsity`` are fractions of MACs
    removed (what channel pruning is asked for); ``param_fraction_removed`` beside them.
    """
    import time

    from prune.checkpoint import save_checkpoint
    from prune.platform import resolve_device, set_seed
    from prune.study import case_meta, case_row, paired_time_per_image, write_atomic
    from prune.train import PruneSettings, evaluate

    start = time.perf_counter()
    device = resolve_device(train.device)
    set_seed(train.seed)
    channel = ChannelSettings()
    outcome = prune_channels_and_finetune(
        base_model, data, PruneSettings(case.sparsity, case.rounds, "channel", study.include_downsample),
        channel, dataclasses.replace(train, epochs=case.epochs), desc=case.name,
    )
    model = outcome.model
    accuracy, loss = evaluate(model, data, device, evals.eval_batch_size)
    base_seconds, seconds = paired_time_per_image(base_model, model, device, evals)
    model.to("cpu")
    base = header["base"]
    row = case_row(case, data, train, header, accuracy, loss, base_seconds, seconds, start, {
        "achieved_sparsity": outcome.mac_fraction,
        "pruned_weights": outcome.reference_params - parameter_count(model),
        "prunable_weights": outcome.reference_params,
        "mac_weighted_sparsity": outcome.mac_fraction,
        "param_fraction_removed": outcome.param_fraction,
    })
    meta = case_meta(case, data, train, base, accuracy, outcome, fingerprint, row, **channel_meta(outcome, channel))
    save_checkpoint(ckpt, model, meta, force=True)  # reaching here means the file is absent or --force was given
    report = (
        f"# {case.name}: channel pruning\n\n"
        f"ResNet-18 on {data.name} ({data.note}).\n\n"
        f"{case.method}, channel ({channel.importance}, {channel.channel_scope}): {outcome.mac_fraction:.2%} of the MACs "
        f"removed (target {case.sparsity:.2%}, granularity {outcome.tolerance:.2%}), {outcome.param_fraction:.2%} of the "
        f"parameters; {case.rounds} round(s), {case.epochs} fine-tuning epoch(s) per round; accuracy {accuracy:.2%} "
        f"(base {base['accuracy']:.2%}).\n\nWidths (output channels): {format_widths(meta['widths'])}\n"
    )
    write_atomic(ckpt.parent / "reports" / f"{case.name}.md", report)
    return row
