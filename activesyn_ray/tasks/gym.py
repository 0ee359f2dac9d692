"""Procedurally generated, verifiable tasks from `reasoning-gym` (offline, Apache-2.0).

`task.name` is one dataset (`basic_arithmetic`) or several joined with '+' (`chain_sum+basic_arithmetic`);
`task.levels` is a list of generator configs, one per difficulty level, mixed evenly into the pool.
Each example remembers (dataset, level) so the procedural teacher can draw a *new* instance from the
same generator and difficulty, and `check` uses reasoning-gym's own `score_answer`.
"""

from __future__ import annotations

import functools
import json

from activesyn_ray.tasks import expression
from activesyn_ray.tasks.base import (ANSWER_MARK, Example, Task, normalize_number,
                                       split_disjoint)


@functools.cache
def _reasoning_gym():
    """reasoning_gym, imported on first use: it imports all its datasets (sympy, matplotlib),
    ~3 s of CPU that the trainer and scorer processes, which only need Example, never pay."""
    import reasoning_gym

    return reasoning_gym


_TEST_SEED_OFFSET = 1_000_003  # test instances come from a different generator seed than seeds
SEED_LIKE_DATASETS = frozenset({"basic_arithmetic", "chain_sum"})
"""Datasets whose questions carry a linear expression `like: seed` can follow (tasks/expression.py)."""
MAX_REDRAWS = 64  # procedural teacher: attempts to avoid a held-out question before giving up


@functools.lru_cache(maxsize=256)
def _scorer(dataset: str, level_json: str):
    # score_answer is an instance method; a size-1 dataset of the same config is enough to call it.
    return _reasoning_gym().create_dataset(dataset, size=1, seed=0, **json.loads(level_json))


def _to_example(entry: dict, *, dataset: str, level: int, level_cfg: dict, uid: str) -> Example:
    meta = entry.get("metadata", {})
    solution = meta.get("answer_cot")
    if isinstance(solution, str) and ANSWER_MARK in solution:
        solution = solution.rsplit(ANSWER_MARK, 1)[0].strip() or None
    elif not isinstance(solution, str):
        solution = None
    # json round trip: tuples -> lists, so what we store equals what we later check against.
    gym_meta = json.loads(json.dumps(meta, default=str))
    return Example(id=uid, question=entry["question"], answer=str(entry["answer"]), solution=solution,
                   meta={"dataset": dataset, "level": level, "level_cfg": level_cfg, "gym": gym_meta})


class GymTask(Task):
    has_generator = True
    held_out = None
    """A Decontaminator over the held-out questions; set by the coordinator before the teacher
    starts, so procedural samples are redrawn instead of repeating a test question."""

    def __init__(self, cfg, *, seed: int):
        super().__init__(cfg, seed=seed)
        self.datasets = [n.strip() for n in cfg.name.split("+") if n.strip()]
        self.name = "+".join(self.datasets)
        for n in self.datasets:
            if n not in _reasoning_gym().factory.DATASETS:
                raise ValueError(f"task.name: unknown reasoning-gym dataset {n!r}")
        self.levels = [dict(lv) for lv in cfg.levels] or [{}]
        for i, lv in enumerate(self.levels):
            for n in self.datasets:
                try:
                    _scorer(n, json.dumps(lv, sort_keys=True))
                except Exception as err:  # reasoning-gym raises TypeError/AssertionError on bad knobs
                    raise ValueError(f"task.levels[{i}]: not a valid config for {n}: {err}") from None

    def _draw(self, n_total: int, seed: int, tag: str, exclude: set[str] = frozenset()) -> list[Example]:
        """~n_total distinct examples, evenly over (dataset, level) groups, none in `exclude`.
        Small generators (1-digit sums have ~100 distinct problems) repeat themselves, so each group
        draws extra and keeps its first distinct questions."""
        groups = [(d, i, lv) for d in self.datasets for i, lv in enumerate(self.levels)]
        per = -(-n_total // len(groups))  # ceil
        out: list[list[Example]] = []
        seen = set(exclude)
        for g, (dataset, level, lv) in enumerate(groups):
            size = per + 16
            while True:  # grow the draw only while the generator still yields new questions
                ds = _reasoning_gym().create_dataset(dataset, size=size, seed=seed + 7919 * g, **lv)
                group_seen, keep = set(seen), []
                for j in range(len(ds)):
                    if len(keep) == per:
                        break
                    if ds[j]["question"] in group_seen:
                        continue
                    group_seen.add(ds[j]["question"])
                    keep.append(_to_example(ds[j], dataset=dataset, level=level, level_cfg=lv,
                                            uid=f"{tag}-{dataset}-L{level}-{j}"))
                if len(keep) == per or size >= 64 * per:
                    break
                size *= 4
            seen |= {e.question for e in keep}
            out.append(keep)
        # interleave groups so any prefix is balanced across datasets and levels
        longest = max(map(len, out))
        return [row[j] for j in range(longest) for row in out if j < len(row)]

    def splits(self) -> tuple[list[Example], list[Example]]:
        c = self.cfg
        pool = self._draw(c.seed_size, self.seed, "seed")[: c.seed_size]
        test = self._draw(c.test_size, self.seed + _TEST_SEED_OFFSET, "test",
                          exclude={e.question for e in pool})
        return split_disjoint(pool, test, c.seed_size, c.test_size, f"task {self.name}")

    def check(self, example: Example, predicted: str | None) -> bool:
        if predicted is None:
            return False
        m = example.meta
        scorer = _scorer(m["dataset"], json.dumps(m["level_cfg"], sort_keys=True))
        entry = {"question": example.question, "answer": example.answer, "metadata": m["gym"]}
        try:
            return float(scorer.score_answer(predicted.strip(), entry)) >= 0.99
        except Exception:  # a malformed expression from the student is simply wrong
            return False

    def cannot_verify(self) -> str | None:
        """The verifier reads a linear expression (tasks/expression.py) and computes it left to right,
        as reasoning-gym's `basic_arithmetic` (without parentheses) and `chain_sum` do."""
        if other := [d for d in self.datasets if d not in SEED_LIKE_DATASETS]:
            return (f"task {self.name}: no verifier for {', '.join(other)} (only linear arithmetic "
                    f"expressions: {', '.join(sorted(SEED_LIKE_DATASETS))})")
        if "basic_arithmetic" in self.datasets:
            nested = [i for i, lv in enumerate(self.levels) if lv.get("allow_parentheses", True)]
            if nested:  # reasoning-gym then computes with Python precedence, not left to right
                return (f"task.levels[{nested[0]}]: allow_parentheses is on (reasoning-gym's "
                        f"default); the verifier checks linear expressions only: set "
                        f"allow_parentheses: false")
        return None

    def verify(self, example: Example) -> bool | None:
        """The one expression in the question, computed exactly (parsed, never eval'd), against the
        written answer; None when the question holds no expression or several."""
        found = expression.find(example.question)
        if found is None:
            return None
        value = expression.evaluate(*found)  # None: a division with no integer result
        return value is not None and normalize_number(example.answer) == str(value)

    def seed_like_support(self) -> list[str]:
        """The datasets of this task whose seeds `like: seed` can follow (the rest use `level`)."""
        return [d for d in self.datasets if d in SEED_LIKE_DATASETS]

    def generate_like(self, example: Example, *, seed: int, like: str = "level") -> Example:
        """A new instance like `example`, deterministic in `seed`.

        like="level": a fresh draw from the seed's generator and level (any instance of it).
        like="seed": the seed's own expression structure with fresh values (tasks/expression.py:
        terms, operators, digit counts, carries/borrows, signs), written into the seed's question
        in place of its expression; datasets without a linear expression fall back to "level".
        `meta.like` says which was done and `meta.keeps_structure` whether the structure was met.

        With `held_out` set (a Decontaminator over the test and validation questions), a draw that
        matches a held-out question is redrawn with the next derived seed; `meta.redraws` counts
        them. After MAX_REDRAWS the last draw is returned (and then dropped as contaminated by the
        coordinator)."""
        m = example.meta
        follow_seed = like == "seed" and m["dataset"] in SEED_LIKE_DATASETS and \
            expression.parse(str(m["gym"].get("expression", ""))) is not None
        for attempt in range(MAX_REDRAWS + 1):
            s = seed if attempt == 0 else (seed * 1_000_003 + attempt) % 2**31
            if follow_seed:
                new = self._like_seed(example, seed=s)
            else:
                ds = _reasoning_gym().create_dataset(m["dataset"], size=1, seed=s, **m["level_cfg"])
                new = _to_example(ds[0], dataset=m["dataset"], level=m["level"],
                                  level_cfg=m["level_cfg"], uid=f"gen-{m['dataset']}-L{m['level']}-{s}")
            if self.held_out is None or not self.held_out.is_held_out(new.question):
                break
        new.meta["redraws"] = attempt
        new.meta["like"] = "seed" if follow_seed else "level"
        return new

    def _like_seed(self, example: Example, *, seed: int) -> Example:
        m = example.meta
        old = str(m["gym"]["expression"])
        operands, ops = expression.parse(old)
        values, kept = expression.redraw_like(operands, ops, seed=seed)
        new_expr = expression.render(values, ops)
        gym = dict(m["gym"], expression=new_expr)
        answer = str(expression.evaluate(values, ops))
        # the seed's phrasing, its expression replaced (the generators print it verbatim)
        question = example.question.replace(old, new_expr, 1) if old in example.question else \
            example.question.replace(old.replace(" ", ""), new_expr.replace(" ", ""), 1)
        return Example(id=f"gen-{m['dataset']}-L{m['level']}-{seed}", question=question,
                       answer=answer, solution=None,
                       meta={"dataset": m["dataset"], "level": m["level"],
                             "level_cfg": m["level_cfg"], "gym": gym, "keeps_structure": kept,
                             "like_of": example.id})

    def question_space(self, draws: int = 2000) -> list[int]:
        """Distinct questions among `draws` instances of each level (all datasets): a lower bound
        of each level's question space, for the start-up check on heavy reuse."""
        out = []
        for i, lv in enumerate(self.levels):
            distinct = 0
            for n in self.datasets:
                ds = _reasoning_gym().create_dataset(n, size=draws, seed=self.seed + 31 * i, **lv)
                distinct += len({ds[j]["question"] for j in range(len(ds))})
            out.append(distinct)
        return out
