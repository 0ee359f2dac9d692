"""The strategy interface: per-seed scores in, k seed indices out.

A strategy declares which scores it `needs` (the coordinator asks the scorers / teacher for exactly
those) and turns them into a `priority` (higher = expand first). `select` then takes the top k, or
samples k without replacement with probability ~ softmax(priority / temperature) (`mode: sample`,
by the Gumbel-top-k trick).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Score names produced by the student scorers (student/scoring.py) and the teacher (llm-judge).
LOSS = "loss"              # mean NLL of the student's own greedy answer (uncertainty)
LOSS_GT = "loss_gt"        # mean NLL of the reference answer
ENTROPY = "entropy"        # mean next-token entropy over the student's own answer
CORRECT = "correct"        # 1.0 if the student's greedy answer is right
REWARD = "reward"          # reward-model score of the student's answer
JUDGE = "judge"            # teacher grade 1-10 of the student's answer
GRAD_EMBED = "grad_embed"  # BADGE last-layer gradient embedding (n x d)
PASS_RATE = "pass_rate"    # share of n sampled student answers judged correct


def previous(column: str) -> str:
    """Name of a column's value under the PREVIOUS round's student (Strategy.history)."""
    return f"prev_{column}"


@dataclass
class SeedScores:
    """Column store of scores over the seed pool, one row per seed, in pool order."""
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise KeyError(f"score {name!r} was not computed; have {sorted(self.columns)}")
        return self.columns[name]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


class Strategy:
    name: str = ""
    needs: frozenset[str] = frozenset()
    iterative: bool = True
    """False only for `static`: the whole budget is generated up front, then one training."""
    history: frozenset[str] = frozenset()
    """Columns also wanted under the previous round's student: the coordinator adds them as
    `previous(name)` from scores.jsonl (NaN where the previous round has none)."""

    def priority(self, scores: SeedScores) -> np.ndarray:
        raise NotImplementedError

    def select(self, scores: SeedScores, k: int, *, rng: np.random.Generator, mode: str = "topk",
               temperature: float = 1.0, n: int | None = None) -> list[int]:
        n = len(scores) if n is None else n
        k = min(k, n)
        pri = np.asarray(self.priority(scores), dtype=np.float64)
        if mode == "sample":
            # Gumbel-top-k: the k largest of priority/T + Gumbel noise are a draw of k without
            # replacement with probability ~ softmax(priority/T), computed in log space, so it
            # never underflows (rng.choice(p=...) raises once fewer than k probabilities are > 0).
            keys = pri / temperature + rng.gumbel(size=n)
            return [int(i) for i in np.argsort(-keys, kind="stable")[:k]]
        # stable top-k; ties broken randomly so equal scores don't always favour low indices
        tie = rng.random(n) * 1e-9
        return [int(i) for i in np.argsort(-(pri + tie), kind="stable")[:k]]
