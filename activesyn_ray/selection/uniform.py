"""Baselines: `static` (one-shot, before any training) and `random` (the loop, uniform choice)."""

import numpy as np

from activesyn_ray.selection.base import SeedScores, Strategy


class RandomStrategy(Strategy):
    name = "random"

    def priority(self, scores: SeedScores) -> np.ndarray:
        raise AssertionError("uniform strategies override select")

    def select(self, scores, k, *, rng, mode="topk", temperature=1.0, n=None):
        n = len(scores) if n is None else n
        return [int(i) for i in rng.choice(n, size=min(k, n), replace=False)]


class StaticStrategy(RandomStrategy):
    """Uniform seeds, the whole budget generated before the first (and only) training."""
    name = "static"
    iterative = False
