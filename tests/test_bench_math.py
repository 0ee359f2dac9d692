"""The arithmetic behind `activesyn bench --parts trainer,growth`: FLOP counts, growth exponents,
the machine description (no Ray; real models)."""

import pytest
import torch

from activesyn_ray.benchmarks.cost_growth import growth
from activesyn_ray.benchmarks.machine import describe, summary_rows
from activesyn_ray.benchmarks.trainer_efficiency import param_counts, train_flops
from activesyn_ray.config import LoraConfig


def test_growth_tells_quadratic_from_linear():
    k = 10
    restart = [k * t for t in range(1, 9)]  # round t trains t*k samples, 1 s per sample
    cont = [k * 1.5] * 8                    # k new + replay, every round
    cum = lambda per: [sum(per[:t]) for t in range(1, 9)]
    q, l = growth(cum(restart), restart, 1), growth(cum(cont), [15] * 8, 1)
    assert q["x4_over_2"] == pytest.approx(10 / 3, abs=1e-3) and q["x8_over_4"] == 3.6
    assert l["x4_over_2"] == 2 and l["x8_over_4"] == 2 and l["exponent"] == pytest.approx(1.0)
    assert 1.6 < q["exponent"] < 2.0
    assert q["s_per_sample"] == pytest.approx(1.0) and q["per_round_fixed_s"] == pytest.approx(0.0)


def test_flop_counts_match_the_models_weights():
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from activesyn_ray.models import resolve_model
    from activesyn_ray.student.trainer import peft_lora_config

    counts = param_counts("tiny", LoraConfig())
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve_model("tiny")),
                           peft_lora_config(LoraConfig()))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["lora"] == trainable
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and "lora_" not in n)
    assert counts["blocks"] + counts["head"] == linear
    # LoRA: 4 FLOPs per frozen weight and token (forward + input gradient), 6 per trained weight
    assert train_flops(counts, tokens=10, head_positions=2, lora=True) == \
        (4 * counts["blocks"] + 6 * counts["lora"]) * 10 + 4 * counts["head"] * 2
    assert train_flops(counts, tokens=10, head_positions=2, lora=False) == \
        6 * counts["blocks"] * 10 + 6 * counts["head"] * 2


def test_machine_description_names_what_a_figure_depends_on():
    m = describe(matmul=False)
    assert m["cpu_model"] and set(m["isa"]) >= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert m["versions"]["torch"] and m["versions"]["deepspeed"] and len(m["loadavg"]) == 3
    assert [r[0] for r in summary_rows(m)] == ["machine", "versions"]


def test_step_profile_puts_each_op_in_one_category():
    """Hand-made profiler events: a LoRA product is told from a frozen GEMM by the rank in its
    shapes, every op under the optimizer's range counts as optimizer, non-aten ranges add nothing
    and the wall time left is `outside ops`."""
    from types import SimpleNamespace as Ev

    from activesyn_ray.benchmarks.step_profile import categorize

    step = Ev(name="Optimizer.step#AdamW.step", input_shapes=[], self_cpu_time_total=50_000,
              cpu_parent=None)
    inner = Ev(name="aten::mul_", input_shapes=[[8, 576]], self_cpu_time_total=30_000,
               cpu_parent=Ev(name="aten::_foreach_mul_", input_shapes=[], self_cpu_time_total=0,
                             cpu_parent=step))
    events = [
        Ev(name="aten::mm", input_shapes=[[240, 576], [576, 1536]], self_cpu_time_total=400_000,
           cpu_parent=None),
        Ev(name="aten::mm", input_shapes=[[240, 576], [576, 8]], self_cpu_time_total=20_000,
           cpu_parent=None),
        Ev(name="aten::addmm", input_shapes=[[576], [240, 8], [8, 576]], self_cpu_time_total=10_000,
           cpu_parent=None),
        Ev(name="aten::_scaled_dot_product_flash_attention_for_cpu", input_shapes=[],
           self_cpu_time_total=100_000, cpu_parent=None),
        Ev(name="aten::_to_copy", input_shapes=[[240, 576]], self_cpu_time_total=40_000,
           cpu_parent=None),
        Ev(name="aten::silu", input_shapes=[[240, 1536]], self_cpu_time_total=60_000, cpu_parent=None),
        Ev(name="MmBackward0", input_shapes=[], self_cpu_time_total=5_000, cpu_parent=None),
        step, inner,
    ]
    got = categorize(events, wall_s=1.0, lora_r=8)["seconds"]
    assert got == {"GEMM, base weights": 0.4, "GEMM, LoRA": 0.03, "attention": 0.1,
                   "copies and casts": 0.04, "optimizer": 0.03, "elementwise and other": 0.06,
                   "outside ops": 0.34}
    # full finetuning: no LoRA rank, so no GEMM is counted as LoRA
    assert categorize(events, wall_s=1.0, lora_r=None)["seconds"]["GEMM, LoRA"] == 0
