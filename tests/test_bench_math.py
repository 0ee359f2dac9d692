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
