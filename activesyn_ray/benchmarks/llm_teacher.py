"""Generation with a made LLM teacher (`activesyn make-teacher`) beside the procedural teacher, on
the same seeds, in one run: completion tokens/s and KEPT samples/s (parsed and accepted by the
task's verifier), plus parse / structure / right-answer shares, so the generation share of a loop
iteration with a real teacher is known.

    python -m activesyn_ray.benchmarks.llm_teacher --model smollm2-arith-teacher --prompts 32
    activesyn bench --parts llm-teacher --llm-teacher smollm2-arith-teacher   # the same, in the bench

Each engine is a real TeacherPool (one replica, every prompt in one call, teacher.verify on, the
job's temperature) started on its own and shut down before the next; the engine start and one
warm-up call on other seeds are excluded from the timing. The task is jobs/llm-teacher-cpu.yaml's
(three 2-digit basic_arithmetic levels), inlined so the benchmark runs from an install.
"""

from __future__ import annotations

import argparse
import os
import sys

import ray

from activesyn_ray.benchmarks import write_result
from activesyn_ray.config import config_from_dict
from activesyn_ray.teacher.make import measure

LEVELS = [{"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2, "operators": ops,
           "allow_parentheses": False, "allow_negation": False}
          for ops in (["+"], ["+", "-"])] + \
         [{"min_terms": 3, "max_terms": 3, "min_digits": 2, "max_digits": 2, "operators": ["+", "-"],
           "allow_parentheses": False, "allow_negation": False}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-arith-teacher", help="the made teacher")
    ap.add_argument("--tokenizer", default="smollm2-135m",
                    help="model whose tokenizer counts the procedural teacher's tokens")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--cpus-per-replica", type=float, default=1)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = config_from_dict({
        "task": {"kind": "gym", "name": "basic_arithmetic", "levels": LEVELS,
                 "seed_size": args.prompts + 8, "test_size": 4},
        "teacher": {"engine": "vllm", "model": args.model, "verify": True,
                    "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
                    "vllm": {"max_model_len": 512, "cpu_kvcache_space_gb": 1}},
        "budget": {"samples": 1_000_000},
        "resources": {"teacher": {"num_cpus": args.cpus_per_replica}}})
    from activesyn_ray.tasks import build_task

    task = build_task(cfg.task, seed=0)
    pool_seeds = task.splits()[0]
    seeds, warm = pool_seeds[:args.prompts], pool_seeds[args.prompts:]
    ray.init(address="local", num_cpus=max(2, int(2 * args.cpus_per_replica)),
             include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for engine, model in (("vllm", args.model), ("procedural", args.tokenizer)):
            print(f"... {engine} teacher ({model})", file=sys.stderr, flush=True)
            rows.append(measure(cfg, task, seeds, model=model, engine=engine, warm=warm))
    finally:
        ray.shutdown()
    print(f"\n{args.prompts} seeds, temperature {args.temperature}, <= {args.max_new_tokens} new "
          f"tokens, {args.cpus_per_replica:g} CPU per replica, load avg {os.getloadavg()[0]:.1f}")
    print(f"{'engine':11} {'parsed':>6} {'kept':>5} {'gen s':>7} {'tok/s':>7} {'kept/s':>7}")
    for r in rows:
        print(f"{r['engine']:11} {r['parsed']:>6} {r['right_answer']:>5} {r['generate_s']:>7} "
              f"{r['completion_tokens_per_s']:>7} {r['kept_samples_per_s']:>7}")
    result = {"model": args.model, "prompts": args.prompts, "temperature": args.temperature,
              "max_new_tokens": args.max_new_tokens, "cpus_per_replica": args.cpus_per_replica,
              "cpu_count": os.cpu_count(), "loadavg_1m_end": round(os.getloadavg()[0], 2),
              "rows": rows}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
