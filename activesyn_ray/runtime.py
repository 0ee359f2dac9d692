"""Starting or joining Ray, with the environment every actor needs to stay offline and cached."""

from __future__ import annotations

import os

import ray

# Passed to every worker: never reach a hub; share one model/extension cache per machine.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}


def worker_env() -> dict[str, str]:
    env = dict(OFFLINE_ENV)
    for key in ("ACTIVESYN_CACHE", "ACTIVESYN_WHEELS", "TORCH_EXTENSIONS_DIR", "VLLM_CACHE_ROOT",
                "OPENAI_API_KEY"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def init_ray(resources_cfg, *, log_to_driver: bool = True) -> None:
    """Join RAY_ADDRESS / resources.ray_address if given (e.g. under `ray job submit`), else start a
    local Ray sized by resources.local_num_cpus."""
    if ray.is_initialized():
        return
    os.environ.update(OFFLINE_ENV)
    address = resources_cfg.ray_address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(runtime_env={"env_vars": worker_env()}, log_to_driver=log_to_driver,
                  include_dashboard=False if not address else None)
    if address:
        ray.init(address=address, **{k: v for k, v in kwargs.items() if v is not None})
    else:
        # address="local": always a fresh local Ray; a bare ray.init() would silently join any
        # `ray start` head already running on this machine.
        ray.init(address="local", num_cpus=resources_cfg.local_num_cpus, **kwargs)
