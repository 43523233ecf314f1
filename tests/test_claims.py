"""Study workers: claims and their staleness, a folder of another configuration, Slurm submission,
and two workers sharing a grid, one killed mid-case."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from prune import claims
from prune.checkpoint import load_state
from prune.claims import HOST, Claims, WorkerSettings
from prune.cli import main
from prune.errors import PruneBenchError

ROOT = Path(__file__).resolve().parents[1]
FAST = WorkerSettings(heartbeat=0.05, stale_after=1.0, poll=0.05)
TINY = [  # as in test_study: 8 training images, 16 test images, 2 timed passes
    "study", "--dataset", "synthetic", "--train-limit", "8", "--test-limit", "16", "--batch-size", "8",
    "--workers", "0", "--time-warmup", "0", "--time-iters", "2", "--no-progress", "--base-epochs", "1", "--device", "cpu",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def write_claim(c: Claims, name: str, owner: dict, age: float) -> None:
    now = time.time()
    claims._write_json(c.path(name), {"case": name, "owner": owner, "claimed": now - age, "heartbeat": now - age})


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_free_case_is_claimed_once_and_released(tmp_path):
    a, b = Claims(tmp_path, FAST), Claims(tmp_path, FAST)
    b.owner = {**b.owner, "pid": os.getppid()}  # another live process of this host
    with a.lock:
        assert a.take("x") == ("claimed", "")
    with b.lock:
        action, why = b.take("x")
    assert action == "busy" and "still runs here" in why
    with b.lock:
        assert not b.release("x")  # not its claim
    with a.lock:
        assert a.release("x")
    assert not a.path("x").exists()
    events = [json.loads(line)["event"] for line in (tmp_path / "claims" / "events.jsonl").read_text().splitlines()]
    assert events == ["claim"]


def test_a_claim_whose_owner_died_here_is_taken_over(tmp_path):
    c = Claims(tmp_path, FAST)
    write_claim(c, "x", {"host": HOST, "pid": dead_pid(), "start": None}, age=0.0)  # heartbeat fresh, owner gone
    with c.lock:
        action, why = c.take("x")
    assert action == "taken" and "no longer runs" in why
    assert c.mine(c.read("x"))
    last = json.loads((tmp_path / "claims" / "events.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "takeover" and last["from"]["host"] == HOST


def test_a_late_heartbeat_of_an_owner_still_alive_here_is_waited_for(tmp_path):
    c = Claims(tmp_path, FAST)
    write_claim(c, "x", {"host": HOST, "pid": os.getppid(), "start": claims._start_time(os.getppid())}, age=3600)
    with c.lock:
        action, why = c.take("x")
    assert action == "busy" and "still runs here, though its heartbeat is late" in why
    assert not c.mine(c.read("x"))  # the claim is left as it was


def test_another_hosts_claim_is_stale_only_after_its_heartbeat_stops(tmp_path):
    c = Claims(tmp_path, FAST)
    elsewhere = {"host": HOST + "-elsewhere", "pid": os.getpid(), "start": None}
    write_claim(c, "x", elsewhere, age=0.0)
    with c.lock:
        assert c.take("x")[0] == "busy"
    write_claim(c, "x", elsewhere, age=FAST.stale_after + 1)
    with c.lock:
        action, why = c.take("x")
    assert action == "taken" and "no heartbeat for over 1 s" in why


def test_the_heartbeat_refreshes_a_claim_and_notices_a_takeover(tmp_path):
    c = Claims(tmp_path, FAST)
    with c.lock:
        c.take("x")
    first = c.read("x")["heartbeat"]
    beat = c.hold("x")
    time.sleep(0.3)
    assert c.read("x")["heartbeat"] > first and not beat.lost.is_set()
    write_claim(c, "x", {"host": "other", "pid": 1, "start": None}, age=0.0)
    time.sleep(0.3)
    assert beat.lost.is_set()
    beat.stop()


@pytest.mark.parametrize("bad", [dict(stale_after=0.05), dict(poll=0), dict(slurm=-1)])
def test_bad_worker_settings_are_one_line_errors(bad):
    with pytest.raises(PruneBenchError) as e:
        WorkerSettings(**{**dict(heartbeat=0.1), **bad}).check()
    assert "\n" not in str(e.value)


def test_a_folder_of_another_configuration_is_refused_before_any_work(tmp_path, capsys):
    config = tmp_path / "study.json"
    tmp_path.joinpath("claims").mkdir()
    from prune.data import DataSettings
    from prune.study import StudySettings, config_of
    from prune.train import TrainSettings

    theirs = config_of(DataSettings("synthetic", train_limit=8, test_limit=16), TrainSettings(lr=0.01, batch_size=8), StudySettings(out=str(tmp_path), base_epochs=1))
    config.write_text(json.dumps(theirs))
    code = main(TINY + ["--out", str(tmp_path), "--worker"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "another study configuration (lr: 0.01 there, 0.0005 here" in err
    assert json.loads(config.read_text()) == theirs  # left as it was
    assert not (tmp_path / "resnet18_base.pt").exists()
    assert main(TINY + ["--out", str(tmp_path), "--worker", "--force"]) == 2
    assert "--force with --worker" in capsys.readouterr().err


def test_slurm_submits_an_array_of_workers(tmp_path, monkeypatch, capsys):
    calls = {}

    class Executor:
        def __init__(self, folder, cluster=None):
            calls["folder"], calls["cluster"] = folder, cluster

        def update_parameters(self, **params):
            calls["params"] = params

        def map_array(self, fn, tasks):
            calls["fn"], calls["tasks"] = fn, tasks
            return [types.SimpleNamespace(job_id=f"77_{i}") for i in range(len(tasks))]

    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=Executor))
    argv = TINY + ["--out", str(tmp_path), "--slurm", "3", "--slurm-gpus", "1", "--slurm-partition", "gpu"]
    assert main(argv) == 0
    assert "submitted 3 workers (77_0, 77_1, 77_2)" in capsys.readouterr().out
    assert calls["params"]["slurm_array_parallelism"] == 3 and calls["params"]["slurm_partition"] == "gpu"
    assert calls["params"]["gpus_per_node"] == 1 and calls["folder"] == str(tmp_path / "slurm" / "%j")
    assert calls["fn"] is claims.slurm_worker and len(calls["tasks"]) == 3
    assert calls["tasks"][0][-3:] == ["--slurm", "0", "--worker"]  # each task is a plain worker
    assert not list(tmp_path.glob("*.pt"))  # nothing ran here

    monkeypatch.setitem(sys.modules, "submitit", None)  # not installed
    assert main(argv) == 2
    assert "pip install submitit" in capsys.readouterr().err


def test_report_only_needs_a_results_file(tmp_path, capsys):
    assert main(TINY + ["--out", str(tmp_path), "--report-only"]) == 2
    assert "no results.json" in capsys.readouterr().err


# -- two workers, one killed mid-case ------------------------------------------------------------------

GRID = ["--sparsities", "0.5", "--epochs", "2", "--rounds", "2"]  # 50perc_oneshot2 (2 epochs), 50perc_iterative2_2 (4)
DETERMINED = ("accuracy", "loss", "achieved_sparsity", "pruned_weights", "mac_weighted_sparsity", "base_accuracy")


def _worker(out: Path) -> subprocess.Popen:
    argv = TINY + ["--out", out, *GRID, "--worker", "--heartbeat", "0.5", "--stale-after", "30", "--poll", "0.2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "prune", *map(str, argv)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_two_workers_share_the_grid_and_a_killed_ones_case_is_taken_over_and_resumed(tmp_path, capsys):
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    workers = [_worker(shared), _worker(shared)]
    by_pid = {w.pid: w for w in workers}
    killed = case = None
    deadline = time.monotonic() + 240
    try:
        while killed is None and any(w.poll() is None for w in workers) and time.monotonic() < deadline:
            for state in (shared / "resume").glob("*.pt") if (shared / "resume").exists() else []:
                claim = Claims(shared, FAST).read(state.stem)
                if state.stem != "base" and claim and claim["owner"]["pid"] in by_pid:
                    killed, case = by_pid[claim["owner"]["pid"]], state.stem
                    os.kill(killed.pid, signal.SIGKILL)  # mid-case: at least one epoch saved, the case unfinished
                    killed.wait()
                    break
            time.sleep(0.02)
        assert killed is not None, "no worker was caught mid-case"
        (survivor,) = [w for w in workers if w is not killed]
        log, _ = survivor.communicate(timeout=max(1, deadline - time.monotonic()))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert survivor.returncode == 0, log[-3000:]
    assert f"{case}: taking over from {HOST} pid {killed.pid}" in log and "no longer runs" in log
    assert f"{case} round" in log and "resuming after epoch" in log

    events = [json.loads(line) for line in (shared / "claims" / "events.jsonl").read_text().splitlines()]
    finished = [e["case"] for e in events if e["event"] == "finished"]
    assert sorted(finished) == sorted(["base", "50perc_oneshot2", "50perc_iterative2_2"])  # each exactly once
    assert [e["case"] for e in events if e["event"] == "takeover"] == [case]
    assert not list((shared / "claims").glob("*.json")) and not list((shared / "resume").glob("*"))

    assert main(TINY + ["--out", str(alone), *GRID]) == 0  # one process, the same grid
    capsys.readouterr()
    got, want = (json.loads((d / "results.json").read_text()) for d in (shared, alone))
    # the base checkpoints' hashes differ (their meta holds the date), so the weights are compared
    assert {k: v for k, v in got["study"].items() if k != "base_sha256"} == {k: v for k, v in want["study"].items() if k != "base_sha256"}
    bases = [load_state(d / "resnet18_base.pt")[0] for d in (shared, alone)]
    assert all(torch.equal(bases[0][k], bases[1][k]) for k in bases[0])  # trained once there, the same weights as here
    rows = {r["case"]: r for r in got["rows"]}
    assert list(rows) == [r["case"] for r in want["rows"]] == ["50perc_oneshot2", "50perc_iterative2_2"]
    for r in want["rows"]:
        assert {k: rows[r["case"]][k] for k in DETERMINED} == {k: r[k] for k in DETERMINED}, r["case"]

    assert main(TINY + ["--out", str(shared), "--report-only"]) == 0  # the report, from the folder alone
    out = capsys.readouterr().out
    assert "2 cases finished" in out and "no case is running" in out
    assert "| 50perc_iterative2_2 | iterative |" in (shared / "results.md").read_text()


def test_force_with_other_settings_starts_the_table_afresh(base_checkpoint, tmp_path, capsys):
    argv = TINY + ["--out", str(tmp_path), "--base", str(base_checkpoint), "--cases", "50perc_oneshot0"]
    assert main(argv) == 0
    assert main(argv + ["--lr", "0.01"]) == 2  # another configuration: refused
    assert main(argv + ["--lr", "0.01", "--force"]) == 0
    capsys.readouterr()
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["study"]["lr"] == 0.01 and [r["lr"] for r in data["rows"]] == [0.01]
    assert json.loads((tmp_path / "study.json").read_text())["lr"] == 0.01
