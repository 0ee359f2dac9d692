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

import os
import threading
import time

import numpy as np

from activesyn_ray import runstore
from activesyn_ray.budget import LEDGER_JOURNAL, Ledger
from activesyn_ray.console import iteration_line
from activesyn_ray.config import load_config, snapshot_fingerprint
from activesyn_ray.curve_point import PhaseClock, metrics_row
from activesyn_ray.decontaminate import Decontaminator, contamination
from activesyn_ray.loop_metrics import LoopMetrics
from activesyn_ray.memory_report import MEMORY, memory_report
from activesyn_ray.pools import start_pools
from activesyn_ray.pool_scores import FUSABLE, PoolScores
from activesyn_ray.run_progress import RunProgress
from activesyn_ray.run_setup import load_splits
from activesyn_ray.run_state import NEXT_STEP, Phase, recover
from activesyn_ray.runstore import RunStore
from activesyn_ray.selection import SeedScores, build_strategy
from activesyn_ray.selection.base import ENTROPY, JUDGE, LOSS, LOSS_GT, REWARD
from activesyn_ray.selection.choose import choose_seeds, primary_scores, request_seeds
from activesyn_ray.student.replay import round_training_set
from activesyn_ray.tasks import Example, build_task, stratum
from activesyn_ray.timeline import ray_task_events, write_timeline
from activesyn_ray.tracking import close_trackers, track


def fault_point(name: str, iteration: int) -> None:
    """Test hook (tests/test_reliability_loop.py, tests/test_pipeline.py): with
    ACTIVESYN_FAULT_AT=name:iteration[:pause_s][,...] the coordinator announces each point and
    waits there: for pause_s seconds (the test kills an actor meanwhile), or for good (the test
    SIGKILLs the driver exactly at it)."""
    for point in filter(None, os.environ.get("ACTIVESYN_FAULT_AT", "").split(",")):
        parts = point.split(":")
        if parts[:2] == [name, str(iteration)]:
            print(f"[activesyn] fault point {name}:{iteration} reached", flush=True)
            time.sleep(float(parts[2]) if len(parts) > 2 else 3600)
            print(f"[activesyn] fault point {name}:{iteration} passed", flush=True)
            return


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
        self.pool_scores = PoolScores(self.store, self.seeds)
        self.student = None
        self.teacher = None
        self.clock = PhaseClock()
        self._state_lock = threading.RLock()
        self._t_start = time.time()  # this process's part of timeline.json starts here
        self.metrics = None  # LoopMetrics (Ray metrics), once the pools run
        self.console = RunProgress()  # what the driver's console shows (progress())

    # ------------------------------------------------------------------------------ the loop
    def run(self, stop_after: int | None = None) -> dict:
        """Run (or resume) to the end. stop_after: return once iteration `stop_after` is evaluated,
        leaving the run directory exactly as a kill at that point would (for resume tests)."""
        state = recover(self.store, self.ledger)
        if state.get("done"):
            return self.summary()
        if self.student is None:
            self.student, self.teacher = start_pools(self.cfg, self.task, self.ledger,
                                                     self.console.say)
        self.metrics = LoopMetrics.attach(f"{self.cfg.name}/{self.store.root.name}", self.clock,
                                          self.teacher)
        if state["n_metrics"]:  # resumed: scorers start from the base; restore the last student
            last = self.store.read(runstore.METRICS)[-1]
            self.console.say(f"resuming after iteration {last['iteration']} "
                             f"({last['samples']} samples)")
            self.console.accuracy = last["accuracy"]
            self.student.restore_adapter(self.store.checkpoints / f"round-{last['iteration']}")
        self.console.started = True
        if state["n_metrics"] == 0:
            state = self._evaluate_start(state)
        if not self.strategy.iterative:
            state = self._run_static(state)
        elif self._run_iterative(state, stop_after=stop_after) is None:
            return self.summary()
        self.console.doing = "writing the report"
        close_trackers(self.store.root)
        self.student.save_adapter(str(self.store.checkpoints / "final"))
        memory = memory_report(self.student, self.teacher)
        runstore.atomic_write_json(self.store.path(MEMORY), memory)
        self._save(state, done=True, phase=Phase.DONE)
        write_timeline(self.store.root, self.clock.spans, since_s=self._t_start,
                       ray_events=ray_task_events(self._t_start))
        self._plot()
        if self.cfg.output.plots:  # the same report `activesyn report RUN_DIR` writes, for this run
            from activesyn_ray.report import write_report

            write_report([self.store.root], self.store.root / "report")
        return self.summary()

    def _run_iterative(self, state: dict, stop_after: int | None = None) -> dict | None:
        """The loop; returns the final state, or None when it stopped at `stop_after`."""
        while True:
            it, phase = state["iteration"], state["phase"]
            if phase in (Phase.PREPARED, Phase.EVALUATED):
                if stop_after is not None and it >= stop_after:
                    return None
                if not self._continues(it):
                    return state
                it += 1
                self.clock.start_iteration()
                state = self._save(state, iteration=it, phase=Phase.SELECTING)
            if state["phase"] == Phase.SELECTING:
                scores = self.score(state, it)
                state = self.select(state, it, scores)
                if not state["selected"]:  # the budget cannot pay for one more request
                    return self._save(state, iteration=it - 1, phase=Phase.EVALUATED)
            if state["phase"] == Phase.SELECTED:
                state = self.generate(state, it)
            state = self._train_and_evaluate(state, it)

    def _train_and_evaluate(self, state: dict, it: int, more: bool | None = None) -> dict:
        """Steps 4-5 of round `it`, from its samples on disk (GENERATED or SCORED)."""
        train = None
        if state["phase"] == Phase.GENERATED:
            pending = self._score_synthetic_submit(it)
            if pending is not None:  # the scorers score the new samples while the ranks train
                train = self.train(it, self._trained_on(it), settle_first=pending)
            state = self.score_synthetic(state, it, pending=pending)
        if state["phase"] == Phase.SCORED:
            if train is None:
                train = self.train(it, self._trained_on(it))
            state = self.evaluate(state, it, train, self._trained_on(it), more=more)
        self._plot()
        return state

    def _trained_on(self, iteration: int) -> list[dict]:
        """The samples of rounds 1..iteration (pipelined: the next round's may be on disk too)."""
        return [r for r in self._synthetic() if r["iteration"] <= iteration]

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
        history = self.strategy.history  # columns from the previous round's pool rows
        stored = self.pool_scores.stored(iteration, set(self.strategy.needs)) \
            if self._fusable() else None
        if stored is not None:
            return self.pool_scores.with_history(stored, iteration, history)
        with self.clock.phase("score"):
            scores = self._score_examples(self.seeds, iteration)
            rows = self.pool_scores.rows(iteration, scores.columns)
            self.store.append(runstore.SCORES, rows)
            state["n_scores"] += len(rows)
        return self.pool_scores.with_history(scores, iteration, history)

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

    def _choose(self, iteration: int, scores: SeedScores, exclude: frozenset[int] = frozenset()
                ) -> tuple[list[int], list[float | None]]:
        """As many seeds as the budget still pays for (static: the whole budget at once)."""
        k = self.cfg.selection.k if self.strategy.iterative else \
            (self.cfg.budget.samples or len(self.seeds))
        return choose_seeds(self.strategy, self.cfg, scores, iteration=iteration,
                            n_seeds=len(self.seeds), exclude=exclude,
                            k=self.ledger.affordable(k, self._request_cost()))

    def select(self, state: dict, iteration: int, scores: SeedScores) -> dict:
        """Step 2: k seed indices (static: the whole budget, once, uniformly)."""
        picked, seed_scores = self._choose(iteration, scores)
        if not picked:
            return self._save(state, selected=[], seed_scores=[])
        return self._save(state, phase=Phase.SELECTED, selected=picked, seed_scores=seed_scores)

    def generate(self, state: dict, iteration: int) -> dict:
        """Step 3: one teacher sample per selected seed, in chunks; each chunk is decontaminated,
        on disk and charged before the next is issued."""
        state = self._generate_round(state, iteration, state["selected"], state["seed_scores"])
        return self._save(state, phase=Phase.GENERATED)

    def _generate_round(self, state: dict, iteration: int, selected: list[int],
                        seed_scores: list, *, adapter: int | None = None) -> dict:
        """The teacher's samples for one round's selected seeds. adapter: the round whose
        student scored the pool for this selection (default: the previous round's, in sync)."""
        adapter = iteration - 1 if adapter is None else adapter
        lane = "teacher" if self.cfg.loop.pipeline else None
        seeds = request_seeds(self.seeds, selected)
        done_ids = {r["request_id"] for r in self._synthetic()}
        todo = [(j, s) for j, s in enumerate(seeds) if f"gen-{iteration}-{s.id}" not in done_ids]
        chunk = max(8, self.cfg.teacher.micro_batch_size * self.cfg.teacher.replicas)
        with self.clock.phase("generate", round=iteration, lane=lane):
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                records = self.teacher.generate([s for _, s in part], iteration=iteration)
                slot = {f"gen-{iteration}-{s.id}": j for j, s in part}
                rows = []
                for r in records:
                    j = slot[r["request_id"]]
                    rows.append(dict(r, seed_score=seed_scores[j], seed_index=selected[j],
                                     stratum=stratum(seeds[j]),
                                     contaminated=contamination(self.held_out, r),
                                     selection_adapter=adapter, staleness=iteration - 1 - adapter))
                self.store.append(runstore.SYNTHETIC, rows)
                if self.metrics is not None:
                    self.metrics.on_tokens(sum(r["prompt_tokens"] + r["completion_tokens"]
                                               for r in rows))
                fault_point("generate", iteration)  # samples on disk, not yet counted in state
                state = self._save(state, n_synthetic=state["n_synthetic"] + len(rows))
                if len(records) < len(part):  # the budget stopped the dispatcher
                    break
        mine = [r for r in self._synthetic() if r["iteration"] == iteration]
        if mine and not any(r["parsed"] for r in mine):
            print(f"[activesyn] warning: iteration {iteration}: none of the teacher's {len(mine)} "
                  f"replies parsed as a sample; this round adds no training data (check the "
                  f"teacher model and prompt; raw replies are in synthetic.jsonl)", flush=True)
        return state

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
            with self.clock.phase("score_synthetic"):
                if pending is not None:
                    cols = pending.result()
                    scores = SeedScores({k: np.asarray(v) for k, v in cols.items()
                                         if k != "answer_text"})
                else:
                    scores = self._score_examples(
                        [Example.from_dict(r["example"]) for r in recs], iteration)
                primary = primary_scores(self.strategy, scores)
                if primary is not None:
                    rows = [{"iteration": iteration, "request_id": r["request_id"],
                             "seed_score": r["seed_score"], "sample_score": float(s),
                             "stratum": r.get("stratum"), "kind": "synthetic"}
                            for r, s in zip(recs, primary)]
                    self.store.append(runstore.SCORES, rows)
                    state["n_scores"] += len(rows)
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
        self.console.doing = f"training on {len(data)} samples"
        with self.clock.phase("train"):
            if data:
                metrics = self.student.train(data, round=iteration, settle_first=settle_first)
            else:
                if settle_first is not None:
                    settle_first.settle()
                metrics = {}
        return dict(metrics, train_size=len(data), train_replayed=replayed)

    def evaluate(self, state: dict, iteration: int, train: dict, records: list[dict], *,
                 static_prefix: bool = False, more: bool | None = None, **changes) -> dict:
        """Step 5: greedy accuracy on the test (and validation) split -> one curve point.
        more: whether a round follows (default: the ledger says so). `changes` are saved to
        state.json in the same write as the new metrics count."""
        self.console.doing = "evaluating"
        pool_rows = []
        more = self._continues(iteration) if more is None else more
        if not static_prefix and self._fusable() and more:
            # the next score step needs the pool under THIS adapter: one scorer pass for both
            with self.clock.phase("eval+score"):
                ev, cols = self.student.evaluate_and_score(self.test + self.val, self.seeds,
                                                           self._student_needs())
                pool_rows = self.pool_scores.rows(iteration + 1, cols)
        else:
            with self.clock.phase("eval"):
                ev = self.student.evaluate(self.test + self.val)
        self.student.save_adapter(str(self.store.checkpoints / f"round-{iteration}"))
        if static_prefix:  # this point's samples are the prefix step (limit - k, limit]
            new = records[len(state.get("evaluated_prefixes", [])) * self.cfg.selection.k:]
        else:
            new = [r for r in records if r["iteration"] == iteration]
        by_records = static_prefix or self.cfg.loop.pipeline
        row = metrics_row(
            iteration=iteration, strategy=self.cfg.selection.strategy, seed=self.cfg.seed,
            test=self.test, val=self.val, correct=ev["correct"],
            # pipelined: the ledger also holds the next round's samples; count this round's
            samples=len(records) if by_records else self.ledger.samples,
            teacher_tokens=sum(r["prompt_tokens"] + r["completion_tokens"] for r in records)
            if by_records else self.ledger.tokens,
            judge_tokens=self.ledger.judge_tokens, records=records, new=new, train=train,
            clock=self.clock)
        row.update(self.ledger.cache_fields(records if by_records else None))  # paid vs cached
        self.clock.start_iteration()
        if pool_rows:  # counted in the same state write as the metrics row
            self.store.append(runstore.SCORES, pool_rows)
        self.store.append(runstore.METRICS, [row])
        track(self.cfg, self.store.root, row)  # TensorBoard / W&B / MLflow (output.trackers)
        self.console.accuracy = row["accuracy"]
        self.console.say(iteration_line(row, self.cfg.budget.samples))
        write_timeline(self.store.root, self.clock.spans, since_s=self._t_start)
        return self._save(state, **{"phase": Phase.EVALUATED, "n_metrics": state["n_metrics"] + 1,
                                    "n_scores": state["n_scores"] + len(pool_rows), **changes})

    def _evaluate_start(self, state: dict) -> dict:
        """Iteration 0: the starting student (no synthetic data) at budget 0."""
        val = f" + {len(self.val)} validation" if self.val else ""
        self.console.say(f"evaluating the starting student on {len(self.test)} test{val} "
                         f"questions")
        return self.evaluate(dict(state, phase=Phase.PREPARED), 0, {}, [])

    # ------------------------------------------------------------------------------ helpers
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

    def _request_cost(self) -> int:
        """Worst-case teacher tokens of one generate request, to size k before scoring; the teacher
        pool re-checks each request exactly before it is issued."""
        return self.cfg.teacher.max_new_tokens + 256

    # ------------------------------------------------------------------------------ state & logs
    def _save(self, state: dict, **changes) -> dict:
        with self._state_lock:  # the teacher lane saves too (loop.pipeline)
            return self._save_locked(state, **changes)

    def _save_locked(self, state: dict, **changes) -> dict:
        state.update(changes)
        state["phase"] = Phase(state["phase"]).value
        self.console.doing = NEXT_STEP.get(state["phase"], self.console.doing)
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

    # ------------------------------------------------------------------------------ console
    def progress(self, since: int = 0) -> dict:
        """For the driver's console (console.RunConsole), polled while run() goes on: the lines
        after the first `since`, synthetic samples so far, the last accuracy, the step under way."""
        return self.console.since(since, samples=self.ledger.samples)

    def summary(self) -> dict:
        metrics = self.store.read(runstore.METRICS)
        return {"run_dir": str(self.store.root), "iterations": len(metrics),
                "final_accuracy": metrics[-1]["accuracy"] if metrics else None,
                "ledger": self.ledger.summary()}

    def shutdown(self) -> None:
        for pool in (self.student, self.teacher):
            if pool is not None:
                pool.shutdown()
