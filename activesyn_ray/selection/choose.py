"""One round's choice of seeds, around a strategy: how many (what the budget still pays for),
which (the strategy's pick, optionally among the seeds not in flight), with what score (the
strategy's primary scalar, kept with each sample for the seed-vs-sample rank correlation), and
the seed each request expands (a seed drawn twice gets an `#n` id, so request ids stay unique)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from activesyn_ray.selection.base import SeedScores, Strategy
from activesyn_ray.tasks import Example


def primary_scores(strategy: Strategy, scores: SeedScores) -> np.ndarray | None:
    """The scalar a strategy ranks by, per seed; None for a strategy without one."""
    if not strategy.needs:
        return None
    try:
        return np.asarray(strategy.priority(scores), dtype=float)
    except (AssertionError, KeyError, NotImplementedError):
        return None


def choose_seeds(strategy: Strategy, cfg, scores: SeedScores, *, k: int, n_seeds: int,
                 iteration: int, exclude: frozenset[int] = frozenset()
                 ) -> tuple[list[int], list[float | None]]:
    """k seed indices out of n_seeds and each one's primary score. cfg: the RunConfig (its seed
    and selection settings). `exclude`: seeds left out (a pipelined round's seeds in flight).
    A non-iterative strategy asked for more seeds than the pool holds draws with replacement."""
    rng = np.random.default_rng([cfg.seed, iteration])
    keep = np.array([i for i in range(n_seeds) if i not in exclude], dtype=int)
    if exclude:
        k = min(k, len(keep))
        scores = SeedScores({c: np.asarray(v)[keep] for c, v in scores.columns.items()})
    if k == 0:
        return [], []
    if strategy.iterative or k <= len(keep):
        picked = strategy.select(scores, k, rng=rng, mode=cfg.selection.mode,
                                 temperature=cfg.selection.temperature, n=len(keep))
    else:  # static with a budget larger than the pool: uniform with replacement
        picked = [int(i) for i in rng.choice(len(keep), size=k, replace=True)]
    primary = primary_scores(strategy, scores)
    return ([int(keep[i]) for i in picked],
            [None if primary is None else float(primary[i]) for i in picked])


def request_seeds(seeds: list[Example], selected: list[int]) -> list[Example]:
    """The selected seeds, a seed drawn again suffixed `#n` (so every request id is unique)."""
    out, seen = [], Counter()
    for i in selected:
        ex, seen[i] = seeds[i], seen[i] + 1
        out.append(ex if seen[i] == 1 else replace(ex, id=f"{ex.id}#{seen[i]}"))
    return out
