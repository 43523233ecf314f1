"""The pruning study: the seed's 12-case grid (and controls), resumable, with a results table per case.

Grid (the seed study's): one-shot at each sparsity for each fine-tuning budget
(3 and 5 epochs), iterative at each sparsity for (3 epochs x 3 rounds) and
(5 epochs x 5 rounds), epochs being per round. Controls: random pruning at the
same sparsity, and magnitude pruning with 0 fine-tuning epochs.

Output folder: one checkpoint per case named as the seed named them
(``resnet18_prune_90perc_oneshot5.pt``, ``resnet18_prune_90perc_iterative3_3.pt``),
``results.json`` (the source of truth) rendered to ``results.csv`` and
``results.md``, ``reports/<case>.md`` (per-layer sparsity) and
``accuracy_vs_sparsity.png``. Each file is written whole and renamed into
place, so a run killed mid-case loses only that case, and not all of it:
``resume/<case>.pt`` holds its training state after every epoch. Processes
sharing the folder claim cases through ``claims/`` and agree on ``study.json``
(``prune.claims``).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import time
from pathlib import Path

from tqdm.auto import tqdm

from prune.checkpoint import check_writable, load_checkpoint, save_checkpoint
from prune.data import DataSet, DataSettings, load_data
from prune.errors import PruneBenchError
from prune.mask import format_report
from prune.models import ARCH, layer_macs
from prune.platform import provenance, set_seed
from prune.schedule import check_rounds, check_sparsity
from prune.strategies import STRATEGIES, STRUCTURED
from prune.train import (
    EvalSettings,
    PruneSettings,
    TrainSettings,
    evaluate,
    prune_and_finetune,
    time_per_image,
    train_model,
)

DEFAULT_STRATEGY = "magnitude"
RANDOM_STRATEGY = "random"
BASE_NAME = "resnet18_base.pt"
RESULTS = "results.json"
RESUME = "resume"  # subfolder of the study folder: training state of unfinished cases, after every epoch
COLUMNS = (  # the CSV and Markdown columns, in order
    "case",
    "method",
    "strategy",
    "target_sparsity",
    "achieved_sparsity",
    "mac_weighted_sparsity",
    "epochs",
    "rounds",
    "accuracy",
    "accuracy_drop",
    "time_per_image_ms",
    "speedup",
    "wall_s",
)


@dataclasses.dataclass
class StudySettings:
    """Which cases to run and where to put them."""

    out: str = "runs/study"  # folder for checkpoints, results (JSON, CSV, Markdown), per-layer reports and the plot
    base: str = ""  # base checkpoint, trained first if absent (default: OUT/resnet18_base.pt)
    cases: tuple[str, ...] = ("grid",)  # grid | controls | structured | all | case names such as 90perc_oneshot5 90perc_iterative3_3
    sparsities: tuple[float, ...] = (0.5, 0.75, 0.9)  # target sparsities, each in [0, 1)
    epochs: tuple[int, ...] = (3, 5)  # fine-tuning epochs (per round): one-shot runs each, iterative pairs them with --rounds
    rounds: tuple[int, ...] = (3, 5)  # iterative rounds, paired in order with --epochs (3 epochs x 3 rounds, 5 x 5)
    strategy: str = DEFAULT_STRATEGY  # pruning strategy of the grid (the random control always uses random)
    include_downsample: bool = False  # also prune the three 1x1 shortcut convs (the seed pruned 18 tensors)
    base_epochs: int = 30  # epochs to train the base model when it is absent
    base_lr: float = 0.1  # peak learning rate (one-cycle) for training the base model
    force: bool = False  # rerun finished cases and overwrite their checkpoints and results

    def check(self) -> None:
        for s in self.sparsities:
            check_sparsity(s)
        for e in self.epochs:
            if not isinstance(e, int) or e < 0:
                raise PruneBenchError(f"--epochs {e!r} must be whole numbers >= 0")
        for n in self.rounds:
            check_rounds(n)
        if len(self.epochs) != len(self.rounds):
            raise PruneBenchError(
                f"--epochs has {len(self.epochs)} values, --rounds {len(self.rounds)}: iterative cases pair them in order"
            )
        if not self.sparsities or not self.epochs or not self.cases:
            raise PruneBenchError("--sparsities, --epochs and --cases need at least one value each")
        if self.strategy not in STRATEGIES:
            raise PruneBenchError(f"unknown pruning strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if self.base_epochs < 1 or not self.base_lr > 0:
            raise PruneBenchError("--base-epochs must be >= 1 and --base-lr > 0")

    @property
    def base_path(self) -> Path:
        return Path(self.base) if self.base else Path(self.out) / BASE_NAME


# -- cases -----------------------------------------------------------------------------------


def _slug(strategy: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", strategy).strip("-")


def _percent(s: float) -> str:
    return f"{s * 100:g}"


@dataclasses.dataclass(frozen=True)
class Case:
    """One pruning run: prune to ``sparsity`` in ``rounds`` rounds, ``epochs`` of fine-tuning after each."""

    sparsity: float
    rounds: int  # 1: one-shot
    epochs: int  # per round
    strategy: str = DEFAULT_STRATEGY
    iterative: bool = False  # named and reported as iterative (even with one round)

    @property
    def method(self) -> str:
        return "iterative" if self.iterative else "oneshot"

    @property
    def name(self) -> str:
        """The seed's naming: 90perc_oneshot5, 90perc_iterative3_3; other strategies add a suffix (_random)."""
        name = f"{_percent(self.sparsity)}perc_{self.method}{self.epochs}"
        if self.iterative:
            name += f"_{self.rounds}"
        if self.strategy != DEFAULT_STRATEGY:
            name += f"_{_slug(self.strategy)}"
        return name

    @property
    def checkpoint(self) -> str:
        return f"resnet18_prune_{self.name}.pt"

    @property
    def label(self) -> str:
        """How the plot's legend names the case's series."""
        if self.iterative:
            what = f"iterative, {self.epochs} epochs x {self.rounds} rounds"
        elif self.epochs == 0:
            what = "one-shot, no fine-tuning"
        else:
            what = f"one-shot, {self.epochs} epochs"
        return what if self.strategy == DEFAULT_STRATEGY else f"{what} ({self.strategy})"


CASE_NAME = re.compile(r"^(\d+(?:\.\d+)?)perc_(oneshot|iterative)(\d+)(?:_(\d+))?(?:_([A-Za-z0-9-]+))?$")


def parse_case(name: str) -> Case:
    """The case a name such as ``90perc_iterative3_3`` or ``75perc_oneshot5_random`` stands for."""
    name = name.removeprefix("resnet18_prune_").removesuffix(".pt")
    m = CASE_NAME.match(name)
    if not m:
        raise PruneBenchError(
            f"cannot read case {name!r}: write e.g. 90perc_oneshot5, 90perc_iterative3_3, 90perc_oneshot5_random, "
            "or grid, controls, structured, all"
        )
    percent, method, epochs, rounds, strategy = m.groups()
    if method == "oneshot" and rounds is not None:
        # "90perc_oneshot5_2" is not a name we make; "_2" would otherwise read as a strategy
        raise PruneBenchError(f"case {name!r}: one-shot cases have no rounds (write e.g. 90perc_oneshot5)")
    if method == "iterative" and rounds is None:
        raise PruneBenchError(f"case {name!r}: iterative cases name epochs and rounds, e.g. 90perc_iterative3_3")
    strategies = {_slug(s): s for s in [*STRATEGIES, *STRUCTURED]}
    if strategy is not None and strategy not in strategies:
        raise PruneBenchError(f"case {name!r}: unknown strategy suffix {strategy!r}: choose one of {', '.join(strategies)}")
    case = Case(
        sparsity=check_sparsity(float(percent) / 100),
        rounds=int(rounds) if rounds else 1,
        epochs=int(epochs),
        strategy=strategies[strategy] if strategy else DEFAULT_STRATEGY,
        iterative=method == "iterative",
    )
    check_rounds(case.rounds)
    return case


def grid(study: StudySettings) -> list[Case]:
    """The seed's grid: one-shot for each epoch budget, iterative for each (epochs, rounds) pair, per sparsity."""
    cases = []
    for s in study.sparsities:
        cases += [Case(s, 1, e, study.strategy) for e in study.epochs]
        cases += [Case(s, n, e, study.strategy, iterative=True) for e, n in zip(study.epochs, study.rounds)]
    return cases


def controls(study: StudySettings) -> list[Case]:
    """Per sparsity: one-shot with no fine-tuning, and random pruning with the longest one-shot budget."""
    cases = []
    for s in study.sparsities:
        cases.append(Case(s, 1, 0, study.strategy))
        cases.append(Case(s, 1, max(study.epochs), RANDOM_STRATEGY))
    return cases


def structured(study: StudySettings) -> list[Case]:
    """Per sparsity (here: MACs removed), channel pruning one-shot with the longest budget and iterative with the first pair."""
    cases = []
    for s in study.sparsities:
        cases.append(Case(s, 1, max(study.epochs), "channel"))
        cases.append(Case(s, study.rounds[0], study.epochs[0], "channel", iterative=True))
    return cases


def select_cases(study: StudySettings) -> list[Case]:
    """The cases ``study.cases`` names, in order, each once."""
    chosen: list[Case] = []
    for token in study.cases:
        if token == "grid":
            chosen += grid(study)
        elif token == "controls":
            chosen += controls(study)
        elif token == "structured":
            chosen += structured(study)
        elif token == "all":
            chosen += grid(study) + controls(study)
        else:
            chosen.append(parse_case(token))
    unique: dict[str, Case] = {}
    for case in chosen:
        unique.setdefault(case.name, case)
    return list(unique.values())


# -- files -------------------------------------------------------------------------------------


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place (rank 0 only under torchrun)."""
    from prune.distributed import is_main

    if not is_main():
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Results:
    """``results.json`` in the study folder, rendered to CSV and Markdown after every change."""

    def __init__(self, folder: Path, force: bool = False):
        self.folder = folder
        self.path = folder / RESULTS
        self.data: dict = {"study": None, "rows": []}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
                    raise ValueError("no rows")
                self.data = data
            except (ValueError, OSError):
                if not force:  # with --force the table starts afresh
                    raise PruneBenchError(f"{self.path} is not a results file of this study: move it away or pass --force") from None

    @property
    def rows(self) -> list[dict]:
        return self.data["rows"]

    def done(self, case: str) -> dict | None:
        return next((r for r in self.rows if r["case"] == case), None)

    def check_settings(self, fingerprint: dict, force: bool) -> None:
        """Refuse to mix results of different settings in one table (``force`` starts the table afresh)."""
        old = self.data.get("study")
        if old is None or old == fingerprint:
            return
        if not force:
            diff = [k for k in sorted(set(old) | set(fingerprint)) if old.get(k) != fingerprint.get(k)]
            k = diff[0]
            raise PruneBenchError(
                f"{self.path} holds results made with other settings ({k}: {old.get(k)!r} there, "
                f"{fingerprint.get(k)!r} now): choose another --out or pass --force to start it afresh"
            )
        self.data["rows"] = []

    def put(self, row: dict, header: dict, order: list[str]) -> None:
        """Add or replace ``row`` and rewrite the JSON, CSV and Markdown files."""
        rows = [r for r in self.rows if r["case"] != row["case"]] + [row]
        rank = {name: i for i, name in enumerate(order)}
        rows.sort(key=lambda r: (rank.get(r["case"], len(rank)), r["case"]))
        self.data = {**header, "rows": rows}
        self.write()

    def write(self) -> None:
        write_atomic(self.path, json.dumps(self.data, indent=2) + "\n")
        write_atomic(self.folder / "results.csv", render_csv(self.rows))
        write_atomic(self.folder / "results.md", render_markdown(self.data))


def render_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    return buf.getvalue()


def render_markdown(data: dict) -> str:
    """The results table in Markdown, headed by what it was made with."""
    base = data.get("base", {})
    lines = [
        f"# Pruning study: ResNet-18 on {data.get('dataset', '?')}",
        "",
        f"Data: {data.get('dataset_note', '')}.",
        f"Base model: accuracy {base.get('accuracy', float('nan')):.2%}, "
        f"time per image {base.get('time_per_image_s', float('nan')) * 1e3:.3f} ms ({base.get('checkpoint', '?')}).",
        f"Device: {data.get('device', '?')}; command: `{data.get('command', '?')}`.",
        "Sparsity is over the pruned layers; MAC-weighted sparsity is the share of multiply-accumulates whose weight "
        "is zero. Time per image: median fp32 forward pass of one batch divided by its size, pruned and base timed "
        "back to back for each case (dense kernels, so no speedup is expected; see the bench suite for latency). "
        "Channel cases (strategy channel) remove whole filters: their target, achieved and MAC-weighted figures "
        "are all the fraction of MACs removed, and their model is smaller, so their speedup is real.",
        "",
        "| case | method | strategy | target | achieved | MAC-weighted | epochs | rounds | accuracy | drop | ms/image | speedup | wall s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data.get("rows", []):
        lines.append(
            f"| {r['case']} | {r['method']} | {r['strategy']} | {r['target_sparsity']:.2%} | {r['achieved_sparsity']:.2%} "
            f"| {r['mac_weighted_sparsity']:.2%} | {r['epochs']} | {r['rounds']} | {r['accuracy']:.2%} "
            f"| {r['accuracy_drop'] * 100:+.2f} pp | {r['time_per_image_ms']:.3f} | {r['speedup']:.3f} | {r['wall_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(data: dict, cases: dict[str, Case], path: Path) -> None:
    """Accuracy against target sparsity, one line per method and budget, the base as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = {}
    for r in data["rows"]:
        case = cases.get(r["case"]) or parse_case(r["case"])
        series.setdefault(case.label, []).append((r["target_sparsity"], r["accuracy"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] * 100 for p in points], [p[1] * 100 for p in points], marker="o", label=label)
    base = data.get("base", {}).get("accuracy")
    if base is not None:
        ax.axhline(base * 100, color="grey", linestyle="--", label="base (dense)")
    ax.set_xlabel("target sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"ResNet-18 on {data.get('dataset', '?')}: accuracy vs sparsity")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


# -- running -----------------------------------------------------------------------------------


def load_or_train_base(study: StudySettings, data: DataSet, train: TrainSettings) -> tuple:
    """The base model and its meta: loaded from ``study.base_path``, or trained there first."""
    path = study.base_path
    if path.exists():
        model, meta = load_checkpoint(path, full_only="the study's base (--base)")
        if meta.get("dataset") not in (None, data.name):
            raise PruneBenchError(
                f"base checkpoint {path} was trained on {meta['dataset']}, the study uses {data.name}: "
                "pass a matching --dataset or another --base"
            )
        return model, meta
    check_writable(path)
    tqdm.write(f"no base checkpoint at {path}: training one ({study.base_epochs} epochs on {data.name})")
    base_train = dataclasses.replace(train, epochs=study.base_epochs, lr=study.base_lr, schedule="onecycle")
    resume = Path(study.out) / RESUME / "base.pt"  # a killed run goes on from its last epoch
    model, meta = train_model(data, base_train, resume=resume)
    save_checkpoint(path, model, meta)
    from prune.distributed import barrier, is_main

    barrier()
    if is_main():
        resume.unlink(missing_ok=True)
        resume.with_name(resume.name + ".tmp").unlink(missing_ok=True)  # a save cut short by a kill
    return model, meta


@dataclasses.dataclass
class StudyRun:
    """A study made ready to run its cases: settings, data, the base model and the results' header."""

    data_settings: DataSettings
    train: TrainSettings
    evals: EvalSettings
    study: StudySettings
    cases: list[Case]
    out: Path
    data: DataSet
    base_model: object
    fingerprint: dict
    header: dict
    order: list[str]
    macs: dict[str, int]

    def ready_case(self, case: Case, resume: Path | None = None) -> dict:
        """Run ``case`` (or recover its row from a checkpoint left without one); return its row."""
        ckpt = self.out / case.checkpoint
        if not self.study.force and ckpt.exists():
            row = _recover(ckpt, self.fingerprint)
            tqdm.write(f"{case.name}: checkpoint found without its results row; row recovered from its meta")
            return row
        row = run_case(
            case, self.base_model, self.data, self.train, self.evals, self.study, self.macs, self.header, ckpt,
            self.fingerprint, resume=resume,
        )  # fmt: skip
        tqdm.write(
            f"{case.name}: accuracy {row['accuracy']:.2%} (drop vs base {row['accuracy_drop'] * 100:+.2f} pp), "
            f"sparsity {row['achieved_sparsity']:.2%}, {row['wall_s']:.0f} s"
        )
        return row


def fine_tuning_of(train: TrainSettings, study: StudySettings) -> dict:
    """The settings every case's fine-tuning shares: what two studies must agree on to share a folder."""
    return {
        "lr": train.lr,
        "momentum": train.momentum,
        "weight_decay": train.weight_decay,
        "schedule": train.schedule,
        "batch_size": train.batch_size,
        "seed": train.seed,
        "include_downsample": study.include_downsample,
    }


def config_of(data_settings: DataSettings, train: TrainSettings, study: StudySettings) -> dict:
    """What every process sharing a study folder must agree on (the cases each runs may differ)."""
    return {
        "arch": ARCH,
        "dataset": data_settings.dataset,
        "train_limit": data_settings.train_limit,
        "test_limit": data_settings.test_limit,
        **fine_tuning_of(train, study),
        "base": study.base,  # as given (empty: OUT/resnet18_base.pt), so that --out may be spelt differently
        "base_epochs": study.base_epochs,
        "base_lr": study.base_lr,
    }


def prepare_study(
    data_settings: DataSettings,
    train: TrainSettings,
    evals: EvalSettings,
    study: StudySettings,
    command: str = "",
    get_base=None,
) -> StudyRun:
    """Check the settings and the folder, load the data, get the base model, measure it; nothing of a case yet.

    ``get_base(train_it)`` returns the base model and meta (study workers wrap it
    so that one of them trains the base and the others wait); default: load or train here.
    """
    data_settings.check()
    train.check()
    evals.check()
    study.check()
    cases = select_cases(study)
    out = Path(study.out)
    if out.exists() and not out.is_dir():
        raise PruneBenchError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / "reports").mkdir(exist_ok=True)
    results = Results(out, study.force)  # read early: a broken results file stops the run before any work

    data = load_data(data_settings)
    data.require_train()
    train_it = lambda: load_or_train_base(study, data, train)  # noqa: E731
    base_model, base_meta = get_base(train_it) if get_base is not None else train_it()
    from prune import distributed

    device = distributed.device(train.device, distributed.current())
    fingerprint = {
        "arch": ARCH,
        "dataset": data.name,
        "train_images": len(data.train),
        "test_images": len(data.test),
        "base_sha256": file_sha256(study.base_path),
        **fine_tuning_of(train, study),
    }
    results.check_settings(fingerprint, study.force)

    base_accuracy, base_loss = evaluate(base_model, data, device, evals.eval_batch_size)
    base_time = time_per_image(base_model, device, evals.time_batch, evals.time_warmup, evals.time_iters)
    base_model.to("cpu")
    macs = layer_macs(base_model)
    header = {
        "study": fingerprint,
        "dataset": data.name,
        "dataset_note": data.note,
        "device": device.type if device.type == "cpu" else f"cuda ({provenance()['gpu']})",
        "command": command,
        "base": {
            "checkpoint": str(study.base_path),
            "accuracy": base_accuracy,
            "loss": base_loss,
            "time_per_image_s": base_time,
            "meta_accuracy": base_meta.get("accuracy"),
        },
        "provenance": provenance(),
    }
    if results.data.get("study") not in (None, fingerprint):  # --force with other settings: the table starts afresh
        results.data = {**header, "rows": []}
        results.write()
    order = [c.name for c in grid(study) + controls(study)] + [c.name for c in cases]
    tqdm.write(f"base: accuracy {base_accuracy:.2%}, {base_time * 1e3:.3f} ms/image on {device.type}")
    return StudyRun(data_settings, train, evals, study, cases, out, data, base_model, fingerprint, header, order, macs)


def run_study(
    data_settings: DataSettings,
    train: TrainSettings,
    evals: EvalSettings,
    study: StudySettings,
    command: str = "",
    worker=None,
) -> list[dict]:
    """Run the selected cases that are not finished yet; return the results table's rows.

    ``train`` configures fine-tuning (its ``epochs`` is replaced by each case's).
    Cases are claimed through locks in the output folder (``prune.claims``), so
    processes sharing it never run a case twice; ``worker`` (a
    ``prune.claims.WorkerSettings``) says how long to wait for the others.
    """
    from prune.claims import WorkerSettings, run_claimed

    return run_claimed(data_settings, train, evals, study, worker or WorkerSettings(), command)


def _recover(ckpt: Path, fingerprint: dict) -> dict:
    from prune.checkpoint import load_state

    _, meta = load_state(ckpt)
    if meta.get("study") != fingerprint or not isinstance(meta.get("row"), dict):
        raise PruneBenchError(f"{ckpt} exists but is not from this study's settings: pass --force to overwrite it")
    return meta["row"]


def paired_time_per_image(base, pruned, device, evals: EvalSettings) -> tuple[float, float]:
    """Seconds per image of the base and the pruned model, timed in alternating halves.

    Timing the two back to back, twice, keeps drift in the machine's speed (other
    work, clocks) out of the speedup; each figure is the mean of its two medians.
    """
    halves = [max(1, evals.time_iters // 2), max(1, evals.time_iters - evals.time_iters // 2)]
    base_s, pruned_s = [], []
    for iters in halves:
        base_s.append(time_per_image(base, device, evals.time_batch, evals.time_warmup, iters))
        pruned_s.append(time_per_image(pruned, device, evals.time_batch, evals.time_warmup, iters))
    return sum(base_s) / 2, sum(pruned_s) / 2


def case_row(case, data, train, header: dict, accuracy: float, loss: float, base_seconds: float, seconds: float,
             start: float, sparsity: dict) -> dict:
    """A case's row of the results table; ``sparsity``: what the strategy achieved (its own keys, in order)."""
    base = header["base"]
    return {
        "case": case.name,
        "method": case.method,
        "strategy": case.strategy,
        "target_sparsity": case.sparsity,
        **sparsity,
        "epochs": case.epochs,
        "rounds": case.rounds,
        "lr": train.lr,
        "accuracy": accuracy,
        "loss": loss,
        "base_accuracy": base["accuracy"],
        "accuracy_drop": base["accuracy"] - accuracy,
        "time_per_image_ms": seconds * 1e3,
        "base_time_per_image_ms": base_seconds * 1e3,
        "speedup": base_seconds / seconds,
        "wall_s": time.perf_counter() - start,
        "device": header["device"],
        "dataset": data.name,
        "checkpoint": case.checkpoint,
    }


def case_meta(case, data, train, base: dict, accuracy: float, outcome, fingerprint: dict, row: dict,
              **specific) -> dict:
    """What every case's checkpoint carries; ``specific``: the strategy's own facts (they may replace "arch")."""
    return {
        "arch": ARCH,
        "dataset": data.name,
        "dataset_note": data.note,
        "method": case.method,
        "strategy": case.strategy,
        "target_sparsity": case.sparsity,
        **specific,
        "epochs": case.epochs,
        "rounds": case.rounds,
        "lr": train.lr,
        "momentum": train.momentum,
        "weight_decay": train.weight_decay,
        "accuracy": accuracy,
        "base_accuracy": base["accuracy"],
        "base_checkpoint": base["checkpoint"],
        "rounds_log": [{k: v for k, v in r.items() if k != "epochs"} for r in outcome.rounds],
        "study": fingerprint,
        "row": row,
        "provenance": provenance(),
    }


def run_case(
    case: Case,
    base_model,
    data: DataSet,
    train: TrainSettings,
    evals: EvalSettings,
    study: StudySettings,
    macs: dict[str, int],
    header: dict,
    ckpt: Path,
    fingerprint: dict,
    resume: Path | None = None,
) -> dict:
    """Prune a copy of the base model as ``case`` says, evaluate it, save checkpoint, report; return its row.

    With ``resume`` (a state file) the fine-tuning state is kept there after every epoch and a case
    killed mid-way goes on from it.
    """
    if case.strategy in STRUCTURED:
        from prune.structured import run_channel_case

        return run_channel_case(case, base_model, data, train, evals, study, header, ckpt, fingerprint)
    start = time.perf_counter()
    set_seed(train.seed)
    model = copy.deepcopy(base_model)
    outcome = prune_and_finetune(
        model,
        data,
        PruneSettings(case.sparsity, case.rounds, case.strategy, study.include_downsample),
        dataclasses.replace(train, epochs=case.epochs),
        desc=case.name,
        resume=resume,
    )
    from prune import distributed

    device = distributed.device(train.device, distributed.current())
    accuracy, loss = evaluate(model, data, device, evals.eval_batch_size)
    base_seconds, seconds = paired_time_per_image(base_model, model, device, evals)
    model.to("cpu")
    mask = outcome.mask
    mac_weighted = mask.mac_weighted_sparsity(macs)
    base = header["base"]
    row = case_row(case, data, train, header, accuracy, loss, base_seconds, seconds, start,
                   {"achieved_sparsity": mask.sparsity, "pruned_weights": mask.zeros, "prunable_weights": mask.numel,
                    "mac_weighted_sparsity": mac_weighted})
    meta = case_meta(case, data, train, base, accuracy, outcome, fingerprint, row,
                     achieved_sparsity=mask.sparsity, mac_weighted_sparsity=mac_weighted,
                     include_downsample=study.include_downsample)
    save_checkpoint(ckpt, model, meta, force=True)  # reaching here means the file is absent or --force was given
    report = (
        f"# {case.name}: per-layer sparsity\n\n"
        f"ResNet-18 on {data.name} ({data.note}).\n\n"
        f"{case.method}, {case.strategy}: target {case.sparsity:.2%}, achieved {mask.sparsity:.2%} "
        f"({mask.zeros} of {mask.numel} weights); {case.rounds} round(s), {case.epochs} fine-tuning epoch(s) per round; "
        f"accuracy {accuracy:.2%} (base {base['accuracy']:.2%}).\n\n" + format_report(mask.report(macs), mac_weighted) + "\n"
    )
    write_atomic(ckpt.parent / "reports" / f"{case.name}.md", report)
    return row
