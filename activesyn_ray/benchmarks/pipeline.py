"""Wall time per iteration, sync vs pipelined (loop.pipeline), side by side: the same job, seed
and teacher, one run each, one after the other (alternating with --repeat).

  remote  (a) a teacher with hardware of its own. An OpenAI-compatible HTTP server in this
          process (`LatencyTeacher`) answers every /v1/completions request after --latency
          seconds, concurrently (one thread per request, as an API or a GPU node serves a batch),
          with a fresh `a + b` question of 4-digit numbers and its answer. It computes nothing:
          its time stands for a remote API or a GPU-node teacher, and this box's cores stay the
          student's. The run's teacher is `teacher.engine: openai` pointed at it.
  local   (b) the project's made LLM teacher (`activesyn make-teacher`, default
          smollm2-arith-teacher) on vLLM on this box: teacher and student share the same cores,
          so the overlap can only interleave their work, not add hardware.

Student: jobs/tiny-cpu.yaml at test size (tiny LoRA student, 2 DeepSpeed ranks, 1 scorer shard),
loss selection (its scores come from the fused evaluation, which a pipelined selection reads),
k = 8 per round. Iterations from 2 on are compared: round 1 cannot overlap (nothing trains
before it). Both variants select differently (pipelined rounds read scores an adapter old), so
accuracy is not compared here (docs/results.md does that with paired seeds).

    python -m activesyn_ray.benchmarks.pipeline --parts remote --latency 3 --out pipeline.json
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from activesyn_ray import runstore
from activesyn_ray.benchmarks import write_result
from activesyn_ray.benchmarks.loop_timing import iteration_seconds
from activesyn_ray.teacher.loopback import LoopbackOpenAI

STUDENT = ["task.seed_size=48", "task.test_size=12", "selection.strategy=loss", "selection.k=8",
           "student.epochs=1", "student.model=tiny", "student.lora={r: 8, alpha: 16}",
           "student.inference=hf", "resources.trainer.num_workers=2",
           "resources.scorers.num_workers=1", "resources.local_num_cpus=4", "output.plots=false"]


class LatencyTeacher(LoopbackOpenAI):
    """/v1/completions after `latency_s`, one thread per request: a teacher whose time is its own."""

    def __init__(self, latency_s: float):
        rng, lock = random.Random(0), threading.Lock()

        def respond(path, headers, body):
            time.sleep(latency_s)
            with lock:
                a, b = rng.randint(1000, 9999), rng.randint(1000, 9999)
            return 200, {"choices": [{"index": 0, "text": f"Question: Calculate {a} + {b}.\n"
                                      f"Answer: #### {a + b}", "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": len(body.get("prompt", "")) // 4,
                                   "completion_tokens": 12}}

        super().__init__(respond)


def default_job() -> Path:
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (job := root / "jobs" / "tiny-cpu.yaml").exists():
            return job
    raise FileNotFoundError("jobs/tiny-cpu.yaml not found (run from a checkout, or --job)")


def run_variant(job: Path, pipelined: bool, sets: list[str], run_dir: Path, log=print) -> dict:
    flags = [*STUDENT, f"loop.pipeline={str(pipelined).lower()}", *sets]
    cmd = [sys.executable, "-m", "activesyn_ray.cli", "run", str(job), "--run-dir", str(run_dir),
           *sum((["--set", s] for s in flags), [])]
    log(" ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, text=True, capture_output=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", ACTIVESYN_TEACHER_CACHE="off"))
    if proc.returncode != 0:
        raise RuntimeError(f"loop run failed: {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-4000:]}")
    rows = runstore.RunStore(run_dir).read(runstore.METRICS)
    steady = [iteration_seconds(m) for m in rows if m["iteration"] >= 2]
    return {"pipelined": pipelined, "process_s": round(time.perf_counter() - t0, 2),
            "iterations": [{"iteration": m["iteration"], "wall_s": round(iteration_seconds(m), 2),
                            "phase_s": m["phase_s"]} for m in rows],
            "steady_median_s": round(statistics.median(steady), 3),
            "steady_total_s": round(sum(steady), 2)}


def measure(name: str, job: Path, sets: list[str], repeat: int, log=print) -> dict:
    runs: dict[str, list[dict]] = {"sync": [], "pipelined": []}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix=f"bench-pipeline-{name}-") as tmp:
        for i in range(repeat):
            for variant in runs:
                run = run_variant(job, variant == "pipelined", sets, Path(tmp) / f"{variant}-{i}",
                                  log=log)
                runs[variant].append(run)
                log(f"{name} {variant} #{i + 1}: median {run['steady_median_s']} s per iteration "
                    f"(from 2 on), load average {os.getloadavg()[0]:.1f}")
    med = {v: statistics.median(r["steady_median_s"] for r in rs) for v, rs in runs.items()}
    return {"part": name, "sets": sets, "repeat": repeat, "runs": runs,
            "sync_s_per_iteration": med["sync"], "pipelined_s_per_iteration": med["pipelined"],
            "ratio": round(med["pipelined"] / med["sync"], 3),
            "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def table(results: list[dict]) -> str:
    lines = [f"{'teacher':<8} {'sync s/it':>10} {'pipelined s/it':>15} {'pipelined/sync':>15}"]
    for r in results:
        lines.append(f"{r['part']:<8} {r['sync_s_per_iteration']:>10.2f} "
                     f"{r['pipelined_s_per_iteration']:>15.2f} {'x' + format(r['ratio'], '.2f'):>15}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="remote", help="remote, local or remote,local")
    ap.add_argument("--job", default=None, help="job YAML (default jobs/tiny-cpu.yaml)")
    ap.add_argument("--latency", type=float, default=3.0,
                    help="remote: seconds the teacher takes per request")
    ap.add_argument("--rounds", type=int, default=8, help="rounds of k=8 samples per run")
    ap.add_argument("--llm-teacher", default="smollm2-arith-teacher",
                    help="local: the made teacher's name (activesyn make-teacher)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each variant (medians)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    job = Path(args.job) if args.job else default_job()
    log = lambda m: print(f"... {m}", flush=True)  # noqa: E731
    budget = [f"budget.samples={8 * args.rounds}"]
    results = []
    for part in args.parts.split(","):
        if part == "remote":
            server = LatencyTeacher(args.latency)
            try:
                sets = [*budget, "teacher.engine=openai", f"teacher.openai.base_url={server.url}",
                        "teacher.openai.model=latency", "teacher.max_new_tokens=32",
                        "teacher.micro_batch_size=8"]
                results.append({**measure("remote", job, sets, args.repeat, log),
                                "latency_s": args.latency})
            finally:
                server.close()
        elif part == "local":
            sets = [*budget, "teacher.engine=vllm", f"teacher.model={args.llm_teacher}",
                    "teacher.verify=true", "teacher.temperature=0.7", "teacher.max_new_tokens=48",
                    "teacher.micro_batch_size=8", "teacher.vllm.max_model_len=512",
                    "teacher.vllm.cpu_kvcache_space_gb=1"]  # as jobs/llm-teacher-cpu.yaml
            results.append(measure("local", job, sets, args.repeat, log))
        else:
            raise SystemExit(f"--parts: unknown part {part!r} (remote, local)")
    print(table(results), flush=True)
    write_result(args.out, {"results": results, "cpu_count": os.cpu_count()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
