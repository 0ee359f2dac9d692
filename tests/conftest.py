"""Shared test setup: offline, one model/extension cache per machine, CPU-sized."""

import os
from pathlib import Path

# Set before any test imports transformers/ray: never reach a hub, keep caches out of the repo.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ACTIVESYN_CACHE", str(Path.home() / ".cache" / "activesyn_ray"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "activesyn_ray" / "torch_ext"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
