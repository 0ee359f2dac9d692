"""TeacherPool: what the coordinator calls to turn seeds into synthetic samples, and to judge.

    pool = TeacherPool(cfg=cfg, task=task, ledger=ledger)
    records = pool.generate(seeds, iteration=3)      # one sample per seed the budget allows
    grades = pool.judge([(ex, student_text), ...], iteration=3)
    pool.shutdown()

Budget: before anything is sent, each request is given a worst-case cost (its prompt tokens as the
teacher's tokenizer counts them + max_new_tokens) and requests are admitted in order while samples
and tokens left in the ledger cover them; the rest are not issued. Every request that completes is
charged to the ledger exactly once (by request id), parsed or not; a request whose retries all failed
is not charged (no completion came back). With teacher.verify each parsed sample is checked by the
task's verifier as it lands (`Task.verify`): a refused one keeps its record (`rejected`: the
reason), is charged and counted (ledger.rejected), and the coordinator never trains on it.

Request ids are deterministic (`gen-{iteration}-{seed.id}`, `judge-{iteration}-{example.id}`), and so
is each request's sampling seed (hash of run seed + id): a retried or resumed request asks for the
same sample.

Cache (teacher.cache, teacher/cache.py): admitted requests whose reply the cache holds are answered
from it, the rest are dispatched and their replies stored. A hit is charged to the ledger exactly as
the paid reply was (same tokens: the run makes the same choices and stops at the same point), with
`cached` so the ledger also counts the tokens paid and served apart; its record gets `cached: true`.
Judge requests go the same way (their engine's identity in the key).
"""

from __future__ import annotations

import logging
import math

from activesyn_ray.runtime import init_ray
from activesyn_ray.tasks.base import Example
from activesyn_ray.teacher.engines import Completion, TeacherRequest, engine_class, request_seed
from activesyn_ray.teacher.engines.base import load_tokenizer
from activesyn_ray.teacher.cache import TeacherCache, cache_enabled, request_key
from activesyn_ray.teacher.prompts import NEUTRAL_GRADE, Prompts, parse_grade, parse_sample

log = logging.getLogger(__name__)

JUDGE_MAX_NEW_TOKENS = 64
"""A grade is one short line; greedy (temperature 0) so the same answer gets the same grade."""
RAW_KEEP_CHARS = 1000


class PromptCounter:
    """Driver-side token counts for the budget check, as the configured engine describes them
    (Engine.estimate_prompt_tokens / context_len_for): exact for engines that tokenize with
    teacher.model's tokenizer and chat template, a safe margin for remote ones."""

    def __init__(self, cfg):
        self.engine_cls = engine_class(cfg.teacher.engine)
        self.tok = load_tokenizer(cfg.teacher.model)
        self.context_len = self.engine_cls.context_len_for(cfg)

    def prompt_tokens(self, prompt: str) -> int:
        return self.engine_cls.estimate_prompt_tokens(self.tok, prompt)


def judge_config(cfg):
    """The run config as the judge sees it: teacher.engine/model replaced by judge_engine/model."""
    t = cfg.teacher
    if t.judge_engine is None and t.judge_model is None:
        return cfg
    teacher = t.model_copy(update={"engine": t.judge_engine or t.engine,
                                   "model": t.judge_model or t.model})
    return cfg.model_copy(update={"teacher": teacher})


class _Lazy:
    """A backend reached only when called: judge requests all served from the cache never start
    a separate judge engine."""

    def __init__(self, get):
        self._get = get

    def run(self, *args, **kwargs):
        return self._get().run(*args, **kwargs)


class TeacherPool:
    def __init__(self, *, cfg, task, ledger):
        init_ray(cfg.resources)
        self.cfg, self.task, self.ledger = cfg, task, ledger
        t = cfg.teacher
        self.prompts = Prompts(t)
        self.counter = PromptCounter(cfg)
        self.engine = t.engine
        self.model = self.counter.engine_cls.label(cfg)
        self.backend = self._make_backend(cfg)
        # A separate judge (teacher.judge_engine) starts on the first judge call only: strategies
        # that never judge never pay for a second engine.
        self.judge_cfg = judge_config(cfg)
        self._judge_backend = None
        self.judge_counter = self.counter if self.judge_cfg is cfg else PromptCounter(self.judge_cfg)
        self._stats = {"issued": 0, "not_affordable": 0, "too_long": 0, "duplicates": 0,
                       "failed_parses": 0, "judge_failed_parses": 0, "rejected": 0,
                       "cache_hits": 0, "cache_misses": 0}
        self._grades: dict[str, float] = {}
        # the cache: one handle (location, this run's counts) for generation and judging; each
        # side's engine identity is worked out on its first use (a model fingerprint reads files)
        self._cache_on = {"generate": cache_enabled(t.cache, self.counter.engine_cls),
                          "judge": cache_enabled(self.judge_cfg.teacher.cache,
                                                 self.judge_counter.engine_cls)}
        run_dir = ledger.journal.parent if getattr(ledger, "journal", None) else None
        self.cache = TeacherCache.from_config(t.cache, run_dir=run_dir, name=cfg.name) \
            if any(self._cache_on.values()) else None
        self._identity: dict[str, dict] = {}

    def _make_backend(self, cfg):
        if cfg.teacher.serve.enabled:
            from activesyn_ray.teacher.serve import ServeDispatcher
            return ServeDispatcher(cfg=cfg, task=self.task)
        from activesyn_ray.teacher.dispatch import ActorDispatcher
        return ActorDispatcher(cfg=cfg, task=self.task, rng_seed=cfg.seed)

    @property
    def judge_backend(self):
        if self.judge_cfg is self.cfg:
            return self.backend
        if self._judge_backend is None:
            self._judge_backend = self._make_backend(self.judge_cfg)
        return self._judge_backend

    @property
    def stats(self) -> dict:
        out = {**self._stats, **self.backend.stats}
        if self.cache is not None:
            out["cache_corrupt"] = self.cache.counts["corrupt"]
        return out

    def _send(self, kind: str, backend, reqs: list[TeacherRequest], charge
              ) -> tuple[dict[str, Completion], set[str]]:
        """Answer admitted requests: from the cache where it holds the reply, else through the
        backend (whose replies are then stored). `charge(req, comp, cached=...)` once per reply."""
        if not reqs:
            return {}, set()
        if self.cache is None or not self._cache_on[kind]:
            return backend.run(reqs, on_result=lambda r, c: charge(r, c, cached=False)), set()
        cfg = self.judge_cfg if kind == "judge" else self.cfg
        engine_cls = (self.judge_counter if kind == "judge" else self.counter).engine_cls
        if kind not in self._identity:
            self._identity[kind] = engine_cls.cache_identity(cfg)
        keys = {r.id: request_key(self._identity[kind], r, top_p=cfg.teacher.top_p,
                                  engine_cls=engine_cls) for r in reqs}
        done, hits = self.cache.serve(reqs, keys, backend.run, charge,
                                      about={"engine": engine_cls.name,
                                             "model": engine_cls.label(cfg), "kind": kind})
        self._stats["cache_hits"] += len(hits)
        self._stats["cache_misses"] += len(reqs) - len(hits)
        return done, hits

    # ---------------------------------------------------------------------------------- requests
    def _request(self, rid: str, kind: str, prompt: str, *, example: Example, max_new: int,
                 temperature: float, student_answer: str | None = None) -> TeacherRequest | None:
        counter = self.judge_counter if kind == "judge" else self.counter
        est = counter.prompt_tokens(prompt)
        ctx = counter.context_len
        if ctx is not None:
            max_new = min(max_new, ctx - est)
            if max_new <= 0:
                self._stats["too_long"] += 1
                log.warning("teacher request %s skipped: its %s prompt (%d tokens) fills the "
                            "teacher's context (%d tokens: the model's max_position_embeddings, or "
                            "teacher.vllm.max_model_len for vllm); shorten the prompt template",
                            rid, kind, est, ctx)
                return None
        return TeacherRequest(id=rid, kind=kind, prompt=prompt, seed=request_seed(self.cfg.seed, rid),
                              max_new_tokens=max_new, temperature=temperature,
                              example=example.to_dict(), student_answer=student_answer,
                              est_prompt_tokens=est)

    def _admit(self, reqs: list[TeacherRequest], *, samples_each: int) -> list[TeacherRequest]:
        """The longest prefix whose worst-case cost fits what the ledger has left."""
        s_left, t_left = self.ledger.samples_left(), self.ledger.tokens_left()
        used_s = used_t = 0
        out = []
        for r in reqs:
            cost = r.est_prompt_tokens + r.max_new_tokens
            if (s_left is not None and used_s + samples_each > s_left) or \
                    (t_left is not None and used_t + cost > t_left):
                break
            used_s += samples_each
            used_t += cost
            out.append(r)
        if len(out) < len(reqs):
            self._stats["not_affordable"] += len(reqs) - len(out)
            log.info("teacher budget: %d of %d requests not issued (left: %s samples, %s tokens)",
                     len(reqs) - len(out), len(reqs), s_left, t_left)
        self._stats["issued"] += len(out)
        return out

    def _fresh(self, rid: str, seen: set[str]) -> bool:
        if rid in seen or rid in self.ledger.charged_ids:
            self._stats["duplicates"] += 1
            log.warning("teacher request %s was already made; not sent again", rid)
            return False
        seen.add(rid)
        return True

    # ---------------------------------------------------------------------------------- generate
    def _sample(self, req: TeacherRequest, comp: Completion, iteration: int) -> Example | None:
        parsed = parse_sample(comp.text)
        if parsed is None:
            return None
        if comp.example is not None:  # procedural: keep the generator's metadata (needed by check)
            ex = Example.from_dict(comp.example)
        else:
            q, sol, ans = parsed
            ex = Example(id=req.id, question=q, answer=ans, solution=sol)
        ex.id = req.id
        ex.meta = {**ex.meta, "seed_id": req.example["id"], "iteration": iteration,
                   "teacher": self.engine}
        return ex

    def _rejection(self, ex: Example | None) -> str | None:
        """teacher.verify: why the task's verifier refuses a parsed sample, None when it accepts
        it (or verify is off, or nothing parsed)."""
        if ex is None or not self.cfg.teacher.verify:
            return None
        verdict = self.task.verify(ex)
        return None if verdict else ("wrong answer" if verdict is False else "cannot verify")

    def generate(self, seeds: list[Example], *, iteration: int) -> list[dict]:
        """One synthetic sample per seed, in seed order, for as many seeds as the budget allows.
        Unparsed outputs are included with parsed False (and `raw`, the start of the text)."""
        t = self.cfg.teacher
        seen: set[str] = set()
        reqs = [self._request(rid, "generate", self.prompts.generate(s), example=s,
                              max_new=t.max_new_tokens, temperature=t.temperature)
                for s in seeds if self._fresh(rid := f"gen-{iteration}-{s.id}", seen)]
        reqs = self._admit([r for r in reqs if r is not None], samples_each=1)
        samples: dict[str, Example | None] = {}
        rejected: dict[str, str | None] = {}

        def charge(req: TeacherRequest, comp: Completion, *, cached: bool) -> None:
            samples[req.id] = ex = self._sample(req, comp, iteration)
            rejected[req.id] = why = self._rejection(ex)
            if ex is None:
                self._stats["failed_parses"] += 1
            self._stats["rejected"] += why is not None
            self.ledger.charge(req.id, prompt_tokens=comp.prompt_tokens,
                               completion_tokens=comp.completion_tokens, samples=1,
                               parsed=ex is not None, rejected=why is not None, cached=cached)

        done, hits = self._send("generate", self.backend, reqs, charge)
        records = []
        for req in reqs:
            if (comp := done.get(req.id)) is None:
                continue  # every retry failed: nothing came back, nothing charged
            ex = samples[req.id]
            rec = {"request_id": req.id, "seed_id": req.example["id"], "iteration": iteration,
                   "engine": self.engine, "model": self.model, "prompt_tokens": comp.prompt_tokens,
                   "completion_tokens": comp.completion_tokens, "parsed": ex is not None,
                   "rejected": rejected[req.id],
                   "example": ex.to_dict() if ex is not None else None}
            if ex is None:
                rec["raw"] = comp.text[:RAW_KEEP_CHARS]
            if req.id in hits:
                rec["cached"] = True  # served from teacher.cache: charged, not paid
            records.append(rec)
        return records

    # ------------------------------------------------------------------------------------- judge
    def judge(self, items: list[tuple[Example, str]], *, iteration: int) -> list[float]:
        """Teacher grade 1-10 of each student answer (same order). Unparseable grade: NEUTRAL_GRADE
        (5.5). Not judged because the budget did not allow it or every retry failed: NaN."""
        seen: set[str] = set()
        reqs = []
        for ex, answer in items:
            rid = f"judge-{iteration}-{ex.id}"
            if rid in self._grades or rid in seen:
                continue  # same example twice: judged once, charged once
            seen.add(rid)
            r = self._request(rid, "judge", self.prompts.judge(ex, answer), example=ex,
                              max_new=min(JUDGE_MAX_NEW_TOKENS, self.cfg.teacher.max_new_tokens),
                              temperature=0.0, student_answer=answer)
            if r is not None:
                reqs.append(r)
        reqs = self._admit(reqs, samples_each=0)

        def charge(req: TeacherRequest, comp: Completion, *, cached: bool) -> None:
            grade = parse_grade(comp.text)
            if grade is None:
                self._stats["judge_failed_parses"] += 1
            self._grades[req.id] = NEUTRAL_GRADE if grade is None else grade
            self.ledger.charge(req.id, prompt_tokens=comp.prompt_tokens,
                               completion_tokens=comp.completion_tokens, judge=True,
                               parsed=grade is not None, cached=cached)

        if reqs:
            # a separate judge backend starts only when some request actually goes to it
            self._send("judge", _Lazy(lambda: self.judge_backend), reqs, charge)
        return [self._grades.get(f"judge-{iteration}-{ex.id}", math.nan) for ex, _ in items]

    def shutdown(self) -> None:
        self.backend.shutdown()
        if self._judge_backend is not None:
            self._judge_backend.shutdown()
