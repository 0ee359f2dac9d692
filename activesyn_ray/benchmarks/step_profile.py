"""Where a training call's time goes: one `TrainerWorker.train` call under torch.profiler, every
op's own (self) CPU time put in one category:

    GEMM, base weights      mm/addmm/bmm whose operands have no LoRA-rank dimension (the model's
                            own weights: frozen under LoRA; every GEMM in full finetuning)
    GEMM, LoRA              mm/addmm/bmm with a dimension equal to the LoRA rank r (A: d x r, B: r x d)
    attention               scaled-dot-product attention kernels
    copies and casts        _to_copy/copy_/to (bf16-mixed's autocast casts land here)
    optimizer               every op inside the optimizer's step (torch's `Optimizer.step#...` range)
    elementwise and other   the rest: norms, activations, softmax, loss, embedding, reductions
    outside ops             the call's wall time no op accounts for: Python, DeepSpeed's hooks and
                            bookkeeping, the data path, and the profiler's own overhead

The profiled call runs in the trainer's Ray actor through `__ray_call__`, so the trainer itself has no
profiling code. One call is profiled after the timed ones (`trainer_efficiency --profile`): shapes are
recorded, which slows small ops; the shares, not the absolute seconds, are what to read.
"""

from __future__ import annotations

import time

GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"}
CAST_OPS = {"aten::_to_copy", "aten::copy_", "aten::to", "aten::_copy_from",
            "aten::_copy_from_and_resize"}
OPTIMIZER_PREFIX = "Optimizer.step#"
CATEGORIES = ("GEMM, base weights", "GEMM, LoRA", "attention", "copies and casts", "optimizer",
              "elementwise and other", "outside ops")


def op_category(name: str, input_shapes, lora_r: int | None) -> str | None:
    """The category of one aten op by its name and operand shapes (None: not an aten op, e.g. a
    profiler range or an autograd node, whose own time is bookkeeping)."""
    if not name.startswith("aten::"):
        return None
    if name in GEMM_OPS:
        dims = [d for shape in input_shapes or [] for d in list(shape)[-2:]]
        return "GEMM, LoRA" if lora_r and lora_r in dims else "GEMM, base weights"
    if "scaled_dot_product" in name or "attention" in name:
        return "attention"
    if name in CAST_OPS:
        return "copies and casts"
    return "elementwise and other"


def categorize(events, *, wall_s: float, lora_r: int | None) -> dict:
    """Seconds per category from profiler events (objects with .name, .input_shapes,
    .self_cpu_time_total in µs and .cpu_parent): an op under an `Optimizer.step#` range counts
    as optimizer; the wall time left over is `outside ops`."""
    seconds = dict.fromkeys(CATEGORIES, 0.0)
    for ev in events:
        category = op_category(ev.name, getattr(ev, "input_shapes", None), lora_r)
        if category is None:
            continue
        parent = ev.cpu_parent
        while parent is not None:
            if parent.name.startswith(OPTIMIZER_PREFIX):
                category = "optimizer"
                break
            parent = parent.cpu_parent
        seconds[category] += ev.self_cpu_time_total / 1e6
    seconds["outside ops"] = max(0.0, wall_s - sum(seconds.values()))
    return {"wall_s": round(wall_s, 3),
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "share": {k: round(v / wall_s, 4) if wall_s else None for k, v in seconds.items()}}


def profile_train(worker, examples: list[dict], round: int = 0) -> dict:
    """Run inside a TrainerWorker (`actor.__ray_call__.remote(profile_train, examples)`): one
    `train` call under the profiler, categorised; the call's own result under `train`."""
    from torch.profiler import ProfilerActivity, profile

    lora = worker.scfg.lora
    if worker.scfg.restart_each_round:
        worker._continue_from(None)  # the fresh engine built here, outside the profiled call
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        out = worker.train(examples, round=round)
        wall = time.perf_counter() - t0
    return {**categorize(prof.events(), wall_s=wall, lora_r=lora.r if lora else None),
            "train": out}


def profile_lines(variant: str, prof: dict) -> list[str]:
    """The console table of one variant's profile."""
    lines = [f"trainer {variant}: one profiled training call, {prof['wall_s']:.2f} s"]
    for k in CATEGORIES:
        lines.append(f"  {k:<24} {prof['seconds'][k]:8.3f} s  {100 * prof['share'][k]:5.1f}%")
    return lines
