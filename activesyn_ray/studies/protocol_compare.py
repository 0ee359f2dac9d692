"""The training-protocol comparison pre-registered in jobs/protocol-restart-cpu.yaml: arms (one
experiment each) x strategies, over paired seeds.

    python -m activesyn_ray.studies.protocol_compare runs/protocol-restart-cpu \\
        runs/protocol-continue25-cpu runs/protocol-continue50-cpu [--out protocol.json]

The first folder is the reference arm (the paper's protocol). Per arm x strategy: final test
accuracy, AUC (report.auc over the samples range every run covers) and total training seconds (sum
of phase_s.train), each a mean with a 95% bootstrap interval over seeds; against the reference arm,
paired by seed (report.paired_runs): the accuracy and AUC differences and the training-seconds
ratio, and the pre-registered verdicts ("holds": final accuracy and AUC means inside the
reference's intervals; "pays": paired training-time ratio >= 3). Only finished runs count. Every
interval is report.bootstrap_mean's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from activesyn_ray.benchmarks import write_result
from activesyn_ray.report import auc, bootstrap_mean, common_range, load_run, paired_runs

PAYS = 3.0  # the pre-registered training-time ratio


def load_arm(root: Path) -> list[dict]:
    runs = []
    for state in sorted(root.glob("*/*/state.json")):
        run = load_run(state.parent)
        if json.loads(state.read_text()).get("done") and run["metrics"]:
            run["arm"] = root.name
            run["train_s"] = sum(m.get("phase_s", {}).get("train", 0.0) for m in run["metrics"])
            runs.append(run)
    return runs


def compare(arms: dict[str, list[dict]]) -> dict:
    """{strategy: {arm: row}} with the reference arm (the first) first."""
    ref_name = next(iter(arms))
    everyone = [r for runs in arms.values() for r in runs]
    rng = common_range(everyone)
    out: dict = {"auc_range": list(rng) if rng else None, "strategies": {}}
    for strategy in sorted({r["strategy"] for r in everyone}):
        rows = {}
        ref = [r for r in arms[ref_name] if r["strategy"] == strategy]
        for arm, runs in arms.items():
            mine = {r["seed"]: r for r in runs if r["strategy"] == strategy}
            row = {"seeds": sorted(mine),
                   "final_accuracy": bootstrap_mean([r["metrics"][-1]["accuracy"] for r in mine.values()]),
                   "auc": bootstrap_mean([auc(r, *rng) for r in mine.values()]) if rng else None,
                   "train_s": bootstrap_mean([r["train_s"] for r in mine.values()])}
            pairs = paired_runs([mine[s] for s in sorted(mine)], ref)[0] if arm != ref_name else []
            if pairs:  # in seed order
                row["paired_seeds"] = [m["seed"] for m, _ in pairs]
                row["accuracy_diff"] = bootstrap_mean(
                    [m["metrics"][-1]["accuracy"] - r["metrics"][-1]["accuracy"] for m, r in pairs])
                row["auc_diff"] = bootstrap_mean(
                    [auc(m, *rng) - auc(r, *rng) for m, r in pairs]) if rng else None
                row["train_time_ratio"] = bootstrap_mean(
                    [r["train_s"] / m["train_s"] for m, r in pairs if m["train_s"] > 0])
                r0 = rows[ref_name]
                row["holds"] = (_inside(row["final_accuracy"], r0["final_accuracy"])
                                and _inside(row["auc"], r0["auc"]))
                row["pays"] = (row["train_time_ratio"]["mean"] or 0) >= PAYS
            rows[arm] = row
        out["strategies"][strategy] = rows
    return out


def _inside(x: dict | None, ref: dict | None) -> bool | None:
    if not x or not ref or x["mean"] is None or not ref.get("ci"):
        return None
    return ref["ci"][0] <= x["mean"] <= ref["ci"][1]


def _ci(s: dict | None, d: int = 3) -> str:
    if not s or s["mean"] is None:
        return "—"
    return f"{s['mean']:.{d}f}" + (f" [{s['ci'][0]:.{d}f}, {s['ci'][1]:.{d}f}]" if s.get("ci") else "")


def markdown(result: dict) -> str:
    lines = ["| strategy | arm | seeds | final accuracy | AUC | training s | acc. diff (paired) | "
             "AUC diff | time ratio | holds | pays |", "|---" * 11 + "|"]
    for strategy, rows in result["strategies"].items():
        for arm, r in rows.items():
            lines.append(f"| {strategy} | {arm} | {len(r['seeds'])} | {_ci(r['final_accuracy'])} | "
                         f"{_ci(r['auc'])} | {_ci(r['train_s'], 0)} | {_ci(r.get('accuracy_diff'))} | "
                         f"{_ci(r.get('auc_diff'))} | {_ci(r.get('train_time_ratio'), 2)} | "
                         f"{r.get('holds', '—')} | {r.get('pays', '—')} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="+", type=Path, help="experiment folders; the first is the reference")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    arms = {root.name: load_arm(root) for root in a.roots}
    result = compare(arms)
    print(markdown(result))
    write_result(a.out, result)
    return result


if __name__ == "__main__":
    main()
