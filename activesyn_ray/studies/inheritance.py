"""Does a synthetic sample inherit its seed's score? like: seed vs like: level, one student.

For every seed of a run's pool, the procedural teacher writes one sample with `like: seed` and one
with `like: level` (the same draw seed for both), and ONE trained student (checkpoints/round-R of
that run) scores seeds and samples alike: loss (own greedy answer), loss_gt (reference answer),
pass_rate (n sampled answers). The Spearman rank correlation of seed score vs sample score is the
paper's inheritance measure (its Fig. 2) within one round; it is computed over all seeds and
within each level (across levels, the level alone makes scores correlate, whatever the mode).
Spearman is report.spearman's (None under 3 points or for constant scores). Only the seed pool
is used (never validation or test).

    python -m activesyn_ray.studies.inheritance RUN_DIR --round 2 --out inheritance.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from activesyn_ray.benchmarks import write_result
from activesyn_ray.report import spearman


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--round", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from activesyn_ray.config import load_config
    from activesyn_ray.run_setup import load_splits
    from activesyn_ray.runstore import CONFIG, RunStore
    from activesyn_ray.student.pool import lora_state
    from activesyn_ray.student.scoring import ScorerWorker
    from activesyn_ray.tasks import build_task, stratum
    from activesyn_ray.teacher.engines.base import request_seed

    store = RunStore(args.run_dir)
    cfg = load_config(store.path(CONFIG))
    cfg.student.inference = "vllm"
    task = build_task(cfg.task, seed=cfg.seed)
    seeds, _, _ = load_splits(store)
    samples = {mode: [task.generate_like(s, seed=request_seed(cfg.seed, f"inherit-{s.id}"), like=mode)
                      for s in seeds] for mode in ("seed", "level")}
    folder = Path(args.run_dir) / "checkpoints" / f"round-{args.round}"
    state = lora_state(folder)
    scorer = ScorerWorker(rank=0, world_size=1, num_cpus=1, cfg=cfg)
    scorer.load_adapter(state)
    needs = ["loss", "loss_gt", "pass_rate"]

    def score(examples) -> dict[str, np.ndarray]:
        rows = scorer.score([{"question": e.question, "answer": task.target(e)} for e in examples],
                            needs)
        return {"loss": np.array([r["loss"] for r in rows]),
                "loss_gt": np.array([r["loss_gt"] for r in rows]),
                "pass_rate": np.array([np.mean([task.check_completion(e, t) for t in r["sampled_texts"]])
                                       for e, r in zip(examples, rows)])}

    base = score(seeds)
    levels = sorted({stratum(s) for s in seeds})
    result = {"run_dir": str(args.run_dir), "round": args.round, "n_seeds": len(seeds), "modes": {}}
    for mode, smp in samples.items():
        sc = score(smp)
        kept = float(np.mean([x.meta.get("keeps_structure", False) for x in smp]))
        per = {}
        for col in needs:
            within = {lv: spearman([base[col][i] for i, s in enumerate(seeds) if stratum(s) == lv],
                                   [sc[col][i] for i, s in enumerate(seeds) if stratum(s) == lv])[0]
                      for lv in levels}
            per[col] = {"all_seeds": spearman(base[col], sc[col])[0], "within_level": within}
        result["modes"][mode] = {"keeps_structure": kept, "spearman": per}
        print(f"like: {mode:<5}  structure kept {kept:.2f}  " + "  ".join(
            f"{c}: rho {per[c]['all_seeds']:+.2f} (within levels "
            + ", ".join("—" if v is None else f"{v:+.2f}" for v in per[c]["within_level"].values())
            + ")" for c in needs), flush=True)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
