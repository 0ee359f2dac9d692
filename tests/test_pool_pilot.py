"""The pool pilot's rule (activesyn_ray/studies/pool_pilot.py) on made-up curves: which levels are
learnable, which one is the unlearnable level, the budget and the seed count."""

import pytest

from activesyn_ray.studies.pool_pilot import verdict

BUDGETS = [0, 24, 48, 72, 96, 120, 144, 168, 192]


def run(seed, acc, n=40):
    return {"seed": seed, "budgets": BUDGETS, "acc": acc, "n": {lv: n for lv in acc}}


def flat(v):
    return [v] * len(BUDGETS)


def test_learnable_in_every_seed_and_the_least_rising_level_joins_as_unlearnable():
    rising = [0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4, 0.4]  # max first at 96
    a = run(0, {"0": rising, "1": [0.0] * 8 + [0.15], "2": [0.0] * 8 + [0.05], "3": flat(0.0)})
    b = run(1, {"0": rising, "1": [0.0] * 8 + [0.05], "2": [0.0] * 8 + [0.05], "3": flat(0.0)})
    v = verdict([a, b])
    assert v["learnable"] == ["0"]  # L1 rises 0.15 in one seed only
    assert v["unlearnable"] == "3" and v["pool"] == ["0", "3"]  # L3: rise 0 < L1's, L2's 0.05
    assert v["budget"] == 96 and v["baseline_budget"] == 192
    assert v["n_seeds"] == 8  # identical seeds: SD_d = the floor 0.03 -> (2.8)^2 -> 8


def test_budget_at_least_96_and_later_maximum_moves_it():
    early = [0.0, 0.4] + [0.4] * 7
    late = [0.0, 0.1, 0.2, 0.3, 0.3, 0.3, 0.5, 0.5, 0.5]
    assert verdict([run(s, {"0": early, "1": flat(0.0)}) for s in (0, 1)])["budget"] == 96
    assert verdict([run(s, {"0": late, "1": flat(0.0)}) for s in (0, 1)])["budget"] == 144


def test_seed_count_grows_with_the_seeds_disagreement_and_is_capped():
    def pair(gap):
        up = [0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4, 0.4]
        other = [x + (gap if i == 4 else 0) for i, x in enumerate(up)]
        return [run(0, {"0": up, "1": flat(0.0)}), run(1, {"0": other, "1": flat(0.0)})]

    # |a - b| on the pooled pool (L0 + L1, equal sizes) = gap / 2; SD_d = max(0.03, that)
    v = verdict(pair(0.10))
    assert v["sd_d"] == pytest.approx(0.05)
    assert v["seeds_needed"] == 22 and v["n_seeds"] == 16  # ceil((2.8 * 0.05 / 0.03)^2) = 22


def test_no_learnable_level_builds_no_pool():
    v = verdict([run(s, {"0": flat(0.1), "1": flat(0.0)}) for s in (0, 1)])
    assert v["learnable"] == [] and v["pool"] is None
