"""A pool pilot's verdict: which levels random selection learns, the budget where its curve stops
rising, and how many paired seeds the grid needs: the §5.1 rule, as pre-registered in
jobs/pilot/p3-pilot-cpu.yaml (read that file's rules first; this module applies them, nothing more).

Reads only the VALIDATION split's numbers of the pilot's runs (metrics.jsonl:
val_accuracy_by_stratum, one stratum per level; val.jsonl for the questions per level):

  learnable  a level whose validation accuracy rises by >= RISE from budget 0 to the pilot's last
             point in EVERY seed.
  pool       the learnable levels + the non-learnable level that rises least (its smallest rise
             over the seeds; a tie goes to the harder level, the higher index) as the unlearnable
             level. No learnable level: no pool.
  budget     the seeds' mean validation accuracy on the pool's LEARNABLE levels (questions
             pooled) at each budget after 0; the first budget at which it reaches its maximum,
             but at least MIN_BUDGET.
  seeds      SD_d = max(SD_FLOOR, sqrt(2) x SD (ddof 1) of the seeds' validation accuracy on ALL
             the pool's levels (pooled) at that budget); n = max(MIN_SEEDS, ceil(((1.96 + 0.84)
             x SD_d / EFFECT)^2)), capped at MAX_SEEDS.

    python -m activesyn_ray.studies.pool_pilot runs/p3-pilot-cpu/chain_sum6 \\
        --out docs/results/active/p3-pilot.json
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from activesyn_ray.atomic_files import atomic_write_json, read_jsonl

RISE = 0.10
MIN_BUDGET = 96
SD_FLOOR = 0.03
EFFECT = 0.03
Z = 1.96 + 0.84  # two-sided alpha 0.05, 80% power
MIN_SEEDS, MAX_SEEDS = 8, 16


def _level_of(row: dict) -> str:
    meta = row.get("meta") or {}
    return str(meta.get("stratum", meta.get("level", "all")))


def load_run(run_dir: Path) -> dict:
    """{'seed', 'budgets': [...], 'acc': {level: [val acc per budget]}, 'n': {level: questions}}."""
    rows = list(read_jsonl(run_dir / "metrics.jsonl"))
    if not rows:
        raise SystemExit(f"{run_dir}/metrics.jsonl: no evaluation yet")
    n: dict[str, int] = {}
    for q in read_jsonl(run_dir / "val.jsonl"):
        n[_level_of(q)] = n.get(_level_of(q), 0) + 1
    levels = sorted(rows[0]["val_accuracy_by_stratum"], key=int)
    return {"seed": rows[0]["seed"], "budgets": [r["samples"] for r in rows],
            "acc": {lv: [r["val_accuracy_by_stratum"][lv] for r in rows] for lv in levels},
            "n": n}


def pooled(run: dict, levels: list[str], i: int) -> float:
    """Validation accuracy on `levels` with their questions pooled, at point i."""
    total = sum(run["n"][lv] for lv in levels)
    return sum(run["acc"][lv][i] * run["n"][lv] for lv in levels) / total


def verdict(runs: list[dict]) -> dict:
    budgets = runs[0]["budgets"]
    if any(r["budgets"] != budgets for r in runs):
        raise SystemExit("the pilot's runs evaluated at different budgets: "
                         + "; ".join(f"seed {r['seed']}: {r['budgets']}" for r in runs))
    levels = list(runs[0]["acc"])
    rise = {lv: [r["acc"][lv][-1] - r["acc"][lv][0] for r in runs] for lv in levels}
    learnable = [lv for lv in levels if min(rise[lv]) >= RISE - 1e-12]
    out = {"rule": {"rise": RISE, "min_budget": MIN_BUDGET, "sd_floor": SD_FLOOR,
                    "effect": EFFECT, "min_seeds": MIN_SEEDS, "max_seeds": MAX_SEEDS},
           "seeds": [r["seed"] for r in runs], "budgets": budgets,
           "levels": {lv: {"rise": rise[lv], "learnable": lv in learnable,
                           "val_accuracy": [r["acc"][lv] for r in runs]} for lv in levels},
           "learnable": learnable}
    if not learnable:
        return {**out, "pool": None}
    others = [lv for lv in levels if lv not in learnable]
    # the least rise; a tie goes to the harder (higher) level
    unlearnable = min(others, key=lambda lv: (min(rise[lv]), -int(lv))) if others else None
    pool = learnable + ([unlearnable] if unlearnable is not None else [])
    curve = [float(np.mean([pooled(r, learnable, i) for r in runs])) for i in range(len(budgets))]
    after0 = range(1, len(budgets))
    best = max(curve[i] for i in after0)
    first_max = next(budgets[i] for i in after0 if curve[i] >= best - 1e-12)
    budget = max(first_max, MIN_BUDGET)
    if budget not in budgets:
        raise SystemExit(f"the budget rule gives {budget}, which the pilot did not evaluate "
                         f"(budgets {budgets})")
    i_b = budgets.index(budget)
    finals = [pooled(r, pool, i_b) for r in runs]
    sd = float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0
    sd_d = max(SD_FLOOR, math.sqrt(2) * sd)
    n_needed = max(MIN_SEEDS, math.ceil((Z * sd_d / EFFECT) ** 2))
    return {**out, "unlearnable": unlearnable, "pool": pool,
            "learnable_curve": dict(zip(budgets, curve)), "curve_max_first_at": first_max,
            "budget": budget, "baseline_budget": 2 * budget,
            "pool_val_accuracy_at_budget": finals, "sd_d": sd_d, "seeds_needed": n_needed,
            "n_seeds": min(n_needed, MAX_SEEDS)}


def markdown(v: dict) -> str:
    lines = ["| level | " + " | ".join(f"seed {s}: 0 -> end" for s in v["seeds"])
             + " | smallest rise | learnable |", "|---|" + "---|" * (len(v["seeds"]) + 2)]
    for lv, d in v["levels"].items():
        cells = [f"{a[0]:.3f} -> {a[-1]:.3f}" for a in d["val_accuracy"]]
        lines.append(f"| L{lv} | " + " | ".join(cells)
                     + f" | {min(d['rise']):+.3f} | {'yes' if d['learnable'] else 'no'} |")
    if v["pool"] is None:
        return "\n".join(lines + ["", "No level is learnable: the pool is not built."])
    curve = ", ".join(f"{b}: {a:.3f}" for b, a in v["learnable_curve"].items())
    return "\n".join(lines + [
        "", f"Pool: levels {', '.join('L' + lv for lv in v['pool'])} "
            f"(unlearnable: L{v['unlearnable']}).",
        f"Mean validation accuracy on the learnable levels by budget: {curve}; first maximum at "
        f"{v['curve_max_first_at']} -> budget {v['budget']} (baselines {v['baseline_budget']}).",
        f"Pool validation accuracy at {v['budget']} per seed: "
        + ", ".join(f"{a:.3f}" for a in v["pool_val_accuracy_at_budget"])
        + f"; SD_d {v['sd_d']:.3f} -> {v['seeds_needed']} seeds needed, {v['n_seeds']} run."])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("task_dir", type=Path, help="the pilot's grid task folder (holds random-s*/)")
    ap.add_argument("--out", type=Path, help="write the verdict as JSON here")
    args = ap.parse_args(argv)
    runs = [load_run(d) for d in sorted(args.task_dir.glob("random-s*"))
            if (d / "metrics.jsonl").exists()]
    if len(runs) < 2:
        raise SystemExit(f"{args.task_dir}: the rule needs at least 2 random-s* runs, found "
                         f"{len(runs)}")
    v = verdict(runs)
    print(markdown(v))
    if args.out:
        atomic_write_json(args.out, v)


if __name__ == "__main__":
    main()
