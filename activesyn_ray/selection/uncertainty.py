"""Student-in-the-loop scores: the student's current state decides what the teacher expands."""

import numpy as np

from activesyn_ray.selection.base import ENTROPY, LOSS, LOSS_GT, SeedScores, Strategy


class LossStrategy(Strategy):
    """Highest loss of the student on its OWN greedy answer (needs no reference answer)."""
    name = "loss"
    needs = frozenset({LOSS})

    def priority(self, scores: SeedScores) -> np.ndarray:
        return scores[LOSS]


class LossGTStrategy(Strategy):
    """Highest loss of the reference answer: where the student is furthest from the truth."""
    name = "loss-gt"
    needs = frozenset({LOSS_GT})

    def priority(self, scores: SeedScores) -> np.ndarray:
        return scores[LOSS_GT]


class EntropyStrategy(Strategy):
    """Highest mean next-token entropy over the student's own answer."""
    name = "entropy"
    needs = frozenset({ENTROPY})

    def priority(self, scores: SeedScores) -> np.ndarray:
        return scores[ENTROPY]
