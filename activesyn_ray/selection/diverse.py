"""Batch-aware strategies: diversity (BADGE) and a mix of easy and hard seeds (LION-style)."""

import numpy as np

from activesyn_ray.selection.base import GRAD_EMBED, LOSS_GT, SeedScores, Strategy


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """k-means++ seeding: each next point is drawn with probability ~ squared distance to the
    chosen set, so picks are both large (uncertain) and spread out (diverse)."""
    n = len(x)
    first = int(np.argmax(np.linalg.norm(x, axis=1)))  # BADGE starts at the largest gradient
    chosen = [first]
    d2 = np.sum((x - x[first]) ** 2, axis=1)
    while len(chosen) < min(k, n):
        if d2.sum() <= 0:  # all remaining points coincide with chosen ones: fill uniformly
            rest = [i for i in range(n) if i not in set(chosen)]
            chosen += [int(i) for i in rng.choice(rest, size=min(k, n) - len(chosen), replace=False)]
            break
        nxt = int(rng.choice(n, p=d2 / d2.sum()))
        chosen.append(nxt)
        d2 = np.minimum(d2, np.sum((x - x[nxt]) ** 2, axis=1))
    return chosen


class BadgeStrategy(Strategy):
    """BADGE (Ash et al. 2020): k-means++ over last-layer gradient embeddings of the student's
    own answer (hallucinated labels), computed by the scorers."""
    name = "badge"
    needs = frozenset({GRAD_EMBED})

    def priority(self, scores: SeedScores) -> np.ndarray:
        return np.linalg.norm(scores[GRAD_EMBED], axis=1)

    def select(self, scores, k, *, rng, mode="topk", temperature=1.0, n=None):
        return kmeans_pp(np.asarray(scores[GRAD_EMBED], dtype=np.float64), k, rng)


class BalancedStrategy(Strategy):
    """A share of the batch from the hardest seeds, the rest from the easiest (by reference loss),
    so the student keeps seeing learnable examples while being pushed on hard ones."""
    name = "balanced"
    needs = frozenset({LOSS_GT})
    hard_fraction = 0.5

    def priority(self, scores: SeedScores) -> np.ndarray:
        return scores[LOSS_GT]

    def select(self, scores, k, *, rng, mode="topk", temperature=1.0, n=None):
        pri = np.asarray(self.priority(scores), dtype=np.float64)
        n = len(pri)
        k = min(k, n)
        n_hard = int(round(k * self.hard_fraction))
        if mode == "sample":
            hard = super().select(scores, n_hard, rng=rng, mode="sample", temperature=temperature)
            left = np.array([i for i in range(n) if i not in set(hard)])
            z = -(pri[left] - pri[left].min()) / temperature
            p = np.exp(z - z.max())
            easy = rng.choice(left, size=k - n_hard, replace=False, p=p / p.sum())
            return hard + [int(i) for i in easy]
        order = np.argsort(-(pri + rng.random(n) * 1e-9), kind="stable")
        hard = [int(i) for i in order[:n_hard]]
        easy = [int(i) for i in order[::-1][: k - n_hard]]
        return hard + easy
