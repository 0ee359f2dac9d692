"""`activesyn status RUN`: where a run stands, from its state.json and metrics.jsonl alone (works on
a run another process -- e.g. a `ray job submit` job -- is writing, locally or at a storage URI).

    quickstart-20261123-101500  running (phase generated, updated 12 s ago)
      iteration 3 | budget 288/768 samples (38%), 147,456 teacher tokens | accuracy 0.412
      58.1 s per iteration | ETA 5 more iterations, ~4.8 min
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from activesyn_ray import runstore


def run_status(run_dir: str | Path) -> dict:
    from activesyn_ray.config import load_config

    store = runstore.RunStore(run_dir)
    state = store.load_state()
    cfg = load_config(store.path(runstore.CONFIG))
    metrics = store.read(runstore.METRICS)
    ledger = state.get("ledger") or {}
    samples = ledger.get("samples", 0)
    tokens = ledger.get("tokens", ledger.get("prompt_tokens", 0) + ledger.get("completion_tokens", 0))
    cap_samples, cap_tokens = cfg.budget.samples, cfg.budget.teacher_tokens
    walls = [m["wall_s"] for m in metrics if m.get("wall_s")]
    per_iter = sum(walls) / len(walls) if walls else None
    # Iterations left: by whichever cap is nearer, at the pace seen so far (k samples per iteration).
    n_iter = max(1, len(metrics))
    left = []
    if cap_samples:
        per = samples / n_iter if metrics and samples else cfg.selection.k
        left.append(math.ceil(max(0, cap_samples - samples) / max(per, 1)))
    if cap_tokens and metrics and tokens:
        left.append(math.ceil(max(0, cap_tokens - tokens) / (tokens / n_iter)))
    if cfg.iterations:
        left.append(max(0, cfg.iterations - state.get("iteration", 0)))
    iters_left = 0 if state.get("done") else (min(left) if left else None)
    return {
        "run_dir": str(store.root), "name": store.root.name, "done": bool(state.get("done")),
        "phase": state.get("phase"), "iteration": state.get("iteration", 0),
        "updated_s_ago": time.time() - state["updated_at"] if state.get("updated_at") else None,
        "samples": samples, "samples_total": cap_samples, "teacher_tokens": tokens,
        "teacher_tokens_total": cap_tokens,
        "accuracy": metrics[-1]["accuracy"] if metrics else None,
        "s_per_iteration": per_iter, "iterations_left": iters_left,
        "eta_s": None if per_iter is None or iters_left is None else per_iter * iters_left,
    }


def format_status(s: dict) -> str:
    state = "done" if s["done"] else f"running or stopped (phase {s['phase']}"
    if not s["done"] and s["updated_s_ago"] is not None:
        state += f", updated {_dur(s['updated_s_ago'])} ago"
    state += "" if s["done"] else ")"
    budget = f"{s['samples']:,}" + (f"/{s['samples_total']:,} samples "
                                    f"({100 * s['samples'] / s['samples_total']:.0f}%)"
                                    if s["samples_total"] else " samples")
    budget += f", {s['teacher_tokens']:,}" + (f"/{s['teacher_tokens_total']:,}"
                                              if s["teacher_tokens_total"] else "") + " teacher tokens"
    acc = "no evaluation yet" if s["accuracy"] is None else f"accuracy {s['accuracy']:.3f}"
    lines = [f"{s['name']}  {state}",
             f"  iteration {s['iteration']} | budget {budget} | {acc}"]
    pace = "time per iteration unknown yet" if s["s_per_iteration"] is None else \
        f"{_dur(s['s_per_iteration'])} per iteration"
    if s["done"]:
        eta = "finished"
    elif s["eta_s"] is not None:
        eta = f"ETA {s['iterations_left']} more iterations, ~{_dur(s['eta_s'])}"
    else:
        eta = "ETA unknown"
    lines.append(f"  {pace} | {eta}")
    return "\n".join(lines)


def _dur(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
