"""The report's arithmetic on hand-made curves and run directories (no Ray), each answer worked out
by hand: efficiency (ahead, behind, never reached), AUC and its paired difference, both Spearman
variants, win rates per task and across tasks, and the plots with and without strata fields."""

import json

import numpy as np
import pytest

from activesyn_ray import runstore
from activesyn_ray.config import dump_config, load_config
from activesyn_ray.report import (auc, auc_difference, bootstrap_mean, budget_to_reach,
                                  dataset_spearman, efficiency, final_difference, fmt_efficiency,
                                  plot_run, within_iteration_spearman, write_report)


def _curve(seed, accs, xs=None, k=10):
    """A run as the report's functions see it: metrics rows at budgets k, 2k, ... (or xs)."""
    xs = xs or [k * (i + 1) for i in range(len(accs))]
    return {"seed": seed, "metrics": [{"iteration": i + 1, "samples": x, "accuracy": a}
                                      for i, (x, a) in enumerate(zip(xs, accs))]}


def _run(tmp_path, strategy, seed, accs, k=10, synth=(), task="basic_arithmetic", extra=()):
    cfg = load_config(None, [f"selection.strategy={strategy}", f"seed={seed}", "name=t",
                             f"task.name={task}"])
    store = runstore.RunStore(tmp_path / f"{task}-{strategy}-{seed}").create(dump_config(cfg))
    store.save_state({"phase": "done"})
    store.append(runstore.METRICS, [{"iteration": i + 1, "samples": k * (i + 1),
                                     "teacher_tokens": 1000 * k * (i + 1), "accuracy": a,
                                     **(extra[i] if extra else {})}
                                    for i, a in enumerate(accs)])
    store.append(runstore.SCORES, [{"kind": "synthetic", "iteration": it, "seed_score": a,
                                    "sample_score": b} for it, a, b in synth])
    return store.root


# ------------------------------------------------------------------------------------ efficiency
def test_budget_to_reach_interpolates_the_running_max():
    x, y = np.array([10., 20, 30, 40]), np.array([0.1, 0.3, 0.2, 0.5])
    assert budget_to_reach(x, y, 0.2) == (15.0, None)   # halfway from 0.1 to 0.3
    assert budget_to_reach(x, y, 0.4) == (35.0, None)   # running max 0.3 at 30, 0.5 at 40
    assert budget_to_reach(x, y, 0.6) == (40.0, "lower")
    assert budget_to_reach(x, y, 0.05) == (10.0, "upper")


def test_efficiency_strategy_ahead_behind_and_never_reached():
    base = _curve(0, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])       # budgets 10..70
    # ahead: ends at 0.45 after 40 samples; the baseline reaches 0.45 at 45 -> 45/40
    e = efficiency([_curve(0, [0.2, 0.3, 0.4, 0.45])], [base])
    assert e["mean"] == pytest.approx(1.125) and e["ci"] is None and e["lower_bounds"] == 0
    # behind: ends at 0.25 after 70 samples; the baseline gets there at 25 -> 25/70 < 1
    e = efficiency([_curve(0, [0.1, 0.3, 0.2, 0.2, 0.25, 0.2, 0.25])], [base])
    assert e["mean"] == pytest.approx(25 / 70)
    # never reached: 0.8 after 40 samples; the baseline stops at 0.7 after 70 -> "> 1.75x"
    e = efficiency([_curve(0, [0.5, 0.6, 0.7, 0.8])], [base])
    assert e["mean"] == pytest.approx(1.75) and e["lower_bounds"] == 1
    assert fmt_efficiency(e) == "> 1.75x"
    # a seed without a paired baseline run is counted, not silently averaged
    assert efficiency([_curve(1, [0.5])], [base])["unpaired"] == 1


def test_efficiency_the_bad_case_ends_lower_scores_below_one():
    """docs/results.md's loss-vs-random row: loss ends 0.167 vs random 0.204 (means over 3 seeds)
    and the old rule (budget for the baseline's FINAL accuracy / budget at which the strategy first
    reaches it, unreached seeds dropped) gave 1.30 +- 0.30 (n=2, 1 not reached)."""
    xs = [96 * i for i in range(1, 9)]
    rnd = {0: [.05, .08, .10, .12, .15, .17, .19, .20], 1: [.05, .09, .12, .14, .16, .19, .21, .22],
           2: [.06, .09, .11, .13, .15, .17, .18, .192]}
    loss = {0: [.06, .09, .12, .15, .21, .18, .17, .16], 1: [.04, .07, .10, .13, .15, .17, .20, .22],
            2: [.05, .08, .10, .11, .12, .13, .12, .121]}
    assert np.mean([c[-1] for c in loss.values()]) == pytest.approx(0.167)
    assert np.mean([c[-1] for c in rnd.values()]) == pytest.approx(0.204)
    old = [xs[-1] / xs[np.nonzero(np.array(loss[s]) >= rnd[s][-1])[0][0]] for s in (0, 1)]
    assert np.mean(old) == pytest.approx(1.30) and np.std(old) == pytest.approx(0.30)

    e = efficiency([_curve(s, c, xs) for s, c in loss.items()],
                   [_curve(s, c, xs) for s, c in rnd.items()])
    # seed 0: random reaches 0.16 halfway between 480 (.15) and 576 (.17) = 528; 528/768
    # seed 1: both end at 0.22, random gets there at 768 -> 1.0
    # seed 2: random reaches 0.121 at 288 + 0.011/0.02 * 96 = 340.8; 340.8/768
    per_seed = {s: v["ratio"] for s, v in e["per_seed"].items()}
    assert per_seed == pytest.approx({0: 528 / 768, 1: 1.0, 2: 340.8 / 768})
    assert e["mean"] == pytest.approx((528 + 768 + 340.8) / 3 / 768) and e["mean"] < 1
    assert e["ci"][0] <= e["mean"] <= e["ci"][1] <= 1.0 and e["lower_bounds"] == 0


# S reaches 0.5 after 96 samples; B runs on to 2x that: 0 -> .25 at 96 -> .5 at 144 -> .6 at 192
XS, BASE = [0, 48, 96], [0, 96, 144, 192]


def test_efficiency_is_not_capped_when_the_baseline_runs_past_the_strategys_budget():
    base = _curve(0, [0.0, 0.25, 0.5, 0.6], BASE)
    e = efficiency([_curve(0, [0.0, 0.3, 0.5], XS)], [base])
    p = e["per_seed"][0]
    assert (p["baseline_budget"], p["strategy_budget"], p["baseline_max"]) == (144, 96, 192)
    assert e["mean"] == pytest.approx(1.5) and p["bound"] is None and e["mean_bound"] is None
    assert fmt_efficiency(e) == "1.50x (n=1)"
    # between B's points: 0.55 is reached halfway from 144 to 192 -> 168 / 96
    e = efficiency([_curve(0, [0.0, 0.3, 0.55], XS)], [base])
    assert e["mean"] == pytest.approx(1.75)
    # S's budget is its own last point: a run that stopped at 48 with 0.25 -> 96 / 48
    assert efficiency([_curve(0, [0.0, 0.25], XS[:2])], [base])["mean"] == pytest.approx(2.0)


def test_efficiency_never_reached_and_already_reached_are_bounds():
    base = _curve(0, [0.0, 0.25, 0.5, 0.6], BASE)
    e = efficiency([_curve(0, [0.0, 0.4, 0.7], XS)], [base])  # B tops out at 0.6 < 0.7
    assert e["per_seed"][0]["bound"] == "lower" and e["mean"] == pytest.approx(192 / 96)
    assert e["mean_bound"] == "lower" and fmt_efficiency(e) == "> 2.00x"
    # B's first point (24 samples) already has S's 0.3: B needs at most 24 -> an upper bound 0.25x
    e = efficiency([_curve(0, [0.0, 0.2, 0.3], XS)], [_curve(0, [0.35, 0.5, 0.6], [24, 96, 192])])
    assert e["per_seed"][0]["bound"] == "upper" and e["mean"] == pytest.approx(24 / 96)
    assert fmt_efficiency(e) == "≤ 0.25x"


def test_efficiency_mean_over_seeds_counts_bounds_and_says_the_mean_is_a_bound():
    runs_s = [_curve(s, [0.0, 0.3, a], XS) for s, a in enumerate([0.5, 0.55, 0.7])]
    runs_b = [_curve(s, [0.0, 0.25, 0.5, 0.6], BASE) for s in range(3)]
    e = efficiency(runs_s, runs_b)
    assert {s: v["ratio"] for s, v in e["per_seed"].items()} == pytest.approx({0: 1.5, 1: 1.75,
                                                                                2: 2.0})
    # 3 resampled seeds all at 1.5 (or all at 2.0) have chance 1/27 > 2.5%: those are the ends
    assert e["mean"] == pytest.approx(1.75) and e["ci"] == pytest.approx([1.5, 2.0])
    assert e["lower_bounds"] == 1 and e["mean_bound"] == "lower"
    assert fmt_efficiency(e) == "> 1.75x [1.50, 2.00] (n=3; 1 lower bound)"
    assert fmt_efficiency(e, explain=True).endswith("; mean and interval are lower bounds)")
    # a lower and an upper bound: the mean is neither, and says so
    runs_b[0] = _curve(0, [0.55, 0.6], [24, 192])
    e = efficiency(runs_s, runs_b)
    assert e["mean_bound"] == "mixed" and e["mean"] == pytest.approx((0.25 + 1.75 + 2.0) / 3)
    assert fmt_efficiency(e, explain=True).startswith("1.33x [")
    assert "1 lower bound; 1 upper bound; the mean is neither bound" in fmt_efficiency(e, True)
    # every seed never reached: the mean is a bound, its interval not shown
    e = efficiency(runs_s[2:] + [_curve(3, [0.0, 0.8], [0, 96])],
                   runs_b[2:] + [_curve(3, [0.0, 0.6], [0, 192])])
    assert fmt_efficiency(e) == "> 2.00x (n=2)"


def test_report_efficiency_per_seed_table_json_console_and_figure(tmp_path, capsys):
    # k=48: learnability evaluated at 48, 96; random and static run on to 192 (static to 96 only)
    dirs = [_run(tmp_path, "learnability", 0, [0.3, 0.5], k=48),
            _run(tmp_path, "learnability", 1, [0.4, 0.7], k=48),
            _run(tmp_path, "random", 0, [0.1, 0.25, 0.5, 0.6], k=48),
            _run(tmp_path, "random", 1, [0.2, 0.3, 0.5, 0.65], k=48),
            _run(tmp_path, "static", 0, [0.2, 0.3], k=48),
            _run(tmp_path, "static", 1, [0.2, 0.8], k=48)]
    out = tmp_path / "report"
    summary = write_report(dirs, out)
    row = next(r for r in summary["table"] if r["strategy"] == "learnability")
    e = row["efficiency_vs_random"]
    # seed 0: random reaches 0.5 at 144 -> 1.5x; seed 1: random tops out at 0.65 < 0.7 -> > 2.00x
    assert {s: (v["ratio"], v["bound"]) for s, v in e["per_seed"].items()} == \
        {0: (pytest.approx(1.5), None), 1: (pytest.approx(2.0), "lower")}
    assert e["mean"] == pytest.approx(1.75) and e["ci"] == pytest.approx([1.5, 2.0])
    # the figure's reading: learnability's final mean 0.6 at 96; random's mean curve is .5 at 144,
    # .625 at 192 -> 144 + 48 * .1 / .125 = 182.4
    at = row["efficiency_mean_curve_vs_random"]
    assert at["target"] == pytest.approx(0.6) and at["baseline_budget"] == pytest.approx(182.4)
    assert at["ratio"] == pytest.approx(1.9) and at["bound"] is None
    # static stopped at 96 too: no panel (and no figure for random / static themselves)
    assert "efficiency_mean_curve_vs_static" not in row
    assert [p for p in summary["plots"] if p.startswith("efficiency")] == \
        ["efficiency_basic_arithmetic_learnability.png"] == [at["figure"]]
    assert (out / at["figure"]).stat().st_size > 10_000
    md = (out / "report.md").read_text()
    per_seed = md.split("## Efficiency per seed", 1)[1]
    assert "| basic_arithmetic | learnability | random | 0 | 96 | 0.500 | 144 | 192 | 1.50x |" \
        in per_seed
    assert "| basic_arithmetic | learnability | random | 1 | 96 | 0.700 | > 192 | 192 | > 2.00x |" \
        in per_seed
    assert ("| **mean** |  | 0.600 |  |  | > 1.75x [1.50, 2.00] (n=2; 1 lower bound; mean and "
            "interval are lower bounds) |") in per_seed
    # vs static, which stopped at 96: seed 0 never reached, a bound at 1.00x (the old cap); seed 1
    # reaches 0.7 at 48 + 48 * .5 / .6 = 88
    st = row["efficiency_vs_static"]["per_seed"]
    assert st[0]["bound"] == "lower" and st[0]["ratio"] == pytest.approx(1.0)
    assert st[1]["baseline_budget"] == pytest.approx(88) and st[1]["bound"] is None
    assert "| basic_arithmetic | learnability | static | 0 | 96 | 0.500 | > 96 | 96 | > 1.00x |" \
        in per_seed
    saved = json.loads((out / "report.json").read_text())["table"]
    assert next(r for r in saved if r["strategy"] == "learnability")["efficiency_vs_random"][
        "per_seed"]["1"]["bound"] == "lower"
    printed = capsys.readouterr().out
    assert "Efficiency per seed" in printed and "| 0 | 96 | 0.500 | 144 | 192 | 1.50x |" in printed


def test_efficiency_figure_when_the_baselines_mean_never_gets_there(tmp_path):
    dirs = [_run(tmp_path, "loss", 0, [0.4, 0.7], k=48),
            _run(tmp_path, "random", 0, [0.1, 0.25, 0.5, 0.6], k=48)]
    summary = write_report(dirs, tmp_path / "report", baselines=("loss",))
    row = next(r for r in summary["table"] if r["strategy"] == "loss")
    at = row["efficiency_mean_curve_vs_random"]
    assert at["bound"] == "lower" and at["ratio"] == pytest.approx(2.0)
    assert (tmp_path / "report" / at["figure"]).stat().st_size > 10_000
    # random vs loss (--baseline): no figure for random, but its table rows; loss reaches random's
    # 0.6 at 48 + 48 * .2 / .3 = 80 of random's 192
    assert "| basic_arithmetic | random | loss | 0 | 192 | 0.600 | 80 | 96 | 0.42x |" in \
        (tmp_path / "report" / "report.md").read_text()


# ------------------------------------------------------------------------------------------- AUC
def test_auc_and_paired_difference_with_interval():
    base = _curve(0, [0.1, 0.2, 0.3, 0.4])
    assert auc(base, 10, 40) == pytest.approx(0.25)            # (.15 + .25 + .35) * 10 / 30
    assert auc(base, 15, 30) == pytest.approx(0.225)           # a straight line from .15 to .3
    strat = [_curve(0, [0.2, 0.3, 0.4, 0.5]), _curve(1, [0.4, 0.5, 0.6, 0.7])]
    bases = [base, _curve(1, [0.1, 0.2, 0.3, 0.4])]
    d = auc_difference(strat, bases, 10, 40)
    assert d["per_seed"] == pytest.approx({0: 0.1, 1: 0.3})
    # resampling 2 seeds gives means .1, .2, .3 with chances 1/4, 1/2, 1/4: the 95% interval is [.1, .3]
    assert d["mean"] == pytest.approx(0.2) and d["ci"] == pytest.approx([0.1, 0.3])
    one = auc_difference(strat[:1], bases, 10, 40)
    assert one["mean"] == pytest.approx(0.1) and one["ci"] is None and one["n"] == 1


def test_bootstrap_interval_is_reproducible_and_covers_the_mean():
    v = [0.0, 0.1, 0.2, 0.9]
    a, b = bootstrap_mean(v), bootstrap_mean(v)
    assert a == b and a["mean"] == pytest.approx(0.3)
    assert 0.0 <= a["ci"][0] < 0.3 < a["ci"][1] <= 0.9


# -------------------------------------------------------------------------------------- Spearman
def test_spearman_is_never_pooled_across_iterations():
    # inside every iteration the ranks are reversed (rho -1), but later iterations sit higher on
    # both scales: pooling all 9 pairs would say rho > 0.5, the per-(run, iteration) medians +1
    rows = [{"iteration": it, "seed_score": base + d, "sample_score": base + 2 - d}
            for it, base in ((1, 10), (2, 1), (3, 5)) for d in range(3)]
    from scipy.stats import spearmanr

    assert spearmanr([r["seed_score"] for r in rows], [r["sample_score"] for r in rows])[0] > 0.5
    run = {"synthetic_scores": rows}
    assert dataset_spearman([run]) == {"rho": pytest.approx(1.0), "p": pytest.approx(0.0), "n": 3}
    w = within_iteration_spearman([run])
    assert w["rho"] == pytest.approx(-1.0) and w["n"] == 3
    # an iteration with constant seed scores (an untrained student) has no rho and is left out
    flat = {"synthetic_scores": [{"iteration": 4, "seed_score": 1, "sample_score": s}
                                 for s in (1, 2, 3)]}
    assert within_iteration_spearman([run, flat])["n"] == 3
    assert dataset_spearman([run, flat])["n"] == 4


# ------------------------------------------------------------------------------ whole report
def test_report_win_rates_per_task_and_across_tasks(tmp_path, capsys):
    dirs = [_run(tmp_path, "random", s, [0.1, 0.2, 0.3, 0.4]) for s in (0, 1)]
    dirs += [_run(tmp_path, "loss", 0, [0.2, 0.4, 0.5, 0.6]),
             _run(tmp_path, "loss", 1, [0.1, 0.2, 0.3, 0.4])]
    # a second task where loss loses at both of its budget points
    dirs += [_run(tmp_path, "random", 0, [0.5, 0.6], task="chain_sum"),
             _run(tmp_path, "loss", 0, [0.4, 0.5], task="chain_sum")]
    out = tmp_path / "report"
    summary = write_report(dirs, out)
    i, j = summary["strategies"].index("loss"), summary["strategies"].index("random")
    assert summary["win_rate_per_task"]["basic_arithmetic"][i][j] == 1.0
    assert summary["win_rate_per_task"]["chain_sum"][i][j] == 0.0
    # across tasks: 4 won (task 1) of 6 (task, budget point) pairs
    assert summary["win_rate"][i][j] == pytest.approx(4 / 6)
    assert summary["win_rate"][j][i] == pytest.approx(2 / 6)
    row = next(r for r in summary["table"] if r["strategy"] == "loss" and r["task"] == "chain_sum")
    assert row["efficiency_vs_random"]["mean"] < 1
    assert row["auc_diff_vs_random"]["mean"] == pytest.approx(-0.1)
    md = (out / "report.md").read_text()
    assert "### chain_sum" in md and "Efficiency of S over B" in md
    assert "| basic_arithmetic | loss | 2 |" in capsys.readouterr().out
    assert (out / "win_rate.png").stat().st_size > 1000
    assert json.loads((out / "report.json").read_text())["strategies"] == ["loss", "random"]


def test_final_difference_is_paired_by_seed_and_extra_baselines_get_columns(tmp_path):
    # loss ends at 0.6 / 0.1 after 20 samples; random has 0.4 / 0.2 there -> per seed +0.2, -0.1.
    # Random's seed 1 runs on to 0.4 at 30: not counted (B's last point would give -0.3).
    # Seed 2 has no pair.
    loss = [_curve(0, [0.1, 0.6]), _curve(1, [0.5, 0.1]), _curve(2, [0.9, 0.9])]
    rnd = [_curve(0, [0.2, 0.4]), _curve(1, [0.1, 0.2, 0.4])]
    d = final_difference(loss, rnd)
    assert d["per_seed"] == {0: pytest.approx(0.2), 1: pytest.approx(-0.1)}
    assert d["mean"] == pytest.approx(0.05) and d["unpaired"] == 1
    assert d["ci"][0] == pytest.approx(-0.1) and d["ci"][1] == pytest.approx(0.2)
    # a named baseline (entropy here; reward in the grid) gets its own dAUC and final-difference columns
    dirs = [_run(tmp_path, "loss", s, a) for s, a in ((0, [0.2, 0.5]), (1, [0.1, 0.3]))]
    dirs += [_run(tmp_path, "entropy", s, a) for s, a in ((0, [0.1, 0.4]), (1, [0.2, 0.4]))]
    summary = write_report(dirs, tmp_path / "report", baselines=("entropy",))
    loss_row = next(r for r in summary["table"] if r["strategy"] == "loss")
    assert loss_row["final_diff_vs_entropy"]["per_seed"] == {0: pytest.approx(0.1),
                                                            1: pytest.approx(-0.1)}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| task | strategy | final accuracy | final - random | final - static | final - entropy |" in md
    assert "dAUC vs entropy" in md and "final_diff_vs_random" not in loss_row


def _strata_rows(accs, selected):
    return [{"accuracy_by_stratum": {"0": a, "1": a / 2, "2": a / 4}, "contaminated": 3 * (i + 1),
             "selected_by_stratum": sel} for i, (a, sel) in enumerate(zip(accs, selected))]


def test_report_and_run_plots_with_and_without_strata(tmp_path):
    accs = [0.2, 0.4, 0.5]
    mix = [{"0": 6, "1": 4}, {"0": 2, "1": 5, "2": 3}, {"2": 10}]
    dirs = [_run(tmp_path, "loss", 0, accs, extra=_strata_rows(accs, mix)),
            _run(tmp_path, "random", 0, [0.1, 0.2, 0.3])]          # an old run: no strata fields
    out = tmp_path / "report"
    summary = write_report(dirs, out)
    assert set(summary["plots"]) == {
        "accuracy_vs_budget_basic_arithmetic.png", "win_rate.png", "strata_basic_arithmetic.png",
        "selection_mix_basic_arithmetic.png"}
    for p in summary["plots"]:
        assert (out / p).stat().st_size > 1000
    loss, rnd = sorted(summary["table"], key=lambda r: r["strategy"])
    assert loss["contaminated_mean"] == 9 and rnd["contaminated_mean"] is None
    # budget per stratum: 8 / 9 / 13 of 30 seeds in all; 2 / 5 / 13 of 20 from round 2 on
    (mix,) = summary["strata"]  # the old run without strata fields has no row
    assert mix["strategy"] == "loss"
    assert [mix["strata"][st]["share"] for st in "012"] == pytest.approx([8 / 30, 9 / 30, 13 / 30])
    assert [mix["strata"][st]["share_later"] for st in "012"] == pytest.approx([0.1, 0.25, 0.65])
    assert [mix["strata"][st]["final_accuracy"] for st in "012"] == pytest.approx([0.5, 0.25, 0.125])
    assert "| basic_arithmetic | loss | 1 | 27% (10%) | 30% (25%) | 43% (65%) | 0.50 / 0.25 / 0.12 |" \
        in (out / "report.md").read_text()
    for d in dirs:
        assert plot_run(d).stat().st_size > 1000
    # a report of old runs alone still writes its curves and no strata plots
    old = write_report(dirs[1:], tmp_path / "old")
    assert old["plots"] == ["accuracy_vs_budget_basic_arithmetic.png"]


def test_experiment_grid_cells_primary_first_and_narrowed(tmp_path):
    from activesyn_ray.experiment import Grid

    g = Grid(seeds=[0, 1, 2, 3], strategies=["random", "learnability", "static", "loss"],
             first=["random", "learnability"], seeds_by_strategy={"static": [0, 1], "loss": [0, 1]},
             tasks={"p1": {}, "p2-level": {"strategies": ["random", "loss"], "seeds": [0],
                                           "teacher.procedural.like": "level"}})
    cells = [(s, t, st) for s, t, st, _ in g.cells()]
    primary = [c for c in cells if c[2] in ("random", "learnability")]
    assert cells[:len(primary)] == primary  # the primary comparison runs first
    assert [c[0] for c in primary] == sorted(c[0] for c in primary)  # seed by seed
    assert (3, "p1", "learnability") in cells and (2, "p1", "static") not in cells
    assert [c for c in cells if c[1] == "p2-level"] == [(0, "p2-level", "random"), (0, "p2-level", "loss")]
    over = {(s, t, st): o for s, t, st, o in g.cells()}
    assert over[(0, "p2-level", "loss")] == {"teacher.procedural.like": "level"}  # reserved keys gone


def test_llm_teacher_runs_are_their_own_group_with_teacher_counts_per_iteration(tmp_path):
    """A run whose teacher is an LLM is never averaged with the procedural teacher's runs; the
    per-iteration teacher table counts replies, parsed, rejected, contaminated and kept."""
    proc = _run(tmp_path, "random", 0, [0.1, 0.2])
    cfg = load_config(None, ["selection.strategy=random", "name=t", "teacher.engine=vllm",
                             "teacher.model=my-teacher", "teacher.verify=true"])
    store = runstore.RunStore(tmp_path / "llm").create(dump_config(cfg))
    store.save_state({"phase": "done"})
    store.append(runstore.METRICS, [{"iteration": i, "samples": 10 * i, "accuracy": 0.1 * i,
                                     "teacher_tokens": 100 * i}
                                    for i in (1, 2)])

    def rec(it, parsed=True, rejected=None, contaminated=None):
        return {"iteration": it, "parsed": parsed, "rejected": rejected,
                "contaminated": contaminated}

    store.append(runstore.SYNTHETIC, [rec(1), rec(1, parsed=False), rec(1, rejected="wrong answer"),
                                      rec(2), rec(2), rec(2, contaminated="exact"),
                                      rec(2, rejected="cannot verify")])
    summary = write_report([proc, store.root], tmp_path / "report")
    assert {r["task"] for r in summary["table"]} == \
        {"basic_arithmetic", "basic_arithmetic / teacher vllm:my-teacher"}
    rows = {r["iteration"]: r for r in summary["teacher"] if "my-teacher" in r["task"]}
    assert {k: rows[1][k] for k in ("replies", "parsed", "rejected", "contaminated", "kept")} == \
        {"replies": 3, "parsed": 2, "rejected": 1, "contaminated": 0, "kept": 1}
    assert {k: rows[2][k] for k in ("replies", "parsed", "rejected", "contaminated", "kept")} == \
        {"replies": 4, "parsed": 4, "rejected": 1, "contaminated": 1, "kept": 2}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| basic_arithmetic / teacher vllm:my-teacher | random | 2 | 1 | 4 | 4 | 1 | 1 | 2 |" in md


def test_budget_ticks_sit_at_the_evaluated_budgets_when_there_are_few():
    import matplotlib.pyplot as plt

    from activesyn_ray.report import _budget_axis

    fig, (a, b) = plt.subplots(1, 2)
    a.plot([0, 16, 32, 48], [0, 1, 2, 3])
    _budget_axis(a, "synthetic samples", points=[0, 16, 32, 48, 16])
    assert list(a.get_xticks()) == [0, 16, 32, 48]
    b.plot(range(0, 1000, 10), range(100))  # 100 budgets: a few round ticks instead
    _budget_axis(b, "synthetic samples", points=range(0, 1000, 10))
    assert len(b.get_xticks()) <= 7
    plt.close(fig)
