"""Shared test setup: offline, one model/extension cache per machine, CPU-sized."""

import os
from pathlib import Path

import pytest

# Set before any test imports transformers/ray: never reach a hub, keep caches out of the repo.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ACTIVESYN_CACHE", str(Path.home() / ".cache" / "activesyn_ray"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "activesyn_ray" / "torch_ext"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray of the test module's own (address="local": never someone else's head on this
    machine), 4 logical CPUs, workers with the run's environment."""
    ray = pytest.importorskip("ray")
    from activesyn_ray.runtime import start_local_ray, worker_env

    start_local_ray(num_cpus=4, include_dashboard=False,
                    runtime_env={"env_vars": worker_env()}, log_to_driver=False)
    yield ray
    ray.shutdown()
