"""Study workers: claim a case through locks in the shared output folder, notice a stale claim, take it over.

Processes that share one ``--out`` folder (N on one machine, a Slurm array, Ray
tasks; on several hosts the folder must be on a shared file system) share its
grid, and no case runs twice:

- ``OUT/claims/lock`` (a filelock) guards every look at or change of the claims
  and of the results table; it is held for milliseconds, never while training.
- ``OUT/claims/<case>.json`` says who runs a case: host, pid, the process's start
  time and a heartbeat the owner refreshes every ``--heartbeat`` seconds.
- A claim is stale when its owner ran on this host and runs no more, or when its
  heartbeat is older than ``--stale-after`` seconds (the only sign another host
  gives). A stale claim is taken over and the case goes on from its last saved
  epoch (``OUT/resume/<case>.pt``). A claim whose heartbeat is late but whose
  owner still runs here is waited for, never taken.
- ``OUT/study.json`` is the configuration the folder belongs to; a process with
  another is refused before it does any work.
- ``OUT/claims/events.jsonl`` records every claim, takeover and finished case.

The base model is claimed like a case (``base``): one process trains it, the
others wait for it. Under torchrun only rank 0 claims and tells the other ranks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import threading
import time
from pathlib import Path

from filelock import FileLock
from tqdm.auto import tqdm

from prune import distributed
from prune.errors import PruneBenchError

CLAIMS = "claims"
CONFIG = "study.json"
BASE = "base"  # the claim of the base model's training
HOST = socket.gethostname()


@dataclasses.dataclass
class WorkerSettings:
    """How processes sharing one study folder work together."""

    worker: bool = False  # one of several processes on --out: also wait for the cases others run, taking over any whose owner died
    heartbeat: float = 30.0  # seconds between refreshes of this process's claims
    stale_after: float = 600.0  # seconds without a heartbeat after which a claim from another host is taken over
    poll: float = 10.0  # seconds between looks at the folder while waiting for others
    slurm: int = 0  # submit this many workers as a Slurm array (with submitit) instead of running here, then exit
    slurm_gpus: int = 1  # GPUs per Slurm array task
    slurm_cpus: int = 8  # CPUs per Slurm array task
    slurm_minutes: int = 720  # time limit per Slurm array task, in minutes
    slurm_partition: str = ""  # Slurm partition (default: the cluster's)
    slurm_cluster: str = ""  # submitit cluster: slurm, or local / debug to try the submission on this machine (default: detected)
    report_only: bool = False  # rebuild results.csv, results.md and the plot from --out, say who runs what, and exit

    def check(self) -> None:
        if not (self.heartbeat > 0 and self.poll > 0):
            raise PruneBenchError("--heartbeat and --poll must be > 0 seconds")
        if self.stale_after <= 2 * self.heartbeat:
            raise PruneBenchError(
                f"--stale-after {self.stale_after:g} must exceed two heartbeats ({2 * self.heartbeat:g} s), "
                "or live workers on other hosts would look dead"
            )
        if self.slurm < 0 or self.slurm_gpus < 0 or self.slurm_cpus < 1 or self.slurm_minutes < 1:
            raise PruneBenchError("--slurm and --slurm-gpus must be >= 0, --slurm-cpus and --slurm-minutes >= 1")


# -- who owns a claim ---------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The process's start time since boot (clock ticks), which tells a reused pid from its first owner."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def me() -> dict:
    """This process as a claim's owner."""
    pid = os.getpid()
    return {"host": HOST, "pid": pid, "start": _start_time(pid)}


def alive(owner: dict) -> bool | None:
    """Whether the owner still runs: True or False on this host, None (cannot tell) for another host."""
    if owner.get("host") != HOST:
        return None
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except (OverflowError, ValueError):
        return False
    if _state(pid) == "Z":  # killed, not yet reaped by its parent
        return False
    start = owner.get("start")
    return start is None or _start_time(pid) in (None, start)


def describe(claim: dict, now: float | None = None) -> str:
    owner = claim.get("owner", {})
    age = (now or time.time()) - float(claim.get("heartbeat", 0))
    return f"{owner.get('host', '?')} pid {owner.get('pid', '?')} (heartbeat {age:.0f} s ago)"


# -- the claims folder ---------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Claims:
    """The claims in ``OUT/claims``: take, refresh, release; every change under the folder's lock."""

    def __init__(self, out: Path, settings: WorkerSettings):
        self.out = Path(out)
        self.folder = self.out / CLAIMS
        self.folder.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.owner = me()
        self.lock = FileLock(str(self.folder / "lock"))

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def read(self, name: str) -> dict | None:
        try:
            return json.loads(self.path(name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {"owner": {"host": "?", "pid": -1}, "heartbeat": 0, "broken": True}  # half a claim: nobody's

    def mine(self, claim: dict | None) -> bool:
        return claim is not None and claim.get("owner") == self.owner

    def stale(self, claim: dict, now: float | None = None) -> tuple[bool, str]:
        """Whether ``claim`` may be taken over, and why (or why not)."""
        now = time.time() if now is None else now
        late = now - float(claim.get("heartbeat", 0)) > self.settings.stale_after
        running = alive(claim.get("owner", {}))
        if claim.get("broken"):
            return True, "its claim file is unreadable"
        if running is False:
            return True, "its owner no longer runs"
        if running is True:
            return False, "its owner still runs here" + (", though its heartbeat is late" if late else "")
        if late:
            return True, f"no heartbeat for over {self.settings.stale_after:g} s"
        return False, "its owner's heartbeat is recent"

    def event(self, kind: str, name: str, **extra) -> None:
        record = {"time": time.time(), "event": kind, "case": name, "owner": self.owner, **extra}
        with open(self.folder / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def take(self, name: str) -> tuple[str, str]:
        """Under the lock: ("claimed" | "taken", from whom) where free or stale, else ("busy", whose and why)."""
        now = time.time()
        claim = self.read(name)
        if claim is not None and not self.mine(claim):
            stale, why = self.stale(claim, now)
            if not stale:
                return "busy", f"{describe(claim, now)}: {why}"
            previous = f"{describe(claim, now)}: {why}"
        else:
            previous = ""
        _write_json(self.path(name), {"case": name, "owner": self.owner, "claimed": now, "heartbeat": now})
        self.event("takeover" if previous else "claim", name, **({"from": claim.get("owner"), "why": previous} if previous else {}))
        return ("taken", previous) if previous else ("claimed", "")

    def release(self, name: str) -> bool:
        """Under the lock: drop this process's claim; False where another process holds it now."""
        claim = self.read(name)
        if not self.mine(claim):
            return False
        self.path(name).unlink(missing_ok=True)
        return True

    def beat(self, name: str) -> bool:
        """Refresh this process's claim on ``name``; False where it has been taken over."""
        with self.lock:
            claim = self.read(name)
            if not self.mine(claim):
                return False
            claim["heartbeat"] = time.time()
            _write_json(self.path(name), claim)
            return True

    def hold(self, name: str) -> "Heartbeat":
        beat = Heartbeat(Claims(self.out, self.settings), name, self.settings.heartbeat)
        beat.start()
        return beat

    def check_config(self, config: dict, force: bool = False) -> None:
        """Refuse a folder written by another study configuration (``force`` makes this one the folder's)."""
        path = self.out / CONFIG
        with self.lock:
            old = None
            if path.exists():
                try:
                    old = json.loads(path.read_text(encoding="utf-8"))
                except ValueError:
                    old = "unreadable"
                if old != config and not force:
                    if not isinstance(old, dict):
                        raise PruneBenchError(f"{path} is not a study configuration: move it away or pass --force")
                    k = next(k for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k))
                    raise PruneBenchError(
                        f"{self.out} belongs to another study configuration ({k}: {old.get(k)!r} there, {config.get(k)!r} "
                        f"here, see {path}): give the same settings, another --out, or --force to start it afresh"
                    )
            if old != config:
                _write_json(path, config)


class Heartbeat(threading.Thread):
    """Refresh a claim every ``every`` seconds until stopped; ``lost`` is set where another process took it over."""

    def __init__(self, claims: Claims, name: str, every: float):
        super().__init__(daemon=True, name=f"heartbeat {name}")
        self.claims, self.case, self.every = claims, name, every
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                if not self.claims.beat(self.case):
                    self.lost.set()
                    return
            except OSError:  # a shared file system's hiccup: the next beat tries again
                continue

    def stop(self) -> None:
        self.stopped.set()
        self.join()


# -- running a study as one of many ---------------------------------------------------------------


def _gist(why: str) -> str:
    """A waiting message without its heartbeat ages: said again only when who holds what changes."""
    return re.sub(r"heartbeat \d+ s ago", "", why)


def _decide(world, claims: Claims | None, choose):
    """Rank 0 chooses (under the folder's lock); every rank gets its choice."""
    choice = None
    if world.is_main:
        with claims.lock:
            choice = choose()
    return distributed.broadcast(choice)


def _base(world, claims, study, worker: WorkerSettings, train_it):
    """The base model: loaded where it exists, else trained by the one process that claims it, others waiting."""
    said = ""
    while True:

        def choose():
            if study.base_path.exists():
                return ("load", "")
            return claims.take(BASE)

        action, why = _decide(world, claims, choose)
        if action == "load":
            return train_it()
        if action in ("claimed", "taken"):
            if action == "taken" and world.is_main:
                tqdm.write(f"base model: taking over from {why}")
            beat = claims.hold(BASE) if world.is_main else None
            try:
                result = train_it()  # trains (going on from its last epoch where a dead owner left one) and saves
            finally:
                if beat is not None:
                    beat.stop()
            if world.is_main:
                with claims.lock:
                    claims.release(BASE)
                    claims.event("finished", BASE)
            return result
        if world.is_main and _gist(why) != said:
            tqdm.write(f"waiting for the base model at {study.base_path}: {why}")
            said = _gist(why)
        time.sleep(worker.poll)


def run_claimed(data_settings, train, evals, study, worker: WorkerSettings, command: str = "") -> list[dict]:
    """Run the study's unfinished cases that no live process holds, one claim at a time; return the table's rows.

    Without ``worker.worker`` the run ends when the only cases left are held by
    others; with it, it waits for them and takes over any whose owner died, so
    the grid is finished whichever workers survive.
    """
    from prune.study import RESUME, Results, config_of, plot, prepare_study

    worker.check()
    study.check()
    if worker.worker and study.force:
        raise PruneBenchError("--force with --worker would have every worker redo the grid: run one study with --force first")
    world = distributed.setup(train.device, train.dist_backend)
    out = Path(study.out)
    if out.exists() and not out.is_dir():
        raise PruneBenchError(f"--out {out} is a file, not a folder")
    claims = Claims(out, worker) if world.is_main else None
    if world.is_main:
        claims.check_config(config_of(data_settings, train, study), study.force)
    distributed.barrier()
    run = prepare_study(
        data_settings, train, evals, study, command, get_base=lambda train_it: _base(world, claims, study, worker, train_it)
    )
    cases = {c.name: c for c in run.cases}
    ran: set[str] = set()
    said = None

    def choose():
        results = Results(out)
        busy = []
        for name in cases:
            if name in ran or (not study.force and results.done(name)):
                continue
            action, why = claims.take(name)
            if action != "busy":
                return (action, name, why)
            busy.append(f"{name} ({why})")
        return ("wait", "", "; ".join(busy)) if busy else ("done", "", "")

    done = 0
    if world.is_main and not study.force:
        finished = Results(out)
        done = sum(1 for name in cases if finished.done(name))
        if done:
            tqdm.write(f"{done} of {len(cases)} cases done already (in {finished.path}); --force reruns them")
    bar = tqdm(total=len(cases), initial=done, desc="study", disable=not train.progress or not world.is_main)
    while True:
        action, name, why = _decide(world, claims, choose)
        if action == "done":
            break
        if action == "wait":
            if not worker.worker:
                if world.is_main:
                    tqdm.write(f"left to other processes: {why} (with --worker this process would wait for them)")
                break
            if world.is_main and _gist(why) != said:
                tqdm.write(f"waiting for cases other processes run: {why}")
                said = _gist(why)
            time.sleep(worker.poll)
            continue
        if action == "taken" and world.is_main:
            tqdm.write(f"{name}: taking over from {why}")
        bar.set_postfix_str(name)
        resume = out / RESUME / f"{name}.pt"
        beat = claims.hold(name) if world.is_main else None
        try:
            row = run.ready_case(cases[name], resume)
        finally:
            if beat is not None:
                beat.stop()
        if world.is_main:
            with claims.lock:
                if claims.release(name):
                    results = Results(out)
                    results.put(row, run.header, run.order)
                    plot(results.data, cases, out / "accuracy_vs_sparsity.png")
                    resume.unlink(missing_ok=True)
                    resume.with_name(resume.name + ".tmp").unlink(missing_ok=True)  # a save cut short by a kill
                    claims.event("finished", name, accuracy=row["accuracy"])
                else:
                    tqdm.write(f"{name}: another process took this case over while it ran; its result stands, not this one's")
        ran.add(name)
        bar.update(1)
    bar.close()
    rows = None
    if world.is_main:
        with claims.lock:
            results = Results(out)
            if not results.rows:
                results.data.update(run.header)
                results.write()
            rows = results.rows
    return distributed.broadcast(rows)


# -- the report, from the folder alone ----------------------------------------------------------------


def report(out: str | Path, worker: WorkerSettings | None = None) -> str:
    """Rewrite results.csv, results.md and the plot from ``OUT/results.json``; say which cases are held by whom."""
    from prune.study import RESULTS, Results, plot

    out = Path(out)
    if not (out / RESULTS).exists():
        raise PruneBenchError(f"no {RESULTS} in {out}: no case of a study has finished there yet")
    claims = Claims(out, worker or WorkerSettings())
    with claims.lock:
        results = Results(out)
        results.write()
        if results.rows:
            plot(results.data, {}, out / "accuracy_vs_sparsity.png")
        held = []
        for path in sorted(claims.folder.glob("*.json")):
            claim = claims.read(path.stem)
            if claim is not None:
                stale, why = claims.stale(claim)
                held.append(f"  {path.stem}: {describe(claim)}, {'stale: ' if stale else ''}{why}")
    lines = [f"{len(results.rows)} cases finished in {out / 'results.md'}"]
    lines += ["running (or left by a process that died):", *held] if held else ["no case is running"]
    return "\n".join(lines)


# -- a Slurm array of workers ------------------------------------------------------------------------


def slurm_worker(argv: list[str]) -> int:
    """One array task: the study command as a worker (what each Slurm task runs)."""
    from prune.cli import main

    code = main(argv)
    if code:
        raise RuntimeError(f"python -m prune {' '.join(argv)} exited with status {code}")
    return code


def submit_slurm(argv: list[str], out: str | Path, worker: WorkerSettings) -> list[str]:
    """Submit ``worker.slurm`` workers running ``python -m prune <argv> --worker`` as one Slurm array; their job ids."""
    try:
        import submitit
    except ImportError:
        raise PruneBenchError("--slurm needs submitit: pip install submitit (or submit the README's sbatch array)") from None
    folder = Path(out) / "slurm"
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=worker.slurm_cluster or None)
    params = dict(
        name="prune-study",
        timeout_min=worker.slurm_minutes,
        gpus_per_node=worker.slurm_gpus,
        cpus_per_task=worker.slurm_cpus,
        slurm_array_parallelism=worker.slurm,
    )
    if worker.slurm_partition:
        params["slurm_partition"] = worker.slurm_partition
    executor.update_parameters(**params)
    task = list(argv) + ["--slurm", "0", "--worker"]  # later options win: every task is a plain worker
    jobs = executor.map_array(slurm_worker, [task] * worker.slurm)
    return [str(job.job_id) for job in jobs]
