"""What people look at: accuracy-vs-budget curves, final-accuracy and efficiency tables, pairwise
win rates, and the seed-vs-synthetic score rank correlation — as PNGs, Markdown, CSV and JSON.

Definitions (also printed in report.md):
  * efficiency ratio of S over B = budget B needs for its final accuracy / budget S needs to first
    reach that accuracy (> 1: S gets there with fewer samples). Computed per seed (runs paired by
    `seed`) and reported as mean ± std; a seed where S never reaches it counts as "not reached".
  * win rate of S over T = share of (task, budget point) pairs where S's mean accuracy over seeds is
    higher than T's (ties count one half).
  * rank correlation = Spearman's rho between the score of each selected seed and the score of the
    synthetic sample made from it, under the same student (paper Fig. 2).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from activesyn_ray import runstore  # noqa: E402
from activesyn_ray.runstore import RunStore, atomic_write_json, atomic_write_text  # noqa: E402


def _load(run_dir: Path) -> dict:
    store = RunStore(run_dir)
    cfg = yaml.safe_load(store.path(runstore.CONFIG).read_text())
    metrics = store.read(runstore.METRICS)
    scores = [r for r in store.read(runstore.SCORES) if r.get("kind") == "synthetic"]
    task = cfg["task"].get("name") if cfg["task"].get("kind", "gym") == "gym" else cfg["task"]["kind"]
    return {"dir": str(run_dir), "name": cfg.get("name"), "task": task,
            "strategy": cfg["selection"]["strategy"], "seed": cfg.get("seed", 0),
            "metrics": metrics, "synthetic_scores": scores}


def _savefig(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)  # atomic, like every other file of a run


def plot_run(run_dir: str | Path) -> Path | None:
    """plots/accuracy_vs_budget.png for one run (rewritten after every evaluation)."""
    run = _load(Path(run_dir))
    if not run["metrics"]:
        return None
    m = run["metrics"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "samples", "synthetic samples"),
                           (axes[1], "teacher_tokens", "teacher tokens")):
        ax.plot([r[key] for r in m], [r["accuracy"] for r in m], "o-", label=run["strategy"])
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{run['name']} — {run['task']} — {run['strategy']} (seed {run['seed']})")
    out = Path(run_dir) / "plots" / "accuracy_vs_budget.png"
    out.parent.mkdir(exist_ok=True)
    _savefig(fig, out)
    return out


# ----------------------------------------------------------------------------------- analysis
def _curve(run: dict, key: str = "samples") -> tuple[np.ndarray, np.ndarray]:
    m = run["metrics"]
    return np.array([r[key] for r in m], float), np.array([r["accuracy"] for r in m], float)


def budget_to_reach(run: dict, target: float, key: str = "samples") -> float | None:
    x, y = _curve(run, key)
    hit = np.nonzero(y >= target - 1e-12)[0]
    return float(x[hit[0]]) if len(hit) else None


def efficiency(runs_s: list[dict], runs_b: list[dict], key: str = "samples") -> dict:
    """Ratio of baseline budget to strategy budget for the baseline's final accuracy, per seed."""
    base_by_seed = {r["seed"]: r for r in runs_b if r["metrics"]}
    ratios, missed = [], 0
    for r in runs_s:
        b = base_by_seed.get(r["seed"])
        if b is None or not r["metrics"]:
            continue
        target = b["metrics"][-1]["accuracy"]
        need = budget_to_reach(r, target, key)
        if need is None or need == 0:
            missed += need is None
            continue
        ratios.append(b["metrics"][-1][key] / need)
    return {"mean": float(np.mean(ratios)) if ratios else None,
            "std": float(np.std(ratios)) if ratios else None, "n": len(ratios), "not_reached": missed}


def spearman(runs: list[dict]) -> dict:
    from scipy.stats import spearmanr

    seed_s = [r["seed_score"] for run in runs for r in run["synthetic_scores"]]
    samp_s = [r["sample_score"] for run in runs for r in run["synthetic_scores"]]
    if len(seed_s) < 3:
        return {"rho": None, "p": None, "n": len(seed_s)}
    rho, p = spearmanr(seed_s, samp_s)
    return {"rho": None if math.isnan(rho) else float(rho), "p": float(p), "n": len(seed_s)}


def _mean_curve(runs: list[dict]) -> dict[float, tuple[float, float]]:
    by_x: dict[float, list[float]] = defaultdict(list)
    for run in runs:
        for x, y in zip(*_curve(run)):
            by_x[x].append(y)
    return {x: (float(np.mean(v)), float(np.std(v))) for x, v in sorted(by_x.items())}


def win_rates(groups: dict[tuple[str, str], list[dict]]) -> tuple[list[str], np.ndarray]:
    strategies = sorted({s for _, s in groups})
    tasks = sorted({t for t, _ in groups})
    wins = np.zeros((len(strategies), len(strategies)))
    counts = np.zeros_like(wins)
    for t in tasks:
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


# ------------------------------------------------------------------------------------- output
def write_report(run_dirs: list[str | Path], out: str | Path) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [_load(Path(d)) for d in run_dirs]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["task"], r["strategy"])].append(r)
    tasks = sorted({t for t, _ in groups})

    # curves: one PNG per task, mean ± std over seeds
    pngs = []
    for t in tasks:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for (tt, s), rs in sorted(groups.items()):
            if tt != t:
                continue
            c = _mean_curve(rs)
            x = np.array(list(c))
            y = np.array([v[0] for v in c.values()])
            e = np.array([v[1] for v in c.values()])
            ax.plot(x, y, "o-", label=f"{s} (n={len(rs)})")
            ax.fill_between(x, y - e, y + e, alpha=0.15)
        ax.set_xlabel("synthetic samples (budget spent)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{t}: accuracy vs budget")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = out / f"accuracy_vs_budget_{t.replace('+', '_')}.png"
        _savefig(fig, path)
        pngs.append(path.name)

    # tables
    rows = []
    for (t, s), rs in sorted(groups.items()):
        finals = [r["metrics"][-1]["accuracy"] for r in rs if r["metrics"]]
        row = {"task": t, "strategy": s, "runs": len(rs),
               "final_accuracy_mean": float(np.mean(finals)) if finals else None,
               "final_accuracy_std": float(np.std(finals)) if finals else None,
               "samples": max((r["metrics"][-1]["samples"] for r in rs if r["metrics"]), default=None),
               "teacher_tokens": max((r["metrics"][-1]["teacher_tokens"] for r in rs if r["metrics"]),
                                     default=None)}
        for base in ("random", "static"):
            if (t, base) in groups and base != s:
                row[f"efficiency_vs_{base}"] = efficiency(rs, groups[(t, base)])
        row["seed_vs_synthetic_spearman"] = spearman(rs)
        rows.append(row)
    strategies, wr = win_rates(groups)

    if len(strategies) > 1:
        fig, ax = plt.subplots(figsize=(1 + 0.8 * len(strategies), 0.8 + 0.7 * len(strategies)))
        im = ax.imshow(wr, vmin=0, vmax=1, cmap="RdYlGn")
        ax.set_xticks(range(len(strategies)), strategies, rotation=45, ha="right")
        ax.set_yticks(range(len(strategies)), strategies)
        for i in range(len(strategies)):
            for j in range(len(strategies)):
                if not np.isnan(wr[i, j]):
                    ax.text(j, i, f"{wr[i, j]:.2f}", ha="center", va="center", fontsize=8)
        ax.set_title("win rate (row beats column)")
        fig.colorbar(im, ax=ax, fraction=0.046)
        _savefig(fig, out / "win_rate.png")
        pngs.append("win_rate.png")

    def fmt(v, d=3):
        return "—" if v is None else f"{v:.{d}f}"

    def fmt_eff(e):
        if not e or e["mean"] is None:
            return "not reached" if e and e["not_reached"] else "—"
        miss = f", {e['not_reached']} not reached" if e["not_reached"] else ""
        return f"{e['mean']:.2f} ± {e['std']:.2f} (n={e['n']}{miss})"

    md = ["# activesyn report", "", __doc__.split("\n\n", 1)[1].strip(), "",
          "| task | strategy | runs | final accuracy | samples | teacher tokens | efficiency vs random "
          "| efficiency vs static | seed/synthetic Spearman |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = r["seed_vs_synthetic_spearman"]
        md.append(f"| {r['task']} | {r['strategy']} | {r['runs']} | {fmt(r['final_accuracy_mean'])} ± "
                  f"{fmt(r['final_accuracy_std'])} | {r['samples']} | {r['teacher_tokens']} | "
                  f"{fmt_eff(r.get('efficiency_vs_random'))} | {fmt_eff(r.get('efficiency_vs_static'))} | "
                  f"{fmt(sp['rho'], 2)} (n={sp['n']}) |")
    if len(strategies) > 1:
        md += ["", "## Win rate (row beats column, over tasks x budget points)", "",
               "| | " + " | ".join(strategies) + " |", "|---" * (len(strategies) + 1) + "|"]
        for i, s in enumerate(strategies):
            md.append(f"| {s} | " + " | ".join("—" if np.isnan(v) else f"{v:.2f}" for v in wr[i]) + " |")
    md += ["", *[f"![{p}]({p})" for p in pngs], ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    summary = {"runs": [r["dir"] for r in runs], "table": rows, "strategies": strategies,
               "win_rate": [[None if np.isnan(v) else float(v) for v in row] for row in wr],
               "plots": pngs}
    atomic_write_json(out / "report.json", summary)
    print("\n".join(md[4:4 + 2 + len(rows)]))
    return summary
