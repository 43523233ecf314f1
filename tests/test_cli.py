"""``python -m prune``: each subcommand once on tiny inputs, and every bad input as one line on stderr, exit 2."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from prune.checkpoint import load_state, save_checkpoint
from prune.cli import Parser, add_settings, main, settings_from
from prune.data import DataSettings, load_data
from prune.mask import Mask
from prune.models import prunable_layers, resnet18_cifar
from prune.study import StudySettings
from prune.train import TrainSettings, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: faster on shared 2-core machines

DATA = ["--dataset", "synthetic", "--train-limit", "8", "--test-limit", "16"]
STEPS = ["--batch-size", "8", "--workers", "0"]  # for the subcommands that train
QUICK = ["--no-progress", "--device", "cpu"]  # for the subcommands that train


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_the_module_entry_point_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "prune", "report", str(tmp_path / "absent.pt")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert one_line_error(proc.stderr).startswith("error: no checkpoint at")


@pytest.fixture
def bad_inputs(tmp_path, base_checkpoint):
    (tmp_path / "corrupt.pt").write_bytes(b"definitely not a zip or a pickle")
    (tmp_path / "exists.pt").write_bytes(b"x")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    ck, out = str(base_checkpoint), str(tmp_path / "out.pt")
    return {
        "missing data folder": (["evaluate", ck, "--dataset", "cifar10", "--data-root", tmp_path / "nowhere"], "cifar-10-batches-py/"),
        "missing fashion-mnist": (["evaluate", ck, "--dataset", "fashion-mnist", "--data-root", tmp_path], "no Fashion-MNIST"),
        "corrupt checkpoint": (["report", tmp_path / "corrupt.pt"], "not a weights-only PyTorch checkpoint"),
        "absent checkpoint": (["evaluate", tmp_path / "absent.pt", *DATA], "no checkpoint at"),
        "sparsity 1": (["prune", ck, "--sparsity", "1.0", "--out", out, *DATA, *STEPS], "[0, 1)"),
        "sparsity < 0": (["prune", ck, "--sparsity", "-0.1", "--out", out, *DATA, *STEPS], "[0, 1)"),
        "study sparsity": (["study", "--sparsities", "0.5", "1.5", "--out", tmp_path / "s"], "[0, 1)"),
        "unknown dataset": (["evaluate", ck, "--dataset", "imagenet"], "unknown data set 'imagenet'"),
        "unknown strategy": (["prune", ck, "--strategy", "l2", "--out", out, *DATA, *STEPS], "unknown pruning strategy 'l2'"),
        "unknown study strategy": (["study", "--strategy", "l2", "--out", tmp_path / "s"], "unknown pruning strategy"),
        "unknown device": (["evaluate", ck, "--device", "tpu", *DATA], "unknown device 'tpu'"),
        "train over existing": (["train", "--out", tmp_path / "exists.pt", *DATA, *STEPS], "--force"),
        "prune over existing": (["prune", ck, "--out", tmp_path / "exists.pt", *DATA, *STEPS], "--force"),
        "report over existing": (["report", ck, "--out", tmp_path / "exists.pt"], "--force"),
        "not a number": (["train", "--epochs", "three"], "'three' is not a valid int"),
        "unknown command": (["frobnicate"], "invalid choice"),
        "missing --out": (["prune", ck], "--out"),
        "unpaired epochs": (["study", "--epochs", "3", "5", "--rounds", "3", "--out", tmp_path / "s"], "pair"),
        "unknown case": (["study", "--cases", "everything", "--out", tmp_path / "s"], "cannot read case"),
        "broken results file": (["study", "--out", tmp_path / "broken"], "not a results file"),
        "study out is a file": (["study", "--out", tmp_path / "exists.pt"], "is a file"),
        "training on samples": (["train", "--dataset", "cifar10-samples", "--out", out], "evaluation only"),
    }


def test_every_bad_input_is_one_line_and_exit_2(bad_inputs, capsys):
    if importlib.util.find_spec("foolbox") is None:
        bad_inputs.pop("training on samples")
    for what, (argv, expected) in bad_inputs.items():
        code, out, err = run(argv, capsys)
        assert code == 2, what
        assert expected in one_line_error(err), (what, err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so --device cuda is valid here")
def test_cuda_without_a_gpu_is_one_line(base_checkpoint, capsys):
    code, _, err = run(["evaluate", base_checkpoint, "--device", "cuda", *DATA], capsys)
    assert code == 2 and "no CUDA GPU" in one_line_error(err)


def test_report_lists_every_pruned_layer_and_the_totals(base_checkpoint, capsys):
    code, out, _ = run(["report", base_checkpoint], capsys)
    assert code == 0
    assert sum(line.startswith("| layer |") for line in out.splitlines()) == 1
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith(("| layer |", "| **"))]
    assert [r.split(" | ")[0][2:] for r in rows] == list(prunable_layers(resnet18_cifar()))
    assert "| **total** |" in out and "MAC-weighted sparsity" in out
    code, out, _ = run(["report", base_checkpoint, "--include-downsample"], capsys)
    assert "layer2.0.downsample.0" in out


def test_evaluate_reports_what_evaluate_computes(base_checkpoint, capsys):
    code, out, _ = run(["evaluate", base_checkpoint, *DATA, "--device", "cpu", "--time-warmup", "0", "--time-iters", "2", "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    data = load_data(DataSettings("synthetic", test_limit=16))
    from prune.checkpoint import load_checkpoint

    model, _ = load_checkpoint(base_checkpoint)
    accuracy, loss = evaluate(model, data)
    assert result["accuracy"] == accuracy and result["loss"] == pytest.approx(loss)
    assert result["test_images"] == 16 and result["time_per_image_ms"] > 0 and result["sparsity"] < 0.01


@pytest.mark.skipif(importlib.util.find_spec("foolbox") is None, reason="foolbox is not installed (make install adds it)")
def test_evaluate_on_the_real_cifar10_images(base_checkpoint, capsys):
    code, out, _ = run(["evaluate", base_checkpoint, "--dataset", "cifar10-samples", "--device", "cpu", "--time-iters", "1"], capsys)
    assert code == 0 and "20 test images" in out and "trained on synthetic" in out


def test_train_prune_finetune_chain(tmp_path, capsys):
    base, pruned, tuned = tmp_path / "base.pt", tmp_path / "pruned.pt", tmp_path / "tuned.pt"
    assert run(["train", "--epochs", "1", "--out", base, *DATA, *STEPS, *QUICK], capsys)[0] == 0
    assert load_state(base)[1]["method"] == "dense"

    code, out, _ = run(["prune", base, "--sparsity", "0.75", "--epochs", "0", "--out", pruned, *DATA, *STEPS, *QUICK], capsys)
    assert code == 0 and "sparsity 75.00%" in out
    state, meta = load_state(pruned)
    assert (meta["method"], meta["target_sparsity"], meta["epochs"]) == ("oneshot", 0.75, 0)
    model = resnet18_cifar()
    model.load_state_dict(state)
    layers = prunable_layers(model)
    mask = Mask.from_model(layers)
    assert mask.zeros == round(mask.numel * 0.75)

    assert run(["finetune", pruned, "--epochs", "1", "--lr", "0.05", "--out", tuned, *DATA, *STEPS, *QUICK], capsys)[0] == 0
    tuned_state, tuned_meta = load_state(tuned)
    model.load_state_dict(tuned_state)
    after = Mask.from_model(prunable_layers(model))
    assert all(torch.equal(after[n], mask[n]) for n in mask)  # the same weights are zero, no more, no fewer
    assert not torch.equal(tuned_state["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert tuned_meta["finetuned_from"] == str(pruned) and tuned_meta["target_sparsity"] == 0.75


def test_options_come_from_the_settings_dataclasses():
    parser = Parser(prog="x")
    add_settings(parser, TrainSettings, defaults={"lr": 0.5}, exclude=("epochs",))
    add_settings(parser, StudySettings)
    options = {a.dest: a for a in parser._actions}
    assert "epochs" in options  # StudySettings' tuple, not TrainSettings' int
    assert options["lr"].default == 0.5 and options["batch_size"].default == TrainSettings.batch_size
    assert "images per step" in options["batch_size"].help  # from the field's comment
    args = parser.parse_args(["--sparsities", "0.5", "0.9", "--no-progress", "--cases", "90perc_oneshot5"])
    study, train = settings_from(args, StudySettings), settings_from(args, TrainSettings, epochs=0)
    assert study.sparsities == (0.5, 0.9) and study.cases == ("90perc_oneshot5",)
    assert train.progress is False and train.lr == 0.5 and train.epochs == 0
    assert {f.name for f in dataclasses.fields(TrainSettings)} - {"epochs"} <= set(options)


def test_a_bare_state_dict_works_as_a_checkpoint(tmp_path, capsys):
    torch.save(resnet18_cifar().state_dict(), tmp_path / "bare.pt")
    code, out, _ = run(["report", tmp_path / "bare.pt"], capsys)
    assert code == 0 and "| **total** |" in out
    save_checkpoint(tmp_path / "meta.pt", resnet18_cifar(), {"dataset": "synthetic", "method": "dense"})
    code, out, _ = run(["report", tmp_path / "meta.pt", "--out", tmp_path / "report.md"], capsys)
    assert code == 0 and (tmp_path / "report.md").read_text().startswith("# ")
