"""Choose the learnability strategy's n and temperature on a run's VALIDATION split.

For a trained round of a finished (or running) run, sample N_MAX answers per validation question
with the student's own vLLM scorer at each candidate temperature, check them with the task, and
report per (n, T) the share of questions whose pass rate p is strictly between 0 and 1: the seeds
learnability can rank (p = 0 or 1 all score 0 and tie). n answers are the first n of the N_MAX
drawn, so every n is measured on the same samples. The test split is never read.

    python -m activesyn_ray.studies.learnability_settings RUN_DIR --round 1 --out settings.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from activesyn_ray.benchmarks import write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--round", type=int, default=1, help="checkpoints/round-R adapter to sample")
    ap.add_argument("--temperatures", default="0.5,0.8,1.0,1.2")
    ap.add_argument("--n-max", type=int, default=16)
    ap.add_argument("--per-level", type=int, default=20, help="validation questions per level")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from activesyn_ray.config import load_config
    from activesyn_ray.models import resolve_model
    from activesyn_ray.run_setup import load_splits
    from activesyn_ray.runstore import CONFIG, RunStore
    from activesyn_ray.student.pool import lora_state
    from activesyn_ray.student.data import prompt_ids
    from activesyn_ray.student.vllm_scorer import VllmScorer
    from activesyn_ray.tasks import build_task, stratum

    store = RunStore(args.run_dir)
    cfg = load_config(store.path(CONFIG))
    task = build_task(cfg.task, seed=cfg.seed)
    _, val, _ = load_splits(store)
    by_level: dict[str, list] = {}
    for e in val:
        by_level.setdefault(stratum(e), []).append(e)
    items = [e for lv in sorted(by_level) for e in by_level[lv][:args.per_level]]
    folder = Path(args.run_dir) / "checkpoints" / f"round-{args.round}"
    state = lora_state(folder)
    tok = AutoTokenizer.from_pretrained(resolve_model(cfg.student.model))
    scorer = VllmScorer(cfg=cfg, tokenizer=tok)
    scorer.load_adapter(state)
    prompts = [prompt_ids(tok, e.question) for e in items]
    rows = []
    for temp in [float(t) for t in args.temperatures.split(",")]:
        t0 = time.perf_counter()
        sampled = scorer.sample(prompts, n=args.n_max, temperature=temp, seed=cfg.seed)
        secs = time.perf_counter() - t0
        ok = np.array([[task.check_completion(e, tok.decode(a, skip_special_tokens=True))
                        for a in answers] for e, answers in zip(items, sampled)], dtype=float)
        for n in (4, 8, 16):
            if n > args.n_max:
                continue
            p = ok[:, :n].mean(1)
            rows.append({"temperature": temp, "n": n, "informative": float(np.mean((p > 0) & (p < 1))),
                         "mean_p": float(p.mean()),
                         "informative_by_level": {lv: float(np.mean([(0 < pi < 1) for pi, e in
                                                                     zip(p, items) if stratum(e) == lv]))
                                                  for lv in sorted(by_level)},
                         "seconds_for_n_max": round(secs, 2)})
            print(f"T={temp:<4} n={n:<3} informative={rows[-1]['informative']:.3f} "
                  f"mean p={rows[-1]['mean_p']:.3f} by level {rows[-1]['informative_by_level']}")
    result = {"run_dir": str(args.run_dir), "round": args.round, "n_questions": len(items),
              "rows": rows}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
