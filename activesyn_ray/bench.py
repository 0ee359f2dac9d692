"""`activesyn bench`: the machinery's throughput, every figure a ratio measured side by side in ONE run.

    teacher   generated tokens/s: vLLM pool with 1 and 2 replicas vs HF generate (same model, prompts)
    scoring   examples/s with 1 and 2 scorer shards (and that both give the same scores)
    trainer   samples/s with 1 and 2 DeepSpeed ranks
    sync      bytes per adapter broadcast vs a full-weight broadcast
    loop      share of iteration wall time outside generate/score/train/eval (orchestration overhead)

Each part runs as its own process (its own Ray), one after another, so they never compete for the
cores. On a GPU machine the same command gives absolute numbers (`--num-gpus 1`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from activesyn_ray import runstore
from activesyn_ray.runstore import atomic_write_json

REPO = Path(__file__).resolve().parents[1]


def _script(name: str) -> Path:
    path = REPO / "benchmarks" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: `activesyn bench` runs from a source checkout")
    return path


def _run(cmd: list[str], log) -> None:
    log(" ".join(cmd))
    proc = subprocess.run(cmd, text=True, capture_output=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def loop_overhead(*, model: str, budget: int, k: int, log) -> dict:
    """A short real run of the quickstart loop; overhead = 1 - sum(phase seconds) / wall seconds."""
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        run_dir = Path(tmp) / "run"
        sets = [f"budget.samples={budget}", f"selection.k={k}", f"student.model={model}",
                "output.plots=false"]
        _run([sys.executable, "-m", "activesyn_ray.cli", "run", str(REPO / "jobs" / "quickstart.yaml"),
              "--run-dir", str(run_dir), *sum((["--set", s] for s in sets), [])], log)
        rows = [m for m in runstore.RunStore(run_dir).read(runstore.METRICS) if m.get("wall_s")]
    phases = sum(sum(m["phase_s"].values()) for m in rows)
    wall = sum(m["wall_s"] for m in rows)
    by_phase: dict[str, float] = {}
    for m in rows:
        for key, v in m["phase_s"].items():
            by_phase[key] = by_phase.get(key, 0.0) + v
    return {"iterations": len(rows), "wall_s": round(wall, 2),
            "phase_s": {k: round(v, 2) for k, v in by_phase.items()},
            "overhead_share": round(1 - phases / wall, 4) if wall else None}


def run_bench(*, out: Path, teacher_model: str, student_model: str, prompts: int, max_new_tokens: int,
              train_examples: int, score_examples: int, loop_model: str, loop_budget: int, loop_k: int,
              num_gpus: float, parts: list[str], log=print) -> dict:
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_count": os.cpu_count(),
                     "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if "teacher" in parts:
            path = Path(tmp) / "teacher.json"
            _run([sys.executable, str(_script("bench_teacher.py")), "--model", teacher_model,
                  "--prompts", str(prompts), "--max-new-tokens", str(max_new_tokens), "--out", str(path)], log)
            results["teacher"] = json.loads(path.read_text())
        if "student" in parts:
            path = Path(tmp) / "student.json"
            _run([sys.executable, str(_script("bench_student.py")), "--model", student_model,
                  "--ranks", "2", "--train-examples", str(train_examples),
                  "--score-examples", str(score_examples), "--num-gpus", str(num_gpus),
                  "--out", str(path)], log)
            results["student"] = json.loads(path.read_text())
    if "loop" in parts:
        results["loop"] = loop_overhead(model=loop_model, budget=loop_budget, k=loop_k, log=log)
    results["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    results["summary"] = summarize(results)
    atomic_write_json(out, results)
    return results


def summarize(r: dict) -> list[tuple[str, str, str]]:
    """(figure, value, what it compares) rows for the table."""
    rows = []
    if t := r.get("teacher"):
        by = {(x["engine"], x["replicas"]): x["tokens_per_s"] for x in t["rows"]}
        for (engine, n), v in sorted(by.items()):
            rows.append((f"teacher {engine} x{n}", f"{v:.1f} tok/s", t["model"]))
        rows.append(("vLLM / HF", f"x{t['ratios']['vllm_over_hf_1_replica']}", "1 replica each"))
        rows.append(("vLLM 2 / 1 replicas", f"x{t['ratios']['vllm_2_over_1_replicas']}", "same prompts"))
    if s := r.get("student"):
        t1, t2 = s.get("train_1rank"), s.get("train_2rank")
        if t1:
            rows.append(("trainer 1 rank", f"{t1['samples_per_s']:.2f} samples/s", s["model"]))
        if t1 and t2:
            rows.append(("trainer 2 / 1 ranks", f"x{t2['samples_per_s'] / t1['samples_per_s']:.2f}",
                         "same global batch"))
        s1, s2 = s.get("score_S1"), s.get("score_S2")
        if s1:
            rows.append(("scoring S=1", f"{s1['examples_per_s']:.2f} ex/s", s["model"]))
        if s1 and s2:
            rows.append(("scoring S=2 / S=1", f"x{s2['examples_per_s'] / s1['examples_per_s']:.2f}",
                         f"same scores: {s.get('score_S2_equals_S1', {}).get('same_answers')}"))
        if sync := s.get("sync"):
            rows.append(("adapter sync", f"{sync['adapter_bytes'] / 2**20:.2f} MiB",
                         f"full weights {sync['full_weight_bytes'] / 2**20:.1f} MiB "
                         f"(x{sync['full_weight_bytes'] / max(1, sync['adapter_bytes']):.0f})"))
    if lp := r.get("loop"):
        share = lp["overhead_share"]
        rows.append(("loop overhead", "—" if share is None else f"{100 * share:.1f}% of wall time",
                     f"{lp['iterations']} iterations, {lp['wall_s']} s"))
    return rows
