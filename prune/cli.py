"""``python -m prune train|prune|finetune|evaluate|report|study``: thin argparse around the library.

Options are derived from the settings dataclasses (``add_settings``): one
``--field-name`` per field, its help from the field's ``metadata["help"]`` or
its trailing ``# comment``. Every user error prints ``error: <one line>`` to
stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import shlex
import sys
import typing
from pathlib import Path

from prune.errors import PruneBenchError

PROG = "python -m prune"


# -- settings dataclass -> argparse --------------------------------------------------------------


class _UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one line (``error: ...``) instead of usage plus message."""

    def error(self, message):  # noqa: D401 - argparse's name
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _field_comments(cls) -> dict[str, str]:
    """Trailing ``# comments`` of a dataclass's field lines, by field name."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = {}
    for line in source.splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            found.setdefault(m.group(1), m.group(2).strip())
    return found


def _converter(kind: type, flag: str):
    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None

    convert.__name__ = kind.__name__
    return convert


def _with_default(help_text: str, default) -> str:
    if "default" in help_text or default == "":  # the comment already says what the default means
        return help_text
    return f"{help_text} (default: {default})"


def add_settings(
    parser: argparse.ArgumentParser,
    cls,
    defaults: dict | None = None,
    exclude: typing.Iterable[str] = (),
    only: typing.Iterable[str] | None = None,
    types: dict | None = None,
) -> None:
    """Add one ``--option`` per field of the dataclass ``cls`` to ``parser``.

    bool fields become ``--flag/--no-flag``; ``tuple[X, ...]`` fields take one or
    more values; ``defaults`` overrides field defaults (fine-tuning uses another
    learning rate than training, for instance); ``types`` maps a field to its own
    parser where the type hint is not one (e.g. ``int | None`` read as "N|dynamic"),
    and a field's ``metadata["shown"]`` is how its default reads in the help.
    """
    defaults = defaults or {}
    types = types or {}
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    title = (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".")
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in exclude or (only is not None and f.name not in only):
            continue
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        help_text = (f.metadata.get("help") or comments.get(f.name, "")).replace("%", "%%")
        kind = hints[f.name]
        if f.name in types:
            shown = f.metadata.get("shown", default)
            group.add_argument(flag, type=types[f.name], default=default, help=_with_default(help_text, shown))
        elif kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            shown = " ".join(str(v) for v in default)
            group.add_argument(flag, nargs="+", type=_converter(item, flag), default=default, help=_with_default(help_text, shown))
        else:
            group.add_argument(flag, type=_converter(kind, flag), default=default, help=_with_default(help_text, default))


def settings_from(args: argparse.Namespace, cls, **fixed):
    """Build ``cls`` from the parsed options named after its fields (``fixed`` for the others)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in fixed:
            values[f.name] = fixed[f.name]
        elif hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


# -- subcommands -----------------------------------------------------------------------------------


def _add_checkpoint(parser):
    parser.add_argument("checkpoint", help="checkpoint file (prunebench, a bare ResNet-18 state_dict, or one with masks attached)")


def _add_output(parser, default: str | None = None):
    parser.add_argument(
        "--out", default=default, required=default is None,
        help="where to write the checkpoint" + (f" (default: {default})" if default else ""),
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def cmd_train(args) -> int:
    """Train a dense CIFAR ResNet-18 from scratch and save it."""
    from prune.checkpoint import check_writable, save_checkpoint
    from prune.data import DataSettings, load_data
    from prune.train import TrainSettings, train_model

    data_settings, train = settings_from(args, DataSettings), settings_from(args, TrainSettings)
    data_settings.check()
    train.check()
    check_writable(args.out, args.force)  # before the work, not after
    data = load_data(data_settings)
    resume = _resume_path(args.out)
    model, meta = train_model(data, train, resume=resume)
    path = save_checkpoint(args.out, model, meta, force=args.force)
    _finished(resume)
    _say(f"{path}: accuracy {meta['accuracy']:.2%} on {data.name} ({data.note}), {meta['train_seconds']:.0f} s")
    return 0


def _resume_path(out: str) -> Path:
    """Where a training run keeps its state after every epoch until its checkpoint is saved (a killed run goes on from it)."""
    out = Path(out)
    return out.with_name(out.name + ".resume")


def _finished(resume: Path) -> None:
    from prune.distributed import barrier, is_main

    barrier()
    if is_main():
        resume.unlink(missing_ok=True)
        resume.with_name(resume.name + ".tmp").unlink(missing_ok=True)  # a save cut short by a kill


def _say(text: str) -> None:
    """Print on rank 0 only (under torchrun every rank runs the command)."""
    from prune.distributed import is_main

    if is_main():
        print(text)


def _prune_meta(model_meta: dict, data, prune, train, outcome, accuracy: float, macs, source: str) -> dict:
    from prune.models import ARCH
    from prune.platform import provenance
    from prune.structured import carried_meta

    return {
        "arch": ARCH,
        **carried_meta(model_meta),  # a channel-pruned model pruned further keeps its architecture
        "dataset": data.name,
        "dataset_note": data.note,
        "method": "iterative" if prune.rounds > 1 else "oneshot",
        "strategy": prune.strategy,
        "target_sparsity": prune.sparsity,
        "achieved_sparsity": outcome.mask.sparsity,
        "mac_weighted_sparsity": outcome.mask.mac_weighted_sparsity(macs),
        "include_downsample": prune.include_downsample,
        "epochs": train.epochs,
        "rounds": prune.rounds,
        "lr": train.lr,
        "momentum": train.momentum,
        "weight_decay": train.weight_decay,
        "accuracy": accuracy,
        "base_accuracy": model_meta.get("accuracy"),
        "base_checkpoint": source,
        "provenance": provenance(),
    }


def cmd_prune(args) -> int:
    """Prune a checkpoint one-shot or iteratively, fine-tuning after each round (--strategy channel: whole filters)."""
    from prune import distributed
    from prune.checkpoint import check_writable, load_checkpoint, save_checkpoint
    from prune.data import DataSettings, load_data
    from prune.models import layer_macs
    from prune.platform import set_seed
    from prune.train import PruneSettings, TrainSettings, evaluate, prune_and_finetune

    data_settings = settings_from(args, DataSettings)
    train, prune = settings_from(args, TrainSettings), settings_from(args, PruneSettings)
    for s in (data_settings, train, prune):
        s.check()
    check_writable(args.out, args.force)
    model, meta = load_checkpoint(args.checkpoint)
    if prune.strategy == "channel":
        return _prune_channels(args, model, meta, data_settings, prune, train)
    data = load_data(data_settings)
    set_seed(train.seed)
    macs = layer_macs(model)
    resume = _resume_path(args.out)
    outcome = prune_and_finetune(model, data, prune, train, resume=resume)
    accuracy, _ = evaluate(model, data, distributed.device(train.device, distributed.current()))
    model.to("cpu")
    path = save_checkpoint(args.out, model, _prune_meta(meta, data, prune, train, outcome, accuracy, macs, args.checkpoint), args.force)
    _finished(resume)
    _say(
        f"{path}: sparsity {outcome.mask.sparsity:.2%} ({outcome.mask.zeros} of {outcome.mask.numel} weights), "
        f"accuracy {accuracy:.2%} on {data.name}"
    )
    return 0


def _prune_channels(args, model, meta, data_settings, prune, train) -> int:
    """``prune --strategy channel``: a smaller dense model, its widths in the checkpoint's meta."""
    from prune.checkpoint import save_checkpoint
    from prune.data import load_data
    from prune.platform import provenance, resolve_device, set_seed
    from prune.structured import ChannelSettings, channel_meta, format_widths, prune_channels_and_finetune
    from prune.train import evaluate

    channel = settings_from(args, ChannelSettings)
    channel.check()
    data = load_data(data_settings)
    set_seed(train.seed)
    outcome = prune_channels_and_finetune(model, data, prune, channel, train)
    accuracy, _ = evaluate(outcome.model, data, resolve_device(train.device))
    outcome.model.to("cpu")
    new_meta = {
        "dataset": data.name,
        "dataset_note": data.note,
        "method": "iterative" if prune.rounds > 1 else "oneshot",
        "strategy": "channel",
        "target_sparsity": prune.sparsity,
        **channel_meta(outcome, channel),
        "epochs": train.epochs,
        "rounds": prune.rounds,
        "rounds_log": [{k: v for k, v in r.items() if k != "epochs"} for r in outcome.rounds],
        "lr": train.lr,
        "momentum": train.momentum,
        "weight_decay": train.weight_decay,
        "accuracy": accuracy,
        "base_accuracy": meta.get("accuracy"),
        "base_checkpoint": args.checkpoint,
        "provenance": provenance(),
    }
    path = save_checkpoint(args.out, outcome.model, new_meta, args.force)
    print(
        f"{path}: {outcome.mac_fraction:.2%} of the MACs removed (asked {prune.sparsity:.2%}, granularity "
        f"{outcome.tolerance:.2%}), {outcome.param_fraction:.2%} of the parameters; accuracy {accuracy:.2%} on {data.name}"
    )
    print(f"  widths: {format_widths(new_meta['widths'])}")
    return 0


def cmd_finetune(args) -> int:
    """Fine-tune a (pruned) checkpoint with its zero weights held at zero, and save the result."""
    from prune import distributed
    from prune.checkpoint import check_writable, load_checkpoint, save_checkpoint
    from prune.data import DataSettings, load_data
    from prune.mask import Mask, attach_, make_permanent_
    from prune.models import prunable_layers
    from prune.platform import provenance, set_seed
    from prune.train import Resume, TrainSettings, evaluate, fit

    data_settings, train = settings_from(args, DataSettings), settings_from(args, TrainSettings)
    data_settings.check()
    train.check()
    check_writable(args.out, args.force)
    model, meta = load_checkpoint(args.checkpoint)
    data = load_data(data_settings)
    set_seed(train.seed)
    layers = prunable_layers(model, include_downsample=True)  # every conv and fc: all their zeros stay zeros
    mask = Mask.from_model(layers)
    attach_(layers, mask)
    resume = _resume_path(args.out)
    fit(model, data, train, desc="finetune", resume=Resume(resume, {"case": "finetune", "from": str(args.checkpoint)}))
    make_permanent_(layers)
    device = distributed.device(train.device, distributed.current())
    accuracy, _ = evaluate(model, data, device)
    model.to("cpu")
    meta = {
        **meta,
        "dataset": data.name,
        "dataset_note": data.note,
        "finetuned_from": args.checkpoint,
        "finetune_epochs": train.epochs,
        "finetune_lr": train.lr,
        "accuracy_before": meta.get("accuracy"),
        "accuracy": accuracy,
        "provenance": provenance(),
    }
    path = save_checkpoint(args.out, model, meta, args.force)
    _finished(resume)
    _say(f"{path}: accuracy {accuracy:.2%} on {data.name}, {mask.sparsity:.2%} of the weights held at zero")
    return 0


def cmd_evaluate(args) -> int:
    """Test accuracy, loss and inference time per image of a checkpoint."""
    from prune.checkpoint import load_checkpoint
    from prune.data import DataSettings, load_data
    from prune.mask import Mask
    from prune.models import layer_macs, prunable_layers
    from prune.platform import resolve_device
    from prune.train import EvalSettings, evaluate, time_per_image

    data_settings, evals = settings_from(args, DataSettings), settings_from(args, EvalSettings)
    data_settings.check()
    evals.check()
    device = resolve_device(args.device)
    model, meta = load_checkpoint(args.checkpoint)
    data = load_data(data_settings)
    mask = Mask.from_model(prunable_layers(model, args.include_downsample))
    macs = layer_macs(model)
    accuracy, loss = evaluate(model, data, device, evals.eval_batch_size)
    seconds = time_per_image(model, device, evals.time_batch, evals.time_warmup, evals.time_iters)
    result = {
        "checkpoint": args.checkpoint,
        "dataset": data.name,
        "dataset_note": data.note,
        "test_images": len(data.test),
        "accuracy": accuracy,
        "loss": loss,
        "time_per_image_ms": seconds * 1e3,
        "time_batch": evals.time_batch,
        "device": device.type,
        "sparsity": mask.sparsity,
        "mac_weighted_sparsity": mask.mac_weighted_sparsity(macs),
        "trained_on": meta.get("dataset"),
        "mac_fraction_removed": meta.get("mac_fraction_removed", 0.0),  # by channel pruning
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.checkpoint} on {data.name} ({len(data.test)} test images; {data.note}):")
        print(f"  accuracy {accuracy:.2%}, loss {loss:.4f}")
        print(f"  time per image {seconds * 1e3:.3f} ms ({device.type}, batch {evals.time_batch}, median of {evals.time_iters})")
        print(f"  sparsity {mask.sparsity:.2%} ({mask.zeros} of {mask.numel} weights), MAC-weighted {result['mac_weighted_sparsity']:.2%}")
        if isinstance(meta.get("mac_fraction_removed"), float) and "widths" in meta:
            print(f"  channel-pruned: {meta['mac_fraction_removed']:.2%} of the MACs removed (sparsity above is within it)")
        if meta.get("dataset") not in (None, data.name):
            print(f"  note: trained on {meta['dataset']}, evaluated on {data.name}")
    return 0


def cmd_report(args) -> int:
    """Per-layer sparsity report of a checkpoint (parameters, nonzeros, sparsity, MACs)."""
    from prune.checkpoint import load_checkpoint
    from prune.mask import Mask, format_report
    from prune.models import layer_macs, prunable_layers

    model, meta = load_checkpoint(args.checkpoint)
    mask = Mask.from_model(prunable_layers(model, args.include_downsample))
    macs = layer_macs(model)
    lines = [f"# {args.checkpoint}", ""]
    described = [f"{k} {meta[k]}" for k in ("dataset", "method", "strategy", "epochs", "rounds") if k in meta]
    if "target_sparsity" in meta:
        described.append(f"target sparsity {meta['target_sparsity']:.2%}")
    if isinstance(meta.get("accuracy"), float):
        described.append(f"accuracy {meta['accuracy']:.2%}")
    if described:
        lines += [", ".join(described) + ".", ""]
    if "widths" in meta and isinstance(meta.get("mac_fraction_removed"), float):
        from prune.structured import format_widths

        lines += [
            f"Channel-pruned: {meta['mac_fraction_removed']:.2%} of the MACs and "
            f"{meta.get('param_fraction_removed', float('nan')):.2%} of the parameters removed; "
            f"output channels {format_widths(meta['widths'])}. The sparsity below is within this smaller model.",
            "",
        ]
    lines.append(format_report(mask.report(macs), mask.mac_weighted_sparsity(macs)))
    text = "\n".join(lines) + "\n"
    if args.out:
        from prune.checkpoint import check_writable
        from prune.study import write_atomic

        write_atomic(check_writable(args.out, args.force), text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_study(args) -> int:
    """Run the pruning study grid (and controls), resumably, into one output folder."""
    from prune.claims import WorkerSettings, report, submit_slurm
    from prune.data import DataSettings
    from prune.study import StudySettings, run_study
    from prune.train import EvalSettings, TrainSettings

    worker = settings_from(args, WorkerSettings)
    worker.check()
    if worker.report_only:
        print(report(args.out, worker))
        return 0
    if worker.slurm:
        jobs = submit_slurm(args.argv, args.out, worker)
        print(f"submitted {len(jobs)} workers ({', '.join(jobs[:3])}{', ...' if len(jobs) > 3 else ''}); "
              f"their logs go to {Path(args.out) / 'slurm'}; follow with: {PROG} study --out {args.out} --report-only")
        return 0
    rows = run_study(
        settings_from(args, DataSettings),
        settings_from(args, TrainSettings, epochs=0),  # each case sets its own epochs
        settings_from(args, EvalSettings),
        settings_from(args, StudySettings),
        command=" ".join([PROG] + [shlex.quote(a) for a in args.argv]),
        worker=worker,
    )
    _say(f"{len(rows)} cases in {Path(args.out) / 'results.md'}")
    return 0


def build_parser() -> Parser:
    from prune.claims import WorkerSettings
    from prune.data import DataSettings
    from prune.structured import ChannelSettings
    from prune.study import StudySettings
    from prune.train import FINETUNE_DEFAULTS, EvalSettings, PruneSettings, TrainSettings

    parser = Parser(prog=PROG, description="Prune a CIFAR ResNet-18 and run the pruning study.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    add_settings(p, DataSettings)
    add_settings(p, TrainSettings)
    _add_output(p, "runs/resnet18_base.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("prune", help=cmd_prune.__doc__, description=cmd_prune.__doc__)
    _add_checkpoint(p)
    add_settings(p, PruneSettings)
    add_settings(p, ChannelSettings)
    add_settings(p, DataSettings)
    add_settings(p, TrainSettings, defaults=FINETUNE_DEFAULTS)
    _add_output(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("finetune", help=cmd_finetune.__doc__, description=cmd_finetune.__doc__)
    _add_checkpoint(p)
    add_settings(p, DataSettings)
    add_settings(p, TrainSettings, defaults=FINETUNE_DEFAULTS)
    _add_output(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help=cmd_evaluate.__doc__, description=cmd_evaluate.__doc__)
    _add_checkpoint(p)
    add_settings(p, DataSettings)
    add_settings(p, EvalSettings)
    add_settings(p, TrainSettings, only=("device",))
    add_settings(p, PruneSettings, only=("include_downsample",))
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help=cmd_report.__doc__, description=cmd_report.__doc__)
    _add_checkpoint(p)
    add_settings(p, PruneSettings, only=("include_downsample",))
    p.add_argument("--out", default="", help="write the report (Markdown) to this file instead of printing it")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("study", help=cmd_study.__doc__, description=cmd_study.__doc__)
    add_settings(p, StudySettings)
    add_settings(p, DataSettings)
    add_settings(p, TrainSettings, defaults=FINETUNE_DEFAULTS, exclude=("epochs",))
    add_settings(p, EvalSettings)
    add_settings(p, WorkerSettings)
    p.set_defaults(func=cmd_study)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; user errors print ``error: <one line>`` to stderr and return 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        return args.func(args)
    except (PruneBenchError, _UsageError) as e:
        message = " ".join(str(e).split())  # one line, whatever the message held
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (finished study cases are kept; rerun to resume)", file=sys.stderr)
        return 130
