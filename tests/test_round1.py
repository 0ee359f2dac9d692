"""Round 1 of learnability: selection.learnability.shots puts solved seed examples before the
question of the n SAMPLED answers only. Fast: no Ray, no model (fake scorer paths record the
prompts they get)."""

from __future__ import annotations

import types

import numpy as np
import pytest
from transformers import AutoTokenizer

from activesyn_ray.config import config_from_dict
from activesyn_ray.models import resolve_model
from activesyn_ray.selection.learnability import shot_indices
from activesyn_ray.student.data import prompt_ids
from activesyn_ray.student.scoring import (ScorerWorker, cut_at_next_question, resolve_inference,
                                           sample_prompt_ids)
from activesyn_ray.tasks.base import Example, Task


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(resolve_model("tiny"))


def _pool(n=20):
    return [Example(id=f"s{i}", question=f"Calculate {i} + {i + 1}.", answer=str(2 * i + 1),
                    solution=f"{i} + {i + 1} = {2 * i + 1}" if i % 2 else None)
            for i in range(n)]


def _cfg(shots: int, inference: str = "hf"):
    return config_from_dict({
        "seed": 3, "task": {"kind": "gym", "name": "basic_arithmetic"},
        "student": {"model": "tiny", "max_new_tokens": 8, "inference": inference},
        "selection": {"strategy": "learnability", "learnability": {"n": 2, "shots": shots}}})


# ------------------------------------------------------------------------------ which shots
def test_shots_are_k_other_seeds_fixed_per_seed_and_run_seed():
    pool = _pool()
    picks = shot_indices(pool, 4, seed=0)
    assert all(len(p) == 4 == len(set(p)) and i not in p for i, p in enumerate(picks))
    assert picks == shot_indices(pool, 4, seed=0)  # deterministic
    assert picks != shot_indices(pool, 4, seed=1)  # the run seed draws others
    # fixed per seed id, not per position: a reordered pool gives every seed the same shots
    rev = pool[::-1]
    ids = {pool[i].id: [pool[j].id for j in p] for i, p in enumerate(picks)}
    again = shot_indices(rev, 4, seed=0)
    assert {rev[i].id: [rev[j].id for j in p] for i, p in enumerate(again)} == ids
    assert shot_indices(pool, 0, seed=0) == [[] for _ in pool]
    # a pool smaller than k: every other seed, never itself
    assert [sorted(p) for p in shot_indices(pool[:3], 4, seed=0)] == [[1, 2], [0, 2], [0, 1]]


def test_shots_skip_duplicate_questions_and_samples_of_the_same_seed():
    pool = _pool(4) + [Example(id="dup", question=_pool()[0].question, answer="1")]
    picks = shot_indices(pool, 10, seed=0)
    assert 4 not in picks[0] and 0 not in picks[4]
    # teacher samples (meta seed_id): never a sibling of the same seed, nor that seed
    gen = [Example(id=f"g{i}", question=f"q{i}", answer="1", meta={"seed_id": f"s{i // 2}"})
           for i in range(6)] + [Example(id="s0", question="seed q", answer="1")]
    picks = shot_indices(gen, 10, seed=0)
    assert sorted(picks[0]) == [2, 3, 4, 5] and sorted(picks[6]) == [2, 3, 4, 5]


# ------------------------------------------------------------------------------ the prompt
def test_shot_prompt_is_solved_seeds_in_the_training_format_then_the_question(tok):
    pool = _pool()
    task = Task(None, seed=0)
    shots = [{"question": pool[j].question, "target": task.target(pool[j])} for j in (1, 2)]
    ids = sample_prompt_ids(tok, pool[0].question, shots)
    want = "".join(Task.prompt(s["question"]) + s["target"] + "\n\n" for s in shots) + \
        Task.prompt(pool[0].question)
    assert tok.decode(ids) == want
    assert "Question: Calculate 1 + 2.\nAnswer: 1 + 2 = 3\n#### 3\n\nQuestion: Calculate 2 + 3." \
        "\nAnswer: #### 5\n\nQuestion: Calculate 0 + 1.\nAnswer:" == want
    assert ids[-len(prompt_ids(tok, pool[0].question)):] == prompt_ids(tok, pool[0].question)
    # no shots: exactly the prompt of every other path
    assert sample_prompt_ids(tok, pool[0].question, ()) == prompt_ids(tok, pool[0].question)
    # too long: the first shots are left out whole, the question never
    short = sample_prompt_ids(tok, pool[0].question, shots, max_len=len(ids) - 1)
    assert tok.decode(short) == Task.prompt(shots[1]["question"]) + shots[1]["target"] + "\n\n" + \
        Task.prompt(pool[0].question)
    bare = prompt_ids(tok, pool[0].question)
    assert sample_prompt_ids(tok, pool[0].question, shots, max_len=1) == bare


def test_sampled_answers_are_cut_before_a_next_question():
    task = Task(None, seed=0)
    ex = Example(id="a", question="q", answer="5")
    text = " 2 + 3 = 5\n#### 5\n\nQuestion: Calculate 1 + 1.\nAnswer: #### 2"
    assert not task.check_completion(ex, text)  # the checker reads the LAST ####
    assert task.check_completion(ex, cut_at_next_question(text))
    assert cut_at_next_question(" #### 5") == " #### 5"


def test_pool_items_carry_shots_only_for_pass_rate_and_shots_above_zero():
    from activesyn_ray.student.pool import StudentPool

    pool, task = _pool(), Task(None, seed=0)
    for shots, needs, has in ((0, {"pass_rate"}, False), (2, {"loss"}, False),
                              (2, {"pass_rate"}, True)):
        fake = types.SimpleNamespace(cfg=_cfg(shots), task=task)
        items = StudentPool._items(fake, pool, needs)
        base = [{"question": e.question, "answer": task.target(e)} for e in pool]
        if not has:
            assert items == base
            continue
        picks = shot_indices(pool, 2, seed=3)  # the run seed
        assert [{k: v for k, v in it.items() if k != "shots"} for it in items] == base
        for e, it, p in zip(pool, items, picks):
            assert len(it["shots"]) == 2 and e.question not in {s["question"] for s in it["shots"]}
            assert it["shots"] == [{"question": pool[j].question, "target": task.target(pool[j])}
                                   for j in p]


# ------------------------------------------------------------------------------ both scorer paths
class _Recorder:
    """A scorer path that records the prompts it gets and answers ` #### 1` (+ a next block)."""

    loss_gt = False

    def __init__(self, tok, kind):
        self.tok, self.kind, self.greedy_prompts, self.sample_prompts = tok, kind, [], []

    def _ans(self):
        text = " #### 1\n\nQuestion: x\nAnswer: #### 2"
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def greedy(self, prompts, with_loss=False):
        self.greedy_prompts += prompts
        answers = [self._ans() for _ in prompts]
        if self.kind == "hf":  # HFScorer.greedy: the answers; VllmScorer.greedy: (answers, losses)
            return answers
        return answers, ([0.0] * len(prompts) if with_loss else None)

    def sample(self, prompts, *, n, temperature, seed):
        self.sample_prompts += prompts
        return [[self._ans()] * n for _ in prompts]


def _worker(tok, cfg):
    w = ScorerWorker.__new__(ScorerWorker)  # no model: the paths are recorders
    w.rank, w.cfg, w.scfg, w.batch_size, w.tokenizer = 0, cfg, cfg.student, 4, tok
    w.inference = cfg.student.inference
    w._hf = w._vllm = _Recorder(tok, cfg.student.inference)
    w._adapter = None
    return w, w._hf


@pytest.mark.parametrize("inference", ["hf", "vllm"])
def test_both_paths_sample_from_the_same_shot_prompts_and_nothing_else_changes(tok, inference):
    from activesyn_ray.student.pool import StudentPool

    pool, task = _pool(8), Task(None, seed=0)
    out = {}
    for shots in (0, 3):
        cfg = _cfg(shots, inference)
        assert resolve_inference(cfg.student) == inference
        items = StudentPool._items(types.SimpleNamespace(cfg=cfg, task=task), pool, {"pass_rate"})
        w, rec = _worker(tok, cfg)
        rows = w.score(items, ["pass_rate", "answer_text"])
        fused = w.evaluate_and_score([{"question": "Calculate 9 + 9."}], items, ["pass_rate"])
        out[shots] = (rec.sample_prompts, rec.greedy_prompts, rows, fused["rows"])
    bare = [prompt_ids(tok, e.question) for e in pool]
    s0, g0, rows0, fused0 = out[0]
    s3, g3, rows3, fused3 = out[3]
    assert s0 == bare + bare  # shots 0: the sampled answers' prompts are the bare ones
    assert [r["sampled_texts"][0] for r in rows0] == [" #### 1\n\nQuestion: x\nAnswer: #### 2"] * 8
    assert g3 == g0  # greedy (answer_text, evaluation) prompts are unchanged by shots
    assert s3[:8] == s3[8:] and all(p[-len(b):] == b and len(p) > len(b) for p, b in zip(s3, bare))
    for p, e in zip(s3[:8], pool):
        text = tok.decode(p)
        assert text.count("Question:") == 4 and text.count("####") == 3
        assert text.index(Task.prompt(e.question)) == len(text) - len(Task.prompt(e.question))
    # sampled texts after shots are cut where a next block starts; greedy texts are not
    assert {t for r in rows3 + fused3 for t in r["sampled_texts"]} == {" #### 1\n\n"}
    assert [r["answer_text"] for r in rows3] == [r["answer_text"] for r in rows0]


def test_hf_and_vllm_prompts_are_identical(tok):
    from activesyn_ray.student.pool import StudentPool

    pool, task = _pool(8), Task(None, seed=0)
    got = []
    for inference in ("hf", "vllm"):
        cfg = _cfg(2, inference)
        items = StudentPool._items(types.SimpleNamespace(cfg=cfg, task=task), pool, {"pass_rate"})
        w, rec = _worker(tok, cfg)
        w.score(items, ["pass_rate"])
        got.append(rec.sample_prompts)
    assert got[0] == got[1] and len(got[0]) == 8
    assert np.all([len(p) > 0 for p in got[0]])
