"""teacher.verify: the task's verifier (`Task.verify`) and what the loop does with a refused sample.

    pytest tests/test_verify.py -m "not slow"   # the verifier itself, seconds
    pytest tests/test_verify.py                 # + one loop against a teacher that plants wrong answers

The slow test runs the real loop (local Ray, DeepSpeed + LoRA tiny student, the `openai` teacher
engine in its replica actor) against a loopback OpenAI-compatible server that writes its own
problems (Python ints, not tasks/expression.py) and plants wrong answers, questions with no
expression and unparseable replies among correct ones. It keeps what it planted, so the test
checks every record against that, not against the verifier's own arithmetic.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from activesyn_ray.teacher.loopback import LoopbackOpenAI

from activesyn_ray import runstore
from activesyn_ray.config import ConfigError, TaskConfig, load_config
from activesyn_ray.tasks import Example, build_task
from activesyn_ray.tasks.expression import find

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "jobs" / "quickstart.yaml"
LINEAR = [{"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 3,
           "operators": ["+", "-", "*"], "allow_parentheses": False}]


# ================================================================================ fast: no Ray
def test_find_reads_the_one_expression_in_a_question():
    assert find("Calculate 12 + 7.") == ([12, 7], ["+"])
    assert find("State the final answer to the following arithmetic problem: 4 - 1 - 7 =") == \
        ([4, 1, 7], ["-", "-"])
    assert find("What is 3 - -4 * 2?") == ([3, -4, 2], ["-", "*"])
    assert find("Calculate 5-3.") == ([5, 3], ["-"])
    for none in ["Calculate 2 + 3.5.", "Add 12 + 7, then 3 + 4.", "Write a story.", "",
                 "Calculate 7."]:
        assert find(none) is None, none


@pytest.mark.parametrize("name", ["basic_arithmetic", "chain_sum"])
def test_verifier_accepts_the_generators_own_answers_and_refuses_planted_ones(name):
    task = build_task(TaskConfig(name=name, levels=LINEAR if name == "basic_arithmetic" else [{}],
                                 seed_size=60, test_size=4), seed=0)
    assert task.cannot_verify() is None
    seeds, _ = task.splits()
    assert all(task.verify(e) is True for e in seeds)  # the generator's answer is the right one
    for e in seeds:
        wrong = Example(id=e.id, question=e.question, answer=str(int(e.answer) + 1))
        assert task.verify(wrong) is False
        assert task.verify(Example(id="x", question=e.question, answer="forty")) is False
    assert task.verify(Example(id="x", question="Write a story about 7 cats.", answer="7")) is None
    # the seed-conditioned procedural teacher's samples are right too
    assert all(task.verify(task.generate_like(e, seed=i, like="seed")) for i, e in enumerate(seeds))


def test_tasks_without_a_verifier_refuse_teacher_verify(tmp_path):
    """Before anything is written: one line naming teacher.verify and why."""
    from activesyn_ray.run_setup import new_run

    cases = [(["task.name=basic_arithmetic", "task.levels=[{}]"], "allow_parentheses"),
             (["task.name=leg_counting", "task.levels=[{}]"], "no verifier for leg_counting"),
             (["task.name=basic_arithmetic+leg_counting", "task.levels=[{}]"], "no verifier for leg_counting")]
    for sets, why in cases:
        cfg = load_config(QUICK, sets + ["teacher.verify=true"])
        with pytest.raises(ConfigError, match=rf"^teacher\.verify: .*{why}"):
            new_run(cfg, tmp_path / "run")
        assert not (tmp_path / "run").exists()
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"question": f"q{i}?", "answer": str(i)}) + "\n"
                             for i in range(40)))
    cfg = load_config(None, ["task.kind=jsonl", f"task.path={jsonl}", "task.seed_size=20",
                             "task.test_size=10", "teacher.engine=hf", "teacher.verify=true"])
    with pytest.raises(ConfigError, match=r"teacher\.verify: task jsonl has no verifier"):
        new_run(cfg, tmp_path / "run")


# ================================================================================ slow: the loop
class PlantingServer(LoopbackOpenAI):
    """/v1/completions: request n gets KINDS[n % 6]. Its own arithmetic; `planted` maps each
    written question to its kind, for the test to check the records against."""

    KINDS = ["ok", "wrong", "ok", "no expression", "ok", "garbage"]

    def __init__(self):
        self.planted: dict[str, str] = {}
        self.lock = threading.Lock()
        super().__init__(self._respond)

    def _respond(self, path, headers, body):
        with self.lock:
            n = len(self.planted)
            kind = self.KINDS[n % len(self.KINDS)]
            a, b = 1000 + 7 * n, 2000 + 13 * n  # 4 digits: never a held-out question
            question = f"Calculate {a} + {b}." if kind != "no expression" else \
                f"Write about {a} cats number {n}."
            self.planted[question] = kind
        answer = {"ok": a + b, "wrong": a + b + 1, "no expression": 7}.get(kind)
        text = "I cannot help with that." if kind == "garbage" else \
            f"Question: {question}\nAnswer: #### {answer}"
        return 200, {"choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": len(body["prompt"]) // 4, "completion_tokens": 3 + n}}


@pytest.mark.slow
def test_loop_never_trains_on_a_refused_sample_and_counts_it_everywhere(tmp_path, ray_session):
    from activesyn_ray.driver import run_loop
    from activesyn_ray.report import write_report
    from activesyn_ray.run_setup import new_run

    server = PlantingServer()
    try:
        cfg = load_config(QUICK, [
            "task.seed_size=24", "task.test_size=12", "selection.strategy=random", "selection.k=6",
            "budget.samples=12", "student.epochs=1", "student.model=tiny",
            "student.lora={r: 8, alpha: 16}", "student.inference=hf", "output.plots=false",
            "teacher.engine=openai", "teacher.verify=true", "teacher.max_new_tokens=32",
            f"teacher.openai.base_url={server.url}", "teacher.openai.model=planted"])
        store = new_run(cfg, tmp_path / "run")
        summary = run_loop(store)
    finally:
        server.close()

    synth = store.read(runstore.SYNTHETIC)
    assert len(synth) == 12 == len(server.planted)
    want = {"ok": None, "wrong": "wrong answer", "no expression": "cannot verify"}
    for r in synth:
        if not r["parsed"]:
            assert r["rejected"] is None and "cannot help" in r["raw"]
            continue
        assert r["rejected"] == want[server.planted[r["example"]["question"]]], r
    kinds = [server.planted[r["example"]["question"]] for r in synth if r["parsed"]]
    assert sorted(kinds) == ["no expression"] * 2 + ["ok"] * 6 + ["wrong"] * 2
    # charged and counted: the ledger (state.json too), every metrics row, the report
    ledger = store.load_state()["ledger"]
    assert ledger["rejected"] == summary["ledger"]["rejected"] == 4
    assert ledger["failed_parses"] == 2 and ledger["samples"] == ledger["requests"] == 12
    assert ledger["completion_tokens"] == sum(r["completion_tokens"] for r in synth)
    metrics = store.read(runstore.METRICS)
    kept = lambda it: sum(r["parsed"] and not r["rejected"] and not r["contaminated"]  # noqa: E731
                          for r in synth if r["iteration"] <= it)
    for m in metrics[1:]:  # never trained on: train_size counts the kept samples only
        mine = [r for r in synth if r["iteration"] <= m["iteration"]]
        assert m["rejected"] == sum(bool(r["rejected"]) for r in mine)
        assert m["train_size"] == kept(m["iteration"]) < len(mine)
    assert metrics[-1]["rejected"] == 4 and metrics[-1]["train_size"] == 6
    rep = write_report([store.root], tmp_path / "report")
    assert sum(r["rejected"] for r in rep["teacher"]) == 4
    assert [(r["replies"], r["parsed"], r["kept"]) for r in rep["teacher"]] == \
        [(sum(x["iteration"] == it for x in synth), sum(x["parsed"] for x in synth if x["iteration"] == it),
          kept(it) - kept(it - 1)) for it in (1, 2)]
    assert "## Teacher output per iteration" in (tmp_path / "report" / "report.md").read_text()
