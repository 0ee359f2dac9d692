"""Scores from a second model: a reward model, or the teacher as an LLM judge (costs teacher tokens)."""

import numpy as np

from activesyn_ray.selection.base import JUDGE, REWARD, SeedScores, Strategy


class RewardStrategy(Strategy):
    """Lowest reward-model score of the student's answer first."""
    name = "reward"
    needs = frozenset({REWARD})

    def priority(self, scores: SeedScores) -> np.ndarray:
        return -scores[REWARD]


class JudgeStrategy(Strategy):
    """Lowest teacher grade (1-10) of the student's answer first; judging is charged to the ledger."""
    name = "llm-judge"
    needs = frozenset({JUDGE})

    def priority(self, scores: SeedScores) -> np.ndarray:
        return -scores[JUDGE]
