"""How training cost grows with the rounds, in both modes, from two real runs side by side:

    restart    student.restart_each_round: true (the paper's protocol): round t trains a fresh
               adapter on all t*k samples, so T rounds cost ~k*T*(T+1)/2 sample passes: quadratic
    continue   student.restart_each_round: false + student.replay: round t continues from round
               t-1's adapter and optimizer on k new samples + the replay share: ~T*k/(1-replay): linear

Each run is a real `activesyn run` of the shipped loop job (random selection, so no pool scoring
differs between the modes) for `--rounds` rounds; the train phase's seconds of every round are read
from metrics.jsonl. Printed: the cumulative train seconds after 2, 4 and 8 rounds, their growth
(x4/2 and x8/4: 3.3 and 3.6 when quadratic, 2 and 2 when linear), the exponent b of a fit
cum(t) ~ t^b, the same for the samples trained (exact: the seconds also carry the box's load), and
a per-round cost model seconds ~ a + s * (samples trained that round) to size a budget.

    python -m activesyn_ray.benchmarks.cost_growth --out growth.json
    python -m activesyn_ray.benchmarks.cost_growth --model smollm2-135m --set student.lora.r=8 --k 16
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from activesyn_ray.benchmarks import write_result
from activesyn_ray import runstore

LOOP_JOB = Path(__file__).resolve().parent / "loop.yaml"
POINTS = (2, 4, 8)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny:h=128,l=2", help="student (the loop job's by default)")
    p.add_argument("--k", type=int, default=64, help="samples per round")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--replay", type=float, default=0.25, help="continue mode's replay share")
    p.add_argument("--set", action="append", default=[], help="more overrides for both runs")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def run_mode(mode: str, a, run_dir: Path, log=print) -> dict:
    sets = [f"student.model={a.model}", f"selection.k={a.k}", f"budget.samples={a.k * a.rounds}",
            "selection.strategy=random", f"student.epochs={a.epochs}", "output.plots=false",
            *a.set]
    sets += ["student.restart_each_round=true"] if mode == "restart" else \
        ["student.restart_each_round=false", f"student.replay={a.replay}"]
    cmd = [sys.executable, "-m", "activesyn_ray.cli", "run", str(LOOP_JOB), "--run-dir", str(run_dir),
           *sum((["--set", s] for s in sets), [])]
    log(" ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, text=True, capture_output=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"run failed: {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-4000:]}")
    rows = [m for m in runstore.RunStore(run_dir).read(runstore.METRICS) if m["iteration"] > 0]
    train_s = [m["phase_s"].get("train", 0.0) for m in rows]
    cum = [sum(train_s[:t]) for t in range(1, len(train_s) + 1)]
    trained = [m["train_size"] for m in rows]
    # the work itself (samples trained, each `epochs` times) is exact; seconds carry the box's load
    work = growth([float(sum(trained[:t])) for t in range(1, len(trained) + 1)], trained, a.epochs)
    return {"train_s": train_s, "cumulative_train_s": [round(c, 3) for c in cum],
            "train_size": trained, "final_accuracy": rows[-1]["accuracy"] if rows else None,
            "run_seconds": round(time.perf_counter() - t0, 1), **growth(cum, trained, a.epochs),
            "samples": {k: work[k] for k in ("at", "x4_over_2", "x8_over_4", "exponent")}}


def growth(cum: list[float], trained: list[int], epochs: int) -> dict:
    at = {t: cum[t - 1] for t in POINTS if t <= len(cum)}
    out = {"at": {str(t): round(v, 3) for t, v in at.items()},
           "x4_over_2": round(at[4] / at[2], 3) if 4 in at and at[2] else None,
           "x8_over_4": round(at[8] / at[4], 3) if 8 in at and at[4] else None}
    # exponent of cum(t) ~ t^b, least squares in log-log over every round
    pts = [(math.log(t), math.log(c)) for t, c in enumerate(cum, 1) if c > 0]
    if len(pts) >= 2:
        mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
        out["exponent"] = round(sum((x - mx) * (y - my) for x, y in pts)
                                / sum((x - mx) ** 2 for x, _ in pts), 3)
    # per-round cost: seconds ~ a + s * (samples trained that round); a = engine build, sync...
    per = [c - p for c, p in zip(cum, [0.0] + cum[:-1])]
    if len(set(trained)) >= 2:
        mx, my = sum(trained) / len(trained), sum(per) / len(per)
        s = sum((x - mx) * (y - my) for x, y in zip(trained, per)) / \
            sum((x - mx) ** 2 for x in trained)
        out["per_round_fixed_s"], out["s_per_sample"] = round(my - s * mx, 3), round(s, 5)
        out["s_per_sample_pass"] = round(s / epochs, 6)
    return out


def main(argv=None) -> dict:
    a = parse_args(argv)
    results = {"args": vars(a), "modes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as tmp:
        for mode in ("restart", "continue"):
            results["modes"][mode] = run_mode(mode, a, Path(tmp) / mode)
            m, w = results["modes"][mode], results["modes"][mode]["samples"]
            print(f"growth {mode}: train seconds after {'/'.join(m['at'])} rounds "
                  f"{'/'.join(f'{v:.1f}' for v in m['at'].values())} (x{m['x4_over_2']}, "
                  f"x{m['x8_over_4']}; ~t^{m.get('exponent')}); samples trained "
                  f"{'/'.join(f'{v:.0f}' for v in w['at'].values())} (x{w['x4_over_2']}, "
                  f"x{w['x8_over_4']}; ~t^{w['exponent']}); per round {m['train_size']}", flush=True)
    r, c = results["modes"]["restart"], results["modes"]["continue"]
    last = str(max(int(t) for t in r["at"]))
    results["ratio_at_last_point"] = round(r["at"][last] / c["at"][last], 3) if c["at"].get(last) else None
    results["samples_ratio_at_last_point"] = round(
        r["samples"]["at"][last] / c["samples"]["at"][last], 3)
    print(f"growth: restart / continue after {last} rounds: x{results['ratio_at_last_point']} train "
          f"seconds, x{results['samples_ratio_at_last_point']} samples trained", flush=True)
    write_result(a.out, results)
    return results


if __name__ == "__main__":
    main()
