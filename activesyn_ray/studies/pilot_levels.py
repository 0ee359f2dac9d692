"""Pilot: how well does the pretrained student already do on candidate difficulty levels?

Chooses the levels of the pretrained-student experiment (docs/results.md, section 1) so that the
base model partly solves the pool (e.g. ~60% / ~30% / ~5%), which is where selection can matter.
Examples are drawn from the generators with a pilot-only seed: the pilot never sees a test split.

The base model was never taught the `#### answer` format, so two scores are printed per level:
  strict   the project's checker (`#### X` required)              -> what round 0 of a run sees
  lenient  the last number of its first answer line, checked exactly -> what it can compute

    python -m activesyn_ray.studies.pilot_levels --model smollm2-135m --n 40 --out pilot.json
"""

from __future__ import annotations

import argparse
import json
import re
import time

import torch

from activesyn_ray.benchmarks import write_result
from activesyn_ray.config import TaskConfig
from activesyn_ray.models import resolve_model
from activesyn_ray.tasks.base import Task
from activesyn_ray.tasks.gym import GymTask

_NUM = re.compile(r"-?\d+(?:\.\d+)?")

# name -> reasoning-gym basic_arithmetic config
CANDIDATES = {
    "1d a±b": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=["+", "-"]),
    "2d a+b": dict(min_terms=2, max_terms=2, min_digits=2, max_digits=2, operators=["+"]),
    "2d a±b": dict(min_terms=2, max_terms=2, min_digits=2, max_digits=2, operators=["+", "-"]),
    "1d a±b±c": dict(min_terms=3, max_terms=3, min_digits=1, max_digits=1, operators=["+", "-"]),
    "2d a±b±c": dict(min_terms=3, max_terms=3, min_digits=2, max_digits=2, operators=["+", "-"]),
    "3d a±b": dict(min_terms=2, max_terms=2, min_digits=3, max_digits=3, operators=["+", "-"]),
    "1d a*b": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=["*"]),
    "2d a*b": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=["*"]),
}
COMMON = dict(allow_parentheses=False, allow_negation=False)


def lenient(text: str) -> str | None:
    first = text.split("\n")[0] if text.strip() else text
    nums = _NUM.findall(first) or _NUM.findall(text)
    return nums[-1] if nums else None


@torch.no_grad()
def greedy(model, tok, prompts: list[str], max_new_tokens: int, batch: int = 16) -> list[str]:
    tok.padding_side = "left"
    out = []
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id)
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=40, help="examples per level")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--levels", nargs="*", default=list(CANDIDATES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = []
    for name in args.levels:
        cfg = TaskConfig(kind="gym", name="basic_arithmetic", levels=[{**CANDIDATES[name], **COMMON}],
                         seed_size=args.n, test_size=1)
        task = GymTask(cfg, seed=0)
        examples = task._draw(args.n, seed=424242, tag="pilot")[:args.n]  # pilot-only draws
        space = task.question_space(2000)[0]
        t0 = time.perf_counter()
        texts = greedy(model, tok, [Task.prompt(e.question) for e in examples], args.max_new_tokens)
        secs = time.perf_counter() - t0
        strict = sum(task.check_completion(e, t) for e, t in zip(examples, texts)) / len(examples)
        loose = sum(task.check(e, lenient(t)) for e, t in zip(examples, texts)) / len(examples)
        rows.append({"level": name, "config": CANDIDATES[name], "n": len(examples),
                     "strict": strict, "lenient": loose, "distinct_in_2000": space,
                     "seconds": round(secs, 1), "example": [examples[0].question, texts[0]]})
        print(f"{name:10s} n={len(examples)} strict={strict:.2f} lenient={loose:.2f} "
              f"space>={space} ({secs:.0f}s)  e.g. {examples[0].question!r} -> {texts[0][:40]!r}",
              flush=True)
    print("\n| level | config | base accuracy (lenient) | strict | distinct questions in 2,000 draws |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['level']} | `{json.dumps(r['config'])}` | {r['lenient']:.2f} | {r['strict']:.2f} "
              f"| {r['distinct_in_2000']:,} |")
    write_result(args.out, {"model": args.model, "rows": rows})


if __name__ == "__main__":
    main()
