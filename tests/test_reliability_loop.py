"""Whole runs under faults, compared with one uninterrupted reference run of the same config + seed:

  * determinism: a second uninterrupted run gives the same synthetic.jsonl and accuracies;
  * a scorer killed mid-scoring and a trainer rank killed mid-training (SIGKILL of the actor's
    process, found by its Ray process title `ray::ScorerWorker.score` / `ray::TrainerWorker.train`)
    are restarted, the phase redone, and the run ends in the reference's state;
  * the driver (and the local Ray it started) SIGKILLed at four points of one run -- while writing
    state (metrics and checkpoint written, state.json not), while scoring the next round,
    mid-generation (samples on disk, not yet counted), during training -- each followed by
    `activesyn resume`, ends in the reference's state: same samples, each generated and charged
    once, same scores, losses and accuracies.

Real stack, CPU-sized (tiny LoRA student, 2 DeepSpeed ranks, 2 scorer shards, procedural teacher,
2 iterations of 4 samples). The coordinator's kill points are `coordinator.fault_point` (env
ACTIVESYN_FAULT_AT=name:iteration: it announces the point on the console and waits there).
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from activesyn_ray import runstore

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "jobs" / "quickstart.yaml"
SETS = ["task.seed_size=24", "task.test_size=12", "selection.k=4", "budget.samples=8",
        "student.epochs=1", "student.model=tiny", "student.lora={r: 8, alpha: 16}",
        "student.inference=hf", "resources.trainer.num_workers=2",
        "resources.scorers.num_workers=2", "resources.local_num_cpus=4", "output.plots=false"]
# What a sample record holds that depends on the wall clock, not on the run's inputs.
TIMING = {"latency_s", "seconds", "time", "timestamp", "started", "finished", "wall_s"}

pytestmark = pytest.mark.slow


class Cli:
    """`activesyn ...` in its own session (so killpg takes the local Ray with it); its console is
    read line by line in a thread, so a test can wait for a line."""

    def __init__(self, *args, env=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "activesyn_ray.cli", *args],
            env=dict(os.environ, RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1", **(env or {})),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait_for(self, cond, what: str, timeout: float = 900, poll: float = 0.05):
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = cond()
            if got:
                return got
            if self.proc.poll() is not None:
                self.reader.join(5)
                pytest.fail(f"run ended (rc={self.proc.returncode}) before {what}:\n{self.out[-3000:]}")
            time.sleep(poll)
        self.kill()
        pytest.fail(f"no {what} in {timeout} s:\n{self.out[-3000:]}")

    def busy(self, title: str) -> int | None:
        """pid of a process of this run whose Ray title is `ray::<title>` (an actor inside that
        method right now)."""
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        for p in procs:
            try:
                if p.cmdline()[:1] == [f"ray::{title}"]:
                    return p.pid
            except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                continue
        return None

    def kill(self):
        """SIGKILL the driver and the local Ray it started (its whole session)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.reader.join(5)

    def finish(self, timeout: float = 1200) -> str:
        self.proc.wait(timeout=timeout)
        self.reader.join(10)
        assert self.proc.returncode == 0, self.out[-4000:]
        return self.out


def run_args(run_dir: Path, *extra: str) -> list[str]:
    return ["run", str(QUICK), "--run-dir", str(run_dir),
            *sum((["--set", s] for s in SETS + list(extra)), [])]


def final_state(run_dir: Path) -> dict:
    """What must match between two runs: every sample (minus wall-clock fields) in order, each
    metrics row's accuracies, counts and training losses, every score the student gave (seeds and
    samples: they move with the student's weights, the accuracies of this tiny student sit at 0),
    the ledger's counters."""
    store = runstore.RunStore(run_dir)
    synth = [{k: v for k, v in r.items() if k not in TIMING} for r in store.read(runstore.SYNTHETIC)]
    metrics = [{k: m[k] for k in ("iteration", "samples", "train_size", "teacher_tokens",
                                  "accuracy", "accuracy_by_stratum", "val_accuracy",
                                  "selected_by_stratum", "contaminated", "failed_parses",
                                  "train_loss_first", "train_loss_last")}
               for m in store.read(runstore.METRICS)]
    state = store.load_state()
    ledger = {k: state["ledger"][k] for k in ("samples", "requests", "prompt_tokens",
                                              "completion_tokens")}
    return {"synthetic": synth, "metrics": metrics, "scores": store.read(runstore.SCORES),
            "ledger": ledger, "done": state.get("done")}


def assert_same_final_state(run_dir: Path, reference: dict) -> dict:
    got = final_state(run_dir)
    assert got["done"] and reference["done"]
    ids = [r["request_id"] for r in got["synthetic"]]
    assert len(ids) == len(set(ids)) == 8  # nothing generated twice
    assert got["ledger"] == reference["ledger"]  # nothing charged twice
    assert [m["accuracy"] for m in got["metrics"]] == [m["accuracy"] for m in reference["metrics"]]
    assert got["metrics"] == reference["metrics"]
    assert got["synthetic"] == reference["synthetic"]
    assert got["scores"] == reference["scores"]
    return got


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    t0 = time.time()
    Cli(*run_args(run_dir)).finish()
    state = final_state(run_dir)
    print(f"\nreference run: {time.time() - t0:.0f} s, accuracies "
          f"{[m['accuracy'] for m in state['metrics']]}")
    assert [m["samples"] for m in state["metrics"]] == [0, 4, 8]
    return state


def test_two_runs_of_one_config_and_seed_are_identical(reference, tmp_path):
    Cli(*run_args(tmp_path / "again")).finish()
    got = assert_same_final_state(tmp_path / "again", reference)
    print(f"\nsecond run: {len(got['synthetic'])} samples and "
          f"{len(got['metrics'])} metrics rows identical to the reference")


def test_killed_scorer_and_trainer_rank_are_restarted_and_the_run_unchanged(reference, tmp_path):
    run_dir = tmp_path / "faults"
    cli = Cli(*run_args(run_dir))
    # The first seed scoring (iteration 1): kill one scorer shard while it scores.
    pid = cli.wait_for(lambda: cli.busy("ScorerWorker.score"), "a scorer scoring")
    os.kill(pid, signal.SIGKILL)
    # The first training (iteration 1): kill one of the two DeepSpeed ranks while it trains.
    pid_t = cli.wait_for(lambda: cli.busy("TrainerWorker.train"), "a trainer rank training")
    os.kill(pid_t, signal.SIGKILL)
    out = cli.finish()
    restarts = [ln.strip() for ln in out.splitlines() if "redoing the call" in ln]
    print("\n" + "\n".join(restarts))
    assert any("scorers: rank" in ln and "died during 'score'" in ln for ln in restarts), out[-3000:]
    assert any("trainer: rank" in ln and "restarting the whole group" in ln for ln in restarts)
    assert_same_final_state(run_dir, reference)


def test_driver_killed_at_four_points_resumes_to_the_same_final_state(reference, tmp_path):
    """One run, killed four times in the order the points come (each kill hits a resumed run):
    the driver and its local Ray SIGKILLed, then `activesyn resume`; finally resumed to the end."""
    run_dir = tmp_path / "killed"
    synth_path, metrics_path = run_dir / runstore.SYNTHETIC, run_dir / runstore.METRICS
    seen = []

    def kill_at(cli, point):
        if point == "train":  # no hook: a DeepSpeed rank inside train() of iteration 2
            cli.wait_for(lambda: len(list(runstore.read_jsonl(metrics_path))) >= 2
                         and cli.busy("TrainerWorker.train"), "iteration 2's training")
        else:
            cli.wait_for(lambda: f"fault point {point} reached" in cli.out, f"fault point {point}")
        cli.kill()
        state = runstore.RunStore(run_dir).load_state()
        disk = (len(list(runstore.read_jsonl(synth_path))), len(list(runstore.read_jsonl(metrics_path))))
        seen.append(f"{point}: phase={state['phase']} iteration={state['iteration']} samples on "
                    f"disk {disk[0]} (state counts {state['n_synthetic']}), metrics rows {disk[1]} "
                    f"(state counts {state['n_metrics']})")
        assert not state.get("done")
        return state, disk

    # 1. while writing state: iteration 1's metrics row and checkpoint written, state.json not
    state, disk = kill_at(Cli(*run_args(run_dir), env={"ACTIVESYN_FAULT_AT": "save-evaluated:1"}),
                          "save-evaluated:1")
    assert disk[1] == state["n_metrics"] + 1 and state["phase"] == "scored"
    # 2. scoring the next round: the resumed run must score with round 1's student, not the base
    state, _ = kill_at(Cli("resume", str(run_dir), env={"ACTIVESYN_FAULT_AT": "score:2"}), "score:2")
    assert (state["phase"], state["iteration"]) == ("selecting", 2)
    # 3. mid-generation: iteration 2's samples on disk, not yet counted in state.json
    state, disk = kill_at(Cli("resume", str(run_dir), env={"ACTIVESYN_FAULT_AT": "generate:2"}),
                          "generate:2")
    assert disk[0] > state["n_synthetic"]
    # 4. during training (iteration 2)
    state, _ = kill_at(Cli("resume", str(run_dir)), "train")
    assert state["iteration"] == 2 and state["phase"] in ("generated", "scored")
    print("\n" + "\n".join(seen))

    Cli("resume", str(run_dir)).finish()
    got = assert_same_final_state(run_dir, reference)
    synth = runstore.RunStore(run_dir).read(runstore.SYNTHETIC)  # tokens charged exactly once
    assert runstore.RunStore(run_dir).load_state()["ledger"]["tokens"] == \
        sum(r["prompt_tokens"] + r["completion_tokens"] for r in synth)
    assert got["ledger"]["samples"] == 8
