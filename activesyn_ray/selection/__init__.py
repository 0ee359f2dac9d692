"""Selection strategies, one small module each, chosen in config by registered name."""

from activesyn_ray.selection.base import SeedScores, Strategy
from activesyn_ray.selection.diverse import BadgeStrategy, BalancedStrategy
from activesyn_ray.selection.graded import JudgeStrategy, RewardStrategy
from activesyn_ray.selection.learnability import LearnabilityStrategy, ProgressStrategy
from activesyn_ray.selection.uncertainty import EntropyStrategy, LossGTStrategy, LossStrategy
from activesyn_ray.selection.uniform import RandomStrategy, StaticStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (StaticStrategy, RandomStrategy, LossStrategy, LossGTStrategy,
                        EntropyStrategy, RewardStrategy, JudgeStrategy, BadgeStrategy,
                        BalancedStrategy, LearnabilityStrategy, ProgressStrategy)
}


def build_strategy(cfg) -> Strategy:
    """`cfg` is a SelectionConfig."""
    strategy = STRATEGIES[cfg.strategy]()
    if isinstance(strategy, BalancedStrategy):
        strategy.hard_fraction = cfg.balanced_hard_fraction
    return strategy


__all__ = ["STRATEGIES", "SeedScores", "Strategy", "build_strategy"]
