"""`activesyn bench`: the machinery's throughput, every figure a ratio measured side by side in ONE run.

    teacher   generated tokens/s: vLLM pool with 1 and 2 replicas vs HF generate (same model, prompts)
    scoring   scoring + evaluation examples/s: HF path with 1 and 2 shards, vLLM path (LoRA adapter on
              the frozen base, merged in place and as a LoRARequest) vs HF on the same adapter and
              examples (and that they agree)
    trainer   samples/s with 1 and 2 DeepSpeed ranks (part `student`); part `trainer`: achieved
              FLOP/s on real tokens vs a plain torch matmul measured alongside (utilisation; MFU on
              a GPU), padding share, padded vs packed batches, fp32 vs bf16-mixed and bf16-true
              samples/s where the CPU has bf16, the fp32 and bf16 matmul rates with the bf16 flags
    growth    train seconds after 2, 4, 8 rounds, restart-each-round vs continue + replay
              (quadratic vs linear; not in the default parts: two loop runs, `--parts growth`)
    machine   always: CPU model, ISA flags (AVX-512, AMX, bf16), cores, load, torch / vLLM /
              DeepSpeed versions, the fp32 / bf16 matmul rate of one thread
    sync      bytes per adapter broadcast vs a full-weight broadcast
    loop      share of iteration wall time outside generate/score/train/eval (orchestration overhead)
    fusion    per-iteration wall time of jobs/loop-timing-cpu.yaml (SmolLM2-135M + LoRA) with the
              fused evaluate+score pass and overlapped score-synthetic off vs on, alternating, 2
              runs each, medians (not in the default parts: ~12 min on 2 cores; `--parts fusion`)
    memory    peak RSS per actor kind: trainer rank, scorer (hf), scorer (vllm), teacher replica;
              with `fusion`, also the coordinator, the driver and every actor of a real loop run
    llm-teacher  a made LLM teacher (`activesyn make-teacher`) on vLLM beside the procedural
              teacher, same seeds: completion tokens/s and kept (parsed + verified) samples/s
              (not in the default parts: it needs the made teacher; `--parts llm-teacher`)
    pipeline  wall time per iteration, sync vs loop.pipeline, one run each: (a) a teacher with its
              own hardware (an OpenAI-compatible server answering each request after a fixed
              latency), (b) with `--parts pipeline-local`, the made LLM teacher on vLLM on the same
              cores (benchmarks/pipeline.py; not in the default parts: `--parts pipeline`)

Each part runs as its own process (its own Ray), one after another, so they never compete for the
cores. On a GPU machine the same command gives absolute numbers (`--num-gpus 1`). Everything it runs
ships in the package (activesyn_ray/benchmarks/), so it works from an install, not only a checkout.
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
from activesyn_ray.atomic_files import atomic_write_json

LOOP_JOB = Path(__file__).resolve().parent / "benchmarks" / "loop.yaml"


def _module(name: str) -> list[str]:
    return [sys.executable, "-m", f"activesyn_ray.benchmarks.{name}"]


PROGRESS = ("trainer ", "scoring ", "vLLM", "sync:", "... ", "wrote ", "loop ", "growth")


def _run(cmd: list[str], log) -> None:
    """Run one part, passing its progress lines to `log` as they come (a part can take minutes)."""
    log(" ".join(cmd))
    proc = subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    tail: list[str] = []
    for line in proc.stdout:
        tail = (tail + [line])[-60:]
        if line.startswith(PROGRESS):  # the parts' own lines, not library noise
            log(line.rstrip().replace("[", "\\["))  # no rich markup
    if proc.wait() != 0:
        raise RuntimeError(f"benchmark failed: {' '.join(cmd)}\n{''.join(tail)[-4000:]}")


def loop_overhead(*, model: str, budget: int, k: int, log) -> dict:
    """A short real run of the tiny-student loop (benchmarks/loop.yaml); overhead = 1 - sum(phase
    seconds) / wall seconds."""
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        run_dir = Path(tmp) / "run"
        sets = [f"budget.samples={budget}", f"selection.k={k}", f"student.model={model}",
                "output.plots=false"]
        _run([sys.executable, "-m", "activesyn_ray.cli", "run", str(LOOP_JOB),
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
              num_gpus: float, parts: list[str], llm_teacher: str = "smollm2-arith-teacher",
              log=print) -> dict:
    from activesyn_ray.benchmarks.machine import describe

    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_count": os.cpu_count(),
                     "loadavg_1m_start": round(os.getloadavg()[0], 2), "machine": describe()}

    def save() -> None:
        """Written after every part: a part that fails later does not take the finished ones."""
        results["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
        results["peak_rss_bytes"] = memory(results)
        results["summary"] = summarize(results)
        atomic_write_json(out, results)

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if "teacher" in parts:
            path = Path(tmp) / "teacher.json"
            _run([*_module("teacher"), "--model", teacher_model,
                  "--prompts", str(prompts), "--max-new-tokens", str(max_new_tokens), "--out", str(path)], log)
            results["teacher"] = json.loads(path.read_text())
            save()
        if "student" in parts:
            path = Path(tmp) / "student.json"
            _run([*_module("student"), "--model", student_model,
                  "--ranks", "2", "--train-examples", str(train_examples),
                  "--score-examples", str(score_examples), "--eval-examples", str(score_examples),
                  "--num-gpus", str(num_gpus),
                  "--out", str(path)], log)
            results["student"] = json.loads(path.read_text())
            save()
        if "trainer" in parts:
            path = Path(tmp) / "trainer.json"
            _run([*_module("trainer_efficiency"), "--model", student_model,
                  "--num-gpus", str(num_gpus), "--out", str(path)], log)
            results["trainer"] = json.loads(path.read_text())
            save()
        if "growth" in parts:
            path = Path(tmp) / "growth.json"
            _run([*_module("cost_growth"), "--out", str(path)], log)
            results["growth"] = json.loads(path.read_text())
            save()
    if "loop" in parts:
        results["loop"] = loop_overhead(model=loop_model, budget=loop_budget, k=loop_k, log=log)
        save()
    if "llm-teacher" in parts:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            path = Path(tmp) / "llm_teacher.json"
            _run([*_module("llm_teacher"), "--model", llm_teacher, "--prompts", str(2 * prompts),
                  "--out", str(path)], log)
            results["llm_teacher"] = json.loads(path.read_text())
            save()
    for part, which in (("pipeline", "remote"), ("pipeline-local", "local")):
        if part in parts:
            with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
                path = Path(tmp) / "pipeline.json"
                _run([*_module("pipeline"), "--parts", which, "--llm-teacher", llm_teacher,
                      "--out", str(path)], log)
                results.setdefault("pipeline", []).extend(json.loads(path.read_text())["results"])
                save()
    if "fusion" in parts:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            path = Path(tmp) / "fusion.json"
            _run([*_module("loop_timing"), "--repeat", "2", "--out", str(path)], log)
            results["fusion"] = json.loads(path.read_text())
    save()
    return results


def memory(r: dict) -> dict[str, int]:
    """Peak RSS per actor kind (the largest actor of each kind), for sizing num_cpus / memory."""
    out = dict(r.get("student", {}).get("peak_rss_bytes", {}))
    for row in r.get("teacher", {}).get("rows", []):
        if "replica_peak_rss_bytes" in row:
            key = f"teacher replica ({row['engine']})"
            out[key] = max(out.get(key, 0), row["replica_peak_rss_bytes"])
    for variant in ("before", "after"):  # a real loop run's memory.json, every actor kind
        for kind, nbytes in r.get("fusion", {}).get(variant, {}).get("peak_rss_bytes", {}).items():
            key = f"loop: {kind}"
            out[key] = max(out.get(key, 0), nbytes)
    return out


def summarize(r: dict) -> list[tuple[str, str, str]]:
    """(figure, value, what it compares) rows for the table."""
    from activesyn_ray.benchmarks.machine import summary_rows

    rows = summary_rows(r["machine"]) if "machine" in r else []
    if t := r.get("teacher"):
        by = {(x["engine"], x["replicas"]): x["tokens_per_s"] for x in t["rows"]}
        for (engine, n), v in sorted(by.items()):
            rows.append((f"teacher {engine} x{n}", f"{v:.1f} tok/s", t["model"]))
        rows.append(("teacher vLLM / HF", f"x{t['ratios']['vllm_over_hf_1_replica']}", "1 replica each"))
        rows.append(("teacher vLLM 2 / 1 replicas", f"x{t['ratios']['vllm_2_over_1_replicas']}", "same prompts"))
    if lt := r.get("llm_teacher"):
        by = {x["engine"]: x for x in lt["rows"]}
        for x in lt["rows"]:
            rows.append((f"teacher {x['engine']} ({x['model']})",
                         f"{x['completion_tokens_per_s']:.1f} tok/s, "
                         f"{x['kept_samples_per_s']:.2f} kept samples/s",
                         f"{x['right_answer']}/{x['replies']} kept, {x['parsed']} parsed, "
                         f"T={lt['temperature']}"))
        if by.get("vllm", {}).get("kept_samples_per_s") and "procedural" in by:
            rows.append(("kept samples/s, procedural / LLM teacher",
                         f"x{by['procedural']['kept_samples_per_s'] / by['vllm']['kept_samples_per_s']:,.0f}",
                         f"{lt['prompts']} seeds, 1 replica each"))
    if s := r.get("student"):
        t1, t2 = s.get("train_1rank"), s.get("train_2rank")
        if t1:
            rows.append(("trainer 1 rank", f"{t1['samples_per_s']:.2f} samples/s", s["model"]))
        if t1 and t2:
            rows.append(("trainer 2 / 1 ranks", f"x{t2['samples_per_s'] / t1['samples_per_s']:.2f}",
                         "same global batch"))
        s1, s2, v1 = s.get("score_hf_S1"), s.get("score_hf_S2"), s.get("score_vllm_S1")
        if s1:
            rows.append(("scoring hf S=1", f"{s1['examples_per_s']:.2f} ex/s", s["model"]))
        if s1 and s2:
            rows.append(("scoring hf S=2 / S=1", f"x{s2['examples_per_s'] / s1['examples_per_s']:.2f}",
                         f"same scores: {s.get('score_S2_equals_S1', {}).get('same_answers')}"))
        if v1 and (vh := s.get("vllm_vs_hf")):
            rows.append(("scoring vllm S=1", f"{v1['examples_per_s']:.2f} ex/s",
                         f"{s['model']} + LoRA, needs {s['args']['needs']}"))
            rows.append(("scoring vLLM / HF", f"x{vh['score_ratio']:.2f}",
                         f"same adapter + examples; same answers: {vh['same_answers']}"))
            rows.append(("evaluation vLLM / HF", f"x{vh['eval_ratio']:.2f}",
                         f"{v1['eval_examples']} test questions; same completions: "
                         f"{vh['same_completions']}; accuracy {v1['accuracy']:.3f} vs "
                         f"{s1['accuracy']:.3f}"))
            rows.append(("scoring + evaluation vLLM / HF", f"x{vh['score_and_eval_ratio']:.2f}",
                         f"engine start {v1['start_seconds']:.0f} s vs {s1['start_seconds']:.0f} s "
                         f"(once per run)"))
            if "round_ratio" in vh:
                rows.append(("round (adapter load + scoring + evaluation) vLLM / HF",
                             f"x{vh['round_ratio']:.2f}",
                             f"adapter load {v1['adapter_load_seconds']:.2f} s vs "
                             f"{s1['adapter_load_seconds']:.2f} s"))
        for name in ("hf", "vllm"):  # strategy=learnability: n sampled answers vs the loss score
            r = s.get(f"score_{name}_S1") or {}
            if r.get("learnability_seconds"):
                rows.append((f"learnability score ({name}) / loss score",
                             f"x{r['learnability_vs_needs']:.2f}",
                             f"n={r['learnability_n']} sampled answers per seed, "
                             f"{r['examples'] / r['learnability_seconds']:.2f} seeds/s"))
        if mr := s.get("merge_vs_lora_request"):
            rows.append(("scorer vLLM: adapter merged / LoRARequest",
                         f"x{mr['score_ratio']:.2f} scoring, x{mr['eval_ratio']:.2f} evaluation",
                         f"same answers: {mr['same_answers']}"))
        if sync := s.get("sync"):
            rows.append(("adapter sync", f"{sync['adapter_bytes'] / 2**20:.2f} MiB",
                         f"full weights {sync['full_weight_bytes'] / 2**20:.1f} MiB "
                         f"(x{sync['full_weight_bytes'] / max(1, sync['adapter_bytes']):.0f})"))
    if tr := r.get("trainer"):
        gpu = tr["args"]["num_gpus"] > 0
        order = tr.get("variant_order") or list(tr["variants"])  # bench.json sorts its keys
        base = tr.get("baseline") or order[0]
        for v in order:
            x = tr["variants"][v]
            rows.append((f"trainer {v} ({x.get('precision', x['dtype'])}): "
                         f"{'MFU' if gpu else 'utilisation'}",
                         f"{100 * x['utilisation_vs_sustained']:.1f}% "
                         f"({x['achieved_gflops']:.1f} GFLOP/s)",
                         f"real tokens vs {x['dtype']} matmul alongside "
                         f"{x['peak_sustained_gflops']:.1f} GFLOP/s "
                         f"({100 * x['utilisation_vs_burst']:.1f}% of burst "
                         f"{x['peak_burst_gflops']:.1f}"
                         + (f"; {100 * x['mfu_vs_datasheet']:.1f}% of datasheet"
                            if "mfu_vs_datasheet" in x else "") + ")"))
            rows.append((f"trainer {v}: padding, speed",
                         f"{100 * x['padding_share']:.1f}%, x{x['speedup_vs_baseline']:.2f}",
                         f"{x['samples_per_s']:.2f} samples/s; first-epoch loss "
                         f"{100 * x['loss_vs_baseline']:+.2f}% vs {base}"))
        if mm := tr.get("matmul"):
            isa = tr["machine"]["isa"]
            rows.append(("trainer matmul fp32 / bf16",
                         f"{mm['float32']['sustained']:.1f} / {mm['bfloat16']['sustained']:.1f} "
                         f"GFLOP/s", f"sustained, measured alongside; best call "
                         f"{mm['float32']['burst']:.1f} / {mm['bfloat16']['burst']:.1f}; AVX-512 BF16 "
                         f"{'yes' if isa.get('avx512_bf16') else 'no'}, AMX BF16 "
                         f"{'yes' if isa.get('amx_bf16') else 'no'}"))
        for mode, bv in tr.get("bf16_verdicts", {}).items():
            fs, bs = bv["samples_per_s"]
            rows.append((f"trainer {mode} / fp32", f"x{bv['speedup']:.2f}",
                         f"{bs:.2f} vs {fs:.2f} samples/s; first-epoch loss "
                         f"{100 * bv['loss_vs_fp32']:+.2f}%: "
                         f"{'use ' + mode if bv['use'] else 'keep fp32'} (faster and within 1%?)"))
    if gr := r.get("growth"):
        for mode, m in gr["modes"].items():
            pts = " / ".join(f"{v:.0f}" for v in m["at"].values())
            w = m["samples"]
            rows.append((f"train seconds after {' / '.join(m['at'])} rounds, {mode}", f"{pts} s",
                         f"x{m['x4_over_2']} then x{m['x8_over_4']} (~t^{m.get('exponent')}); "
                         f"samples trained x{w['x4_over_2']} then x{w['x8_over_4']} "
                         f"(~t^{w['exponent']})"))
        rows.append(("train seconds restart / continue", f"x{gr['ratio_at_last_point']}",
                     f"after {gr['args']['rounds']} rounds of {gr['args']['k']}, replay "
                     f"{gr['args']['replay']}; samples trained x{gr['samples_ratio_at_last_point']}"))
    for kind, nbytes in memory(r).items():
        rows.append((f"peak RSS {kind}", f"{nbytes / 2**20:.0f} MiB", "one actor"))
    if fu := r.get("fusion"):
        c = fu["comparison"]
        for it in c["per_iteration"]:
            rows.append((f"loop iteration {it['iteration']}, before / after",
                         f"{it['before_s']:.1f} / {it['after_s']:.1f} s",
                         "fused evaluate+score, score-synthetic during training"))
        rows.append(("loop wall, before / after fused pass", f"x{c['loop_ratio']:.2f}",
                     f"{fu['before']['loop_s']} vs {fu['after']['loop_s']} s; same selection: "
                     f"{c['same_selection']}, same accuracies: {c['same_accuracies']}"))
    for pl in r.get("pipeline", []):
        what = f"teacher answers after {pl['latency_s']:g} s" if pl["part"] == "remote" else \
            "made LLM teacher on vLLM, same cores"
        rows.append((f"loop s/iteration pipelined / sync ({pl['part']})", f"x{pl['ratio']:.2f}",
                     f"{pl['pipelined_s_per_iteration']:.1f} vs {pl['sync_s_per_iteration']:.1f} "
                     f"s; {what}"))
    if lp := r.get("loop"):
        share = lp["overhead_share"]
        rows.append(("loop overhead", "—" if share is None else f"{100 * share:.1f}% of wall time",
                     f"{lp['iterations']} iterations, {lp['wall_s']} s"))
    return rows
