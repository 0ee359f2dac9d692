"""What people look at: accuracy-vs-budget curves, per-stratum curves and the selection mix, a
final table with efficiency and area under the curve, pairwise win rates, and the seed-vs-synthetic
score rank correlation -- as PNGs, Markdown and JSON.

Definitions (budget = synthetic samples; S = a strategy, B = a baseline, runs paired by `seed`):
  * **Efficiency of S over B** (the paper's): how much more budget B needs to match S's final
    accuracy. B's curve is made monotone (running max of accuracy) and linearly interpolated between
    budget points; ratio = budget at which it first reaches S's accuracy at S's LAST point / S's
    budget at that point. > 1: B needs more than S spent; a strategy that ends below B gets < 1.
    B's runs may go past S's budget (e.g. to 2x), so the ratio is not capped at 1.00x by B stopping
    where S stops. If B never reaches it, the ratio is a lower bound, B's largest budget / S's
    budget, shown as `> 2.00x`; if B's first point already reaches it, an upper bound (B's first
    budget / S's budget, `≤ 0.20x`). Bounds stay in the mean at their bound value and are counted;
    with lower bounds among the seeds (and no upper ones) the mean and both ends of its interval
    are lower bounds too, shown as `> 1.67x [1.50, 2.00]` (upper bounds alike with `≤`; with
    both kinds the mean is neither). **Efficiency per seed** lists every seed's numbers; the
    `efficiency_TASK_S.png` figures show S's and B's mean curves (95% intervals over the paired
    seeds), S's final mean accuracy and where B's mean curve reaches it, for each B whose runs go
    past S's budget.
  * **AUC** = area under the accuracy-vs-budget curve (trapezoid, linear between budget points) over
    the budget range every run of the task covers, divided by that range's width: a mean accuracy.
    **dAUC vs B** = S's AUC minus B's AUC, per seed.
  * **Final - B** = S's accuracy at its last point minus B's at that same budget (linear between
    B's points; B's last point if B stopped earlier), per seed: the fixed-budget comparison, which
    never credits B with the samples it spent past S's budget. Baselines B: random and static, plus
    any strategy named with `--baseline` (e.g. reward, to compare loss with it).
  * Summaries over seeds are the mean with a 95% percentile bootstrap interval (10,000 resamples of
    the seeds, fixed RNG seed); with one seed, the single value and no interval.
  * **Win rate of S over T** = share of budget points both reached where S's mean accuracy over
    seeds is higher than T's (ties count one half); per task, and across tasks over all
    (task, budget point) pairs (paper Fig. 5).
  * **Seed-vs-synthetic rank correlation** (paper Fig. 2): the score of each selected seed against
    the score of the synthetic sample made from it, under the student that selected it. Never pooled
    across iterations, where one round's scale (e.g. a random-weights student) would dominate:
    *dataset-level rho* = Spearman over one point per (run, iteration), the (median seed score,
    median sample score) of that iteration; *within-iteration rho* = Spearman inside each
    (run, iteration), averaged over them (n = iterations with a defined rho).
  * **Contaminated** = synthetic samples dropped for matching a test question (mean per run).
  * Runs are grouped by task; a run whose teacher is an LLM (teacher.engine not procedural) forms
    its own group, `TASK / teacher ENGINE:MODEL`, so a teacher comparison is never averaged away.
  * **Teacher output per iteration** (summed over a group's runs): replies = completed teacher
    requests, parsed = replies that parsed as a sample, rejected = parsed samples the task's
    verifier refused (teacher.verify: wrong or uncheckable answer), contaminated = samples matching
    a held-out question, kept = the rest, the samples the student trains on.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator  # noqa: E402

from activesyn_ray import runstore  # noqa: E402
from activesyn_ray.runstore import RunStore, atomic_write_json, atomic_write_text  # noqa: E402

BASELINES = ("random", "static")
BOOTSTRAP_RESAMPLES = 10_000
BUDGET = "samples"  # the x axis of every metric here


def load_run(run_dir: Path) -> dict:
    """One run directory as the report (and the studies) read it: task group, strategy, seed,
    metrics rows, synthetic scores, teacher counts."""
    store = RunStore(run_dir)
    cfg = yaml.safe_load(store.path(runstore.CONFIG).read_text())
    metrics = store.read(runstore.METRICS)
    scores = [r for r in store.read(runstore.SCORES) if r.get("kind") == "synthetic"]
    synthetic = store.read(runstore.SYNTHETIC)
    task = cfg["task"].get("name") if cfg["task"].get("kind", "gym") == "gym" else cfg["task"]["kind"]
    teacher = cfg.get("teacher") or {}
    if teacher.get("engine", "procedural") != "procedural":  # an LLM teacher is its own group
        task += f" / teacher {teacher['engine']}:{teacher.get('model')}"
    # What a stratum is called on plots: a gym task's difficulty level (as the console says), or
    # the data column an hf/file task was told to break down by.
    stratum_name = cfg["task"].get("stratum_field") or "level"
    return {"dir": str(run_dir), "name": cfg.get("name"), "task": task, "stratum_name": stratum_name,
            "strategy": cfg["selection"]["strategy"], "seed": cfg.get("seed", 0),
            "metrics": metrics, "synthetic_scores": scores,
            "teacher_counts": teacher_counts(synthetic),
            "staleness": [r.get("staleness", 0) for r in synthetic]}  # loop.pipeline


TEACHER_COUNTS = ("replies", "parsed", "rejected", "contaminated", "kept")


def teacher_counts(records: list[dict]) -> dict[int, dict[str, int]]:
    """Per iteration: what the teacher's replies became (module docstring), from synthetic.jsonl."""
    out: dict[int, dict[str, int]] = {}
    for r in records:
        c = out.setdefault(int(r["iteration"]), dict.fromkeys(TEACHER_COUNTS, 0))
        bad = [not r["parsed"], bool(r.get("rejected")), bool(r.get("contaminated"))]
        c["replies"] += 1
        c["parsed"] += not bad[0]
        c["rejected"] += bad[1]
        c["contaminated"] += bad[2]
        c["kept"] += not any(bad)
    return out


def teacher_table(groups: dict[tuple[str, str], list[dict]]) -> list[dict]:
    """One row per (task, strategy, iteration), counts summed over the group's runs."""
    rows = []
    for (task, strategy), runs in sorted(groups.items()):
        its = sorted({it for r in runs for it in r["teacher_counts"]})
        for it in its:
            have = [r["teacher_counts"][it] for r in runs if it in r["teacher_counts"]]
            rows.append({"task": task, "strategy": strategy, "iteration": it, "runs": len(have),
                         **{k: sum(c[k] for c in have) for k in TEACHER_COUNTS}})
    return rows


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _savefig(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)  # atomic, like every other file of a run


def _budget_axis(ax, label: str, rotate: bool = False, points=()) -> None:
    """Ticks at the evaluated budgets when there are few of them (0, 16, 32, 48, not 0, 15, 30,
    45); otherwise few enough ticks, with thousands separators, that 1,250,000 does not collide."""
    points = sorted(set(points))
    if 1 < len(points) <= 8:
        ax.xaxis.set_major_locator(FixedLocator(points))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4 if rotate else 5, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    if rotate:
        ax.tick_params(axis="x", labelrotation=25)
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)


def _budgets(runs: list[dict]) -> list[float]:
    return [r[BUDGET] for run in runs for r in run["metrics"]]


def plot_run(run_dir: str | Path) -> Path | None:
    """plots/accuracy_vs_budget.png for one run (rewritten after every evaluation): accuracy vs
    samples and vs teacher tokens, plus accuracy per stratum when the metrics carry it."""
    run = load_run(Path(run_dir))
    m = run["metrics"]
    if not m:
        return None
    strata = _strata([run])
    fig, axes = plt.subplots(1, 3 if strata else 2, figsize=(14 if strata else 10, 3.8))
    for ax, key, label in ((axes[0], "samples", "synthetic samples"),
                           (axes[1], "teacher_tokens", "teacher tokens")):
        ax.plot([r[key] for r in m], [r["accuracy"] for r in m], "o-", label=run["strategy"])
        _budget_axis(ax, label, rotate=key == "teacher_tokens",
                     points=_budgets([run]) if key == BUDGET else ())
        ax.set_ylabel("test accuracy")
    axes[0].legend()
    if strata:
        for s in strata:
            pts = [(r["samples"], r["accuracy_by_stratum"][s]) for r in m
                   if s in (r.get("accuracy_by_stratum") or {})]
            axes[2].plot(*zip(*pts), "o-", ms=3, label=f"{run['stratum_name']} {s}")
        _budget_axis(axes[2], "synthetic samples", points=_budgets([run]))
        axes[2].set_ylabel("test accuracy")
        axes[2].legend(fontsize=8)
    fig.suptitle(f"{run['name']} — {run['task']} — {run['strategy']} (seed {run['seed']})")
    out = Path(run_dir) / "plots" / "accuracy_vs_budget.png"
    out.parent.mkdir(exist_ok=True)
    _savefig(fig, out)
    return out


# ------------------------------------------------------------------------------------- curves
def _curve(run: dict, key: str = BUDGET) -> tuple[np.ndarray, np.ndarray]:
    m = sorted(run["metrics"], key=lambda r: r[key])
    return np.array([r[key] for r in m], float), np.array([r["accuracy"] for r in m], float)


def budget_to_reach(x: np.ndarray, y: np.ndarray, target: float) -> tuple[float, str | None]:
    """Budget at which the running max of y first reaches `target`, linear between points.
    Returns (budget, bound): bound None when it is crossed, "lower" when never reached (budget =
    the largest one: the true need is more), "upper" when the first point already reaches it."""
    best = np.maximum.accumulate(y)
    hit = np.nonzero(best >= target - 1e-12)[0]
    if not len(hit):
        return float(x[-1]), "lower"
    i = int(hit[0])
    if i == 0:
        return float(x[0]), "upper"
    frac = np.clip((target - best[i - 1]) / (best[i] - best[i - 1]), 0.0, 1.0)
    return float(x[i - 1] + frac * (x[i] - x[i - 1])), None


def efficiency_ratio(run_s: dict, run_b: dict, key: str = BUDGET) -> dict:
    """B's budget to match S's final accuracy / S's budget, for one pair of runs."""
    xs, ys = _curve(run_s, key)
    xb, yb = _curve(run_b, key)  # all of B's curve: it may run past S's budget (e.g. to 2x)
    # S's target is its accuracy at its last point, not its running max: the best of several noisy
    # evaluations is biased upwards, and would let a strategy that ends below B score > 1.
    need, bound = budget_to_reach(xb, yb, float(ys[-1]))
    return {"ratio": need / xs[-1], "bound": bound, "target": float(ys[-1]),
            "baseline_budget": need, "strategy_budget": float(xs[-1]),
            "baseline_max": float(xb[-1])}


def bootstrap_mean(values: list[float], resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0) -> dict:
    """Mean and 95% percentile bootstrap interval over the values (seeds); no interval for one.
    The one bootstrap of the package: the report's summaries and activesyn_ray/studies' too."""
    v = np.asarray(values, float)
    if not len(v):
        return {"mean": None, "ci": None, "n": 0}
    ci = None
    if len(v) > 1:
        idx = np.random.default_rng(seed).integers(0, len(v), size=(resamples, len(v)))
        lo, hi = np.percentile(v[idx].mean(axis=1), [2.5, 97.5])
        ci = [float(lo), float(hi)]
    return {"mean": float(v.mean()), "ci": ci, "n": len(v)}


def paired_runs(runs_s: list[dict], runs_b: list[dict]) -> tuple[list[tuple[dict, dict]], int]:
    """(S run, B run) pairs with the same seed, both with metrics, in the order of `runs_s`; and
    how many S runs with metrics had no B run of their seed. The one pairing of the package: every
    paired difference of the report and the studies is taken over these pairs."""
    base = {}
    for r in runs_b:
        if r["metrics"]:
            base.setdefault(r["seed"], r)
    pairs = [(r, base[r["seed"]]) for r in runs_s if r["metrics"] and r["seed"] in base]
    return pairs, sum(1 for r in runs_s if r["metrics"]) - len(pairs)


def efficiency(runs_s: list[dict], runs_b: list[dict], key: str = BUDGET) -> dict:
    """Per-seed efficiency ratios of S over B, their mean and bootstrap interval, bound counts."""
    pairs, unpaired = paired_runs(runs_s, runs_b)
    per_seed = {s["seed"]: efficiency_ratio(s, b, key) for s, b in pairs}
    out = bootstrap_mean([e["ratio"] for e in per_seed.values()])
    lower = sum(e["bound"] == "lower" for e in per_seed.values())
    upper = sum(e["bound"] == "upper" for e in per_seed.values())
    out.update(lower_bounds=lower, upper_bounds=upper, mean_bound=_mean_bound(lower, upper),
               unpaired=unpaired, per_seed=per_seed)
    return out


def _mean_bound(lower: int, upper: int) -> str | None:
    """What a mean that counts bounded seeds at their bound value is. A seed's true ratio lies above
    its lower bound, so every resample's true mean does too: with lower bounds only, the mean and
    both ends of its interval are lower bounds ("lower"); upper alike; with both kinds, neither."""
    return "mixed" if lower and upper else "lower" if lower else "upper" if upper else None


def common_range(runs: list[dict], key: str = BUDGET) -> tuple[float, float] | None:
    """The budget range every run covers (None if they do not overlap)."""
    curves = [_curve(r, key)[0] for r in runs if r["metrics"]]
    if not curves:
        return None
    lo, hi = max(c[0] for c in curves), min(c[-1] for c in curves)
    return (lo, hi) if lo <= hi else None


def auc(run: dict, lo: float, hi: float, key: str = BUDGET) -> float:
    """Mean accuracy over [lo, hi]: trapezoid under the linearly interpolated curve / width."""
    x, y = _curve(run, key)
    if hi == lo:
        return float(np.interp(lo, x, y))
    xs = np.concatenate([[lo], x[(x > lo) & (x < hi)], [hi]])
    return float(np.trapezoid(np.interp(xs, x, y), xs) / (hi - lo))


def auc_difference(runs_s: list[dict], runs_b: list[dict], lo: float, hi: float) -> dict:
    """Paired (same seed) AUC difference S - B, mean and bootstrap interval over seeds."""
    pairs, unpaired = paired_runs(runs_s, runs_b)
    per_seed = {s["seed"]: auc(s, lo, hi) - auc(b, lo, hi) for s, b in pairs}
    return {**bootstrap_mean(list(per_seed.values())), "unpaired": unpaired, "per_seed": per_seed}


def final_difference(runs_s: list[dict], runs_b: list[dict]) -> dict:
    """Paired (same seed) S's accuracy at its last point minus B's at that budget, over seeds."""
    pairs, unpaired = paired_runs(runs_s, runs_b)
    per_seed = {}
    for s, b in pairs:
        budget, accuracy = _final(s)
        per_seed[s["seed"]] = accuracy - _accuracy_at(b, budget)
    return {**bootstrap_mean(list(per_seed.values())), "unpaired": unpaired, "per_seed": per_seed}


def _final(run: dict) -> tuple[float, float]:
    """(budget, accuracy) at the run's last point."""
    x, y = _curve(run)
    return float(x[-1]), float(y[-1])


def _accuracy_at(run: dict, budget: float) -> float:
    """Accuracy at `budget`, linear between points (the last point past the run's end): a baseline
    that ran past S's budget is compared where S stopped, not credited with its extra samples."""
    return float(np.interp(budget, *_curve(run)))


def _by_budget(runs: list[dict], value=lambda r: r["accuracy"]) -> dict[float, list[float]]:
    """x -> the values of the runs that have one there, in budget order."""
    by_x: dict[float, list[float]] = defaultdict(list)
    for run in runs:
        for r in run["metrics"]:
            v = value(r)
            if v is not None:
                by_x[float(r[BUDGET])].append(v)
    return dict(sorted(by_x.items()))


def _mean_curve(runs: list[dict], value=lambda r: r["accuracy"]) -> dict[float, tuple[float, float]]:
    """x -> (mean, std) over the runs that have a value there."""
    return {x: (float(np.mean(v)), float(np.std(v))) for x, v in _by_budget(runs, value).items()}


def _ci_curve(runs: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, mean accuracy over the runs, its 95% bootstrap interval (the mean alone for one run)."""
    stats = {x: bootstrap_mean(v) for x, v in _by_budget(runs).items()}
    m = [s["mean"] for s in stats.values()]
    lo, hi = zip(*(s["ci"] or (s["mean"], s["mean"]) for s in stats.values()))
    return np.array(list(stats)), np.array(m), np.array(lo), np.array(hi)


# ------------------------------------------------------------------------------ rank correlation
def spearman(a, b) -> tuple[float | None, float | None]:
    """(rho, p) of Spearman's rank correlation; (None, None) under 3 points or for constant input."""
    from scipy.stats import spearmanr

    if len(a) < 3:
        return None, None
    with warnings.catch_warnings():  # constant input (e.g. an untrained student) -> nan, dropped
        warnings.simplefilter("ignore")
        rho, p = spearmanr(a, b)
    return (None, None) if math.isnan(rho) else (float(rho), float(p))


def _by_iteration(runs: list[dict]) -> list[list[dict]]:
    """Synthetic score rows grouped per (run, iteration); rows without an iteration form one group."""
    groups = []
    for run in runs:
        by_it: dict = defaultdict(list)
        for r in run["synthetic_scores"]:
            by_it[r.get("iteration")].append(r)
        groups += [by_it[k] for k in sorted(by_it, key=str)]
    return groups


def dataset_spearman(runs: list[dict]) -> dict:
    """Spearman over (median seed score, median sample score) of each (run, iteration)."""
    pts = [(np.median([r["seed_score"] for r in g]), np.median([r["sample_score"] for r in g]))
           for g in _by_iteration(runs)]
    rho, p = spearman([a for a, _ in pts], [b for _, b in pts])
    return {"rho": rho, "p": p, "n": len(pts)}


def within_iteration_spearman(runs: list[dict]) -> dict:
    """Spearman inside each (run, iteration), averaged over those where it is defined."""
    rhos = [spearman([r["seed_score"] for r in g], [r["sample_score"] for r in g])[0]
            for g in _by_iteration(runs)]
    rhos = [r for r in rhos if r is not None]
    return {"rho": float(np.mean(rhos)) if rhos else None, "n": len(rhos),
            "min": min(rhos, default=None), "max": max(rhos, default=None)}


# ------------------------------------------------------------------------------------ win rates
def win_rates(groups: dict[tuple[str, str], list[dict]],
              strategies: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Row-beats-column share over all (task, shared budget point) pairs in `groups`."""
    strategies = strategies or sorted({s for _, s in groups})
    wins = np.zeros((len(strategies), len(strategies)))
    counts = np.zeros_like(wins)
    for t in sorted({t for t, _ in groups}):
        curves = {s: _mean_curve(groups[(t, s)]) for s in strategies if (t, s) in groups}
        for i, a in enumerate(strategies):
            for j, b in enumerate(strategies):
                if i == j or a not in curves or b not in curves:
                    continue
                for x in set(curves[a]) & set(curves[b]):
                    ya, yb = curves[a][x][0], curves[b][x][0]
                    wins[i, j] += 1.0 if ya > yb else 0.5 if ya == yb else 0.0
                    counts[i, j] += 1
    with np.errstate(invalid="ignore"):
        return strategies, np.where(counts > 0, wins / np.maximum(counts, 1), np.nan)


# -------------------------------------------------------------------------------------- strata
def _strata(runs: list[dict]) -> list[str]:
    return sorted({s for run in runs for r in run["metrics"]
                   for s in (r.get("accuracy_by_stratum") or {})}, key=_natural)


def _natural(s: str):
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def selection_mix(runs: list[dict]) -> dict[int, dict[str, float]]:
    """iteration -> share of each stratum among the seeds selected then (summed over runs)."""
    counts: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for run in runs:
        for r in run["metrics"]:
            for s, c in (r.get("selected_by_stratum") or {}).items():
                counts[r["iteration"]][s] += c
    return {it: {s: c / total for s, c in mix.items()}
            for it, mix in sorted(counts.items()) if (total := sum(mix.values())) > 0}


def strata_rows(groups: dict[tuple[str, str], list[dict]]) -> list[dict]:
    """Per (task, strategy) with strata: each stratum's share of all selected seeds, its share in
    rounds 2+ (where a student-in-the-loop strategy has a trained student to look at), and its
    final accuracy (mean over runs)."""
    rows = []
    for (task, strategy), runs in sorted(groups.items()):
        strata = _strata(runs)
        if not strata:
            continue
        picked, later = defaultdict(float), defaultdict(float)
        for run in runs:
            for r in run["metrics"]:
                for st, c in (r.get("selected_by_stratum") or {}).items():
                    picked[st] += c
                    later[st] += c if r["iteration"] >= 2 else 0
        finals = {st: [run["metrics"][-1].get("accuracy_by_stratum", {}).get(st)
                       for run in runs if run["metrics"]] for st in strata}
        share = lambda d, st: d[st] / sum(d.values()) if sum(d.values()) else None  # noqa: E731
        rows.append({"task": task, "strategy": strategy, "runs": len(runs), "strata": {
            st: {"share": share(picked, st), "share_later": share(later, st),
                 "final_accuracy": float(np.mean(v)) if (v := [a for a in finals[st]
                                                               if a is not None]) else None}
            for st in strata}})
    return rows


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.0f}%"


def _panels(n: int, width: float, height: float):
    """A grid of n panels, at most 4 a row (nine strategies stay readable); spare ones hidden."""
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             sharey=True, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _plot_strata(task: str, groups: dict[str, list[dict]], out: Path) -> list[str]:
    """Per-stratum accuracy curves (one panel per stratum) and the selection mix (one per
    strategy), for the strategies whose metrics carry those fields."""
    pngs = []
    runs = [r for rs in groups.values() for r in rs]
    strata = _strata(runs)
    name = runs[0].get("stratum_name", "stratum") if runs else "stratum"
    if strata:
        fig, axes = _panels(len(strata), 4.2, 3.4)
        for ax, st in zip(axes, strata):
            for s, rs in sorted(groups.items()):
                c = _mean_curve(rs, lambda r: (r.get("accuracy_by_stratum") or {}).get(st))
                if c:
                    ax.plot(list(c), [v[0] for v in c.values()], "o-", ms=3, label=s)
            ax.set_title(f"{name} {st}")
            _budget_axis(ax, "synthetic samples", points=_budgets(runs))
        axes[0].set_ylabel("test accuracy (mean over seeds)")
        axes[-1].legend(fontsize=8)
        fig.suptitle(f"{task}: accuracy per {name}")
        pngs.append(f"strata_{_slug(task)}.png")
        _savefig(fig, out / pngs[-1])
    mixes = {s: m for s, rs in sorted(groups.items()) if (m := selection_mix(rs))}
    if mixes:
        names = sorted({st for m in mixes.values() for mix in m.values() for st in mix}, key=_natural)
        colors = dict(zip(names, plt.get_cmap("tab10").colors))
        fig, axes = _panels(len(mixes), 3.4, 3.0)
        for ax, (s, mix) in zip(axes, mixes.items()):
            its = list(mix)
            bottom = np.zeros(len(its))
            for st in names:
                share = np.array([mix[it].get(st, 0.0) for it in its])
                ax.bar(its, share, bottom=bottom, color=colors.get(st), label=f"{name} {st}")
                bottom += share
            ax.set_title(s)
            ax.set_xlabel("iteration")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
        axes[0].set_ylabel("share of selected seeds")
        axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.suptitle(f"{task}: selection mix over iterations")
        pngs.append(f"selection_mix_{_slug(task)}.png")
        _savefig(fig, out / pngs[-1])
    return pngs


# -------------------------------------------------------------------------------------- output
def _plot_curves(task: str, groups: dict[str, list[dict]], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for s, rs in sorted(groups.items()):
        c = _mean_curve(rs)
        x = np.array(list(c))
        y, e = np.array([v[0] for v in c.values()]), np.array([v[1] for v in c.values()])
        ax.plot(x, y, "o-", label=f"{s} (n={len(rs)})")
        ax.fill_between(x, y - e, y + e, alpha=0.15)
    _budget_axis(ax, "synthetic samples (budget spent)",
                 points=_budgets([r for rs in groups.values() for r in rs]))
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title(f"{task}: accuracy vs budget")
    ax.legend(fontsize=8)
    name = f"accuracy_vs_budget_{_slug(task)}.png"
    _savefig(fig, out / name)
    return name


def _mean_run(runs: list[dict]) -> dict:
    """The runs' mean curve over seeds as a run, for efficiency_ratio."""
    return {"metrics": [{BUDGET: x, "accuracy": m} for x, (m, _) in _mean_curve(runs).items()]}


def _efficiency_panel(ax, strategy: str, base: str, runs_s: list[dict], runs_b: list[dict],
                      e: dict, at: dict) -> None:
    """S's and B's mean curves with 95% intervals, S's final mean accuracy, and where B's mean
    curve first reaches it (`at`: efficiency_ratio of the mean curves, the rule used per seed)."""
    for name, rs, color in ((strategy, runs_s, "C0"), (base, runs_b, "C1")):
        x, m, lo, hi = _ci_curve(rs)
        ax.plot(x, m, "o-", ms=3, color=color, label=f"{name} (n={len(rs)})")
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
    ax.axhline(at["target"], color="C0", ls="--", lw=1,
               label=f"{strategy} final: {at['target']:.3f} at {at['strategy_budget']:,.0f}")
    mark = BOUND_MARK[at["bound"]]
    if at["bound"] == "lower":
        note = (f"{base}'s mean never reaches it\nwithin {at['baseline_max']:,.0f} "
                f"({mark}{at['ratio']:.2f}x)")
    else:
        ax.axvline(at["baseline_budget"], color="C1", ls=":", lw=1.5)
        ax.plot([at["baseline_budget"]], [at["target"]], "o", color="k", ms=4, zorder=5)
        note = (f"{base}'s mean reaches it at {mark}{at['baseline_budget']:,.0f}\n"
                f"= {mark}{at['ratio']:.2f}x {strategy}'s budget")
    note += f"\nper seed: {fmt_efficiency(e)}"
    ax.set_title(f"vs {base}", fontsize=10)
    _budget_axis(ax, "synthetic samples", points=_budgets(runs_s + runs_b))
    # rising curves leave the lower right empty: legend and reading there, in one box
    ax.legend(fontsize=7.5, loc="lower right", title=note, title_fontsize=7.5, alignment="right",
              framealpha=1)


def _plot_efficiency(task: str, strategy: str, panels: dict, out: Path) -> str:
    """efficiency_TASK_S.png: one panel per baseline (the paper's budget-efficiency figure)."""
    fig, axes = _panels(len(panels), 5.2, 4.0)
    for ax, (base, panel) in zip(axes, panels.items()):
        _efficiency_panel(ax, strategy, base, *panel)
    axes[0].set_ylabel("test accuracy (mean, 95% CI over seeds)")
    fig.suptitle(f"{task}: {strategy}'s budget efficiency")
    name = f"efficiency_{_slug(task)}_{_slug(strategy)}.png"
    _savefig(fig, out / name)
    return name


def _efficiency_panels(strategy: str, g: dict[str, list[dict]], row: dict,
                       baselines: tuple[str, ...]) -> dict:
    """baseline -> (S runs, B runs, efficiency, mean-curve reading) over the paired seeds, for the
    baselines whose runs go past S's budget (where the ratio can exceed 1). None for random and
    static themselves: the figure is about a strategy beating them."""
    panels = {}
    for b in baselines:
        if strategy in BASELINES or f"efficiency_vs_{b}" not in row:
            continue
        pairs, _ = paired_runs(g[strategy], g[b])
        runs_s, runs_b = [s for s, _ in pairs], [b_ for _, b_ in pairs]
        if pairs and max(_budgets(runs_b)) > max(_budgets(runs_s)):
            at = efficiency_ratio(_mean_run(runs_s), _mean_run(runs_b))
            panels[b] = (runs_s, runs_b, row[f"efficiency_vs_{b}"], at)
    return panels


def _plot_win_rate(strategies: list[str], wr: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(strategies), 1 + 0.7 * len(strategies)))
    im = ax.imshow(wr, vmin=0, vmax=1, cmap="RdYlGn")
    ax.set_xticks(range(len(strategies)), strategies, rotation=45, ha="right")
    ax.set_yticks(range(len(strategies)), strategies)
    for i in range(len(strategies)):
        for j in range(len(strategies)):
            if not np.isnan(wr[i, j]):
                ax.text(j, i, f"{wr[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title("win rate (row beats column), all tasks")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _savefig(fig, path)


def _fmt(v, d=3) -> str:
    return "—" if v is None else f"{v:.{d}f}"


def _fmt_ci(s: dict | None, d=3, unit="", notes=()) -> str:
    """mean [95% interval] (n=..; notes)"""
    if not s or s.get("mean") is None:
        return "—"
    ci = f" [{s['ci'][0]:.{d}f}, {s['ci'][1]:.{d}f}]" if s["ci"] else ""
    return f"{s['mean']:.{d}f}{unit}{ci} (" + "; ".join([f"n={s['n']}", *notes]) + ")"


BOUND_MARK = {"lower": "> ", "upper": "≤ ", "mixed": "", None: ""}  # what a bounded value is


def _stale_share(runs: list[dict]) -> float | None:
    """Share of the runs' samples selected from scores one or more adapters old (pipelined)."""
    stale = [st > 0 for run in runs for st in run.get("staleness", [])]
    return float(np.mean(stale)) if stale else None


def fmt_efficiency(e: dict | None, explain: bool = False) -> str:
    """mean [interval] (n; bounds), marked > / ≤ when the mean is a bound; `explain` says so in
    words too (the per-seed table, where a reader checks the headline number)."""
    if not e or e["mean"] is None:
        return "—"
    n, mark = e["n"], BOUND_MARK[e["mean_bound"]]
    if n in (e["lower_bounds"], e["upper_bounds"]):  # every seed a bound of one kind: the mean too
        return f"{mark}{e['mean']:.2f}x" + (f" (n={n})" if n > 1 else "")
    notes = [f"{k} {what} bound{'s' * (k > 1)}" for k, what in ((e["lower_bounds"], "lower"),
                                                              (e["upper_bounds"], "upper")) if k]
    if explain and e["mean_bound"]:
        notes.append("the mean is neither bound" if e["mean_bound"] == "mixed" else
                     f"mean and interval are {e['mean_bound']} bounds")
    if e["unpaired"]:
        notes.append(f"{e['unpaired']} without a paired seed")
    return mark + _fmt_ci(e, 2, "x", notes)


EFFICIENCY_HEADER = ["task", "strategy", "vs", "seed", "strategy budget",
                     "strategy final accuracy", "baseline budget needed", "baseline ran to",
                     "efficiency"]


def efficiency_table(rows: list[dict], baselines: tuple[str, ...]) -> list[str]:
    """Efficiency per seed (the numbers behind the headline ratio) and a mean row per (task,
    strategy, baseline); no lines when no strategy has a baseline to compare with."""
    out = []
    for r in rows:
        for b in baselines:
            e = r.get(f"efficiency_vs_{b}")
            if not e or not e["n"]:
                continue
            for seed, p in sorted(e["per_seed"].items()):
                mark = BOUND_MARK[p["bound"]]
                out.append([r["task"], r["strategy"], b, seed, f"{p['strategy_budget']:,.0f}",
                            _fmt(p["target"]), f"{mark}{p['baseline_budget']:,.0f}",
                            f"{p['baseline_max']:,.0f}", f"{mark}{p['ratio']:.2f}x"])
            target = np.mean([p["target"] for p in e["per_seed"].values()])
            out.append([r["task"], r["strategy"], b, "**mean**", "", _fmt(target), "", "",
                        fmt_efficiency(e, explain=True)])
    return _table(EFFICIENCY_HEADER, out) if out else []


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|",
            *["| " + " | ".join(str(c) for c in r) + " |" for r in rows]]


def _win_table(strategies: list[str], wr: np.ndarray) -> list[str]:
    return _table(["", *strategies], [[s, *("—" if np.isnan(v) else f"{v:.2f}" for v in wr[i])]
                                      for i, s in enumerate(strategies)])


def write_report(run_dirs: list[str | Path], out: str | Path,
                 baselines: tuple[str, ...] = BASELINES) -> dict:
    """report.md, report.json and PNGs in `out` for the given run directories; paired differences
    against each strategy in `baselines` that the runs have."""
    baselines = tuple(dict.fromkeys((*BASELINES, *baselines)))  # random, static always; no repeats
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(Path(d)) for d in run_dirs]
    by_task: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        by_task[r["task"]][r["strategy"]].append(r)
    groups = {(t, s): rs for t, g in by_task.items() for s, rs in g.items()}

    rows, pngs, ranges = [], [], {}
    for t, g in sorted(by_task.items()):
        pngs.append(_plot_curves(t, g, out))
        pngs += _plot_strata(t, g, out)
        ranges[t] = rng = common_range([r for rs in g.values() for r in rs])
        for s, rs in sorted(g.items()):
            done = [r for r in rs if r["metrics"]]
            finals = [r["metrics"][-1]["accuracy"] for r in done]
            contaminated = [r["metrics"][-1]["contaminated"] for r in done
                            if r["metrics"][-1].get("contaminated") is not None]
            row = {"task": t, "strategy": s, "runs": len(rs),
                   "final_accuracy_mean": float(np.mean(finals)) if finals else None,
                   "final_accuracy_std": float(np.std(finals)) if finals else None,
                   "samples": max((r["metrics"][-1]["samples"] for r in done), default=None),
                   "teacher_tokens": max((r["metrics"][-1]["teacher_tokens"] for r in done),
                                         default=None),
                   "contaminated_mean": float(np.mean(contaminated)) if contaminated else None,
                   # teacher.cache: tokens paid vs served from the cache, summed over the runs
                   **{f"teacher_tokens_{k}_sum": sum(r["metrics"][-1].get(f"teacher_tokens_{k}", 0)
                                                     for r in done) for k in ("paid", "cached")},
                   # loop.pipeline: the share of samples chosen from scores an adapter old
                   "stale_share": _stale_share(done),
                   "auc_range": list(rng) if rng else None,
                   "auc": bootstrap_mean([auc(r, *rng) for r in done]) if rng else None,
                   "spearman_dataset": dataset_spearman(rs),
                   "spearman_within_iteration": within_iteration_spearman(rs)}
            for base in baselines:
                if base in g and base != s:
                    row[f"efficiency_vs_{base}"] = efficiency(rs, g[base])
                    row[f"auc_diff_vs_{base}"] = auc_difference(rs, g[base], *rng) if rng else None
                    row[f"final_diff_vs_{base}"] = final_difference(rs, g[base])
            if panels := _efficiency_panels(s, g, row, baselines):
                pngs.append(_plot_efficiency(t, s, panels, out))
                for b, (*_, at) in panels.items():  # the figure's numbers, for the paper's text
                    row[f"efficiency_mean_curve_vs_{b}"] = {**at, "figure": pngs[-1]}
            rows.append(row)

    strategies, wr = win_rates(groups)
    per_task_wr = {t: win_rates({k: v for k, v in groups.items() if k[0] == t}, strategies)[1]
                   for t in sorted(by_task)}
    if len(strategies) > 1:
        _plot_win_rate(strategies, wr, out / "win_rate.png")
        pngs.append("win_rate.png")

    main = _table(["task", "strategy", "runs", "final accuracy", "AUC", "efficiency vs random",
                   "efficiency vs static", "contaminated"],
                  [[r["task"], r["strategy"], r["runs"],
                    f"{_fmt(r['final_accuracy_mean'])} ± {_fmt(r['final_accuracy_std'])}",
                    _fmt(r["auc"] and r["auc"]["mean"]), fmt_efficiency(r.get("efficiency_vs_random")),
                    fmt_efficiency(r.get("efficiency_vs_static")), _fmt(r["contaminated_mean"], 1)]
                   for r in rows])
    md = ["# activesyn report", "", __doc__.split("\n\n", 1)[1].strip(), "", *main]
    if any(r["teacher_tokens_cached_sum"] for r in rows):  # a run served from the teacher cache
        md += ["", "Teacher tokens, all runs together: paid vs served from the cache (the budget "
               "counts both).", "", *_table(
                   ["task", "strategy", "paid", "from the cache"],
                   [[r["task"], r["strategy"], r["teacher_tokens_paid_sum"],
                     r["teacher_tokens_cached_sum"]] for r in rows])]
    if any(r["stale_share"] for r in rows):  # pipelined runs
        md += ["", "Pipelined selection (loop.pipeline): share of samples whose seeds were chosen "
               "from scores an adapter old: " + ", ".join(
                   f"{r['task']}/{r['strategy']} {r['stale_share']:.2f}" for r in rows
                   if r["stale_share"] is not None) + "."]
    per_seed = efficiency_table(rows, baselines)
    if per_seed:
        md += ["", "## Efficiency per seed", "",
               "Samples the baseline needs to reach the strategy's accuracy at the strategy's "
               "last point (its curve's running max, linear between points), / the strategy's "
               "budget. `>`: the baseline never got there within the budget it ran to (a lower "
               "bound); `≤`: its first point already had it (an upper bound). The mean row "
               "counts bounds at their bound value (95% bootstrap interval over paired seeds).",
               "", *per_seed]
    md += ["", "## Area under the curve: paired difference to the baselines", "",
           *(f"- {t}: AUC over samples {rng[0]:,.0f}–{rng[1]:,.0f}" if rng else
             f"- {t}: the runs share no budget range, no AUC" for t, rng in sorted(ranges.items())),
           "", *_table(["task", "strategy", "AUC", *(f"dAUC vs {b}" for b in baselines)],
                       [[r["task"], r["strategy"], _fmt_ci(r["auc"]),
                         *(_fmt_ci(r.get(f"auc_diff_vs_{b}")) for b in baselines)]
                        for r in rows])]
    md += ["", "## Final accuracy: paired difference to the baselines (same budget)", "",
           *_table(["task", "strategy", "final accuracy", *(f"final - {b}" for b in baselines)],
                   [[r["task"], r["strategy"], _fmt(r["final_accuracy_mean"]),
                     *(_fmt_ci(r.get(f"final_diff_vs_{b}")) for b in baselines)] for r in rows])]
    teacher_rows = teacher_table(groups)
    md += ["", "## Teacher output per iteration (summed over runs)", "",
           *_table(["task", "strategy", "iteration", "runs", *TEACHER_COUNTS],
                   [[r["task"], r["strategy"], r["iteration"], r["runs"],
                     *(r[k] for k in TEACHER_COUNTS)] for r in teacher_rows])]
    mix_rows = strata_rows(groups)
    if mix_rows:
        md += ["", "## Budget and final accuracy per stratum", "",
               "Share of the selected seeds per stratum over all rounds (rounds 2+ in brackets; "
               "static draws everything at once), and the final accuracy per stratum (mean over "
               "runs).", ""]
        for task in sorted({r["task"] for r in mix_rows}):
            mine = [r for r in mix_rows if r["task"] == task]
            strata = sorted({st for r in mine for st in r["strata"]}, key=_natural)
            name = groups[(task, mine[0]["strategy"])][0].get("stratum_name", "stratum")
            md += _table(["task", "strategy", "runs", *(f"{name} {st}" for st in strata),
                          "final accuracy per " + name],
                         [[task, r["strategy"], r["runs"],
                           *(f"{_pct(r['strata'].get(st, {}).get('share'))} "
                             f"({_pct(r['strata'].get(st, {}).get('share_later'))})"
                             for st in strata),
                           " / ".join(_fmt(r["strata"].get(st, {}).get("final_accuracy"), 2)
                                      for st in strata)] for r in mine]) + [""]
    md += ["", "## Seed-vs-synthetic rank correlation", "",
           *_table(["task", "strategy", "dataset-level rho (points)", "within-iteration rho (n)"],
                   [[r["task"], r["strategy"],
                     f"{_fmt(r['spearman_dataset']['rho'], 2)} ({r['spearman_dataset']['n']})",
                     f"{_fmt(r['spearman_within_iteration']['rho'], 2)} "
                     f"({r['spearman_within_iteration']['n']})"] for r in rows])]
    if len(strategies) > 1:
        md += ["", "## Win rate (row beats column), all tasks", "", *_win_table(strategies, wr)]
        if len(by_task) > 1:
            for t, m in per_task_wr.items():
                md += ["", f"### {t}", "", *_win_table(strategies, m)]
    md += ["", *[f"![{p}]({p})" for p in pngs], ""]
    atomic_write_text(out / "report.md", "\n".join(md))

    def jsonable(m: np.ndarray):
        return [[None if np.isnan(v) else float(v) for v in row] for row in m]

    summary = {"runs": [r["dir"] for r in runs], "table": rows, "teacher": teacher_rows,
               "strata": mix_rows,
               "strategies": strategies,
               "win_rate": jsonable(wr),
               "win_rate_per_task": {t: jsonable(m) for t, m in per_task_wr.items()},
               "plots": pngs}
    atomic_write_json(out / "report.json", summary)
    print("\n".join(main))
    if per_seed:
        print("\nEfficiency per seed\n" + "\n".join(per_seed))
    return summary
