"""The LLM-teacher path for real: `activesyn make-teacher` (its quick version, on the tiny model),
and vLLM's OpenAI-compatible server started with the made teacher on 127.0.0.1, a loop's generation
through `teacher.engine: openai`, the same requests through the vLLM replica path.

    pytest tests/test_llm_teacher.py -m "not slow"   # server refusals, bounded start, names: seconds
    pytest tests/test_llm_teacher.py                 # + make-teacher and the served teacher (two
                                                     #   vLLM starts; minutes on 2 cores)

The tiny teacher is trained too briefly to write parseable problems (the SmolLM2 teacher that does
is measured in docs/results.md); what is checked here is the machinery: a merged model in the cache
that every engine loads by name, the server's answers, the ledger charged with the server's own
token counts, identical greedy text and counts on both paths, and a clean shutdown.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from activesyn_ray.config import OpenAIConfig, load_config
from activesyn_ray.teacher.engines.base import TeacherError
from activesyn_ray.teacher.vllm_server import VllmServer, port_free

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "llm-teacher-cpu.yaml"
NAME = "test-tiny-teacher"
# tiny's char tokenizer: a generate prompt is ~480 tokens, so the engines get a 2k context
SETS = ["teacher.vllm.max_model_len=2048", "teacher.max_new_tokens=24", "teacher.temperature=0",
        "resources.trainer.num_cpus=1", "resources.teacher.num_cpus=0.5"]


# ======================================================================= fast: nothing started
def test_server_refuses_a_taken_port_and_a_missing_model():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(TeacherError, match=rf"^vllm server: port {port} on 127.0.0.1 is taken"):
            VllmServer(model="tiny", port=port)
    with pytest.raises(FileNotFoundError, match="folder /no/such/teacher does not exist"):
        VllmServer(model="/no/such/teacher")
    with pytest.raises(FileNotFoundError, match="'no-such-teacher': not a known name.*make-teacher"):
        VllmServer(model="no-such-teacher")


def test_server_start_is_bounded_and_the_process_is_stopped():
    srv = VllmServer(model="tiny", start_timeout_s=2)
    with pytest.raises(TeacherError, match=r"no answer on /health within 2 s; stopped it"):
        srv.start()
    assert srv.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(srv.proc.pid, 0)  # nothing of its process group is left


def test_made_model_names_never_shadow_built_in_ones():
    from activesyn_ray.models import cache_model_dir

    assert cache_model_dir("smollm2-arith-teacher").name == "smollm2-arith-teacher"
    for bad in ["tiny", "smollm2-135m", "tiny-h64", "gguf-x", "a/b", "../x", "", "x.lock"]:
        with pytest.raises(ValueError, match="model name"):
            cache_model_dir(bad)


# ================================================================================ slow: real
@pytest.fixture(scope="module")
def made(ray_session):
    from activesyn_ray.teacher.make import MakeTeacherConfig, make_teacher

    cfg = load_config(JOB, SETS)
    mk = MakeTeacherConfig(name=NAME, base="tiny:ctx=2048", train_seeds=24, eval_seeds=6,
                           epochs=3, lr=1e-2, max_seq_len=640, measure_engine="hf",
                           overwrite=True)
    return cfg, mk, make_teacher(cfg, mk, log=print)


@pytest.mark.slow
def test_make_teacher_trains_merges_and_publishes_a_teacher_every_engine_loads(made):
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from activesyn_ray.models import resolve_model
    from activesyn_ray.teacher import parse_sample
    from activesyn_ray.teacher.engines.base import load_tokenizer, prompt_ids
    from activesyn_ray.teacher.make import INFO, make_task, training_pairs
    from activesyn_ray.teacher.prompts import Prompts

    cfg, mk, info = made
    folder = resolve_model(NAME)  # `teacher.model: NAME` resolves to the published folder
    assert str(folder) == info["folder"] and json.loads((folder / INFO).read_text())["held_out"]
    t = info["training"]
    assert t["steps"] == 9 and t["loss_last_epoch"] < t["loss_first_epoch"]  # 24 pairs / 8 x 3
    # the pairs: the engines' chat-wrapped prompt, the procedural sample in the parsed format
    task, train, held_out = make_task(cfg, mk)
    assert not {e.question for e in train} & {e.question for e in held_out}
    tok = load_tokenizer(mk.base)
    pairs = training_pairs(cfg, task, train, tok)
    for seed, pair in zip(train, pairs):
        assert pair["prompt_ids"] == prompt_ids(tok, Prompts(cfg.teacher).generate(seed))
        q, sol, ans = parse_sample(pair["target"])
        assert sol is None and task.verify(type(seed)(id="s", question=q, answer=ans))
    # merged: not the base any more, a plain model folder (no adapter files to load on top)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(mk.base), dtype=torch.float32)
    made_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert not (folder / "adapter_config.json").exists()
    ids = torch.tensor([pairs[0]["prompt_ids"]])
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, made_model(ids).logits)
    h = info["held_out"]
    assert h["replies"] == 6 and h["engine"] == "hf" and 0 <= h["parsed"] <= 6
    assert h["teacher_tokens"] > 0 and h["cut_off"] <= 6


def _generate(cfg, task, seeds, *, teacher: dict):
    from activesyn_ray.budget import Ledger
    from activesyn_ray.teacher import TeacherPool

    run_cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update=teacher)})
    ledger = Ledger(max_samples=100)
    pool = TeacherPool(cfg=run_cfg, task=task, ledger=ledger)
    try:
        return pool.generate(seeds, iteration=1), ledger
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_vllm_server_loop_generation_matches_the_replica_path(made):
    """A loop's generation (TeacherPool.generate, the openai engine in its replica actor) against a
    real `vllm ... api_server` serving the made teacher; then the same requests through the vllm
    engine in a replica actor: the same greedy text and the same token counts."""
    import httpx

    from activesyn_ray.teacher.make import make_task

    cfg, mk, _ = made
    task, _, seeds = make_task(cfg, mk)
    import time

    t0 = time.perf_counter()
    with VllmServer(model=NAME, max_model_len=2048, start_timeout_s=900) as srv:
        print(f"vllm server up in {time.perf_counter() - t0:.1f} s "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
        models = httpx.get(f"{srv.base_url}/models", timeout=30).json()
        assert [m["id"] for m in models["data"]] == [NAME]
        served, ledger = _generate(cfg, task, seeds, teacher={
            "engine": "openai", "model": NAME, "verify": True,
            "openai": OpenAIConfig(base_url=srv.base_url, model=NAME, api="completions")})
        t0 = time.perf_counter()
        rc = srv.stop()
        print(f"vllm server stopped in {time.perf_counter() - t0:.1f} s, exit code {rc}", flush=True)
    assert rc is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(srv.proc.pid, 0)  # the API server and its engine process are gone
    assert port_free("127.0.0.1", srv.port)

    assert [r["request_id"] for r in served] == [f"gen-1-{s.id}" for s in seeds]
    assert all(r["engine"] == "openai" and r["completion_tokens"] > 0 for r in served)
    # the ledger holds the tokens as the server reported them (usage), each request once
    assert ledger.requests == ledger.samples == len(served) == 6
    assert ledger.prompt_tokens == sum(r["prompt_tokens"] for r in served)
    assert ledger.completion_tokens == sum(r["completion_tokens"] for r in served)
    assert ledger.failed_parses == sum(not r["parsed"] for r in served)
    replica, _ = _generate(cfg, task, seeds, teacher={"engine": "vllm", "model": NAME,
                                                      "verify": True})
    def view(r: dict) -> dict:  # what the teacher wrote and was charged (not which engine)
        ex = r["example"] or {}
        return {k: r.get(k) for k in ("request_id", "parsed", "rejected", "raw", "prompt_tokens",
                                      "completion_tokens")} | \
            {k: ex.get(k) for k in ("question", "solution", "answer")}

    assert [view(r) for r in served] == [view(r) for r in replica]
