"""Teacher throughput: generated tokens/s of the vLLM pool with 1 and 2 replicas and of the HF
`generate` engine, on the same model and the same prompts, in one run.

    python -m activesyn_ray.benchmarks.teacher --model tiny:ctx=2048 --prompts 8 --max-new-tokens 32
    python -m activesyn_ray.benchmarks.teacher --out runs/bench_teacher.json   # smollm2-135m

Each configuration is a real TeacherPool (Ray actors, the dispatcher, the ledger) started on its own
and shut down before the next, so they do not compete for cores. Prompts are the packaged generate
prompt over the same reasoning-gym seeds; decoding is greedy (temperature 0), so vLLM and HF do the
same work in fp32. The engine start and one warm-up call (on other seeds: no prefix-cache hits)
are excluded from the timing. Replicas get
--cpus-per-replica cores each: on a 2-core box, 2 replicas x 1 core use the whole machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import ray

from activesyn_ray.benchmarks import write_result
from activesyn_ray.budget import Ledger
from activesyn_ray.config import config_from_dict
from activesyn_ray.tasks import build_task
from activesyn_ray.teacher import TeacherPool


def bench_one(*, engine: str, replicas: int, args, task, seeds, warm) -> dict:
    per_replica = -(-len(seeds) // replicas)
    cfg = config_from_dict({
        "task": {"kind": "gym", "name": args.task, "seed_size": len(seeds) + 4, "test_size": 4},
        "teacher": {"engine": engine, "model": args.model, "replicas": replicas,
                    "max_new_tokens": args.max_new_tokens, "temperature": 0.0,
                    "micro_batch_size": per_replica,  # one call per replica: vLLM batches it whole
                    "cache": {"enabled": False},  # timed requests reach the engine, every time
                    "vllm": {"max_model_len": args.max_model_len, "cpu_kvcache_space_gb": 1}},
        "budget": {"samples": 1_000_000},
        "resources": {"teacher": {"num_cpus": args.cpus_per_replica}},
    })
    t0 = time.perf_counter()
    pool = TeacherPool(cfg=cfg, task=task, ledger=Ledger(max_samples=1_000_000))
    start_s = time.perf_counter() - t0
    try:
        # warm-up (first-call allocations) on OTHER seeds: vLLM's prefix cache would serve a
        # warm-up prompt again for free inside the timed call
        pool.generate(warm[:2 * replicas], iteration=-1)
        t0 = time.perf_counter()
        recs = pool.generate(seeds, iteration=0)
        gen_s = time.perf_counter() - t0
        rss = max(r["peak_rss_bytes"] for r in ray.get([a.peak_rss.remote()
                                                         for a in pool.backend.actors]))
    finally:
        pool.shutdown()
    tokens = sum(r["completion_tokens"] for r in recs)
    return {"engine": engine, "replicas": replicas, "cpus_per_replica": args.cpus_per_replica,
            "requests": len(recs), "completion_tokens": tokens,
            "prompt_tokens": sum(r["prompt_tokens"] for r in recs),
            "parsed": sum(r["parsed"] for r in recs), "start_s": round(start_s, 1),
            "gen_s": round(gen_s, 2), "tokens_per_s": round(tokens / gen_s, 1),
            "replica_peak_rss_bytes": rss}


def workload_parser(doc: str) -> argparse.ArgumentParser:
    """The teacher workload's options, shared by the teacher benchmarks."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="basic_arithmetic")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    return ap


def main(argv=None) -> int:
    ap = workload_parser(__doc__)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--cpus-per-replica", type=float, default=1)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ray.init(address="local", num_cpus=max(2, int(2 * args.cpus_per_replica)),
             include_dashboard=False, log_to_driver=False)
    try:
        task = build_task(config_from_dict({"task": {"kind": "gym", "name": args.task,
                                                     "seed_size": args.prompts + 8,
                                                     "test_size": 4}}).task, seed=0)
        pool_seeds = task.splits()[0]
        seeds, warm = pool_seeds[:args.prompts], pool_seeds[args.prompts:]
        rows = []
        for engine, replicas in (("vllm", 1), ("vllm", 2), ("hf", 1)):
            print(f"... {engine} x{replicas}", file=sys.stderr, flush=True)
            rows.append(bench_one(engine=engine, replicas=replicas, args=args, task=task, seeds=seeds,
                                  warm=warm))
    finally:
        ray.shutdown()

    by = {(r["engine"], r["replicas"]): r["tokens_per_s"] for r in rows}
    ratios = {"vllm_over_hf_1_replica": round(by[("vllm", 1)] / by[("hf", 1)], 2),
              "vllm_2_over_1_replicas": round(by[("vllm", 2)] / by[("vllm", 1)], 2)}
    print(f"\nmodel {args.model}, {args.prompts} prompts x <= {args.max_new_tokens} new tokens, greedy, "
          f"{args.cpus_per_replica:g} CPU per replica, load avg {os.getloadavg()[0]:.1f}")
    print(f"{'engine':8} {'replicas':>8} {'start s':>8} {'gen s':>8} {'tokens':>7} {'tok/s':>8}")
    for r in rows:
        print(f"{r['engine']:8} {r['replicas']:>8} {r['start_s']:>8} {r['gen_s']:>8} "
              f"{r['completion_tokens']:>7} {r['tokens_per_s']:>8}")
    print(f"vLLM / HF (1 replica): x{ratios['vllm_over_hf_1_replica']}   "
          f"vLLM 2 / 1 replicas: x{ratios['vllm_2_over_1_replicas']}")
    result = {"model": args.model, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
              "cpus_per_replica": args.cpus_per_replica, "cpu_count": os.cpu_count(),
              "loadavg_1m_end": round(os.getloadavg()[0], 2), "rows": rows, "ratios": ratios}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
