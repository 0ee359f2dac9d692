"""Strategies that look for what the student can LEARN next, not only where it is uncertain.

Loss and entropy prefer seeds the student cannot learn from this much data (RHO-LOSS, Mindermann
et al. 2022, names the failure; docs/results.md section 2 measured it here). Two signals avoid it:

* learnability: p = share of n sampled student answers the task's checker accepts; priority
  p(1 - p), largest where the student sometimes succeeds ("Learning to Reason at the Frontier of
  Learnability", 2025; DAPO's dynamic sampling drops prompts solved always or never). Seeds with
  p = 0 or 1 score 0 and go last.
  An untrained student that has never seen the `#### answer` format gets p = 0 on every seed, so
  round 1 would be uniform; selection.learnability.shots puts k solved seeds before each question
  of those sampled answers only (`shot_indices` picks them; student/scoring.py builds the prompt).
* progress: learning progress, the drop of the seed's reference-answer loss (loss_gt) from the
  previous round's student to the current one, largest first. loss_gt scores the SAME tokens in
  both rounds, so the difference is what the last round taught (the own-answer loss would change
  with the answer itself). Round 1 has no previous round: every seed ties, i.e. uniform.
"""

import hashlib

import numpy as np

from activesyn_ray.selection.base import LOSS_GT, PASS_RATE, SeedScores, Strategy, previous


def _id_key(example_id: str) -> int:
    """A stable 64-bit number for an id (Python's hash() of a str changes between processes)."""
    return int.from_bytes(hashlib.sha256(str(example_id).encode()).digest()[:8], "little")


def shot_indices(pool: list, k: int, *, seed: int) -> list[list[int]]:
    """For each example of `pool` (tasks.base.Example), the indices of up to k OTHER examples of
    the same list to show solved before it (selection.learnability.shots). Fixed per example: drawn
    with a generator seeded by (`seed`, the example's id) from the candidates in id order, so a
    seed gets the same shots in every round, shard split and order of the list. Never the example
    itself, nor one with the same question, nor (for teacher samples, whose meta names their seed)
    a sample of the same seed or that seed."""
    if k <= 0 or not pool:
        return [[] for _ in pool]
    family = [(e.meta or {}).get("seed_id") or e.id for e in pool]
    codes = {f: c for c, f in enumerate(dict.fromkeys(family + [e.id for e in pool]))}
    fam = np.array([codes[f] for f in family])
    own = np.array([codes[e.id] for e in pool])
    qcodes = {q: c for c, q in enumerate(dict.fromkeys(e.question for e in pool))}
    qs = np.array([qcodes[e.question] for e in pool])
    keys = [_id_key(e.id) for e in pool]
    by_id = np.array(sorted(range(len(pool)), key=lambda j: (keys[j], pool[j].id)))
    out = []
    for i, e in enumerate(pool):
        # candidates in id order, not pool order: the same set of examples gives the same shots
        ok = by_id[((fam != fam[i]) & (fam != own[i]) & (own != fam[i]) & (qs != qs[i]))[by_id]]
        rng = np.random.default_rng([seed, keys[i]])
        out.append([int(j) for j in rng.choice(ok, size=min(k, len(ok)), replace=False)])
    return out


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
