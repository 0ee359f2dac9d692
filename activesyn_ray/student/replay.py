"""Which samples a round trains on.

restart_each_round: true (the paper's protocol): every clean sample so far, so round t trains on
t*k samples and a run of T rounds on k*T*(T+1)/2: quadratic in the rounds.
restart_each_round: false: the round's new samples plus a `replay` share of older ones, so every
round trains on about k/(1 - replay) samples and a run on T times that: linear. The older samples
are drawn uniformly without replacement with a generator seeded by (seed, round), so an interrupted
round that is redone (resume, a restarted trainer) draws the same ones.
"""

from __future__ import annotations

import numpy as np

REPLAY_STREAM = 0x7265706C  # "repl": keeps these draws apart from selection's rng([seed, round])


def replay_count(n_new: int, n_old: int, replay: float) -> int:
    """Older samples to mix into a round of n_new new ones so they make `replay` of its set."""
    if replay <= 0 or n_new == 0:
        return 0
    return min(n_old, int(round(replay / (1.0 - replay) * n_new)))


def round_training_set(new: list, old: list, *, replay: float, seed: int, round: int
                       ) -> tuple[list, int]:
    """(the new samples + the replayed older ones in their original order, how many replayed)."""
    n = replay_count(len(new), len(old), replay)
    if n == 0:
        return list(new), 0
    rng = np.random.default_rng([seed, round, REPLAY_STREAM])
    picked = np.sort(rng.choice(len(old), size=n, replace=False))
    return list(new) + [old[i] for i in picked], n
