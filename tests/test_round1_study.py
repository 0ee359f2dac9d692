"""The round-1 shots study's pure part (activesyn_ray/studies/round1_shots.py): the pre-registered
choice rule on hand-made numbers, the per-measurement summary, and where a validation question's
shots come from. Fast: no model, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from activesyn_ray.studies.round1_shots import (FLOOR, TIE, choose_shots, pass_rate_summary,
                                                validation_shots)
from activesyn_ray.tasks.base import Example

ROOT = Path(__file__).resolve().parents[1]


def _rows(shares: dict[int, float], pool: str = "p2", seeds=(0, 1)) -> list[dict]:
    """The same informative share for every seed of a pool."""
    return [{"pool": pool, "seed": s, "shots": k, "informative": v}
            for k, v in shares.items() for s in seeds]


def test_more_shots_win_when_clearly_more_informative():
    c = choose_shots(_rows({0: 0.0, 2: 0.30, 4: 0.35}))
    assert c["shots"] == 4 and c["best"] == 4
    assert c["mean_informative"] == pytest.approx({0: 0.0, 2: 0.30, 4: 0.35})


def test_within_the_tie_margin_the_fewest_shots_win():
    c = choose_shots(_rows({0: 0.0, 2: 0.34, 4: 0.35}))
    assert c["best"] == 4 and c["shots"] == 2
    # the margin is inclusive: exactly TIE below the best still counts as a tie
    assert choose_shots(_rows({0: 0.0, 2: 0.30, 4: 0.30 + TIE}))["shots"] == 2
    assert choose_shots(_rows({0: 0.0, 2: 0.30, 4: 0.30 + TIE + 0.001}))["shots"] == 4
    # a tie at the top goes to the fewer shots too
    assert choose_shots(_rows({0: 0.0, 2: 0.2, 4: 0.2}))["shots"] == 2


def test_the_other_direction_shots_that_help_less_than_none():
    c = choose_shots(_rows({0: 0.12, 2: 0.06, 4: 0.02}))
    assert c["shots"] == 0 and c["best"] == 0
    assert choose_shots(_rows({0: 0.10, 2: 0.115, 4: 0.03}))["shots"] == 0  # 2 within the tie


def test_shots_stay_0_when_no_value_reaches_the_floor():
    c = choose_shots(_rows({0: 0.0, 2: 0.03, 4: FLOOR - 0.001}))
    assert c["shots"] == 0 and c["best"] == 4 and "stays 0" in c["reason"]
    assert choose_shots(_rows({0: 0.0, 2: 0.0, 4: 0.0}))["shots"] == 0
    # reaching the floor exactly is enough
    assert choose_shots(_rows({0: 0.0, 2: 0.01, 4: FLOOR}))["shots"] == 4


def test_mean_over_seeds_then_pools_each_pool_weighing_the_same():
    # p2: 4 seeds favour 2 shots; p3: 1 seed favours 4 shots much more: pools weigh alike
    rows = _rows({0: 0.0, 2: 0.30, 4: 0.20}, "p2", seeds=(0, 1, 2, 3)) + \
        _rows({0: 0.0, 2: 0.10, 4: 0.40}, "p3", seeds=(0,))
    c = choose_shots(rows)
    assert c["mean_informative"] == pytest.approx({0: 0.0, 2: 0.20, 4: 0.30})
    assert c["by_pool"]["p2"][2] == pytest.approx(0.30) and c["shots"] == 4
    # seeds of one pool are averaged: 0.0 and 0.4 make 0.2
    rows = [{"pool": "p2", "seed": 0, "shots": 2, "informative": 0.0},
            {"pool": "p2", "seed": 1, "shots": 2, "informative": 0.4},
            {"pool": "p2", "seed": 0, "shots": 0, "informative": 0.0},
            {"pool": "p2", "seed": 1, "shots": 0, "informative": 0.0}]
    assert choose_shots(rows)["mean_informative"][2] == pytest.approx(0.2)


def test_every_pool_needs_every_value():
    rows = _rows({0: 0.0, 2: 0.3}, "p2") + _rows({0: 0.0}, "p3")
    with pytest.raises(ValueError, match="missing"):
        choose_shots(rows)
    with pytest.raises(ValueError):
        choose_shots([])


def test_pass_rate_summary():
    s = pass_rate_summary([0.0, 0.0, 0.5, 0.25, 1.0])
    assert s["n_questions"] == 5
    assert s["informative"] == pytest.approx(0.4) and s["solved"] == pytest.approx(0.2)
    assert s["mean_p"] == pytest.approx(0.35)
    assert s["mean_pq"] == pytest.approx((0.25 + 0.1875) / 5)
    assert pass_rate_summary([])["informative"] == 0.0


def test_validation_shots_come_from_the_seed_pool_fixed_per_question():
    pool = [Example(id=f"seed-{i}", question=f"Calculate {i} + 1.", answer=str(i + 1))
            for i in range(12)]
    val = [Example(id=f"val-{i}", question=f"Calculate {i} + 2.", answer=str(i + 2))
           for i in range(5)]
    val.append(Example(id="val-dup", question=pool[0].question, answer="1"))  # same question
    shots = validation_shots(pool, val, 4, seed=3)
    ids = {e.id for e in pool}
    assert all(len(s) == 4 and len({e.id for e in s}) == 4 and {e.id for e in s} <= ids
               for s in shots)
    assert pool[0] not in shots[-1]  # never a seed with the question's own text
    assert shots == validation_shots(pool, val, 4, seed=3)  # deterministic
    assert shots != validation_shots(pool, val, 4, seed=4)  # the run seed draws others
    # fixed per question, not per position in the validation list
    assert validation_shots(pool, val[::-1], 4, seed=3) == shots[::-1]
    assert validation_shots(pool, val, 0, seed=3) == [[] for _ in val]


def test_the_plan_states_the_rule_the_script_applies():
    plan = (ROOT / "jobs" / "active" / "efficiency-cpu.yaml").read_text()
    assert "round1_shots" in plan and f"{TIE:.2f}" in plan and f"{FLOOR:.2f}" in plan
