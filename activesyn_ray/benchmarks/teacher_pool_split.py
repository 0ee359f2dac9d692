"""Where a 2-replica pool's time goes, inside ONE pool: the same kind of call three ways, each on
fresh prompts (no prefix-cache hits), in turn, for several rounds:

    one    all N requests as one call to replica 0 (replica 1 idles): what 1 replica does
    two    N/2 + N/2 as direct actor calls to both replicas: Ray, no dispatcher
    pool   pool.generate: the dispatcher, the ledger, parsing

    python -m activesyn_ray.benchmarks.teacher_pool_split --prompts 16 --rounds 5 --out split.json
    python -m activesyn_ray.benchmarks.teacher_pool_split --pin    # each replica's threads on its own core

Reports seconds per call (medians) and the CPU seconds of the driver, the raylet, the GCS and each
replica over all calls: whether anything outside the engines competes for the cores.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from activesyn_ray.benchmarks import write_result


def main(argv=None) -> int:
    from activesyn_ray.benchmarks.teacher import workload_parser

    ap = workload_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pin", action="store_true", help="bind replica r's threads to core r")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import psutil
    import ray

    from activesyn_ray.budget import Ledger
    from activesyn_ray.config import config_from_dict
    from activesyn_ray.tasks import build_task
    from activesyn_ray.teacher import TeacherPool

    n, modes, warm_n = a.prompts, ("one", "two", "pool"), 2 * a.prompts
    cfg = config_from_dict({
        "task": {"kind": "gym", "name": a.task, "seed_size": warm_n + n * a.rounds * 3 + 4,
                 "test_size": 4},
        "teacher": {"engine": "vllm", "model": a.model, "replicas": 2,
                    "max_new_tokens": a.max_new_tokens, "temperature": 0.0,
                    "micro_batch_size": -(-n // 2),
                    "cache": {"enabled": False},  # timed requests reach the engine, every time
                    "vllm": {"max_model_len": 1024, "cpu_kvcache_space_gb": 1}},
        "budget": {"samples": 1_000_000}, "resources": {"teacher": {"num_cpus": 1}}})
    task = build_task(cfg.task, seed=0)
    seeds = task.splits()[0]
    warm = seeds[:warm_n]
    sets = [seeds[warm_n + i * n: warm_n + (i + 1) * n] for i in range(a.rounds * 3)]
    pool = TeacherPool(cfg=cfg, task=task, ledger=Ledger(max_samples=1_000_000))
    actors = pool.backend.actors

    def requests(batch, tag):
        return [pool._request(f"{tag}-{s.id}", "generate", pool.prompts.generate(s), example=s,
                              max_new=a.max_new_tokens, temperature=0.0) for s in batch]

    try:
        # warm-up on other prompts: both replicas at the split size, replica 0 at the full size
        pool.generate(warm[:n], iteration=-1)
        ray.get(actors[0].complete.remote(requests(warm[n:], "warm")))
        pids = [ray.get(x.ready.remote())["pid"] for x in actors]
        if a.pin:
            for core, pid in enumerate(pids):
                for t in psutil.Process(pid).threads():
                    os.sched_setaffinity(t.id, {core % os.cpu_count()})
        procs = {"driver": psutil.Process(), **{f"replica{i}": psutil.Process(p)
                                                for i, p in enumerate(pids)}}
        for p in psutil.process_iter(["cmdline"]):
            line = " ".join(p.info["cmdline"] or [])
            for name in ("raylet", "gcs_server"):
                if f"/{name} " in f"{line} " or line.split(" ")[0].endswith(name):
                    procs.setdefault(name, p)

        def cpu_s() -> dict:
            return {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}

        rows: dict[str, list] = {m: [] for m in modes}
        cpu0 = cpu_s()
        for r in range(a.rounds):
            for i, m in enumerate(modes):
                batch = sets[r * 3 + i]
                t0 = time.perf_counter()
                if m == "one":
                    tokens = sum(c.completion_tokens for c in
                                 ray.get(actors[0].complete.remote(requests(batch, f"one{r}"))))
                elif m == "two":
                    reqs, h = requests(batch, f"two{r}"), -(-n // 2)
                    outs = ray.get([actors[0].complete.remote(reqs[:h]),
                                    actors[1].complete.remote(reqs[h:])])
                    tokens = sum(c.completion_tokens for o in outs for c in o)
                else:
                    tokens = sum(x["completion_tokens"] for x in pool.generate(batch, iteration=r))
                rows[m].append({"round": r, "seconds": round(time.perf_counter() - t0, 3),
                                "tokens": tokens})
                print(m, rows[m][-1], flush=True)
        cpu1 = cpu_s()
    finally:
        pool.shutdown()
        ray.shutdown()
    med = {m: statistics.median(x["seconds"] for x in rows[m]) for m in modes}
    res = {"prompts": n, "rounds": a.rounds, "pinned": a.pin, "loadavg_1m": os.getloadavg()[0],
           "median_seconds": med, "two_over_one": med["one"] / med["two"],
           "pool_over_one": med["one"] / med["pool"],
           "cpu_seconds": {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0}, "rows": rows}
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=2))
    write_result(a.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
