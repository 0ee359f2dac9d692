"""loop.pipeline on the real stack: the teacher selects and generates round t+1 while round t
trains (tiny LoRA student, 2 DeepSpeed ranks, 1 scorer shard, procedural teacher, 4 rounds of 4).

  * the uninterrupted pipelined run (in this process, on the suite's shared Ray): each sample
    records the adapter its selection saw (`staleness`: 0 in round 1, then 1), a round never
    re-picks the seeds still in flight from the round before, the teacher's round t+1 starts
    before round t's training ends (RUN/timeline.json, Chrome trace), Ray's own per-actor spans
    are in the same file, and the loop's Ray metrics (teacher tokens, phase seconds) are on the
    node's Prometheus endpoint;
  * one pipelined run (CLI) whose teacher replica is SIGKILLed during the overlap (the lane
    paused after round 3's samples, while round 2 trains; round 4 then needs a new replica), and
    whose driver is SIGKILLed mid-overlap (round 4's samples on disk, not yet counted, round 3
    training), then `activesyn resume`: it ends identical to the uninterrupted run.
"""

import json
import os
import re
import signal
import threading
import time
import urllib.request

import pytest

from activesyn_ray import runstore
from test_reliability_loop import Cli, assert_same_final_state, final_state, run_args, run_in_process

pytestmark = pytest.mark.slow

PIPELINED = ["budget.samples=16", "loop.pipeline=true"]


def scrape(ray) -> str:
    """The node's Prometheus endpoint, as a Prometheus server would read it."""
    port = ray._private.worker.global_worker.node.metrics_export_port
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ray_session) -> dict:
    """The uninterrupted pipelined run; the metrics endpoint is scraped every 2 s while it runs
    (a gauge is exported while it is fresh, as a Prometheus server polling would see it)."""
    run_dir = tmp_path_factory.mktemp("pipelined") / "reference"
    seen, running = [], threading.Event()
    running.set()

    def poll():
        while running.is_set():
            try:
                seen.extend(ln for ln in scrape(ray_session).splitlines()
                            if ln.startswith("ray_activesyn_teacher_"))
            except OSError:
                pass
            time.sleep(2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        run_in_process(run_dir, *PIPELINED)
    finally:
        running.clear()
        poller.join(15)
    return dict(final_state(run_dir), run_dir=run_dir, scraped=seen)


def test_pipelined_run_records_staleness_and_never_repicks_seeds_in_flight(reference):
    synth = reference["synthetic"]
    assert [m["samples"] for m in reference["metrics"]] == [0, 4, 8, 12, 16]
    by_round = {}
    for r in synth:
        by_round.setdefault(r["iteration"], []).append(r)
    assert sorted(by_round) == [1, 2, 3, 4]
    assert {r["staleness"] for r in by_round[1]} == {0}
    for t in (2, 3, 4):  # chosen under the adapter of round t-2, without round t-1's seeds
        assert {(r["staleness"], r["selection_adapter"]) for r in by_round[t]} == {(1, t - 2)}
        assert not {r["seed_index"] for r in by_round[t]} & \
            {r["seed_index"] for r in by_round[t - 1]}
    # what the loss strategy ranked round t by: the pool's scores under adapter t-2, stored by
    # that round's evaluation (rows of iteration t-1)
    scores = runstore.RunStore(reference["run_dir"]).read(runstore.SCORES)
    for t in (2, 3, 4):
        pool = {r["seed_id"]: r["loss"] for r in scores
                if r.get("iteration") == t - 1 and "seed_id" in r}
        for r in by_round[t]:
            assert r["seed_score"] == pytest.approx(pool[r["seed_id"]])
    # the metrics rows count each round's own samples, not the next round's already on disk
    assert [m["teacher_tokens"] for m in reference["metrics"][1:]] == \
        [sum(r["prompt_tokens"] + r["completion_tokens"] for r in synth if r["iteration"] <= t)
         for t in (1, 2, 3, 4)]


def test_timeline_shows_the_teacher_ahead_and_every_actor(reference):
    trace = json.loads((reference["run_dir"] / "timeline.json").read_text())["traceEvents"]
    ours = [e for e in trace if e.get("pid") == "activesyn loop"]
    spans = {(e["name"], e["args"]["round"]): e for e in ours if e["args"]["round"] is not None}
    train = [e for e in ours if e["name"] == "train"]
    assert len(train) == 4 and all(e["tid"] == "trainer ranks" for e in train)
    for t, tr in zip((1, 2, 3), train[:3]):  # round t+1's generation starts before round t's
        gen = spans[("generate", t + 1)]      # training ends
        assert gen["tid"] == "teacher replicas" and gen["args"]["lane"] == "teacher"
        assert gen["ts"] < tr["ts"] + tr["dur"], (gen, tr)
    # Ray's own spans: each method call of each actor, one track per worker process
    methods = {e.get("cat", "") for e in trace if e.get("pid") != "activesyn loop"}
    assert any("TrainerWorker.train" in c for c in methods), sorted(methods)[:20]
    assert any("TeacherReplica" in c for c in methods), sorted(methods)[:20]


def test_loop_metrics_reach_the_prometheus_endpoint(reference, ray_session):
    run = f'run="tiny-cpu/{reference["run_dir"].name}"'
    want = sum(r["prompt_tokens"] + r["completion_tokens"] for r in reference["synthetic"])
    text, deadline = "", time.time() + 90
    while time.time() < deadline:  # metrics reach the endpoint every few seconds
        text = scrape(ray_session)
        if run in text and "ray_activesyn_phase_seconds" in text:
            break
        time.sleep(3)

    def value(name: str, **tags) -> float:
        lines = [ln for ln in text.splitlines() if ln.startswith(name + "{") and run in ln
                 and all(f'{k}="{v}"' in ln for k, v in tags.items())]
        assert lines, f"{name} {tags} not exported:\n" + "\n".join(
            ln for ln in text.splitlines() if "activesyn" in ln)[:3000]
        return float(lines[0].rsplit(" ", 1)[1])

    assert value("ray_activesyn_teacher_tokens_total") == want
    assert value("ray_activesyn_phase_seconds_count", phase="train", lane="loop") == 4
    assert value("ray_activesyn_phase_seconds_count", phase="generate", lane="teacher") == 4
    # the teacher's load, as scraped while the run went on
    for gauge in ("requests_in_flight", "queue_depth"):
        assert [ln for ln in reference["scraped"]
                if ln.startswith(f"ray_activesyn_teacher_{gauge}{{") and run in ln], gauge


def test_replica_and_driver_kills_during_the_overlap_resume_to_the_same_run(reference, tmp_path):
    run_dir = tmp_path / "killed"
    first = Cli(*run_args(run_dir, *PIPELINED),
                env={"ACTIVESYN_FAULT_AT": "generate:3:20,generate:4"})
    # round 3's samples on disk, round 2 training: the lane waits 20 s; its replica dies now
    first.wait_for(lambda: "fault point generate:3 reached" in first.out, "fault point generate:3")
    replica = first.wait_for(lambda: first.busy("TeacherReplica"), "the teacher replica's process",
                             timeout=15)
    os.kill(replica, signal.SIGKILL)
    # round 4's requests go to a new replica; its samples land, and the driver dies there
    first.wait_for(lambda: "fault point generate:4 reached" in first.out, "fault point generate:4",
                   timeout=600)
    first.kill()
    state = runstore.RunStore(run_dir).load_state()
    on_disk = len(list(runstore.read_jsonl(run_dir / runstore.SYNTHETIC)))
    assert not state.get("done") and state["ahead"]["iteration"] == 4
    assert on_disk == 16 and state["n_synthetic"] < on_disk  # round 4 on disk, not yet counted
    assert state["iteration"] <= 3
    log = (run_dir / "run.log").read_text()
    assert re.search(r"teacher replica \d+ .*restarting it", log), log[-3000:]
    Cli("resume", str(run_dir)).finish()
    assert_same_final_state(run_dir, reference, n_samples=16)
