"""The trainer's exact state between rounds, for `student.restart_each_round: false`.

A continued round starts from what the previous round ended in: every trainable weight (the fp32
master copy the optimizer updates), AdamW's two moments per weight and its step count (the bias
correction), and the engine's step counters. A rank that still holds it continues in memory; a
restarted trainer group or a resumed run rebuilds the engine and loads this, and must then take
exactly the steps the uninterrupted run takes (tests/test_continue_mode.py checks bit equality).

Tensors are read and written per parameter through DeepSpeed's tensor-fragment API
(`safe_get_full_fp32_param`, `safe_get_full_optimizer_state`), which hides how ZeRO-1/2 and the bf16
optimizer split the flat fp32 copy over the ranks: the saved tensors are whole, so the file does not
depend on the world size. Reading is a collective (an all-reduce per tensor): every rank calls it.
On disk it is one safetensors file with the counters in its header: no pickle in a run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where tensors are made: the coordinator imports this module
    import torch

FILE = "trainer/state.safetensors"  # inside a checkpoints/round-t folder, beside the PEFT adapter
MOMENTS = ("exp_avg", "exp_avg_sq")  # AdamW's per-weight state besides the step count
COUNTERS = ("global_steps", "global_samples", "micro_steps", "skipped_steps")


def _trainable(engine) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]


def _mapped(p) -> bool:
    """ZeRO-1/2 (and the bf16 optimizer) keep p's fp32 copy in fragments over the ranks (a rank
    without a fragment of p still joins the all-reduce); ZeRO-0 in fp32 updates p itself."""
    return hasattr(p, "_hp_mapping")


def _check_supported(engine) -> None:
    if engine.optimizer is not engine.basic_optimizer and not all(
            _mapped(p) for _, p in _trainable(engine)):
        # e.g. bf16 at ZeRO stage 0: DeepSpeed's fp16-style wrapper keeps the fp32 copy privately
        raise ValueError(f"student.restart_each_round: false cannot carry the optimizer state of "
                         f"{type(engine.optimizer).__name__} (zero_stage "
                         f"{engine.zero_optimization_stage()}); use zero_stage 1 or 2")


def capture(engine) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, counters): `<name>` the fp32 weight, `<name>::exp_avg` / `::exp_avg_sq` its moments
    (absent before the first optimizer step). Every rank must call it (all-reduce per tensor)."""
    import torch
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    _check_supported(engine)
    opt = engine.basic_optimizer  # the torch AdamW that ZeRO / bf16 wrap
    stepped = len(opt.state) > 0
    tensors: dict[str, torch.Tensor] = {}
    for name, p in _trainable(engine):
        mapped = _mapped(p)
        w = safe_get_full_fp32_param(p) if mapped else p.detach().float()
        tensors[name] = w.detach().to("cpu", torch.float32).clone()
        if stepped:
            for key in MOMENTS:
                m = safe_get_full_optimizer_state(p, key) if mapped else opt.state[p][key]
                tensors[f"{name}::{key}"] = m.detach().to("cpu", torch.float32).clone()
    meta = {k: str(int(getattr(engine, k, 0))) for k in COUNTERS}
    if stepped:
        step = next(iter(opt.state.values()))["step"]
        meta["step"] = repr(float(step))
    return tensors, meta


def restore(engine, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Load a captured state into a freshly built engine (same model, LoRA config and optimizer)."""
    import torch
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    _check_supported(engine)
    opt = engine.basic_optimizer
    params = _trainable(engine)
    missing = [n for n, _ in params if n not in tensors]
    if missing:
        raise ValueError(f"trainer state has no weight {missing[0]!r} ({len(missing)} missing): "
                         f"saved with another model or LoRA config")
    if "step" in meta:
        # AdamW creates its state lazily at the first step; create it as torch does (float32 step
        # tensor, zero moments) so DeepSpeed can link each weight's fragment to it, then fill it.
        step = float(meta["step"])
        for group in opt.param_groups:
            for q in group["params"]:
                opt.state[q] = {"step": torch.tensor(step, dtype=torch.float32),
                                **{k: torch.zeros_like(q, memory_format=torch.preserve_format)
                                   for k in MOMENTS}}
        link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
        if link is not None:
            link()
    with torch.no_grad():
        for name, p in params:
            w = tensors[name].to(p.device)
            if _mapped(p):
                safe_set_full_fp32_param(p, w)
            p.data.copy_(w.to(p.dtype))  # the module's own copy (= the master in fp32)
            if "step" in meta:
                for key in MOMENTS:
                    m = tensors[f"{name}::{key}"].to(p.device)
                    if _mapped(p):
                        safe_set_full_optimizer_state(p, m, key)
                    else:
                        opt.state[p][key].copy_(m)
    for k in COUNTERS:
        if k in meta and hasattr(engine, k):
            setattr(engine, k, int(meta[k]))


def to_bytes(state: tuple[dict[str, torch.Tensor], dict[str, str]]) -> bytes:
    from safetensors.torch import save

    tensors, meta = state
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
