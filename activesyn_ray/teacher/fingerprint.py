"""What identifies a teacher model and its libraries, for the response cache's keys (cache.py) and
each engine's `cache_identity` (engines/): a leaf module both import.

Model fingerprint (`model_fingerprint`): sha256 over the folder's config, generation config,
tokenizer and chat-template files (their bytes) and weight files (the sha256 of their content). A
hub snapshot's weights are links to content-addressed blobs: the blob name is used, nothing is
read. Other weight files are hashed once per (path, size, mtime) and the digest kept in
$ACTIVESYN_CACHE/fingerprints, so a run start re-reads nothing; hashing the content rather than
size+mtime means a copy of the same model on another node hits, and a retrained model of the same
shape (make-teacher --overwrite) misses.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from activesyn_ray.atomic_files import atomic_write_json


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def library_versions(names) -> dict[str, str]:
    """Installed versions of the distributions among `names` (those not installed are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
               "merges.txt", "tokenizer.model", "chat_template.json", "chat_template.jinja",
               "preprocessor_config.json")
"""Small files that decide replies: hashed by their bytes."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")


def _memo_dir() -> Path:
    from activesyn_ray.assets import cache_dir

    return cache_dir("fingerprints")


def file_digest(path: Path) -> str:
    """sha256 of a file's content: a hub blob's own name when the file links to one, else hashed
    once per (real path, size, mtime) and remembered under $ACTIVESYN_CACHE/fingerprints."""
    real = path.resolve()
    if real.parent.name == "blobs" and len(real.name) == 64:  # huggingface_hub: blobs/<sha256>
        return real.name
    st = real.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    memo = _memo_dir() / f"{sha256_text(str(real))[:32]}.json"
    try:
        known = json.loads(memo.read_text())
        if known.get("path") == str(real) and known.get("stamp") == stamp:
            return known["sha256"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    h = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    try:
        atomic_write_json(memo, {"path": str(real), "stamp": stamp, "sha256": digest})
    except OSError:
        pass  # a read-only cache: hashed again next time, the same answer
    return digest


def model_fingerprint(folder: str | Path) -> str:
    """sha256 over the model folder's reply-deciding files (see the module docstring)."""
    folder = Path(folder)
    parts = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        if f.name in MODEL_FILES:
            parts[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
        elif f.name.endswith(WEIGHT_SUFFIXES):
            parts[f.name] = file_digest(f)
    return sha256_text(canonical(parts))


