"""The active loop, until the budget is spent:

    score -> select -> generate (each sample decontaminated as it lands) -> train -> evaluate

`Coordinator` is one Ray actor (no GPU) that owns the loop state — seed pool, synthetic set, budget
ledger, iteration — and writes it to the run directory after every step, so `activesyn resume`
continues a killed run from its last completed step:

  * teacher requests have deterministic ids (gen-<iteration>-<seed id>); each completed chunk of
    samples is appended to synthetic.jsonl and charged before the next chunk is issued, and on
    resume the ledger is rebuilt from those records, so no sample is generated or charged twice;
  * training and evaluation are deterministic given the synthetic set, so an interrupted round is
    simply redone from the samples on disk.

Iteration 0 evaluates the starting student (budget 0), so every curve starts at the same point.
`static` generates the whole budget from uniformly random seeds before any training; its curve is
evaluated on prefixes of that one-shot set (a prefix of i.i.d. uniform seeds is itself a static run
with that smaller budget), so every strategy has points at the same budgets.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from enum import Enum
from pathlib import Path

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from activesyn_ray import runstore
from activesyn_ray.budget import LEDGER_JOURNAL, Ledger
from activesyn_ray.console import iteration_line, started_line
from activesyn_ray.config import load_config, snapshot_fingerprint
from activesyn_ray.decontaminate import Decontaminator
from activesyn_ray.run_setup import load_splits
from activesyn_ray.runstore import RunStore
from activesyn_ray.selection import SeedScores, build_strategy
from activesyn_ray.selection.base import (CORRECT, ENTROPY, JUDGE, LOSS, LOSS_GT, PASS_RATE, REWARD,
                                          previous)
from activesyn_ray.student.replay import round_training_set
from activesyn_ray.tasks import Example, build_task, stratum
from activesyn_ray.tracking import close_trackers, track

log = logging.getLogger("activesyn")

# Scalar score columns kept in scores.jsonl and compared seed-vs-synthetic in the report.
SCALAR_SCORES = (LOSS, LOSS_GT, ENTROPY, CORRECT, REWARD, JUDGE, PASS_RATE)
MEMORY = "memory.json"  # peak RSS per actor kind, written when the run ends
# Needs the fused evaluate+score pass serves: scorer columns that scores.jsonl holds exactly.
FUSABLE = frozenset({LOSS, LOSS_GT, ENTROPY, CORRECT, REWARD, PASS_RATE})


class Phase(str, Enum):
    """The last completed step, saved in state.json; resume continues after it."""
    PREPARED = "prepared"    # run directory written, nothing run yet
    SELECTING = "selecting"  # iteration started: score + select in progress
    SELECTED = "selected"    # seeds chosen (state.selected)
    GENERATED = "generated"  # this iteration's samples on disk, each decontaminated
    SCORED = "scored"        # the new samples scored (seed-vs-sample rank correlation)
    EVALUATED = "evaluated"  # trained and evaluated: one metrics row, one curve point
    DONE = "done"


_OLD_PHASES = {"scored-synthetic": Phase.SCORED}  # run directories written by earlier versions


# What the loop does after saving each phase (the console's bar shows it).
_NEXT_STEP = {Phase.SELECTING.value: "scoring the seed pool", Phase.SELECTED.value: "generating",
              Phase.GENERATED.value: "training", Phase.SCORED.value: "training"}


def _n(count: int, what: str) -> str:
    return f"{count} {what}{'s' * (count != 1)}"


def fault_point(name: str, iteration: int) -> None:
    """Test hook (tests/test_reliability_loop.py): with ACTIVESYN_FAULT_AT=name:iteration the
    coordinator announces the point and waits there, so the test SIGKILLs the driver exactly at it."""
    if os.environ.get("ACTIVESYN_FAULT_AT") == f"{name}:{iteration}":
        print(f"[activesyn] fault point {name}:{iteration} reached", flush=True)
        time.sleep(3600)


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
        self.seeds, self.val, self.test = load_splits(self.store)
        self.held_out = Decontaminator([e.question for e in self.val + self.test],
                                       ngram=self.cfg.task.decontam_ngram) \
            if self.cfg.task.decontaminate else None
        self.task.held_out = self.held_out  # the procedural teacher redraws held-out questions
        self.strategy = build_strategy(self.cfg.selection)
        # charged ids: an append-only journal, so each state save stays O(1) as the run grows
        self.ledger = Ledger.from_dict(state["ledger"], journal=self.store.path(LEDGER_JOURNAL))
        self.student = None
        self.teacher = None
        self._phase_s: dict[str, float] = {}
        self._iter_t0: float | None = None  # start of an iteration this process ran from its start
        # what the driver's console shows (progress()): lines, the step under way, the last accuracy
        self._lines: list[str] = []
        self._doing = ""
        self._accuracy: float | None = None
        self._started = False

    # ------------------------------------------------------------------------------ the loop
    def run(self, stop_after: int | None = None) -> dict:
        """Run (or resume) to the end. stop_after: return once iteration `stop_after` is evaluated,
        leaving the run directory exactly as a kill at that point would (for resume tests)."""
        state = self._recover()
        if state.get("done"):
            return self.summary()
        self._start_pools()
        if state["n_metrics"]:  # resumed: scorers start from the base; restore the last student
            last = self.store.read(runstore.METRICS)[-1]
            self._say(f"resuming after iteration {last['iteration']} ({last['samples']} samples)")
            self._accuracy = last["accuracy"]
            self.student.restore_adapter(self.store.checkpoints / f"round-{last['iteration']}")
        self._started = True
        if state["n_metrics"] == 0:
            state = self._evaluate_start(state)
        if not self.strategy.iterative:
            state = self._run_static(state)
        elif self._run_iterative(state, stop_after=stop_after) is None:
            return self.summary()
        self._doing = "writing the report"
        close_trackers(self.store.root)
        self.student.save_adapter(str(self.store.checkpoints / "final"))
        runstore.atomic_write_json(self.store.path(MEMORY), self.memory_report())
        self._save(state, done=True, phase=Phase.DONE)
        self._plot()
        if self.cfg.output.plots:  # the same report `activesyn report RUN_DIR` writes, for this run
            from activesyn_ray.report import write_report

            write_report([self.store.root], self.store.root / "report")
        return self.summary()

    def _run_iterative(self, state: dict, stop_after: int | None = None) -> dict | None:
        """The loop; returns the final state, or None when it stopped at `stop_after`."""
        while True:
            it, phase = state["iteration"], state["phase"]
            train = None
            if phase in (Phase.PREPARED, Phase.EVALUATED):
                if stop_after is not None and it >= stop_after:
                    return None
                if not self._continues(it):
                    return state
                it += 1
                self._phase_s, self._iter_t0 = {}, time.perf_counter()
                state = self._save(state, iteration=it, phase=Phase.SELECTING)
            if state["phase"] == Phase.SELECTING:
                scores = self.score(state, it)
                state = self.select(state, it, scores)
                if not state["selected"]:  # the budget cannot pay for one more request
                    return self._save(state, iteration=it - 1, phase=Phase.EVALUATED)
            if state["phase"] == Phase.SELECTED:
                state = self.generate(state, it)
            if state["phase"] == Phase.GENERATED:
                pending = self._score_synthetic_submit(it)
                if pending is not None:  # the scorers score the new samples while the ranks train
                    train = self.train(it, self._synthetic(), settle_first=pending)
                state = self.score_synthetic(state, it, pending=pending)
            if state["phase"] == Phase.SCORED:
                if train is None:
                    train = self.train(it, self._synthetic())
                state = self.evaluate(state, it, train, self._synthetic())
            self._plot()

    def _run_static(self, state: dict) -> dict:
        """One-shot generation from uniform seeds, then one training per budget prefix k, 2k, ..."""
        if state["phase"] in (Phase.PREPARED, Phase.EVALUATED, Phase.SELECTING):
            state = self._save(state, iteration=1, phase=Phase.SELECTING)
            state = self.select(state, 1, SeedScores())
        if state["phase"] == Phase.SELECTED:
            state = self.generate(state, 1)
            state = self._save(state, evaluated_prefixes=[])
        records = self._synthetic()
        k = self.cfg.selection.k
        prefixes = list(range(k, len(records), k)) + [len(records)]
        done = len(state.get("evaluated_prefixes", []))
        for step, limit in enumerate(prefixes[done:], start=done + 1):
            train = self.train(step, records[:limit], new_from=prefixes[step - 2] if step > 1 else 0)
            state = self.evaluate(state, step, train, records[:limit], static_prefix=True,
                                  phase=Phase.GENERATED, evaluated_prefixes=prefixes[:step])
            self._plot()
        return state

    # ------------------------------------------------------------------------------ the steps
    def score(self, state: dict, iteration: int) -> SeedScores:
        """Step 1: what the strategy needs, for every seed, under the current student. With the
        fused pass the previous evaluation already scored the pool (same adapter) and stored the
        rows in scores.jsonl: they are read back, in the uninterrupted run and after a resume
        alike, so both select from the same numbers."""
        fault_point("score", iteration)
        if not self.strategy.needs:
            return SeedScores()
        if self._fusable() and (stored := self._stored_pool_scores(iteration)) is not None:
            return self._with_history(stored, iteration)
        t0 = time.perf_counter()
        scores = self._score_examples(self.seeds, iteration)
        rows = self._pool_rows(iteration, scores.columns)
        self.store.append(runstore.SCORES, rows)
        state["n_scores"] += len(rows)
        self._phase_s["score"] = time.perf_counter() - t0
        return self._with_history(scores, iteration)

    def _with_history(self, scores: SeedScores, iteration: int) -> SeedScores:
        """Add the columns the strategy wants from the previous round (Strategy.history), read
        from that round's pool rows in scores.jsonl; NaN for a seed that has none (round 1)."""
        if not self.strategy.history:
            return scores
        before = {r["seed_id"]: r for r in self.store.read(runstore.SCORES)
                  if r.get("iteration") == iteration - 1 and "seed_id" in r}
        for c in self.strategy.history:
            scores.columns[previous(c)] = np.array(
                [before.get(e.id, {}).get(c, np.nan) for e in self.seeds], dtype=np.float64)
        return scores

    def _pool_rows(self, iteration: int, columns: dict) -> list[dict]:
        return [{"iteration": iteration, "seed_id": e.id, "stratum": stratum(e),
                 **{c: float(columns[c][i]) for c in SCALAR_SCORES if c in columns}}
                for i, e in enumerate(self.seeds)]

    def _stored_pool_scores(self, iteration: int) -> SeedScores | None:
        """The seed pool's scores for `iteration` from scores.jsonl (written by the fused
        evaluation of iteration - 1), or None when they are not all there."""
        rows = [r for r in self.store.read(runstore.SCORES)
                if r.get("iteration") == iteration and "seed_id" in r]
        if not rows or [r["seed_id"] for r in rows] != [e.id for e in self.seeds]:
            return None
        cols = [c for c in SCALAR_SCORES if c in rows[0]]
        if not self.strategy.needs <= set(cols):
            return None
        return SeedScores({c: np.array([r[c] for r in rows], dtype=np.float64) for c in cols})

    def _fusable(self) -> bool:
        """Evaluation and the next score step share one scorer pass: the strategy scores the pool
        each iteration with columns scores.jsonl can hold (not BADGE embeddings, not judge
        grades, which need the teacher)."""
        return bool(self.cfg.student.fuse_eval_and_score and self.strategy.iterative
                    and self.strategy.needs and self.strategy.needs <= FUSABLE)

    def _continues(self, iteration: int) -> bool:
        """Whether the loop starts iteration + 1 after evaluating `iteration`."""
        return not (self.ledger.exhausted()
                    or (self.cfg.iterations and iteration >= self.cfg.iterations))

    def select(self, state: dict, iteration: int, scores: SeedScores) -> dict:
        """Step 2: k seed indices (static: the whole budget, once, uniformly)."""
        rng = np.random.default_rng([self.cfg.seed, iteration])
        k = self.cfg.selection.k if self.strategy.iterative else \
            (self.cfg.budget.samples or len(self.seeds))
        k = self.ledger.affordable(k, self._request_cost())
        if k == 0:
            return self._save(state, selected=[], seed_scores=[])
        if self.strategy.iterative or k <= len(self.seeds):
            picked = self.strategy.select(scores, k, rng=rng, mode=self.cfg.selection.mode,
                                          temperature=self.cfg.selection.temperature,
                                          n=len(self.seeds))
        else:  # static with a budget larger than the pool: uniform with replacement
            picked = [int(i) for i in rng.choice(len(self.seeds), size=k, replace=True)]
        primary = self._primary(scores) if self.strategy.needs else None
        seed_scores = [None if primary is None else float(primary[i]) for i in picked]
        return self._save(state, phase=Phase.SELECTED, selected=picked, seed_scores=seed_scores)

    def generate(self, state: dict, iteration: int) -> dict:
        """Step 3: one teacher sample per selected seed, in chunks; each chunk is decontaminated,
        on disk and charged before the next is issued."""
        seeds = self._selected_seeds(state)
        done_ids = {r["request_id"] for r in self._synthetic()}
        todo = [(j, s) for j, s in enumerate(seeds) if f"gen-{iteration}-{s.id}" not in done_ids]
        chunk = max(8, self.cfg.teacher.micro_batch_size * self.cfg.teacher.replicas)
        t0 = time.perf_counter()
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            records = self.teacher.generate([s for _, s in part], iteration=iteration)
            slot = {f"gen-{iteration}-{s.id}": j for j, s in part}
            rows = []
            for r in records:
                j = slot[r["request_id"]]
                rows.append(dict(r, seed_score=state["seed_scores"][j],
                                 seed_index=state["selected"][j], stratum=stratum(seeds[j]),
                                 contaminated=self._contamination(r)))
            self.store.append(runstore.SYNTHETIC, rows)
            fault_point("generate", iteration)  # samples on disk, not yet counted in state.json
            state = self._save(state, n_synthetic=state["n_synthetic"] + len(rows))
            if len(records) < len(part):  # the budget stopped the dispatcher
                break
        self._phase_s["generate"] = time.perf_counter() - t0
        mine = [r for r in self._synthetic() if r["iteration"] == iteration]
        if mine and not any(r["parsed"] for r in mine):
            print(f"[activesyn] warning: iteration {iteration}: none of the teacher's {len(mine)} "
                  f"replies parsed as a sample; this round adds no training data (check the "
                  f"teacher model and prompt; raw replies are in synthetic.jsonl)", flush=True)
        return self._save(state, phase=Phase.GENERATED)

    def _synthetic_to_score(self, iteration: int) -> list[dict]:
        if not self.strategy.needs & {LOSS, LOSS_GT, ENTROPY, REWARD}:
            return []
        return [r for r in self._synthetic() if r["iteration"] == iteration and r["parsed"]]

    def _score_synthetic_submit(self, iteration: int):
        """Start scoring this round's new samples on the scorer shards, to run during training
        (student.overlap_score_synthetic); None when there is nothing to overlap."""
        if not self.cfg.student.overlap_score_synthetic or JUDGE in self.strategy.needs:
            return None
        recs = self._synthetic_to_score(iteration)
        if not recs:
            return None
        return self.student.score_submit([Example.from_dict(r["example"]) for r in recs],
                                         set(self.strategy.needs))

    def score_synthetic(self, state: dict, iteration: int, pending=None) -> dict:
        """Score this round's new samples with the student that chose their seeds, so the report
        can rank-correlate seed scores with sample scores (paper Fig. 2). pending: the same call
        already running (overlapped with training); its time here is what training did not hide."""
        recs = self._synthetic_to_score(iteration)
        if recs:
            t0 = time.perf_counter()
            if pending is not None:
                cols = pending.result()
                scores = SeedScores({k: np.asarray(v) for k, v in cols.items() if k != "answer_text"})
            else:
                scores = self._score_examples([Example.from_dict(r["example"]) for r in recs],
                                              iteration)
            primary = self._primary(scores)
            if primary is not None:
                rows = [{"iteration": iteration, "request_id": r["request_id"],
                         "seed_score": r["seed_score"], "sample_score": float(s),
                         "stratum": r.get("stratum"), "kind": "synthetic"}
                        for r, s in zip(recs, primary)]
                self.store.append(runstore.SCORES, rows)
                state["n_scores"] += len(rows)
            self._phase_s["score_synthetic"] = time.perf_counter() - t0
        return self._save(state, phase=Phase.SCORED)

    def train(self, iteration: int, records: list[dict], settle_first=None,
              new_from: int | None = None) -> dict:
        """Step 4: the student on every clean sample so far (parsed, not rejected by the verifier,
        not contaminated), or with
        restart_each_round: false on this round's clean samples + a replay share of older ones
        (student/replay.py). new_from: index in `records` where this round's samples start
        (static's prefixes); by default the records of this iteration.
        settle_first: scorer calls (overlapped score-synthetic) that must end before the new
        adapter reaches the scorers."""
        clean = [(i, Example.from_dict(r["example"])) for i, r in enumerate(records)
                 if r["parsed"] and not r.get("rejected") and not r.get("contaminated")]
        data, replayed = [e for _, e in clean], 0
        if not self.cfg.student.restart_each_round:
            is_new = (lambda i: i >= new_from) if new_from is not None else \
                (lambda i: records[i]["iteration"] == iteration)
            data, replayed = round_training_set(
                [e for i, e in clean if is_new(i)], [e for i, e in clean if not is_new(i)],
                replay=self.cfg.student.replay, seed=self.cfg.seed, round=iteration)
        self._doing = f"training on {len(data)} samples"
        t0 = time.perf_counter()
        if data:
            metrics = self.student.train(data, round=iteration, settle_first=settle_first)
        else:
            if settle_first is not None:
                settle_first.settle()
            metrics = {}
        self._phase_s["train"] = time.perf_counter() - t0
        return dict(metrics, train_size=len(data), train_replayed=replayed)

    def evaluate(self, state: dict, iteration: int, train: dict, records: list[dict], *,
                 static_prefix: bool = False, **changes) -> dict:
        """Step 5: greedy accuracy on the test (and validation) split -> one curve point.
        `changes` are saved to state.json in the same write as the new metrics count."""
        self._doing = "evaluating"
        t0 = time.perf_counter()
        pool_rows = []
        if not static_prefix and self._fusable() and self._continues(iteration):
            # the next score step needs the pool under THIS adapter: one scorer pass for both
            ev, cols = self.student.evaluate_and_score(self.test + self.val, self.seeds,
                                                       self._student_needs())
            pool_rows = self._pool_rows(iteration + 1, cols)
            self._phase_s["eval+score"] = time.perf_counter() - t0
        else:
            ev = self.student.evaluate(self.test + self.val)
            self._phase_s["eval"] = time.perf_counter() - t0
        self.student.save_adapter(str(self.store.checkpoints / f"round-{iteration}"))
        correct = ev["correct"]
        test_ok, val_ok = correct[:len(self.test)], correct[len(self.test):]
        by_stratum: dict[str, list[bool]] = {}
        for ex, ok in zip(self.test, test_ok):
            by_stratum.setdefault(stratum(ex), []).append(ok)
        val_by_stratum: dict[str, list[bool]] = {}  # what pilots and settings choices read
        for ex, ok in zip(self.val, val_ok):
            val_by_stratum.setdefault(stratum(ex), []).append(ok)
        if static_prefix:  # this point's samples are the prefix step (limit - k, limit]
            new = records[len(state.get("evaluated_prefixes", [])) * self.cfg.selection.k:]
        else:
            new = [r for r in records if r["iteration"] == iteration]
        wall = time.perf_counter() - self._iter_t0 if self._iter_t0 is not None else None
        row = {"iteration": iteration, "strategy": self.cfg.selection.strategy,
               "seed": self.cfg.seed, "samples": len(records) if static_prefix else self.ledger.samples,
               "train_size": train.get("train_size", 0),
               "train_replayed": train.get("train_replayed", 0),  # older samples in train_size
               "teacher_tokens": sum(r["prompt_tokens"] + r["completion_tokens"] for r in records)
               if static_prefix else self.ledger.tokens,
               "judge_tokens": self.ledger.judge_tokens,
               "failed_parses": sum(not r["parsed"] for r in records),
               "contaminated": sum(bool(r.get("contaminated")) for r in records),
               "rejected": sum(bool(r.get("rejected")) for r in records),
               "accuracy": float(np.mean(test_ok)) if test_ok else 0.0, "n_test": len(test_ok),
               "accuracy_by_stratum": {s: float(np.mean(v)) for s, v in sorted(by_stratum.items())},
               "n_test_by_stratum": {s: len(v) for s, v in sorted(by_stratum.items())},
               "val_accuracy": float(np.mean(val_ok)) if val_ok else None,
               "val_accuracy_by_stratum": {s: float(np.mean(v))
                                           for s, v in sorted(val_by_stratum.items())},
               "selected_by_stratum": dict(sorted(Counter(r["stratum"] for r in new
                                                          if "stratum" in r).items())),
               "train_loss_first": train.get("loss_first_epoch"),
               "train_loss_last": train.get("loss_last_epoch"),
               # per-phase seconds and the iteration's wall time (None for a resumed iteration):
               # 1 - sum(phases)/wall is the orchestration overhead `activesyn bench` reports
               "phase_s": {k: round(v, 3) for k, v in self._phase_s.items()},
               "wall_s": None if wall is None else round(wall, 3)}
        self._phase_s, self._iter_t0 = {}, time.perf_counter()
        if pool_rows:  # counted in the same state write as the metrics row
            self.store.append(runstore.SCORES, pool_rows)
        self.store.append(runstore.METRICS, [row])
        track(self.cfg, self.store.root, row)  # TensorBoard / W&B / MLflow (output.trackers)
        self._accuracy = row["accuracy"]
        self._say(iteration_line(row, self.cfg.budget.samples))
        return self._save(state, **{"phase": Phase.EVALUATED, "n_metrics": state["n_metrics"] + 1,
                                    "n_scores": state["n_scores"] + len(pool_rows), **changes})

    def _evaluate_start(self, state: dict) -> dict:
        """Iteration 0: the starting student (no synthetic data) at budget 0."""
        val = f" + {len(self.val)} validation" if self.val else ""
        self._say(f"evaluating the starting student on {len(self.test)} test{val} questions")
        return self.evaluate(dict(state, phase=Phase.PREPARED), 0, {}, [])

    # ------------------------------------------------------------------------------ helpers
    def _start_pools(self) -> None:
        from activesyn_ray.student.pool import StudentPool
        from activesyn_ray.student.scoring import resolve_inference
        from activesyn_ray.teacher.pool import TeacherPool

        s, res = self.cfg.student, self.cfg.resources
        if self.student is None:
            t0 = time.perf_counter()
            lora = f" + LoRA r {s.lora.r}" if s.lora else ", all weights"
            self._say(f"loading the student ({s.model}{lora}): "
                      f"{_n(res.trainer.num_workers, 'trainer rank')} (DeepSpeed ZeRO-{s.zero_stage}), "
                      f"{_n(res.scorers.num_workers, 'scorer shard')} ({resolve_inference(s)})")
            self.student = StudentPool(cfg=self.cfg, task=self.task)
            self._say(started_line("trainer", t0))
        if self.teacher is None:
            t0 = time.perf_counter()
            self._say(f"starting {_n(self.cfg.teacher.replicas, 'teacher replica')} "
                      f"({self.cfg.teacher.engine}, {self.cfg.teacher.model}) while the scorer "
                      f"shards start their {resolve_inference(s)} engines")
            self.teacher = TeacherPool(cfg=self.cfg, task=self.task, ledger=self.ledger)
            self.student.scorers.gather("paths")  # the scorers' engines started with them
            self._say(started_line("teacher and scorers", t0))

    def _student_needs(self) -> set[str]:
        """The strategy's needs the scorer shards compute (reward_model `verifier` is resolved by
        StudentPool); a judge grades the student's answer text."""
        needs = set(self.strategy.needs) - {JUDGE}
        return needs | {"answer_text"} if JUDGE in self.strategy.needs else needs

    def _score_examples(self, examples: list[Example], iteration: int) -> SeedScores:
        student_needs = self._student_needs()
        cols = self.student.score(examples, student_needs) if student_needs else {}
        if JUDGE in self.strategy.needs:  # never fused: the judge is the teacher, not a scorer
            pairs = list(zip(examples, cols["answer_text"]))
            cols[JUDGE] = np.asarray(self.teacher.judge(pairs, iteration=iteration), dtype=float)
        return SeedScores({k: np.asarray(v) for k, v in cols.items() if k != "answer_text"})

    def _primary(self, scores: SeedScores) -> np.ndarray | None:
        """The scalar a strategy ranks by (for the seed-vs-synthetic rank correlation)."""
        try:
            return np.asarray(self.strategy.priority(scores), dtype=float)
        except (AssertionError, KeyError, NotImplementedError):
            return None

    def _contamination(self, record: dict) -> str | None:
        ex = record.get("example")
        if self.held_out is None or not ex:
            return None
        return self.held_out.match(ex["question"], ex.get("solution"))

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

    # ------------------------------------------------------------------------------ state & logs
    def _recover(self) -> dict:
        """Make the files agree with state.json: drop torn tails and the logs of unfinished steps,
        keep (and re-charge) teacher samples that completed after the last state save."""
        self.store.repair()
        state = self.store.load_state()
        state["phase"] = _OLD_PHASES.get(state["phase"], state["phase"])
        self.store.truncate_after(runstore.METRICS, state["n_metrics"])
        self.store.truncate_after(runstore.SCORES, state["n_scores"])
        synthetic = self._synthetic()
        for rec in synthetic[state["n_synthetic"]:]:
            self.ledger.charge(rec["request_id"], prompt_tokens=rec["prompt_tokens"],
                               completion_tokens=rec["completion_tokens"], samples=1,
                               parsed=rec["parsed"], rejected=bool(rec.get("rejected")))
        state["n_synthetic"] = len(synthetic)
        state["ledger"] = self.ledger.to_dict()
        return state

    def _save(self, state: dict, **changes) -> dict:
        state.update(changes)
        state["phase"] = Phase(state["phase"]).value
        self._doing = _NEXT_STEP.get(state["phase"], self._doing)
        state["ledger"] = self.ledger.to_dict()
        fault_point(f"save-{state['phase']}", state["iteration"])  # its logs written, state not
        self.store.save_state(state)
        return state

    def _synthetic(self) -> list[dict]:
        return self.store.read(runstore.SYNTHETIC)

    def _plot(self) -> None:
        if self.cfg.output.plots:
            from activesyn_ray.report import plot_run

            plot_run(self.store.root)

    def memory_report(self) -> dict[str, int]:
        """Peak resident memory (bytes) per actor kind, the largest actor of each kind, over the
        whole run (each process's own high-water mark), for sizing num_cpus / memory per node."""
        from activesyn_ray.devices import peak_rss_bytes

        out = {"coordinator": peak_rss_bytes()}
        student = self.student.peak_rss()
        out["trainer rank"] = max(r["peak_rss_bytes"] for r in student["trainer"])
        for r in student["scorer"]:  # the scorer's size depends on the paths it built
            key = f"scorer shard ({'+'.join(r['paths'])})"
            out[key] = max(out.get(key, 0), r["peak_rss_bytes"])
        replicas = getattr(self.teacher.backend, "actors", None)  # none under Ray Serve
        if replicas:
            for r in ray.get([a.peak_rss.remote() for a in replicas]):
                key = f"teacher replica ({r['engine']})"
                out[key] = max(out.get(key, 0), r["peak_rss_bytes"])
        return out

    # ------------------------------------------------------------------------------ console
    def _say(self, text: str) -> None:
        """A line for the driver's console (handed over by progress()) and for run.log."""
        log.info(text)
        self._lines.append(text)

    def progress(self, since: int = 0) -> dict:
        """For the driver's console (console.RunConsole), polled while run() goes on: the lines
        after the first `since`, synthetic samples so far, the last accuracy, the step under way."""
        return {"lines": self._lines[since:], "samples": self.ledger.samples,
                "accuracy": self._accuracy, "doing": self._doing, "started": self._started}

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
    """Drive one run to the end (or resume it): starts/joins Ray, runs the Coordinator actor while
    the console follows it, prints the summary (run directory, final metrics, what next)."""
    from activesyn_ray.console import RunConsole, say, seconds, summary_lines
    from activesyn_ray.fit import check_cluster
    from activesyn_ray.runtime import init_ray, library_output

    t_start = time.perf_counter()
    store = run_dir if isinstance(run_dir, RunStore) else RunStore(run_dir)
    cfg = load_config(store.path(runstore.CONFIG))
    with library_output():
        if not ray.is_initialized():
            address = cfg.resources.ray_address or os.environ.get("RAY_ADDRESS")
            say(f"joining the Ray cluster at {address}" if address else
                f"starting Ray (local, {cfg.resources.local_num_cpus or os.cpu_count()} CPUs)")
            init_ray(cfg.resources)
            say(f"Ray ready ({seconds(time.perf_counter() - t_start)})")
        # all pools against the cluster's totals at once: FitError in one line, before any actor
        say(check_cluster(cfg))
        # Pinned to the driver's node: the run directory is a local path there (no shared storage
        # needed; adapters come back from the trainer as bytes).
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        # threads: run, the console's progress polls, shutdown
        actor = ray.remote(Coordinator).options(num_cpus=cfg.resources.coordinator_num_cpus,
                                                scheduling_strategy=here, max_concurrency=3
                                                ).remote(run_dir=str(store.root.resolve()))
        try:
            summary = RunConsole(total=cfg.budget.samples).follow(actor, actor.run.remote())
        finally:
            try:
                ray.get(actor.shutdown.remote(), timeout=60)
            except Exception:
                pass
            ray.kill(actor, no_restart=True)
        memory = store.path(MEMORY)
        if memory.exists():  # this process (the driver) joins the actors' peak RSS
            from activesyn_ray.devices import peak_rss_bytes

            report = json.loads(memory.read_text())
            runstore.atomic_write_json(memory, {**report, "driver": peak_rss_bytes()})
            store.sync()
    for line in summary_lines(store.root, wall_s=time.perf_counter() - t_start,
                              next_step=cfg.output.next_step):
        say(line)
    return summary
