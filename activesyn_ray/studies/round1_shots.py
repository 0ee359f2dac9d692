"""Round 1 of learnability: how many solved shots let the BASE student's sampled answers rank seeds?

The untrained student does not know the `#### answer` format, so all n of its sampled answers fail
on every seed, p = 0 everywhere, and learnability's first round is uniform. With
selection.learnability.shots = k, k solved seed examples stand before the question in the prompts
of those sampled answers only. This study measures, for each run seed and each k, what the loop's
round-1 scoring would see, on the VALIDATION split (the test split is drawn with the splits, as a
run draws it, and never read):

  * the task's splits built as a run builds them (run_setup.make_splits, the run seed);
  * the base student (no adapter) on the scorer-shard code (student/scoring.py ScorerWorker,
    in this process), the config's learnability n and temperature, the run seed as sampling seed;
  * each validation question's k shots drawn from the SEED POOL by the loop's rule (shot_indices:
    fixed per (run seed, question id), never the same question);
  * p = share of the n answers the task's checker accepts (as StudentPool computes pass_rate).

Per (pool, seed, shots) it writes: `informative` = share of questions with 0 < p < 1 (those
learnability can rank; p = 0 and p = 1 tie at priority 0), `solved` = share with p == 1, mean p,
mean p(1 - p), the same share per level, and the seconds of the scoring call.

RULE (pre-registered in jobs/active/efficiency-cpu.yaml, fixed before this study ran): choose the
shots value with the largest mean informative share (mean over the run seeds within each pool,
then over the pools, each pool weighing the same); every value within TIE (0.02) of that best goes
to the fewest shots among them; if no value reaches FLOOR (0.05), shots stays 0 and round 1 stays
uniform in every arm. One value for the whole grid.

    python -m activesyn_ray.studies.round1_shots jobs/active/efficiency-cpu.yaml \\
        --shots 0,2,4 --seeds 0,1 --out docs/results/active/round1-shots.json

JOB.yaml is an experiment file (every grid task with learnability among its strategies is a pool,
configured as that task's learnability runs are) or a run config (one pool, its `name`).
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import numpy as np

TIE = 0.02
"""Values whose mean informative share is within this of the best go to the fewest shots."""
FLOOR = 0.05
"""Below this mean informative share for every value, shots stays 0."""
STRATEGY = "learnability"


# ------------------------------------------------------------------------------ pure part
def pass_rate_summary(p) -> dict:
    """What one (pool, seed, shots) measured, from the questions' pass rates p."""
    p = np.asarray(p, dtype=np.float64)
    if not len(p):
        return {"n_questions": 0, "informative": 0.0, "solved": 0.0, "mean_p": 0.0, "mean_pq": 0.0}
    return {"n_questions": int(len(p)), "informative": float(np.mean((p > 0) & (p < 1))),
            "solved": float(np.mean(p == 1)), "mean_p": float(p.mean()),
            "mean_pq": float(np.mean(p * (1 - p)))}


def choose_shots(rows: list[dict], *, tie: float = TIE, floor: float = FLOOR) -> dict:
    """The rule (module docstring) over rows {"pool", "seed", "shots", "informative"}. Returns
    {"shots": the choice, "best": the value with the largest mean, "mean_informative": {shots:
    mean over pools of the mean over seeds}, "by_pool": {pool: {shots: mean over seeds}},
    "reason": the rule's words for this outcome}."""
    if not rows:
        raise ValueError("no rows to choose from")
    by_pool: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        by_pool.setdefault(str(r["pool"]), {}).setdefault(int(r["shots"]), []).append(
            float(r["informative"]))
    values = sorted({int(r["shots"]) for r in rows})
    pool_means = {pool: {k: float(np.mean(v)) for k, v in sorted(per.items())}
                  for pool, per in by_pool.items()}
    missing = [(pool, k) for pool in pool_means for k in values if k not in pool_means[pool]]
    if missing:
        raise ValueError(f"every pool needs every shots value; missing (pool, shots): {missing}")
    means = {k: float(np.mean([pool_means[pool][k] for pool in pool_means])) for k in values}
    best = max(values, key=lambda k: (means[k], -k))  # a tie at the top: the fewer shots
    top = means[best]
    if top < floor - 1e-12:
        return {"shots": 0, "best": best, "mean_informative": means, "by_pool": pool_means,
                "reason": f"no value reaches a mean informative share of {floor:.2f} (best: "
                          f"{best} shots, {top:.3f}): shots stays 0, round 1 stays uniform"}
    chosen = min(k for k in values if means[k] >= top - tie - 1e-12)
    why = (f"{chosen} shots: the largest mean informative share ({top:.3f})" if chosen == best else
           f"{chosen} shots: {means[chosen]:.3f}, within {tie:.2f} of the best ({best} shots, "
           f"{top:.3f}), the fewest shots among those")
    return {"shots": chosen, "best": best, "mean_informative": means, "by_pool": pool_means,
            "reason": why}


def validation_shots(pool: list, val: list, k: int, *, seed: int) -> list[list]:
    """For each validation example, the k seed-pool examples its sampled answers are prompted
    with: the loop's rule (selection/learnability.py shot_indices, fixed per (run seed, example
    id), never the same question) with the seed pool as the only candidates."""
    from activesyn_ray.selection.learnability import shot_indices

    if k <= 0:
        return [[] for _ in val]
    # index 0 is the validation example itself (never its own shot); 1.. is the pool
    return [[pool[j - 1] for j in shot_indices([v, *pool], k, seed=seed)[0]] for v in val]


# ------------------------------------------------------------------------------ configs
def pool_configs(job: str | Path, seeds: list[int], extra: list[str] = (),
                 only: list[str] | None = None) -> list[tuple[str, int, object]]:
    """(pool, run seed, RunConfig) to study: for an experiment file, each grid task whose
    strategies include learnability, configured as its learnability runs are (the grid's
    overrides, the task's, learnability's, then `extra`), with the given run seeds; for a run
    config, the file itself (pool = its name)."""
    import yaml

    from activesyn_ray.config import load_config
    from activesyn_ray.experiment import load_experiment

    job = Path(job)
    data = yaml.safe_load(job.read_text()) or {}
    out = []
    if "grid" not in data:
        for s in seeds:
            cfg = load_config(job, [*extra, f"selection.strategy={STRATEGY}", f"seed={s}"])
            out.append((cfg.name, s, cfg))
        return out
    exp, runs = load_experiment(job, list(extra))  # validates every cell first
    first: dict[str, tuple[str, list[str]]] = {}
    for (cell, _), (base, sets) in zip(exp.runs(list(extra)), runs):
        task_name, rest = cell.split("/", 1)
        if rest.rsplit("-s", 1)[0] == STRATEGY:
            first.setdefault(task_name, (base, sets))
    if only:
        if unknown := sorted(set(only) - set(first)):
            raise SystemExit(f"--tasks: {', '.join(unknown)} not a grid task with {STRATEGY} runs "
                             f"({', '.join(first) or 'none'})")
        first = {t: v for t, v in first.items() if t in only}
    if not first:
        raise SystemExit(f"{job}: no grid task runs {STRATEGY}")
    for task_name, (base, sets) in first.items():
        for s in seeds:  # later --sets win: the cell's own seed is replaced
            out.append((task_name, s, load_config(base, [*sets, f"seed={s}"])))
    return out


# ------------------------------------------------------------------------------ measuring
def _pass_rates(worker, task, cfg, pool: list, val: list, k: int) -> tuple[np.ndarray, float]:
    """p per validation question for shots = k, and the seconds of the scoring call."""
    cfg = cfg.model_copy(deep=True)
    cfg.selection.learnability.shots = k
    worker.cfg = cfg  # the run seed (sampling seed) and n, T, shots of this measurement
    items = [{"question": e.question, "answer": task.target(e)} for e in val]
    for item, shots in zip(items, validation_shots(pool, val, k, seed=cfg.seed)):
        if shots:  # as StudentPool._items adds them
            item["shots"] = [{"question": s.question, "target": task.target(s)} for s in shots]
    t0 = time.perf_counter()
    rows = worker.score(items, needs=["pass_rate"])
    secs = time.perf_counter() - t0
    p = np.array([np.mean([task.check_completion(e, t) for t in r["sampled_texts"]])
                  for e, r in zip(val, rows)])  # as StudentPool._columns computes pass_rate
    return p, secs


def measure(configs: list[tuple[str, int, object]], shots: list[int], *,
            threads: int | None = None) -> tuple[list[dict], dict]:
    """One row per (pool, seed, shots); scorers started once per distinct student config."""
    from activesyn_ray.run_setup import make_splits
    from activesyn_ray.student.scoring import ScorerWorker, resolve_inference
    from activesyn_ray.tasks import build_task, stratum

    rows, starts = [], {}
    groups: dict[str, list] = {}
    for pool_name, seed, cfg in configs:
        groups.setdefault(cfg.student.model_dump_json(), []).append((pool_name, seed, cfg))
    for key, members in groups.items():
        cfg0 = members[0][2]
        sc = cfg0.resources.scorers
        n_threads = threads or max(1, int(sc.num_workers * sc.num_cpus))
        t0 = time.perf_counter()
        worker = ScorerWorker(rank=0, world_size=1, num_cpus=n_threads, cfg=cfg0)
        worker.load_adapter(None)  # the base student: round 1 scores before any training
        starts[members[0][0]] = round(time.perf_counter() - t0, 1)
        for pool_name, seed, cfg in members:
            task = build_task(cfg.task, seed=cfg.seed)
            pool, val, _test = make_splits(cfg, task)  # _test: drawn as a run draws it, unread
            if not val:
                raise SystemExit(f"{pool_name}: task.val_size is 0: no validation split to study")
            levels = sorted({stratum(e) for e in val}, key=lambda s: (len(s), s))
            level_of = np.array([stratum(e) for e in val])
            for k in shots:
                p, secs = _pass_rates(worker, task, cfg, pool, val, k)
                by_level = {lv: p[level_of == lv] for lv in levels}
                row = {"pool": pool_name, "seed": seed, "shots": k, **pass_rate_summary(p),
                       "informative_by_level": {lv: float(np.mean((q > 0) & (q < 1)))
                                                for lv, q in by_level.items()},
                       "mean_p_by_level": {lv: float(q.mean()) for lv, q in by_level.items()},
                       "seconds": round(secs, 2), "n": cfg.selection.learnability.n,
                       "temperature": cfg.selection.learnability.temperature,
                       "inference": resolve_inference(cfg.student), "threads": n_threads}
                rows.append(row)
                print(f"{pool_name:>10} seed {seed}  shots {k}: "
                      f"informative {row['informative']:.3f}  solved {row['solved']:.3f}"
                      f"  mean p {row['mean_p']:.3f}  mean p(1-p) {row['mean_pq']:.3f}"
                      f"  ({secs:.0f} s)", flush=True)
        del worker
        gc.collect()
    return rows, starts


def table(rows: list[dict]) -> str:
    head = ("| pool | seed | shots | questions | 0 < p < 1 | p = 1 | mean p | mean p(1-p) "
            "| seconds |")
    lines = [head, "|---" * 9 + "|"]
    for r in rows:
        lines.append(f"| {r['pool']} | {r['seed']} | {r['shots']} | {r['n_questions']} | "
                     f"{r['informative']:.3f} | {r['solved']:.3f} | {r['mean_p']:.3f} | "
                     f"{r['mean_pq']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job", help="experiment file (its grid tasks with learnability) or run config")
    ap.add_argument("--shots", default="0,2,4", help="shots values to compare (comma-separated)")
    ap.add_argument("--seeds", default="0,1", help="run seeds (comma-separated)")
    ap.add_argument("--tasks", default=None, help="only these grid tasks (comma-separated)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="key=value applied to every config (as `activesyn experiment --set`)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the scorer (default: the CPUs of the config's scorers)")
    ap.add_argument("--out", default=None, help="JSON file for the rows and the choice")
    args = ap.parse_args(argv)

    from activesyn_ray.benchmarks import write_result

    shots, seeds = _ints(args.shots), _ints(args.seeds)
    configs = pool_configs(args.job, seeds, args.sets,
                           args.tasks.split(",") if args.tasks else None)
    rows, starts = measure(configs, shots, threads=args.threads)
    choice = choose_shots(rows)
    print()
    print(table(rows))
    print()
    print("mean informative share (over seeds, then pools): " +
          ", ".join(f"{k} shots {v:.3f}" for k, v in choice["mean_informative"].items()))
    print(f"choice: selection.learnability.shots = {choice['shots']} ({choice['reason']})")
    result = {"job": str(args.job), "sets": args.sets, "shots": shots, "seeds": seeds,
              "rule": {"tie": TIE, "floor": FLOOR, "text": __doc__.split("RULE", 1)[1]
                       .split("\n\n", 1)[0].strip()},
              "split": "validation", "student": "base (no adapter)",
              "scorer_start_seconds": starts, "rows": rows, "choice": choice}
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
