"""Whole runs under faults, compared with one uninterrupted reference run of the same config + seed:

  * the reference itself: curves, report, checkpoints, per-stratum metrics, scores;
  * determinism: a second run in a new process (with the fused evaluate+score pass off) gives the
    same synthetic.jsonl, metrics, scores and ledger;
  * one run in which a scorer shard (mid-evaluation) and a trainer rank (mid-training) are
    SIGKILLed (found by their Ray process titles `ray::ScorerWorker.evaluate_and_score` /
    `ray::TrainerWorker.train`), restarted and their calls redone; then the driver (and the local
    Ray it started) is SIGKILLed at four points -- while writing state (metrics and checkpoint
    written, state.json not), while scoring the next round, mid-generation (samples on disk, not
    yet counted), during training -- each followed by `activesyn resume`; it ends in the
    reference's state: same samples, each generated and charged once, same scores, losses and
    accuracies.

Real stack, CPU-sized (tiny LoRA student, 2 DeepSpeed ranks, 1 scorer shard (what sharding
changes is tested in test_student.py and test_faults.py; each process costs ~10 CPU-seconds of
imports at every one of the driver's starts here), procedural teacher,
2 iterations of 4 samples). The coordinator's kill points are `coordinator.fault_point` (env
ACTIVESYN_FAULT_AT=name:iteration: it announces the point on the console and waits there).
"""

import json
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
QUICK = ROOT / "jobs" / "tiny-cpu.yaml"
SETS = ["task.seed_size=24", "task.test_size=12", "selection.k=4", "budget.samples=8",
        "student.epochs=1", "student.model=tiny", "student.lora={r: 8, alpha: 16}",
        "student.inference=hf", "resources.trainer.num_workers=2",
        "resources.scorers.num_workers=1", "resources.local_num_cpus=4"]
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

    def busy(self, title: str, exclude: set[int] = frozenset()) -> int | None:
        """pid of a process of this run whose Ray title is `ray::<title>` (an actor inside that
        method right now), other than those in `exclude`."""
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        for p in procs:
            try:
                if p.pid not in exclude and p.cmdline()[:1] == [f"ray::{title}"]:
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


def run_in_process(run_dir: Path, *extra: str) -> None:
    """The run `run_args` describes, in this process on the suite's shared Ray (no driver or Ray
    start-up of its own): for runs that are never killed and whose console nobody reads."""
    from activesyn_ray.config import load_config
    from activesyn_ray.driver import run_loop
    from activesyn_ray.run_setup import new_run

    run_loop(new_run(load_config(QUICK, SETS + list(extra)), run_dir))


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


def assert_same_final_state(run_dir: Path, reference: dict, n_samples: int = 8) -> dict:
    got = final_state(run_dir)
    assert got["done"] and reference["done"]
    ids = [r["request_id"] for r in got["synthetic"]]
    assert len(ids) == len(set(ids)) == n_samples  # nothing generated twice
    assert got["ledger"] == reference["ledger"]  # nothing charged twice
    assert [m["accuracy"] for m in got["metrics"]] == [m["accuracy"] for m in reference["metrics"]]
    assert got["metrics"] == reference["metrics"]
    assert got["synthetic"] == reference["synthetic"]
    def rows(scores):  # the fused pass writes a round's pool rows one step earlier
        return sorted(scores, key=lambda r: json.dumps(r, sort_keys=True))
    assert rows(got["scores"]) == rows(reference["scores"])
    return got


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    t0 = time.time()
    out = Cli(*run_args(run_dir)).finish()
    state = final_state(run_dir)
    print(f"\nreference run: {time.time() - t0:.0f} s, accuracies "
          f"{[m['accuracy'] for m in state['metrics']]}")
    assert [m["samples"] for m in state["metrics"]] == [0, 4, 8]
    return dict(state, run_dir=run_dir, out=out)


def test_reference_run_writes_curves_report_checkpoints(reference):
    """What a finished run leaves: per-stratum metrics, the selection mix, plots, its report, the
    final adapter, and the seed/sample scores of every round."""
    run_dir = reference["run_dir"]
    assert f"run directory: {run_dir}" in reference["out"] and "final accuracy:" in reference["out"]
    store = runstore.RunStore(run_dir)
    metrics = store.read(runstore.METRICS)
    assert [m["train_size"] for m in metrics] == [0, 4, 8]
    for m in metrics:  # per-stratum accuracy over the test split, and what each round selected
        assert sum(m["n_test_by_stratum"].values()) == m["n_test"] == 12
        assert sorted(m["accuracy_by_stratum"]) == ["0", "1", "2"]
        assert m["contaminated"] == 0 and m["val_accuracy"] is None
    assert [sum(m["selected_by_stratum"].values()) for m in metrics] == [0, 4, 4]
    synth = reference["synthetic"]
    assert all(r["parsed"] and r["engine"] == "procedural" for r in synth)
    assert (run_dir / "plots" / "accuracy_vs_budget.png").stat().st_size > 1000
    assert "| basic_arithmetic | loss | 1 |" in (run_dir / "report" / "report.md").read_text()
    assert (run_dir / "checkpoints" / "final" / "adapter_config.json").exists()
    # the loss strategy scored every seed for both rounds, and each round's new samples
    scores = reference["scores"]
    assert sum(1 for r in scores if "seed_id" in r) == 2 * 24
    assert all("loss" in r for r in scores if "seed_id" in r)  # the column loss ranks by
    assert sum(1 for r in scores if r.get("kind") == "synthetic") == 8
    assert len({r["sample_score"] for r in scores if r.get("kind") == "synthetic"}) > 1


def test_reference_console_through_a_pipe_is_our_lines_only(reference):
    """The reference run's console went through a pipe: every line is one of the console's own
    (start-up phases, one per iteration, the summary), no library output (that went to
    RUN/run.log), no bar (drawn only on a terminal); TensorBoard holds the accuracy curve.
    (tests/test_ecosystem.py checks the same run's console in a terminal.)"""
    import re

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_ecosystem import CHATTER, OUR_LINES

    out, run_dir = reference["out"], reference["run_dir"]
    lines = [ln for ln in out.split("\n") if ln.strip()]
    assert [ln for ln in lines if not OUR_LINES.match(ln)] == [], out
    assert not [ln for ln in lines if any(c in ln for c in CHATTER)], out
    metrics = reference["metrics"]  # a baseline row, then one per round
    assert len([ln for ln in lines if ln.startswith("iteration ")]) == len(metrics) == 3, out
    assert "\r" not in out and not re.search(r"synthetic samples \d+/\d+ \|", out), out
    log = (run_dir / "run.log").read_text()
    assert "Started a local Ray" in log and "TrainerWorker" in log
    acc = EventAccumulator(str(run_dir / "tensorboard")).Reload().Scalars("accuracy/overall")
    assert [(e.step, round(e.value, 6)) for e in acc] == \
        [(m["samples"], round(m["accuracy"], 6)) for m in metrics]


def test_second_run_with_separate_passes_is_identical(reference, tmp_path, ray_session):
    """The same config and seed run again (in the test's process, on another Ray), with evaluation and the next round's
    scoring as two scorer passes (student.fuse_eval_and_score=false) and score-synthetic after
    training instead of during it: the same samples, metrics, scores and ledger. So a run is
    reproducible, and the fused pass changes no number (its pool rows are only written one step
    earlier)."""
    run_dir = tmp_path / "again"
    run_in_process(run_dir, "student.fuse_eval_and_score=false",
                   "student.overlap_score_synthetic=false")
    got = assert_same_final_state(run_dir, reference)
    a = runstore.RunStore(reference["run_dir"]).read(runstore.METRICS)
    b = runstore.RunStore(run_dir).read(runstore.METRICS)
    assert "eval+score" in a[0]["phase_s"] and not any("score" in m["phase_s"] for m in a)
    assert all("score" in m["phase_s"] for m in b[1:]) and "eval+score" not in b[0]["phase_s"]
    print(f"\nsecond run: {len(got['synthetic'])} samples and "
          f"{len(got['metrics'])} metrics rows identical to the reference")


def test_actor_and_driver_kills_resume_to_the_same_final_state(reference, tmp_path):
    """One run: a scorer shard and a trainer rank killed (restarted, call redone), then the driver
    killed four times in the order the points come (each kill hits a resumed run):
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

    # 0. before any driver kill, two actors die: a scorer shard mid-evaluation (the fused pass of
    #    iteration 0) and one of the two DeepSpeed ranks mid-training (iteration 1); each is
    #    restarted (the trainer as a whole group) and its call redone
    first = Cli(*run_args(run_dir), env={"ACTIVESYN_FAULT_AT": "save-evaluated:1"})
    os.kill(first.wait_for(lambda: first.busy("ScorerWorker.evaluate_and_score"),
                           "a scorer shard evaluating"), signal.SIGKILL)
    os.kill(first.wait_for(lambda: first.busy("TrainerWorker.train"), "a trainer rank training"),
            signal.SIGKILL)
    # 1. while writing state: iteration 1's metrics row and checkpoint written, state.json not
    state, disk = kill_at(first, "save-evaluated:1")
    restarts = [ln.strip() for ln in first.out.splitlines() if "redoing the call" in ln]
    seen.extend(restarts)
    assert any("scorers: rank" in ln and "died during 'evaluate_and_score'" in ln
               for ln in restarts), first.out[-3000:]
    assert any("trainer: rank" in ln and "restarting the whole group" in ln for ln in restarts)
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
