"""The teacher response cache (teacher/cache.py, issue 31): keys, entries, concurrency, eviction,
the `activesyn cache` commands, the ledger's paid vs cached tokens, and the cache in TeacherPool.

    pytest tests/test_cache.py -m "not slow"   # no Ray, no engine: seconds
    pytest tests/test_cache.py                 # + the hf teacher pool paid, then served from the
                                               #   cache; the openai engine against a loopback server

The suite runs with ACTIVESYN_TEACHER_CACHE=off (tests/conftest.py): these tests turn the cache on
explicitly (teacher.cache.enabled: true) in a folder of their own.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import pytest

from activesyn_ray.budget import LEDGER_JOURNAL, Ledger
from activesyn_ray.config import ConfigError, config_from_dict, load_config
from activesyn_ray.teacher.cache import (ENTRIES, TeacherCache, cache_enabled, decode_entry,
                                         default_location, entry_path, request_key)
from activesyn_ray.teacher.engines import Completion, TeacherRequest, engine_class
from activesyn_ray.teacher.fingerprint import model_fingerprint

TINY = "tiny:ctx=2048"  # char-level tokenizer: a generate prompt is ~500 tokens


def make_cfg(teacher: dict | None = None, **top):
    data = {"task": {"kind": "gym", "name": "basic_arithmetic", "seed_size": 24, "test_size": 4},
            "teacher": {"engine": "hf", "model": TINY, "max_new_tokens": 24, "temperature": 0.7,
                        **(teacher or {})},
            "budget": {"samples": 10_000},
            "resources": {"teacher": {"num_cpus": 0.5, "placement_strategy": "PACK"}}, **top}
    return config_from_dict(data)


def req(rid="gen-1-a", *, prompt="Write a new problem like: 2+3", seed=7, max_new=24,
        temperature=0.7, kind="generate", example=None) -> TeacherRequest:
    return TeacherRequest(id=rid, kind=kind, prompt=prompt, seed=seed, max_new_tokens=max_new,
                          temperature=temperature, example=example or {"id": "a"})


def key_of(cfg, r: TeacherRequest, top_p: float | None = None) -> str:
    cls = engine_class(cfg.teacher.engine)
    return request_key(cls.cache_identity(cfg), r, engine_cls=cls,
                       top_p=cfg.teacher.top_p if top_p is None else top_p)


def comp(i: int = 0) -> Completion:
    return Completion(text=f"Question: {i}+1?\nAnswer: #### {i + 1}", prompt_tokens=100 + i,
                      completion_tokens=10 + i)


# ================================================================================ config
def test_config_group_defaults_and_bad_values_name_their_path(monkeypatch):
    cfg = load_config(None, ["teacher.cache.max_bytes=500MB"])
    assert cfg.teacher.cache.enabled == "auto" and cfg.teacher.cache.dir is None
    assert cfg.teacher.cache.max_bytes == 500_000_000
    assert load_config(None, ["teacher.cache.max_bytes=2GiB"]).teacher.cache.max_bytes == 2**31
    for override, expected in [
            ("teacher.cache.enabled=sometimes", "teacher.cache.enabled: Input should be 'auto', True or False"),
            ("teacher.cache.max_bytes=0", "teacher.cache.max_bytes: must be > 0 (got 0)"),
            ("teacher.cache.max_bytes=lots", "teacher.cache.max_bytes: a byte count"),
            ("teacher.cache.max_bytes=5 parsecs", "teacher.cache.max_bytes: a byte count"),
            ("teacher.cache.dir=' '", "teacher.cache.dir: a folder or storage URI"),
            ("teacher.cache.size=1", "teacher.cache.size: unknown key")]:
        with pytest.raises(ConfigError) as err:
            load_config(None, [override])
        assert expected in str(err.value), str(err.value)
    # auto: LLM engines on, procedural off; the environment can turn auto off, not an explicit true
    monkeypatch.delenv("ACTIVESYN_TEACHER_CACHE")
    auto = cfg.teacher.cache
    assert [cache_enabled(auto, engine_class(e)) for e in ("hf", "vllm", "openai", "procedural")] \
        == [True, True, True, False]
    on = load_config(None, ["teacher.cache.enabled=true"]).teacher.cache
    assert cache_enabled(on, engine_class("procedural"))
    monkeypatch.setenv("ACTIVESYN_TEACHER_CACHE", "off")
    assert not cache_enabled(auto, engine_class("hf")) and cache_enabled(on, engine_class("hf"))
    monkeypatch.setenv("ACTIVESYN_TEACHER_CACHE", "/some/where")
    assert default_location() == "/some/where"
    monkeypatch.setenv("ACTIVESYN_TEACHER_CACHE", "off")
    assert default_location() == str(Path(os.environ["ACTIVESYN_CACHE"]) / "teacher-cache")


# ================================================================================== keys
def test_a_change_of_any_key_part_misses(tmp_path):
    from activesyn_ray.models import resolve_model

    cfg = make_cfg()
    base = key_of(cfg, req())
    assert key_of(cfg, req()) == base  # deterministic
    assert key_of(cfg, req(rid="gen-9-other")) == base  # the id itself is not the request
    changed = {
        "prompt": key_of(cfg, req(prompt="Write a new problem like: 2+4")),
        "seed": key_of(cfg, req(seed=8)),
        "temperature": key_of(cfg, req(temperature=0.8)),
        "max_new_tokens": key_of(cfg, req(max_new=25)),
        "top_p": key_of(cfg, req(), top_p=0.9),
        "kind": key_of(cfg, req(kind="judge")),
        "engine": key_of(make_cfg({"engine": "vllm"}), req()),
        "model": key_of(make_cfg({"model": "tiny"}), req()),  # the same model at ctx 512
        "device": key_of(make_cfg(resources={"teacher": {"num_gpus": 1}}), req()),
        "vllm dtype": key_of(make_cfg({"engine": "vllm", "vllm": {"dtype": "bfloat16"}}), req()),
    }
    # the same weights in another folder hit; one changed weight byte misses
    folder = tmp_path / "copy"
    shutil.copytree(resolve_model(TINY), folder)
    assert key_of(make_cfg({"model": str(folder)}), req()) == base
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # inside the last tensor: the header (and so the file's validity) unchanged
    weights.write_bytes(bytes(data))
    changed["weights"] = key_of(make_cfg({"model": str(folder)}), req())
    # a chat template / tokenizer change changes what the engine feeds the model
    (folder / "tokenizer_config.json").write_text(
        (folder / "tokenizer_config.json").read_text().replace("}", ', "x": 1}', 1))
    changed["tokenizer"] = key_of(make_cfg({"model": str(folder)}), req())
    keys = list(changed.values())
    assert base not in keys and len(set(keys)) == len(keys), changed
    # greedy decoding: the seed (and top_p) cannot change the reply, so they are not in the key
    greedy = key_of(cfg, req(temperature=0.0, seed=1))
    assert key_of(cfg, req(temperature=0.0, seed=2)) == greedy
    assert key_of(cfg, req(temperature=0.0, seed=2), top_p=0.5) == greedy
    # openai: the endpoint, model and API name; never the key (userinfo in the URL is dropped)
    def oa(**o):
        return make_cfg({"engine": "openai", "openai": {"base_url": "http://h:8000/v1",
                                                        "model": "m", **o}})
    o0 = key_of(oa(), req())
    assert key_of(oa(base_url="http://user:sk-secret@h:8000/v1"), req()) == o0
    assert key_of(oa(api_key_env="OTHER_KEY_VAR"), req()) == o0
    assert len({o0, key_of(oa(base_url="http://h:8001/v1"), req()), key_of(oa(model="m2"), req()),
                key_of(oa(api="chat"), req())}) == 4
    ident = engine_class("openai").cache_identity(oa(base_url="http://user:sk-secret@h:8000/v1"))
    assert "sk-secret" not in json.dumps(ident) and "user" not in json.dumps(ident)
    # procedural (when turned on): the seed example and the task's generators are in the key too
    pcfg = make_cfg({"engine": "procedural", "cache": {"enabled": True}})
    p0 = key_of(pcfg, req(temperature=0.0))
    assert key_of(pcfg, req(temperature=0.0, seed=8)) != p0  # the generator draws with it anyway
    assert key_of(pcfg, req(temperature=0.0, example={"id": "b"})) != p0
    assert key_of(make_cfg({"engine": "procedural", "procedural": {"like": "level"}}),
                  req(temperature=0.0)) != p0


def test_model_fingerprint_hashes_weights_once_per_file_version(tmp_path):
    from activesyn_ray.models import resolve_model
    from activesyn_ray.teacher.fingerprint import _memo_dir, sha256_text

    folder = tmp_path / "m"
    shutil.copytree(resolve_model(TINY), folder)
    first = model_fingerprint(folder)
    weights = (folder / "model.safetensors").resolve()
    memo = _memo_dir() / f"{sha256_text(str(weights))[:32]}.json"
    doc = json.loads(memo.read_text())
    assert doc["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    memo.write_text(json.dumps({**doc, "sha256": "0" * 64}))  # what is remembered is what is used
    assert model_fingerprint(folder) != first
    os.utime(weights, ns=(time.time_ns(), doc["stamp"][1] + 1))  # another file version: hashed again
    assert model_fingerprint(folder) == first


# ============================================================================= entries
def test_hit_returns_the_stored_reply_and_an_unusable_entry_is_refetched_and_reported(tmp_path, caplog):
    sent: list[str] = []

    def send(reqs, on_result):  # stands for the dispatcher: one reply per request, counted
        out = {}
        for r in reqs:
            sent.append(r.id)
            out[r.id] = c = comp(int(r.id.rsplit("-", 1)[1]))
            on_result(r, c)
        return out

    reqs = [req(f"gen-1-{i}", prompt=f"p{i}") for i in range(5)]
    keys = {r.id: hashlib.sha256(r.prompt.encode()).hexdigest() for r in reqs}
    charged: list[tuple[str, bool]] = []

    def charge(r, c, *, cached):
        charged.append((r.id, cached))

    paid = TeacherCache(str(tmp_path), run="paid")
    done, hits = paid.serve(reqs, keys, send, charge)
    assert hits == set() and sent == [r.id for r in reqs] and not any(c for _, c in charged)
    assert paid.counts["stored"] == 5 and paid.counts["tokens_paid"] == sum(
        c.prompt_tokens + c.completion_tokens for c in done.values())

    sent.clear(), charged.clear()
    again = TeacherCache(str(tmp_path), run="again")
    done2, hits2 = again.serve(reqs, keys, send, charge)
    assert sent == [] and hits2 == {r.id for r in reqs} and done2 == done
    assert sorted(charged) == sorted((r.id, True) for r in reqs)
    assert again.counts["tokens_cached"] == paid.counts["tokens_paid"]

    # truncated, one flipped byte, not JSON, another key's entry: each refetched, logged, counted
    root = Path(tmp_path)
    e = [root / entry_path(keys[f"gen-1-{i}"]) for i in range(4)]
    e[0].write_bytes(e[0].read_bytes()[:40])
    raw = e[1].read_text()
    e[1].write_text(raw.replace("#### 2", "#### 3"))  # the reply changed, the checksum not
    e[2].write_bytes(b"\x00\xff garbage")
    shutil.copy(root / entry_path(keys["gen-1-4"]), e[3])
    sent.clear(), charged.clear()
    caplog.set_level("WARNING", logger="activesyn_ray.teacher.cache")
    third = TeacherCache(str(tmp_path), run="third")
    done3, hits3 = third.serve(reqs, keys, send, charge)
    assert sorted(sent) == ["gen-1-0", "gen-1-1", "gen-1-2", "gen-1-3"] and hits3 == {"gen-1-4"}
    assert done3 == done and third.counts["corrupt"] == 4
    assert sum("is unusable" in r.message for r in caplog.records) == 4
    for why in ("not JSON", "checksum mismatch", "another key"):
        assert any(why in r.message for r in caplog.records), why
    # refetched and stored again: whole and valid now
    for i in range(4):
        assert decode_entry(e[i].read_bytes(), keys[f"gen-1-{i}"]) == done[f"gen-1-{i}"]
    # the per-run counts `activesyn cache stats` shows
    runs = {json.loads(p.read_text())["run"]: json.loads(p.read_text())
            for p in (root / "runs").glob("*.json")}
    assert (runs["paid"]["misses"], runs["again"]["hits"], runs["third"]["corrupt"]) == (5, 5, 4)
    # a resumed run (same run name) goes on counting
    assert TeacherCache(str(tmp_path), run="third").counts["misses"] == 4


def test_a_failed_store_does_not_stop_the_run(tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    cache = TeacherCache(str(root), run="r")
    (root / ENTRIES).write_text("a file where the entries folder should be")
    assert not cache.put("ab" * 32, comp())
    assert cache.counts["store_errors"] == 1 and cache.get("ab" * 32) is None


def _writer(location: str, worker: int, shared: int, own: int, barrier) -> None:
    """One run: writes the shared keys (every worker, the same replies: as a rerun would) and its
    own, and reads the shared ones while the others write them; exits 1 if it saw a bad entry."""
    import sys

    cache = TeacherCache(location, run=f"w{worker}")
    barrier.wait()
    for i in range(max(shared, own)):
        if i < shared:
            cache.put(hashlib.sha256(f"shared-{i}".encode()).hexdigest(), comp(i))
            for j in (i, max(0, i - 1)):
                got = cache.get(hashlib.sha256(f"shared-{j}".encode()).hexdigest())
                if got is not None and got != comp(j):
                    sys.exit(2)
        if i < own:
            cache.put(hashlib.sha256(f"own-{worker}-{i}".encode()).hexdigest(), comp(1000 + i))
    sys.exit(1 if cache.counts["corrupt"] or cache.counts["store_errors"] else 0)


def test_concurrent_writers_lose_nothing_and_corrupt_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    workers, shared, own = 4, 60, 40
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, shared, own, barrier))
             for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * workers  # no reader saw half an entry
    reader = TeacherCache(str(tmp_path), run="reader")
    for i in range(shared):
        assert reader.get(hashlib.sha256(f"shared-{i}".encode()).hexdigest()) == comp(i)
    for w in range(workers):
        for i in range(own):
            got = reader.get(hashlib.sha256(f"own-{w}-{i}".encode()).hexdigest())
            assert got == comp(1000 + i)
    assert reader.counts["corrupt"] == 0
    files = [p for p in (tmp_path / ENTRIES).rglob("*") if p.is_file()]
    assert len(files) == shared + workers * own  # no temp file left behind, nothing extra


def test_lru_eviction_keeps_what_was_used_last(tmp_path):
    cache = TeacherCache(str(tmp_path), run="r")
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(10)]
    for i, k in enumerate(keys):
        cache.put(k, comp(i))
        os.utime(tmp_path / entry_path(k), (1000 + i, 1000 + i))  # written in this order
    size = (tmp_path / entry_path(keys[0])).stat().st_size
    for k in keys[:3]:  # used again: now the most recent
        assert cache.get(k) is not None
    cache.max_bytes = int(size * 6.5)
    assert cache.evict(force_scan=True) == 5  # down to 90% of the limit: 5 entries left
    left = {k for k in keys if (tmp_path / entry_path(k)).exists()}
    assert left == set(keys[:3]) | set(keys[8:])
    assert cache.counts["evicted"] == 5
    # eviction runs after a batch is served, once the writes pass the limit
    cache.max_bytes = int(size * 7.5)
    cache.serve([req(f"gen-2-{i}", prompt=str(i)) for i in range(3)],
                {f"gen-2-{i}": hashlib.sha256(f"new{i}".encode()).hexdigest() for i in range(3)},
                lambda reqs, on_result: {r.id: (on_result(r, comp()), comp())[1] for r in reqs},
                lambda r, c, cached: None)
    assert sum(1 for p in (tmp_path / ENTRIES).rglob("*.json")) * size <= cache.max_bytes


def test_storage_uri_cache(tmp_path):
    """teacher.cache.dir as a storage URI (pyarrow.fs; file:// here, s3:// etc. on a cluster)."""
    uri = f"file://{tmp_path}/remote"
    a = TeacherCache(uri, run="a")
    k = "cd" * 32
    assert a.get(k) is None and a.put(k, comp(3))
    b = TeacherCache(uri, run="b")
    assert b.get(k) == comp(3)
    path = tmp_path / "remote" / entry_path(k)
    path.write_bytes(path.read_bytes()[:-20])
    assert b.get(k) is None and b.counts["corrupt"] == 1 and not path.exists()
    b.save_stats()
    from activesyn_ray.teacher.cache import stats
    st = stats(uri)
    assert st["entries"] == 0 and {r["run"] for r in st["runs"]} == {"b"}


# =============================================================================== CLI
def test_cache_stats_and_clear_commands(tmp_path):
    from typer.testing import CliRunner

    from activesyn_ray.cli import app

    cache = TeacherCache(str(tmp_path / "c"), run="loss-s0-1234")
    for i in range(3):
        cache.put(hashlib.sha256(str(i).encode()).hexdigest(), comp(i))
    cache.counts.update(hits=7, misses=3, corrupt=1, tokens_paid=330, tokens_cached=770)
    cache.save_stats()
    run = tmp_path / "runs" / "grid" / "random-s0"
    run.mkdir(parents=True)
    led = Ledger(max_samples=10)
    led.charge("gen-1-a", prompt_tokens=100, completion_tokens=20, samples=1, cached=True)
    led.charge("gen-1-b", prompt_tokens=100, completion_tokens=30, samples=1)
    (run / "state.json").write_text(json.dumps({"ledger": led.to_dict()}))
    cli = CliRunner()
    res = cli.invoke(app, ["cache", "stats", str(tmp_path / "c"), "--runs", str(tmp_path / "runs")],
                     env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "3 entries" in res.output and "loss-s0-1234" in res.output
    row = next(ln for ln in res.output.splitlines() if "loss-s0-1234" in ln)
    assert [c.strip() for c in row.strip("│ ").split("│")][1:6] == ["7", "3", "1", "330", "770"]
    row = next(ln for ln in res.output.splitlines() if "grid/random-s0" in ln)
    assert [c.strip() for c in row.strip("│ ").split("│")][1:] == ["250", "130", "120"]
    res = cli.invoke(app, ["cache", "clear", str(tmp_path / "c")])
    assert res.exit_code == 0 and "deleted 3 entries" in res.output
    res = cli.invoke(app, ["cache", "stats", str(tmp_path / "c")], env={"COLUMNS": "200"})
    assert "0 entries" in res.output and "loss-s0" not in res.output


# ============================================================================= ledger
def test_ledger_counts_paid_and_cached_tokens_and_reads_old_states(tmp_path):
    led = Ledger.from_dict(Ledger(max_tokens=1000).to_dict(), journal=tmp_path / LEDGER_JOURNAL)
    led.charge("gen-1-a", prompt_tokens=100, completion_tokens=20, samples=1)
    led.charge("gen-1-b", prompt_tokens=100, completion_tokens=30, samples=1, cached=True)
    led.charge("judge-1-a", prompt_tokens=50, completion_tokens=2, judge=True, cached=True)
    assert not led.charge("gen-1-b", prompt_tokens=100, completion_tokens=30, cached=True)
    assert (led.tokens, led.paid_tokens, led.cached_tokens, led.cached_requests) == (302, 120, 182, 2)
    assert led.tokens_left() == 698  # the budget counts a hit's tokens like a paid one
    s = led.summary()
    assert (s["teacher_tokens"], s["teacher_tokens_paid"], s["teacher_tokens_cached"]) == (302, 120, 182)
    assert led.cache_fields() == {"teacher_tokens_paid": 120, "teacher_tokens_cached": 182}
    recs = [{"prompt_tokens": 100, "completion_tokens": 20},
            {"prompt_tokens": 100, "completion_tokens": 30, "cached": True}]
    assert led.cache_fields(recs) == {"teacher_tokens_paid": 120, "teacher_tokens_cached": 130}
    state = json.loads(json.dumps(led.to_dict()))
    assert state["paid_tokens"] == 120
    back = Ledger.from_dict(state, journal=tmp_path / LEDGER_JOURNAL)
    assert back.summary() == s
    old = {k: v for k, v in state.items() if k not in ("cached_tokens", "cached_requests")}
    back = Ledger.from_dict(old, journal=tmp_path / LEDGER_JOURNAL)
    assert back.paid_tokens == back.tokens == 302 and back.cached_requests == 0


# =============================================================================== slow: the pool
def _view(records: list[dict]) -> list[dict]:
    """What a run keeps of each sample, minus the provenance flag of a cached one."""
    return [{k: v for k, v in r.items() if k != "cached"} for r in records]


@pytest.mark.slow
def test_hf_pool_served_from_the_cache_equals_the_paid_run(ray_session, tmp_path):
    """Two pools on the tiny hf teacher, sampled (temperature 0.7), token-capped, judging too: the
    first pays; then two of its entries are damaged (one truncated, one changed), and the second
    pool sends exactly those two requests to its replica and answers the rest from the cache. It
    equals the paid run sample for sample -- records, grades, the ledger's charge and where the
    budget stopped it -- and its ledger counts the tokens paid vs served apart."""
    from activesyn_ray.tasks import build_task
    from activesyn_ray.teacher import TeacherPool
    from activesyn_ray.teacher.cache import stats as cache_stats

    # micro_batch_size 1: the hf engine seeds a batch with its first request's seed, so one
    # request per call makes each reply a function of its request (refetched ones equal too)
    cfg = make_cfg({"micro_batch_size": 1, "cache": {"enabled": True, "dir": str(tmp_path / "c")}})
    task = build_task(cfg.task, seed=0)
    seeds, _ = task.splits()
    judged = [(s, "#### 7") for s in seeds[:2]]

    def one_run(journal_dir: Path):
        journal_dir.mkdir()
        led = Ledger.from_dict(Ledger(max_samples=100).to_dict(),
                               journal=journal_dir / LEDGER_JOURNAL)
        pool = TeacherPool(cfg=cfg, task=task, ledger=led)
        try:
            # the token cap: both judge requests, then about 7 of the 10 generate requests
            judge = sum(pool.judge_counter.prompt_tokens(pool.prompts.judge(ex, a)) + 24
                        for ex, a in judged)
            worst = max(pool.counter.prompt_tokens(pool.prompts.generate(s)) for s in seeds[:10])
            led.max_tokens = judge + int(7.5 * (worst + 24))
            grades = pool.judge(judged, iteration=1)
            recs = pool.generate(seeds[:6], iteration=1) + pool.generate(seeds[6:10], iteration=2)
            return recs, grades, led, dict(pool.stats)
        finally:
            pool.shutdown()

    paid, paid_grades, paid_led, paid_stats = one_run(tmp_path / "paid")
    n = len(paid) + 2
    assert 6 <= len(paid) < 10 and paid_stats["cache_misses"] == n and paid_stats["calls"] == n
    assert paid_stats["not_affordable"] == 10 - len(paid) and not any(g != g for g in paid_grades)
    assert not any(r.get("cached") for r in paid)
    assert (paid_led.cached_tokens, paid_led.paid_tokens) == (0, paid_led.tokens)

    entries = sorted((tmp_path / "c" / ENTRIES).rglob("*.json"))
    assert len(entries) == n
    entries[0].write_bytes(entries[0].read_bytes()[:100])
    entries[1].write_text(entries[1].read_text().replace('"prompt_tokens": ', '"prompt_tokens": 1'))
    served, grades, led, stats = one_run(tmp_path / "served")
    assert stats["calls"] == 2 and stats["cache_corrupt"] == 2
    assert (stats["cache_hits"], stats["cache_misses"]) == (n - 2, 2)
    assert _view(served) == _view(paid) and grades == paid_grades
    assert stats["not_affordable"] == paid_stats["not_affordable"]  # stopped at the same point
    uncached = [r for r in served if not r.get("cached")]  # refetched: 0-2 of them (or judged)
    assert len(uncached) <= 2
    for k in ("samples", "requests", "prompt_tokens", "completion_tokens", "judge_tokens",
              "failed_parses", "tokens"):
        assert getattr(led, k) == getattr(paid_led, k), k
    assert led.cached_requests == n - 2 and 0 < led.paid_tokens < led.tokens
    # paid now: exactly the refetched replies (generate records not marked cached, + judge ones)
    paid_gen = sum(r["prompt_tokens"] + r["completion_tokens"] for r in uncached)
    assert led.paid_tokens >= paid_gen and (led.paid_tokens == paid_gen) == (len(uncached) == 2)
    assert led.cache_fields() == {"teacher_tokens_paid": led.paid_tokens,
                                  "teacher_tokens_cached": led.tokens - led.paid_tokens}
    runs = {r["run_dir"]: r for r in cache_stats(str(tmp_path / "c"))["runs"]}
    assert (runs[str(tmp_path / "paid")]["misses"], runs[str(tmp_path / "paid")]["hits"]) == (n, 0)
    r = runs[str(tmp_path / "served")]
    assert (r["hits"], r["misses"], r["corrupt"]) == (n - 2, 2, 2)
    assert (r["tokens_paid"], r["tokens_cached"]) == (led.paid_tokens, led.cached_tokens)


@pytest.mark.slow
def test_openai_engine_cache_holds_no_key(ray_session, tmp_path, monkeypatch):
    """The openai engine through the pool against a loopback server that demands a key: the first
    pass pays (the server sees every request, with the key), the second is served from the cache
    (the server sees nothing); no byte of the cache holds the key or a header."""
    from conftest import TEACHER_KEY as KEY
    from conftest import TEACHER_KEY_ENV as KEY_ENV
    from activesyn_ray.teacher.loopback import LoopbackOpenAI

    from activesyn_ray.tasks import build_task
    from activesyn_ray.teacher import TeacherPool

    seen = []

    def respond(path, headers, body):
        seen.append(headers.get("Authorization"))
        if headers.get("Authorization") != f"Bearer {KEY}":
            return 401, {"error": {"message": "bad key"}}
        digest = hashlib.sha256(f"{body['prompt']}{body.get('seed')}".encode()).hexdigest()
        text = f"Question: {int(digest[:4], 16)} + 1?\nAnswer: #### {int(digest[:4], 16) + 1}"
        return 200, {"choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 120, "completion_tokens": 12, "total_tokens": 132}}

    srv = LoopbackOpenAI(respond)
    try:
        cfg = make_cfg({"engine": "openai", "cache": {"enabled": True, "dir": str(tmp_path / "c")},
                        "openai": {"base_url": srv.url, "model": "tiny", "api_key_env": KEY_ENV}})
        task = build_task(cfg.task, seed=0)
        seeds, _ = task.splits()
        pool = TeacherPool(cfg=cfg, task=task, ledger=Ledger(max_samples=100))
        try:
            paid = pool.generate(seeds[:4], iteration=0)
            assert seen == [f"Bearer {KEY}"] * 4 and all(r["parsed"] for r in paid)
            pool.ledger = led = Ledger(max_samples=100)  # a second run's ledger
            served = pool.generate(seeds[:4], iteration=0)
        finally:
            pool.shutdown()
    finally:
        srv.close()
    assert len(seen) == 4 and _view(served) == _view(paid) and all(r["cached"] for r in served)
    assert led.cached_tokens == led.tokens == 4 * 132
    files = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert len([p for p in files if ENTRIES in p.parts]) == 4
    for p in files:
        raw = p.read_bytes()
        for secret in (KEY.encode(), b"Bearer", b"Authorization", KEY_ENV.encode()):
            assert secret not in raw, (p, secret)
