"""Strategies that look for what the student can LEARN next, not only where it is uncertain.

Loss and entropy prefer seeds the student cannot learn from this much data (RHO-LOSS, Mindermann
et al. 2022, names the failure; docs/results.md section 2 measured it here). Two signals avoid it:

* learnability: p = share of n sampled student answers the task's checker accepts; priority
  p(1 - p), largest where the student sometimes succeeds ("Learning to Reason at the Frontier of
  Learnability", 2025; DAPO's dynamic sampling drops prompts solved always or never). Seeds with
  p = 0 or 1 score 0 and go last.
* progress: learning progress, the drop of the seed's reference-answer loss (loss_gt) from the
  previous round's student to the current one, largest first. loss_gt scores the SAME tokens in
  both rounds, so the difference is what the last round taught (the own-answer loss would change
  with the answer itself). Round 1 has no previous round: every seed ties, i.e. uniform.
"""

import numpy as np

from activesyn_ray.selection.base import LOSS_GT, PASS_RATE, SeedScores, Strategy, previous


class LearnabilityStrategy(Strategy):
    name = "learnability"
    needs = frozenset({PASS_RATE})

    def priority(self, scores: SeedScores) -> np.ndarray:
        p = np.asarray(scores[PASS_RATE], dtype=np.float64)
        return p * (1.0 - p)


class ProgressStrategy(Strategy):
    name = "progress"
    needs = frozenset({LOSS_GT})
    history = frozenset({LOSS_GT})

    def priority(self, scores: SeedScores) -> np.ndarray:
        now = np.asarray(scores[LOSS_GT], dtype=np.float64)
        before = scores.columns.get(previous(LOSS_GT))
        if before is None or np.isnan(before).any():  # round 1 (or a pool scored anew): uniform
            return np.zeros_like(now)
        return np.asarray(before, dtype=np.float64) - now
