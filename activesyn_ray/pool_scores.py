"""The seed pool's score rows in scores.jsonl: one row per seed per iteration.

With the fused pass, the evaluation of iteration t writes the pool's rows for t+1 and the score
step of t+1 reads them back, so an uninterrupted run and a resumed one select from the same
numbers. Strategies with a `history` (e.g. the change of loss since the previous round) read the
previous round's rows as extra columns.
"""

from __future__ import annotations

import numpy as np

from activesyn_ray import runstore
from activesyn_ray.runstore import RunStore
from activesyn_ray.selection import SeedScores
from activesyn_ray.selection.base import (CORRECT, ENTROPY, JUDGE, LOSS, LOSS_GT, PASS_RATE, REWARD,
                                          previous)
from activesyn_ray.tasks import Example, stratum

# Scalar score columns kept in scores.jsonl and compared seed-vs-synthetic in the report.
SCALAR_SCORES = (LOSS, LOSS_GT, ENTROPY, CORRECT, REWARD, JUDGE, PASS_RATE)
# Needs the fused evaluate+score pass serves: scorer columns that scores.jsonl holds exactly.
FUSABLE = frozenset({LOSS, LOSS_GT, ENTROPY, CORRECT, REWARD, PASS_RATE})


class PoolScores:
    def __init__(self, store: RunStore, seeds: list[Example]):
        self.store, self.seeds = store, seeds

    def rows(self, iteration: int, columns: dict) -> list[dict]:
        """scores.jsonl rows for the pool under `iteration`'s student."""
        return [{"iteration": iteration, "seed_id": e.id, "stratum": stratum(e),
                 **{c: float(columns[c][i]) for c in SCALAR_SCORES if c in columns}}
                for i, e in enumerate(self.seeds)]

    def stored(self, iteration: int, needs: set[str]) -> SeedScores | None:
        """The pool's scores for `iteration` from scores.jsonl (written by the fused evaluation
        of iteration - 1), or None when they are not all there or lack one of `needs`."""
        rows = [r for r in self.store.read(runstore.SCORES)
                if r.get("iteration") == iteration and "seed_id" in r]
        if not rows or [r["seed_id"] for r in rows] != [e.id for e in self.seeds]:
            return None
        cols = [c for c in SCALAR_SCORES if c in rows[0]]
        if not needs <= set(cols):
            return None
        return SeedScores({c: np.array([r[c] for r in rows], dtype=np.float64) for c in cols})

    def with_history(self, scores: SeedScores, iteration: int,
                     history: tuple[str, ...] | frozenset[str]) -> SeedScores:
        """Add the `history` columns from the previous round's pool rows (previous(c)); NaN for
        a seed that has none (round 1)."""
        if not history:
            return scores
        before = {r["seed_id"]: r for r in self.store.read(runstore.SCORES)
                  if r.get("iteration") == iteration - 1 and "seed_id" in r}
        for c in history:
            scores.columns[previous(c)] = np.array(
                [before.get(e.id, {}).get(c, np.nan) for e in self.seeds], dtype=np.float64)
        return scores
