"""Per-iteration wall time of the loop, before vs after the fused scorer pass, in one run:

    before  student.fuse_eval_and_score: false, student.overlap_score_synthetic: false
            (evaluate; next iteration: score the pool; score the new samples; then train)
    after   both true (evaluation of round t and the pool's scores for t+1 in one scorer pass;
            the new samples scored on the scorers while the trainer trains)

    python -m activesyn_ray.benchmarks.loop_timing --out loop-timing.json   # jobs/loop-timing-cpu.yaml
    python -m activesyn_ray.benchmarks.loop_timing --job jobs/tiny-cpu.yaml --set budget.samples=48

Each variant is a real `activesyn run` (its own process and Ray), one after the other, on the same
job and seed. Besides the times it checks that both chose the same seeds and reached the same
accuracies (the fused pass changes when the numbers are computed, not what they are), and reads
each run's memory.json (peak RSS per actor kind).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from activesyn_ray.benchmarks import write_result
from activesyn_ray import runstore

VARIANTS = {"before": False, "after": True}


def default_job() -> Path:
    """jobs/loop-timing-cpu.yaml of the checkout this package runs from (or the working dir)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (job := root / "jobs" / "loop-timing-cpu.yaml").exists():
            return job
    raise FileNotFoundError("jobs/loop-timing-cpu.yaml not found (run from a checkout, or --job)")


def iteration_seconds(row: dict) -> float:
    """Wall time of one iteration; iteration 0 (evaluate the starting student) has no wall_s:
    its phases are all it did."""
    return row["wall_s"] if row.get("wall_s") is not None else sum(row["phase_s"].values())


def run_variant(job: Path, fused: bool, sets: list[str], run_dir: Path, log=print) -> dict:
    flags = [f"student.fuse_eval_and_score={str(fused).lower()}",
             f"student.overlap_score_synthetic={str(fused).lower()}", "output.plots=false", *sets]
    cmd = [sys.executable, "-m", "activesyn_ray.cli", "run", str(job), "--run-dir", str(run_dir),
           *sum((["--set", s] for s in flags), [])]
    log(" ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, text=True, capture_output=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"loop run failed: {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-4000:]}")
    store = runstore.RunStore(run_dir)
    rows = store.read(runstore.METRICS)
    memory = run_dir / "memory.json"
    return {
        "fused": fused, "process_s": round(total, 2),
        "loop_s": round(sum(iteration_seconds(m) for m in rows), 2),
        "iterations": [{"iteration": m["iteration"], "wall_s": round(iteration_seconds(m), 2),
                        "phase_s": m["phase_s"], "accuracy": m["accuracy"],
                        "val_accuracy": m.get("val_accuracy")} for m in rows],
        "selected": [(r["request_id"], r["seed_index"]) for r in store.read(runstore.SYNTHETIC)],
        "peak_rss_bytes": json.loads(memory.read_text()) if memory.exists() else {}}


def compare(before: dict, after: dict) -> dict:
    it_b = {r["iteration"]: r for r in before["iterations"]}
    per_it = [{"iteration": r["iteration"], "before_s": it_b[r["iteration"]]["wall_s"],
               "after_s": r["wall_s"],
               "ratio": round(it_b[r["iteration"]]["wall_s"] / r["wall_s"], 3) if r["wall_s"] else None}
              for r in after["iterations"] if r["iteration"] in it_b]
    phases: dict[str, dict[str, float]] = {}
    for name, res in (("before", before), ("after", after)):
        for r in res["iterations"]:
            for k, v in r["phase_s"].items():
                phases.setdefault(k, {"before": 0.0, "after": 0.0})[name] += v
    return {"per_iteration": per_it,
            "phase_totals_s": {k: {n: round(v, 2) for n, v in d.items()} for k, d in phases.items()},
            "loop_ratio": round(before["loop_s"] / after["loop_s"], 3),
            "process_ratio": round(before["process_s"] / after["process_s"], 3),
            "same_selection": before["selected"] == after["selected"],
            "same_accuracies": [r["accuracy"] for r in before["iterations"]]
            == [r["accuracy"] for r in after["iterations"]]}


def median_run(runs: list[dict]) -> dict:
    """Repeats of one variant -> medians of every time (selection from the first; memory: max)."""
    med = statistics.median
    by_it: dict[int, list[dict]] = {}
    for run in runs:
        for r in run["iterations"]:
            by_it.setdefault(r["iteration"], []).append(r)
    iterations = []
    for it, rs in sorted(by_it.items()):
        keys = {k for r in rs for k in r["phase_s"]}
        iterations.append({**rs[0], "wall_s": round(med(r["wall_s"] for r in rs), 2),
                           "phase_s": {k: round(med(r["phase_s"].get(k, 0.0) for r in rs), 3)
                                       for k in sorted(keys)}})
    rss: dict[str, int] = {}
    for run in runs:
        for k, v in run["peak_rss_bytes"].items():
            rss[k] = max(rss.get(k, 0), v)
    return {"fused": runs[0]["fused"], "repeats": len(runs),
            "process_s": round(med(r["process_s"] for r in runs), 2),
            "loop_s": round(med(r["loop_s"] for r in runs), 2),
            "loop_s_each": [r["loop_s"] for r in runs], "iterations": iterations,
            "selected": runs[0]["selected"],
            "same_selection_across_repeats": all(r["selected"] == runs[0]["selected"] for r in runs),
            "peak_rss_bytes": rss}


def measure(job: Path, sets: list[str], repeat: int = 1, log=print) -> dict:
    """before, after, before, after, ... (alternating, so a change in the machine's load hits
    both variants alike); every figure is the median over the repeats."""
    res: dict = {"job": str(job), "sets": sets, "cpu_count": os.cpu_count(), "repeat": repeat,
                 "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-loop-timing-") as tmp:
        for i in range(repeat):
            for name, fused in VARIANTS.items():
                run = run_variant(job, fused, sets, Path(tmp) / f"{name}-{i}", log=log)
                runs[name].append(run)
                log(f"loop {name} #{i + 1}: {run['loop_s']} s in the loop, {run['process_s']} s "
                    f"in all (load average {os.getloadavg()[0]:.1f})")
    for name in VARIANTS:
        res[name] = median_run(runs[name])
    res["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    res["comparison"] = compare(res["before"], res["after"])
    return res


def table(res: dict) -> str:
    c, b, a = res["comparison"], res["before"], res["after"]
    lines = [f"{'iteration':>9} {'before s':>9} {'after s':>9} {'before/after':>12}"]
    for r in c["per_iteration"]:
        lines.append(f"{r['iteration']:>9} {r['before_s']:>9.2f} {r['after_s']:>9.2f} "
                     f"{'x' + format(r['ratio'], '.2f') if r['ratio'] else '-':>12}")
    lines.append(f"{'loop':>9} {b['loop_s']:>9.2f} {a['loop_s']:>9.2f} {'x' + format(c['loop_ratio'], '.2f'):>12}")
    lines.append(f"{'process':>9} {b['process_s']:>9.2f} {a['process_s']:>9.2f} "
                 f"{'x' + format(c['process_ratio'], '.2f'):>12}")
    lines.append("phase totals (s): " + ", ".join(
        f"{k} {v['before']:.1f} -> {v['after']:.1f}" for k, v in sorted(c["phase_totals_s"].items())))
    lines.append(f"same selection: {c['same_selection']}, same accuracies: {c['same_accuracies']}; "
                 f"medians of {res['repeat']} run(s) each (loop s before {b['loop_s_each']}, after "
                 f"{a['loop_s_each']}); load average {res['loadavg_1m_start']} -> "
                 f"{res['loadavg_1m_end']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", default=None, help="job YAML (default jobs/loop-timing-cpu.yaml)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each variant (medians)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    job = Path(args.job) if args.job else default_job()
    res = measure(job, args.sets, repeat=args.repeat, log=lambda m: print(f"... {m}", flush=True))
    print(table(res), flush=True)
    write_result(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
