"""The active loop: score -> select -> generate -> train -> evaluate, until the budget is spent.

`Coordinator` is one Ray actor (no GPU) that owns the loop state — seed pool, synthetic set, budget
ledger, iteration — and writes it to the run directory after every step, so `activesyn resume`
continues a killed run from its last completed step:

  * teacher requests have deterministic ids (gen-<iteration>-<seed id>); each completed chunk of
    samples is appended to synthetic.jsonl and charged before the next chunk is issued, and on
    resume the ledger is rebuilt from those records, so no sample is generated or charged twice;
  * training and evaluation are deterministic given the synthetic set, so an interrupted round is
    simply redone from the samples on disk.

`static` generates the whole budget from uniformly random seeds before any training; its curve is
evaluated on prefixes of that one-shot set (a prefix of i.i.d. uniform seeds is itself a static run
with that smaller budget), so every strategy has points at the same budgets.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from activesyn_ray import runstore
from activesyn_ray.budget import Ledger
from activesyn_ray.config import load_config, snapshot_fingerprint
from activesyn_ray.run_setup import load_splits
from activesyn_ray.runstore import RunStore
from activesyn_ray.selection import SeedScores, build_strategy
from activesyn_ray.selection.base import CORRECT, ENTROPY, JUDGE, LOSS, LOSS_GT, REWARD
from activesyn_ray.tasks import Example, build_task

log = logging.getLogger("activesyn")

# Scalar score columns kept in scores.jsonl and compared seed-vs-synthetic in the report.
SCALAR_SCORES = (LOSS, LOSS_GT, ENTROPY, CORRECT, REWARD, JUDGE)


class Coordinator:
    def __init__(self, *, run_dir: str):
        self.store = RunStore(run_dir)
        self.cfg = load_config(self.store.path(runstore.CONFIG))
        state = self.store.load_state()
        snapshot = self.store.path(runstore.CONFIG).read_text()
        if state.get("config_fingerprint") != snapshot_fingerprint(snapshot):
            raise RuntimeError(f"{run_dir}: config.yaml was changed after the run started; "
                               f"start a new run instead of resuming this one")
        self.task = build_task(self.cfg.task, seed=self.cfg.seed)
        self.seeds, self.test = load_splits(self.store)
        self.strategy = build_strategy(self.cfg.selection)
        self.student = None
        self.teacher = None
        self._phase_s: dict[str, float] = {}
        self._iter_t0: float | None = None  # start of an iteration this process ran from its start

    # ------------------------------------------------------------------------------ state & logs
    def _recover(self) -> dict:
        """Make the files agree with state.json: drop torn tails and the logs of unfinished steps,
        keep (and re-charge) teacher samples that completed after the last state save."""
        self.store.repair()
        state = self.store.load_state()
        self.store.truncate_after(runstore.METRICS, state["n_metrics"])
        self.store.truncate_after(runstore.SCORES, state["n_scores"])
        ledger = Ledger.from_dict(state["ledger"])
        synthetic = self.store.read(runstore.SYNTHETIC)
        for rec in synthetic[state["n_synthetic"]:]:
            ledger.charge(rec["request_id"], prompt_tokens=rec["prompt_tokens"],
                          completion_tokens=rec["completion_tokens"], samples=1,
                          parsed=rec["parsed"])
        state["n_synthetic"] = len(synthetic)
        state["ledger"] = ledger.to_dict()
        self.ledger = ledger
        return state

    def _save(self, state: dict, **changes) -> dict:
        state.update(changes)
        state["ledger"] = self.ledger.to_dict()
        self.store.save_state(state)
        return state

    def _synthetic(self, limit: int | None = None) -> list[dict]:
        """Synthetic records so far; with `limit`, the first `limit` (static: a prefix)."""
        recs = self.store.read(runstore.SYNTHETIC)
        return recs if limit is None else recs[:limit]

    # ---------------------------------------------------------------------------------- engines
    def _start_pools(self) -> None:
        from activesyn_ray.student.pool import StudentPool
        from activesyn_ray.teacher.pool import TeacherPool

        if self.student is None:
            self.student = StudentPool(cfg=self.cfg, task=self.task)
        if self.teacher is None:
            self.teacher = TeacherPool(cfg=self.cfg, task=self.task, ledger=self.ledger)

    def _score(self, examples: list[Example], iteration: int) -> SeedScores:
        needs = set(self.strategy.needs)  # reward_model `verifier` is resolved by StudentPool.score
        student_needs = needs - {JUDGE}
        if JUDGE in needs:
            student_needs.add("answer_text")
        cols = self.student.score(examples, student_needs) if student_needs else {}
        if JUDGE in needs:
            grades = self.teacher.judge(list(zip(examples, cols["answer_text"])), iteration=iteration)
            cols[JUDGE] = np.asarray(grades, dtype=float)
        return SeedScores({k: np.asarray(v) for k, v in cols.items() if k != "answer_text"})

    def _primary(self, scores: SeedScores) -> np.ndarray | None:
        """The scalar a strategy ranks by (for the seed-vs-synthetic rank correlation)."""
        try:
            return np.asarray(self.strategy.priority(scores), dtype=float)
        except (AssertionError, KeyError, NotImplementedError):
            return None

    # -------------------------------------------------------------------------------- the steps
    def _select(self, state: dict, iteration: int) -> dict:
        rng = np.random.default_rng([self.cfg.seed, iteration])
        k = self.cfg.selection.k
        if not self.strategy.iterative:  # static: the whole budget, once
            k = self.cfg.budget.samples or len(self.seeds)
        k = self.ledger.affordable(k, self._request_cost())
        if k == 0:
            return self._save(state, selected=[], seed_scores=[])
        scores = SeedScores()
        if self.strategy.needs:
            t0 = time.perf_counter()
            scores = self._score(self.seeds, iteration)
            self._phase_s["score"] = time.perf_counter() - t0
            rows = [{"iteration": iteration, "seed_id": e.id,
                     **{c: float(scores.columns[c][i]) for c in SCALAR_SCORES if c in scores.columns}}
                    for i, e in enumerate(self.seeds)]
            self.store.append(runstore.SCORES, rows)
            state["n_scores"] += len(rows)
        if self.strategy.iterative or k <= len(self.seeds):
            picked = self.strategy.select(scores, k, rng=rng, mode=self.cfg.selection.mode,
                                          temperature=self.cfg.selection.temperature,
                                          n=len(self.seeds))
        else:  # static with a budget larger than the pool: uniform with replacement
            picked = [int(i) for i in rng.choice(len(self.seeds), size=k, replace=True)]
        primary = self._primary(scores) if self.strategy.needs else None
        seed_scores = [None if primary is None else float(primary[i]) for i in picked]
        return self._save(state, phase="selected", selected=picked, seed_scores=seed_scores)

    def _request_cost(self) -> int:
        """Worst-case teacher tokens of one generate request, to size k before scoring; the teacher
        pool re-checks each request exactly before it is issued."""
        return self.cfg.teacher.max_new_tokens + 256

    def _selected_seeds(self, state: dict) -> list[Example]:
        """The selected seeds; a seed drawn again (static, budget > pool) gets an `#n` id suffix so
        every request id stays unique."""
        out, seen = [], {}
        for i in state["selected"]:
            ex = self.seeds[i]
            n = seen[i] = seen.get(i, 0) + 1
            out.append(ex if n == 1 else Example(id=f"{ex.id}#{n}", question=ex.question,
                                                 answer=ex.answer, solution=ex.solution,
                                                 meta=ex.meta))
        return out

    def _generate(self, state: dict, iteration: int, pbar) -> dict:
        """Generate in chunks; each chunk is on disk and charged before the next is issued."""
        seeds = self._selected_seeds(state)
        done_ids = {r["request_id"] for r in self.store.read(runstore.SYNTHETIC)}
        todo = [(j, s) for j, s in enumerate(seeds) if f"gen-{iteration}-{s.id}" not in done_ids]
        chunk = max(8, self.cfg.teacher.micro_batch_size * self.cfg.teacher.replicas)
        t0 = time.perf_counter()
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            records = self.teacher.generate([s for _, s in part], iteration=iteration)
            slot = {f"gen-{iteration}-{s.id}": j for j, s in part}
            rows = [dict(r, seed_score=state["seed_scores"][slot[r["request_id"]]],
                         seed_index=state["selected"][slot[r["request_id"]]]) for r in records]
            self.store.append(runstore.SYNTHETIC, rows)
            state = self._save(state, n_synthetic=state["n_synthetic"] + len(rows))
            pbar.update(len(rows))
            if len(records) < len(part):  # the budget stopped the dispatcher
                break
        self._phase_s["generate"] = time.perf_counter() - t0
        return self._save(state, phase="generated")

    def _score_synthetic(self, state: dict, iteration: int) -> None:
        """Score this round's new samples with the same student that chose their seeds, so the
        report can rank-correlate seed scores with synthetic-sample scores (paper Fig. 2)."""
        if not (self.strategy.needs & {LOSS, LOSS_GT, ENTROPY, REWARD}):
            return
        recs = [r for r in self.store.read(runstore.SYNTHETIC)
                if r["iteration"] == iteration and r["parsed"] and "sample_score" not in r]
        if not recs:
            return
        t0 = time.perf_counter()
        primary = self._primary(self._score([Example.from_dict(r["example"]) for r in recs],
                                            iteration))
        if primary is None:
            return
        rows = [{"iteration": iteration, "request_id": r["request_id"], "seed_score": r["seed_score"],
                 "sample_score": float(s), "kind": "synthetic"} for r, s in zip(recs, primary)]
        self.store.append(runstore.SCORES, rows)
        state["n_scores"] += len(rows)
        self._phase_s["score_synthetic"] = time.perf_counter() - t0

    def _train_eval(self, state: dict, iteration: int, limit: int | None) -> dict:
        recs = self._synthetic(limit)
        data = [Example.from_dict(r["example"]) for r in recs if r["parsed"]]
        t0 = time.perf_counter()
        train = self.student.train(data, round=iteration) if data else {}
        t1 = time.perf_counter()
        ev = self.student.evaluate(self.test)
        t2 = time.perf_counter()
        self.student.save_adapter(str(self.store.checkpoints / f"round-{iteration}"))
        self._phase_s.update(train=t1 - t0, eval=t2 - t1)
        wall = time.perf_counter() - self._iter_t0 if self._iter_t0 is not None else None
        spent = limit if limit is not None else self.ledger.samples
        row = {"iteration": iteration, "strategy": self.cfg.selection.strategy,
               "seed": self.cfg.seed, "samples": spent, "train_size": len(data),
               "teacher_tokens": self.ledger.tokens, "judge_tokens": self.ledger.judge_tokens,
               "failed_parses": self.ledger.failed_parses, "accuracy": ev["accuracy"],
               "n_test": ev["n"], "train_loss_first": train.get("loss_first_epoch"),
               "train_loss_last": train.get("loss_last_epoch"),
               "train_s": round(t1 - t0, 3), "eval_s": round(t2 - t1, 3),
               # per-phase seconds and the iteration's wall time (None for a resumed iteration):
               # 1 - sum(phases)/wall is the orchestration overhead `activesyn bench` reports
               "phase_s": {k: round(v, 3) for k, v in self._phase_s.items()},
               "wall_s": None if wall is None else round(wall, 3)}
        self._phase_s, self._iter_t0 = {}, time.perf_counter()
        if not self.strategy.iterative:  # static: tokens spent by the prefix
            row["teacher_tokens"] = sum(r["prompt_tokens"] + r["completion_tokens"] for r in recs)
        self.store.append(runstore.METRICS, [row])
        log.info("iteration %d: %d samples, %d teacher tokens, accuracy %.3f", iteration,
                 row["samples"], row["teacher_tokens"], row["accuracy"])
        print(f"[activesyn] iteration {iteration}: samples={row['samples']} "
              f"tokens={row['teacher_tokens']} train_size={len(data)} accuracy={row['accuracy']:.3f}",
              flush=True)
        return self._save(state, phase="evaluated", n_metrics=state["n_metrics"] + 1)

    # -------------------------------------------------------------------------------- the loop
    def run(self) -> dict:
        from ray.experimental.tqdm_ray import tqdm

        state = self._recover()
        if state.get("done"):
            return self.summary()
        self._start_pools()
        total = self.cfg.budget.samples or None
        pbar = tqdm(total=total, desc=f"{self.cfg.name}: synthetic samples")
        pbar.update(self.ledger.samples)
        if not self.strategy.iterative:
            state = self._run_static(state, pbar)
        else:
            state = self._run_iterative(state, pbar)
        pbar.close()
        self.student.save_adapter(str(self.store.checkpoints / "final"))
        self._save(state, done=True, phase="done")
        self._plot()
        if self.cfg.output.plots:  # the same report `activesyn report RUN_DIR` writes, for this run
            from activesyn_ray.report import write_report

            write_report([self.store.root], self.store.root / "report")
        return self.summary()

    def _run_iterative(self, state: dict, pbar) -> dict:
        while True:
            it = state["iteration"]
            if state["phase"] in ("prepared", "evaluated"):  # start a new iteration
                if self.ledger.exhausted() or (self.cfg.iterations and it >= self.cfg.iterations):
                    return state
                it += 1
                self._phase_s, self._iter_t0 = {}, time.perf_counter()
                state = self._save(state, iteration=it, phase="selecting")
            if state["phase"] == "selecting":
                state = self._select(state, it)
                if not state["selected"]:
                    return self._save(state, iteration=it - 1, phase="evaluated")
            if state["phase"] == "selected":
                state = self._generate(state, it, pbar)
            if state["phase"] == "generated":
                self._score_synthetic(state, it)
                state = self._save(state, phase="scored-synthetic")
            if state["phase"] == "scored-synthetic":
                state = self._train_eval(state, it, None)
            self._plot()

    def _run_static(self, state: dict, pbar) -> dict:
        if state["phase"] in ("prepared", "selecting"):
            state = self._save(state, iteration=1, phase="selecting")
            state = self._select(state, 1)
        if state["phase"] == "selected":
            state = self._generate(state, 1, pbar)
            state = self._save(state, phase="scored-synthetic", evaluated_prefixes=[])
        # one-shot data is fixed now; evaluate budget prefixes of k, 2k, ... like the loop's points
        n = len(self.store.read(runstore.SYNTHETIC))
        k = self.cfg.selection.k
        prefixes = list(range(k, n, k)) + [n]
        done = len(state.get("evaluated_prefixes", []))
        for step, limit in enumerate(prefixes[done:], start=done + 1):
            state = self._train_eval(state, step, limit)
            state = self._save(state, evaluated_prefixes=prefixes[:step], phase="scored-synthetic")
            self._plot()
        return state

    # ---------------------------------------------------------------------------------- outputs
    def _plot(self) -> None:
        if self.cfg.output.plots:
            from activesyn_ray.report import plot_run

            plot_run(self.store.root)

    def summary(self) -> dict:
        metrics = self.store.read(runstore.METRICS)
        return {"run_dir": str(self.store.root), "iterations": len(metrics),
                "final_accuracy": metrics[-1]["accuracy"] if metrics else None,
                "ledger": self.ledger.summary()}

    def shutdown(self) -> None:
        for pool in (self.student, self.teacher):
            if pool is not None:
                pool.shutdown()


def run_loop(run_dir: str | Path | RunStore) -> dict:
    """Drive one run to the end (or resume it): starts/joins Ray, runs the Coordinator actor, prints
    the run directory and final metrics."""
    from activesyn_ray.runtime import init_ray

    store = run_dir if isinstance(run_dir, RunStore) else RunStore(run_dir)
    cfg = load_config(store.path(runstore.CONFIG))
    init_ray(cfg.resources)
    # Pinned to the driver's node: the run directory is a local path there (no shared storage needed;
    # adapters come back from the trainer as bytes).
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(Coordinator).options(num_cpus=cfg.resources.coordinator_num_cpus,
                                            scheduling_strategy=here, max_concurrency=2
                                            ).remote(run_dir=str(store.root.resolve()))
    try:
        summary = ray.get(actor.run.remote())
    finally:
        try:
            ray.get(actor.shutdown.remote(), timeout=60)
        except Exception:
            pass
        ray.kill(actor, no_restart=True)
    print(f"[activesyn] run directory: {summary['run_dir']}", flush=True)
    print(f"[activesyn] final accuracy: {summary['final_accuracy']}  ledger: {summary['ledger']}",
          flush=True)
    return summary
