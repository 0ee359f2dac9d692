"""Hugging Face `generate` engine: batched, left-padded; the small-CPU fallback and the baseline the
vLLM benchmark compares against.

Sampling is seeded once per call (with the first request's seed): `generate` draws one random stream
for the whole batch, so per-request seeds as in vLLM are not possible here.
"""

from __future__ import annotations

from activesyn_ray.devices import resolve_dtype
from activesyn_ray.models import resolve_model
from activesyn_ray.teacher.engines.base import (Completion, Engine, count_text_tokens, load_tokenizer,
                                                model_context_len, per_item, prompt_ids, register)


@register("hf")
class HFEngine(Engine):
    libraries = ("transformers", "torch")

    def __init__(self, *, cfg, task=None, num_cpus: float = 1, rank: int = 0):
        import torch
        from transformers import AutoModelForCausalLM

        folder = resolve_model(cfg.teacher.model)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = resolve_dtype("auto", cuda=self.device == "cuda")
        self.tok = load_tokenizer(cfg.teacher.model)
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(self.device)
        self.model.eval()
        self.context_len = self.context_len_for(cfg)

    @classmethod
    def context_len_for(cls, cfg) -> int | None:
        return model_context_len(resolve_model(cfg.teacher.model))

    def generate(self, prompts, *, max_new_tokens, temperature, top_p, seed=None):
        import torch

        n = len(prompts)
        if n == 0:
            return []
        limits, seeds = per_item(max_new_tokens, n), per_item(seed, n)
        ids = [prompt_ids(self.tok, p) for p in prompts]
        width = max(len(x) for x in ids)
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
        if seeds[0] is not None:
            torch.manual_seed(seeds[0])
        sample = temperature > 0
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=max(limits),
                do_sample=sample, temperature=temperature if sample else None,
                top_p=top_p if sample else None, top_k=None, pad_token_id=pad,
                eos_token_id=self.tok.eos_token_id)
        eos = self.tok.eos_token_id
        res = []
        for i, x in enumerate(ids):
            gen = out[i, width:].tolist()[: limits[i]]
            if eos in gen:  # the eos is generated (and charged) like vLLM counts it; pads after it are not
                gen = gen[: gen.index(eos) + 1]
            res.append(Completion(text=self.tok.decode(gen, skip_special_tokens=True),
                                  prompt_tokens=len(x), completion_tokens=len(gen)))
        return res

    def count_tokens(self, text: str) -> int:
        return count_text_tokens(self.tok, text)
