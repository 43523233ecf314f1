"""The study: case names and grid, then end to end on synthetic data with tiny budgets, resume, recovery, --force."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from prune.checkpoint import load_state, save_checkpoint
from prune.cli import main
from prune.errors import PruneBenchError
from prune.mask import Mask
from prune.models import prunable_layers, resnet18_cifar
from prune.strategies import STRATEGIES
from prune.study import Case, StudySettings, controls, grid, parse_case, select_cases

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: faster on shared 2-core machines

TINY = [  # a study small enough for a test: 8 training images, 16 test images, 2 timed passes
    "study", "--dataset", "synthetic", "--train-limit", "8", "--test-limit", "16", "--batch-size", "8",
    "--workers", "0", "--time-warmup", "0", "--time-iters", "2", "--no-progress", "--base-epochs", "1", "--device", "cpu",
]  # fmt: skip


# -- names and the grid ---------------------------------------------------------------------------


def test_the_default_grid_is_the_seed_studys_twelve_cases():
    names = [c.checkpoint for c in grid(StudySettings())]
    expected = [
        f"resnet18_prune_{p}perc_{m}.pt"
        for p in (50, 75, 90)
        for m in ("oneshot3", "oneshot5", "iterative3_3", "iterative5_5")
    ]
    assert names == expected
    cases = {c.name: c for c in grid(StudySettings())}
    assert (cases["90perc_iterative5_5"].rounds, cases["90perc_iterative5_5"].epochs) == (5, 5)
    assert cases["75perc_oneshot3"].rounds == 1 and cases["75perc_oneshot3"].sparsity == 0.75


def test_controls_are_random_pruning_and_no_fine_tuning_at_each_sparsity():
    names = [c.name for c in controls(StudySettings())]
    assert names == [f"{p}perc_{k}" for p in (50, 75, 90) for k in ("oneshot0", "oneshot5_random")]
    assert {c.strategy for c in controls(StudySettings())} == {"magnitude", "random"}
    assert len(select_cases(StudySettings(cases=("all",)))) == 18
    assert len(select_cases(StudySettings(cases=("grid", "90perc_oneshot5", "controls")))) == 18  # no duplicates


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_case_name_reads_back_as_its_case(strategy):
    study = StudySettings(sparsities=(0.5, 0.875, 0.9), strategy=strategy)
    for case in grid(study) + controls(study):
        assert parse_case(case.name) == case
        assert parse_case(case.checkpoint) == case


@pytest.mark.parametrize("bad", ["90perc", "90perc_oneshot", "100perc_oneshot3", "90perc_iterative3", "90perc_oneshot3_2", "90perc_oneshot3_l2"])
def test_bad_case_names_are_one_line_errors(bad):
    with pytest.raises(PruneBenchError) as e:
        parse_case(bad)
    assert "\n" not in str(e.value)


def test_epochs_and_rounds_must_pair():
    with pytest.raises(PruneBenchError, match="pair"):
        StudySettings(epochs=(3, 5), rounds=(3,)).check()
    with pytest.raises(PruneBenchError, match=r"\[0, 1\)"):
        StudySettings(sparsities=(0.5, 1.0)).check()
    assert Case(0.9, 3, 3, iterative=True).name == "90perc_iterative3_3"


# -- end to end ------------------------------------------------------------------------------------


def run(argv, capsys=None) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One tiny study: base trained first, then one-shot and 2-round iterative at 50%."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("study")
    try:
        assert main(TINY + ["--out", str(out), "--sparsities", "0.5", "--epochs", "1", "--rounds", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_study_writes_seed_named_checkpoints_tables_reports_and_plot(study):
    names = {p.name for p in study.iterdir()}
    assert {"resnet18_base.pt", "resnet18_prune_50perc_oneshot1.pt", "resnet18_prune_50perc_iterative1_2.pt"} <= names
    assert {"results.json", "results.csv", "results.md", "accuracy_vs_sparsity.png", "reports"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    assert (study / "accuracy_vs_sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (study / "reports").iterdir()) == ["50perc_iterative1_2.md", "50perc_oneshot1.md"]


def test_results_rows_are_exact_and_agree_with_the_checkpoints(study):
    data = json.loads((study / "results.json").read_text())
    assert data["dataset"] == "synthetic" and "synthetic" in data["dataset_note"]
    rows = {r["case"]: r for r in data["rows"]}
    assert list(rows) == ["50perc_oneshot1", "50perc_iterative1_2"]
    for name, row in rows.items():
        assert row["pruned_weights"] == round(row["prunable_weights"] * 0.5)
        assert row["achieved_sparsity"] == pytest.approx(0.5, abs=1 / row["prunable_weights"])
        assert 0 < row["mac_weighted_sparsity"] < 1
        assert row["accuracy_drop"] == pytest.approx(data["base"]["accuracy"] - row["accuracy"])
        assert row["speedup"] == pytest.approx(row["base_time_per_image_ms"] / row["time_per_image_ms"])
        state, meta = load_state(study / row["checkpoint"])
        raw = torch.load(study / row["checkpoint"], weights_only=True)
        assert set(raw) == {"state_dict", "meta"}
        for key in ("arch", "dataset", "method", "strategy", "target_sparsity", "achieved_sparsity",
                    "mac_weighted_sparsity", "epochs", "rounds", "lr", "accuracy", "base_accuracy"):  # fmt: skip
            assert key in meta, key
        assert meta["provenance"]["torch"] == torch.__version__ and meta["provenance"]["date"]
        assert meta["row"] == row
        model = resnet18_cifar()
        model.load_state_dict(state)
        assert Mask.from_model(prunable_layers(model)).zeros == row["pruned_weights"]
    assert (rows["50perc_oneshot1"]["rounds"], rows["50perc_iterative1_2"]["rounds"]) == (1, 2)
    with open(study / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["case"] for r in table] == list(rows)
    assert float(table[1]["accuracy"]) == pytest.approx(rows["50perc_iterative1_2"]["accuracy"])
    md = (study / "results.md").read_text()
    assert "| 50perc_iterative1_2 | iterative | magnitude | 50.00% | 50.00% |" in md
    report = (study / "reports" / "50perc_oneshot1.md").read_text()
    assert f"| **total** | {rows['50perc_oneshot1']['prunable_weights']} | " in report and "| 50.00% |" in report


def test_a_rerun_skips_finished_cases(study, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in study.glob("*.pt")}
    code, _ = run(TINY + ["--out", study, "--sparsities", "0.5", "--epochs", "1", "--rounds", "2"], capsys)
    assert code == 0
    assert {p.name: p.stat().st_mtime_ns for p in study.glob("*.pt")} == before


def test_other_settings_in_the_same_folder_are_refused(study, capsys):
    code, err = run(TINY + ["--out", study, "--sparsities", "0.5", "--epochs", "1", "--rounds", "2", "--lr", "0.01"], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "lr" in err and "--force" in err


def test_resume_after_an_interrupted_case_then_recover_then_force(base_checkpoint, tmp_path, monkeypatch, capsys):
    import prune.study

    argv = TINY + ["--out", tmp_path, "--base", base_checkpoint, "--cases", "50perc_oneshot0", "50perc_oneshot0_random"]
    real = prune.study.prune_and_finetune

    def killed_on_random(model, data, prune_settings, train, desc="", **kw):
        if prune_settings.strategy == "random":
            raise KeyboardInterrupt  # as if the run were killed in the middle of this case
        return real(model, data, prune_settings, train, desc, **kw)

    monkeypatch.setattr(prune.study, "prune_and_finetune", killed_on_random)
    code, err = run(argv, capsys)
    assert code == 130 and "rerun to resume" in err
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["case"] for r in rows] == ["50perc_oneshot0"]
    first = tmp_path / "resnet18_prune_50perc_oneshot0.pt"
    assert first.exists() and not (tmp_path / "resnet18_prune_50perc_oneshot0_random.pt").exists()
    assert not list(tmp_path.rglob("*.tmp"))
    stamp = first.stat().st_mtime_ns

    monkeypatch.setattr(prune.study, "prune_and_finetune", real)
    assert run(argv, capsys)[0] == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["case"] for r in data["rows"]] == ["50perc_oneshot0", "50perc_oneshot0_random"]
    assert first.stat().st_mtime_ns == stamp  # the finished case was not redone
    random_row = data["rows"][1]
    assert random_row["strategy"] == "random" and random_row["epochs"] == 0
    assert random_row["pruned_weights"] == data["rows"][0]["pruned_weights"]  # same count as magnitude

    # killed between saving a checkpoint and writing its row: the row comes back from the checkpoint's meta
    kept = data["rows"][0]
    data["rows"] = data["rows"][1:]
    (tmp_path / "results.json").write_text(json.dumps(data))
    assert run(argv, capsys)[0] == 0
    again = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert again[0] == kept and first.stat().st_mtime_ns == stamp

    # --force redoes the case and replaces its row
    assert run(argv[:-2] + ["50perc_oneshot0", "--force"], capsys)[0] == 0
    assert first.stat().st_mtime_ns != stamp
    assert [r["case"] for r in json.loads((tmp_path / "results.json").read_text())["rows"]] == [
        "50perc_oneshot0",
        "50perc_oneshot0_random",
    ]


def test_a_base_from_another_data_set_is_refused(tmp_path, capsys):
    base = tmp_path / "base.pt"
    save_checkpoint(base, resnet18_cifar(), {"dataset": "cifar10"})
    code, err = run(TINY + ["--out", tmp_path / "s", "--base", base], capsys)
    assert code == 2 and "trained on cifar10" in err and err.count("\n") == 1


def test_a_foreign_checkpoint_in_the_folder_is_not_overwritten(base_checkpoint, tmp_path, capsys):
    shutil.copy(base_checkpoint, tmp_path / "resnet18_prune_50perc_oneshot0.pt")
    code, err = run(TINY + ["--out", tmp_path, "--base", base_checkpoint, "--cases", "50perc_oneshot0"], capsys)
    assert code == 2 and "--force" in err
