"""The engine interface every teacher backend implements, and what they share (tokenizer, prompts).

    engine = build_engine(cfg, task=task, num_cpus=1, rank=0)      # by name: cfg.teacher.engine
    outs = engine.generate(["Question: 2+2?"], max_new_tokens=32, temperature=0.0, top_p=1.0, seed=0)
    outs[0].text, outs[0].prompt_tokens, outs[0].completion_tokens

`generate` takes plain prompts; an engine whose tokenizer has a chat template wraps each prompt as
one user turn itself. Replicas call `complete(requests)`, which groups requests by temperature and
passes per-request seeds and token limits to `generate` (the procedural engine overrides it: it needs
the seed example, not a prompt).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable


class TeacherError(RuntimeError):
    """A teacher problem phrased for a person (bad endpoint, missing model, ...)."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    example: dict | None = None
    """Set only by engines that already know the structured sample (procedural): re-parsing the text
    would lose the generator metadata that checking needs."""


@dataclass
class TeacherRequest:
    id: str
    kind: str
    """'generate' or 'judge'."""
    prompt: str
    seed: int
    """Sampling seed, derived from the request id (see request_seed)."""
    max_new_tokens: int
    temperature: float
    example: dict | None = None
    """The seed (generate) or the judged example (judge), as Example.to_dict()."""
    student_answer: str | None = None
    est_prompt_tokens: int = 0
    attempts: int = 0


def request_seed(run_seed: int, request_id: str) -> int:
    """Deterministic 31-bit seed from the run seed and the request id (same request -> same sample,
    also after a retry on another replica)."""
    digest = hashlib.sha256(f"{run_seed}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


# ------------------------------------------------------------------------------------- tokenizers
def load_tokenizer(model_spec: str):
    from activesyn_ray.models import open_tokenizer, resolve_model

    tok = open_tokenizer(resolve_model(model_spec))
    tok.padding_side = "left"  # decoder-only batched generation pads on the left
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def prompt_ids(tok, prompt: str) -> list[int]:
    """Token ids the engine feeds the model: one user turn through the chat template if the tokenizer
    has one (the template brings its own special tokens), else the plain text."""
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                      add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    return list(tok(prompt).input_ids)


def count_text_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False).input_ids)


def model_context_len(folder) -> int | None:
    """The context a HF model folder declares (max_position_embeddings), None if unknown."""
    import json
    from pathlib import Path

    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("max_position_embeddings") or cfg.get("n_positions")


# ----------------------------------------------------------------------------------------- engines
class Engine:
    """Base class; subclasses are registered by name and implement generate/count_tokens.

    An engine also describes itself to the driver BEFORE it is started anywhere (classmethods on the
    RunConfig), so the teacher pool's budget check needs no engine-specific code: its context
    length, how many prompt tokens a request may cost, and the model label written to records.
    """

    name: str = ""
    context_len: int | None = None
    """Longest prompt + completion the engine accepts (None: no limit known)."""

    @classmethod
    def context_len_for(cls, cfg) -> int | None:
        """context_len as known from config alone (the started engine reports the same)."""
        return None

    @classmethod
    def estimate_prompt_tokens(cls, tok, prompt: str) -> int:
        """Worst-case prompt tokens of one request, counted on the driver with teacher.model's
        tokenizer `tok`; exact for engines that tokenize with it (chat template included)."""
        return len(prompt_ids(tok, prompt))

    @classmethod
    def label(cls, cfg) -> str:
        """The teacher model as records and reports name it."""
        return cfg.teacher.model

    # -- the response cache (teacher/cache.py) asks these; nothing here is ever sent or logged
    cache_by_default: bool = True
    """teacher.cache.enabled: auto caches this engine's replies (procedural: no, it costs nothing)."""
    cache_reads_example: bool = False
    """The reply depends on the request's structured example, not only on its prompt (procedural)."""
    libraries: tuple[str, ...] = ()
    """Distributions whose version is part of the cache key (a new version may sample differently)."""

    @classmethod
    def cache_identity(cls, cfg) -> dict:
        """What, besides the prompt and sampling parameters, decides this engine's reply: the model
        as a fingerprint of its files (teacher/cache.py `model_fingerprint`), where it runs (CPU or
        GPU: default dtypes differ) and the library versions. Never a key, header or secret."""
        from activesyn_ray.models import resolve_model
        from activesyn_ray.teacher.fingerprint import library_versions, model_fingerprint

        return {"engine": cls.name, "weights": model_fingerprint(resolve_model(cfg.teacher.model)),
                "device": "gpu" if cfg.resources.teacher.num_gpus > 0 else "cpu",
                "libraries": library_versions(cls.libraries)}

    @classmethod
    def seed_matters(cls, temperature: float) -> bool:
        """Whether the request's sampling seed can change the reply (not for greedy decoding)."""
        return temperature > 0

    def generate(self, prompts: list[str], *, max_new_tokens: int | list[int], temperature: float,
                 top_p: float, seed: int | list[int] | None = None) -> list[Completion]:
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        raise NotImplementedError

    def complete(self, requests: list[TeacherRequest], *, top_p: float) -> list[Completion]:
        """Answer a replica's micro-batch, in order; one generate() call per temperature."""
        out: list[Completion | None] = [None] * len(requests)
        by_temp: dict[float, list[int]] = {}
        for i, r in enumerate(requests):
            by_temp.setdefault(r.temperature, []).append(i)
        for temp, idx in by_temp.items():
            res = self.generate([requests[i].prompt for i in idx],
                                max_new_tokens=[requests[i].max_new_tokens for i in idx],
                                temperature=temp, top_p=top_p, seed=[requests[i].seed for i in idx])
            for i, c in zip(idx, res):
                out[i] = c
        return out  # type: ignore[return-value]

    def close(self) -> None:
        pass


def per_item(value: Any, n: int) -> list:
    """Broadcast a scalar argument (max_new_tokens, seed) to one value per prompt."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"expected {n} values, got {len(value)}")
        return list(value)
    return [value] * n


ENGINES: dict[str, Callable[..., Engine]] = {}


def register(name: str):
    def deco(cls):
        cls.name = name
        ENGINES[name] = cls
        return cls
    return deco

