"""The active loop end to end on the real stack (local Ray, DeepSpeed+LoRA student in actors,
scorer, teacher pool), CPU-sized: tiny models, small pools, one or two iterations."""

from pathlib import Path

import pytest

from activesyn_ray import runstore
from activesyn_ray.config import load_config
from activesyn_ray.selection import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "jobs" / "tiny-cpu.yaml"
# Small pools, one epoch, and the main path's LoRA student (jobs/tiny-cpu.yaml trains a tiny model fully).
SMALL = ["task.seed_size=24", "task.test_size=12", "selection.k=6", "student.epochs=1",
         "student.model=tiny", "student.lora={r: 8, alpha: 16}",
         "resources.scorers.num_workers=1", "resources.local_num_cpus=3",  # shards: test_student
         "student.inference=hf"]  # vLLM scorers are tested in test_student_vllm.py

pytestmark = pytest.mark.slow


def test_tiny_job_never_trains_on_a_held_out_question(tmp_path, ray_session):
    """The tiny job's level 0 (1-digit a+b) has ~120 distinct questions, 30 of them in the test
    split: without decontamination about a quarter of its samples were test questions. (Uniform
    selection: which seeds are chosen does not matter here, and scoring 180 seeds twice would.)"""
    from activesyn_ray.driver import run_loop
    from activesyn_ray.decontaminate import normalize
    from activesyn_ray.run_setup import new_run

    store = new_run(load_config(QUICK, ["budget.samples=192", "student.epochs=1",
                                        "task.val_size=30", "output.plots=false",
                                        "selection.strategy=random"]), tmp_path / "qs")
    run_loop(store)
    held = {normalize(e["question"]) for e in store.read(runstore.TEST) + store.read(runstore.VAL)}
    synth = store.read(runstore.SYNTHETIC)
    assert len(synth) == 192 and len(held) == 120
    assert not [r for r in synth if normalize(r["example"]["question"]) in held]
    assert sum(r["example"]["meta"]["redraws"] > 0 for r in synth) > 5  # the check really fired
    last = store.read(runstore.METRICS)[-1]
    assert last["contaminated"] == 0 and last["val_accuracy"] is not None


# One whole run per scorer column a strategy ranks by, and per loop shape (static: one round up
# front). balanced and loss-gt rank by loss_gt as progress does; random is uniform as static is
# and runs end to end in test_verify.py; loss is the strategy of tests/test_reliability_loop.py's
# reference run (2 rounds, every seed scored each round, checked there); what each selects from
# its scores is unit-tested in test_selection.py. progress runs two rounds, so its second round
# ranks by the loss drop.
LOOP_STRATEGIES = ["badge", "entropy", "learnability", "llm-judge", "progress", "reward", "static"]
RUN_ELSEWHERE = ["loss", "random"]  # test_reliability_loop.py, test_verify.py


def test_the_loop_strategies_cover_every_scorer_column_and_shape():
    """A strategy added with a column (or a loop shape) no run here has fails until it is added."""
    ran = [STRATEGIES[s] for s in LOOP_STRATEGIES + RUN_ELSEWHERE]
    for name, strategy in STRATEGIES.items():
        assert strategy.needs <= set().union(*(s.needs for s in ran)), f"{name}: add it here"
        assert strategy.history <= set().union(*(s.history for s in ran)), f"{name}: add it here"
        assert strategy.iterative in {s.iterative for s in ran}, f"{name}: add it here"


@pytest.mark.parametrize("strategy", LOOP_STRATEGIES)
def test_every_strategy_scores_selects_generates(strategy, tmp_path, ray_session):
    from activesyn_ray.driver import run_loop
    from activesyn_ray.run_setup import new_run

    rounds = 2 if STRATEGIES[strategy].history else 1
    sets = SMALL + [f"selection.strategy={strategy}", f"iterations={rounds}",
                    f"budget.samples={6 * rounds}", "output.plots=false"]
    if strategy == "reward":
        sets.append("selection.reward_model=tiny-reward")  # a real sequence-classification model
    if strategy == "llm-judge":  # a real LLM (hf engine, tiny model) grades; samples stay procedural
        sets += ["teacher.judge_engine=hf", "teacher.judge_model=tiny:ctx=2048"]
    cfg = load_config(QUICK, sets)
    store = new_run(cfg, tmp_path / strategy)
    summary = run_loop(store)
    synth = store.read(runstore.SYNTHETIC)
    assert len(synth) == 6 * rounds and summary["ledger"]["samples"] == 6 * rounds
    scores = [r for r in store.read(runstore.SCORES) if "seed_id" in r]
    needs = STRATEGIES[strategy].needs
    if not needs:
        assert scores == []  # uniform strategies never score
    else:  # every seed was scored each round, with the column the strategy ranks by
        assert len(scores) == 24 * rounds
        col = {"badge": "loss"}.get(strategy, sorted(needs)[0])  # BADGE embeddings stay in memory
        assert all(col in r for r in scores), (col, scores[0])
    if strategy == "llm-judge":
        assert summary["ledger"]["judge_tokens"] > 0
        assert summary["ledger"]["teacher_tokens"] > sum(
            r["prompt_tokens"] + r["completion_tokens"] for r in synth)
    metrics = store.read(runstore.METRICS)
    assert len(metrics) == 1 + rounds and 0.0 <= metrics[-1]["accuracy"] <= 1.0
    if strategy == "progress":  # round 2 took the seeds whose loss_gt dropped most since round 1
        by_round = {it: {r["seed_id"]: r["loss_gt"] for r in scores if r["iteration"] == it}
                    for it in (1, 2)}
        drop = {i: by_round[1][i] - by_round[2][i] for i in by_round[2]}
        picked = {r["example"]["meta"]["seed_id"] for r in synth if r["request_id"].startswith("gen-2-")}
        assert picked == set(sorted(drop, key=drop.get, reverse=True)[:6])
