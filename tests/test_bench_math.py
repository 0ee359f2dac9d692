"""The arithmetic behind `activesyn bench --parts trainer,growth` and the protocol comparison: FLOP
counts, growth exponents, paired arm statistics (no Ray; real models and committed runs)."""

import shutil
from pathlib import Path

import pytest
import torch

from activesyn_ray.benchmarks.cost_growth import growth
from activesyn_ray.benchmarks.machine import describe, summary_rows
from activesyn_ray.benchmarks.protocol_compare import compare, load_arm, markdown
from activesyn_ray.benchmarks.trainer_efficiency import param_counts, train_flops
from activesyn_ray.config import LoraConfig

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "docs" / "results" / "pretrained-cpu" / "grid"


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


def test_protocol_comparison_of_an_arm_with_itself(tmp_path):
    """Two copies of the committed pretrained grid as two arms: zero paired differences, a time
    ratio of 1, 'holds' but does not 'pay'; a different arm moves the numbers."""
    for arm in ("ref", "same"):
        shutil.copytree(GRID, tmp_path / arm)
    arms = {a: load_arm(tmp_path / a) for a in ("ref", "same")}
    assert len(arms["ref"]) == 15  # 5 strategies x 3 seeds, all finished
    out = compare(arms)
    row = out["strategies"]["loss"]["same"]
    assert row["accuracy_diff"]["mean"] == 0 and row["auc_diff"]["mean"] == 0
    assert row["train_time_ratio"]["mean"] == pytest.approx(1.0)
    assert row["holds"] is True and row["pays"] is False
    assert out["strategies"]["loss"]["ref"]["train_s"]["mean"] > 100
    assert "| loss | same | 3 |" in markdown(out)
    for r in arms["same"]:  # an arm that trains 4x faster and ends 0.5 lower
        r["train_s"] /= 4
        r["metrics"][-1] = dict(r["metrics"][-1], accuracy=r["metrics"][-1]["accuracy"] - 0.5)
    row = compare(arms)["strategies"]["loss"]["same"]
    assert row["train_time_ratio"]["mean"] == pytest.approx(4.0) and row["pays"] is True
    assert row["accuracy_diff"]["mean"] == pytest.approx(-0.5) and row["holds"] is False
