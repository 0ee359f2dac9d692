import numpy as np
import pytest

from activesyn_ray.config import SelectionConfig
from activesyn_ray.selection import STRATEGIES, SeedScores, build_strategy
from activesyn_ray.selection.diverse import kmeans_pp


def _scores(n=20, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return SeedScores({"loss": rng.random(n), "loss_gt": rng.random(n), "entropy": rng.random(n),
                       "reward": rng.random(n), "judge": rng.integers(1, 11, n).astype(float),
                       "pass_rate": rng.integers(0, 9, n) / 8,
                       "grad_embed": rng.normal(size=(n, d))})


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_returns_k_distinct_indices(name):
    s = build_strategy(SelectionConfig(strategy=name))
    for mode in ("topk", "sample"):
        picked = s.select(_scores(), 7, rng=np.random.default_rng(1), mode=mode)
        assert len(picked) == 7 == len(set(picked)) and all(0 <= i < 20 for i in picked)


def test_topk_directions():
    sc = _scores()
    rng = np.random.default_rng(0)
    assert set(build_strategy(SelectionConfig(strategy="loss")).select(sc, 3, rng=rng)) == \
        set(np.argsort(-sc["loss"])[:3])
    assert set(build_strategy(SelectionConfig(strategy="reward")).select(sc, 3, rng=rng)) == \
        set(np.argsort(sc["reward"])[:3])
    bal = build_strategy(SelectionConfig(strategy="balanced", balanced_hard_fraction=0.5))
    picked = bal.select(sc, 4, rng=rng)
    order = np.argsort(-sc["loss_gt"])
    assert set(picked) == set(order[:2]) | set(order[-2:])


def test_sampling_prefers_high_priority():
    sc = SeedScores({"loss": np.r_[np.full(10, 5.0), np.zeros(90)]})
    s = build_strategy(SelectionConfig(strategy="loss"))
    picks = [i for t in range(50) for i in s.select(sc, 5, rng=np.random.default_rng(t), mode="sample")]
    assert np.mean(np.array(picks) < 10) > 0.9


def test_kmeans_pp_spreads_over_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[10, 0], [0, 10], [-10, 0], [0, -10]])
    x = np.concatenate([c + rng.normal(scale=0.1, size=(25, 2)) for c in centers])
    picked = kmeans_pp(x, 4, rng)
    assert len({i // 25 for i in picked}) == 4


def test_static_is_not_iterative():
    assert not STRATEGIES["static"].iterative and STRATEGIES["random"].iterative


def test_sampling_survives_underflow_and_follows_softmax():
    # priorities 1000 apart: exp() underflows to 0 for all but one seed; k=5 must still be drawn
    sc = SeedScores({"loss": np.r_[1000.0, np.zeros(19)]})
    s = build_strategy(SelectionConfig(strategy="loss"))
    picked = s.select(sc, 5, rng=np.random.default_rng(0), mode="sample", temperature=1.0)
    assert len(set(picked)) == 5 and picked[0] == 0
    # the first draw follows softmax(priority / T): p(seed 0) = e^1 / (e^1 + 3) ~ 0.475
    sc = SeedScores({"loss": np.array([1.0, 0.0, 0.0, 0.0])})
    first = [s.select(sc, 1, rng=np.random.default_rng(t), mode="sample")[0] for t in range(4000)]
    assert abs(np.mean(np.array(first) == 0) - np.e / (np.e + 3)) < 0.03


def test_learnability_prefers_sometimes_solved_seeds():
    # p = 0 and p = 1 teach nothing; p = 0.5 most (p(1-p)); 0.25 and 0.75 tie in between
    p = np.array([0.0, 1.0, 0.5, 0.25, 0.75, 0.125])
    s = build_strategy(SelectionConfig(strategy="learnability"))
    picked = s.select(SeedScores({"pass_rate": p}), 4, rng=np.random.default_rng(0))
    assert picked[0] == 2 and set(picked[1:3]) == {3, 4} and picked[3] == 5
    assert s.needs == {"pass_rate"}


def test_progress_takes_the_largest_loss_drop_and_is_uniform_in_round_one():
    s = build_strategy(SelectionConfig(strategy="progress"))
    now = np.array([1.0, 0.2, 2.0, 0.9])
    before = np.array([1.1, 1.5, 2.0, 0.4])  # drops: 0.1, 1.3, 0.0, -0.5 (got worse)
    cols = SeedScores({"loss_gt": now, "prev_loss_gt": before})
    assert s.select(cols, 2, rng=np.random.default_rng(0)) == [1, 0]
    # round 1: no previous round (NaN) -> every seed ties -> uniform over many draws
    first = SeedScores({"loss_gt": now, "prev_loss_gt": np.full(4, np.nan)})
    counts = np.bincount([s.select(first, 1, rng=np.random.default_rng(i))[0] for i in range(400)],
                         minlength=4)
    assert counts.min() > 60
