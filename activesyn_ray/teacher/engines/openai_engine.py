"""An OpenAI-compatible HTTP endpoint (`vllm serve`, a hosted API, ...) as a teacher engine.

    teacher: {engine: openai, openai: {base_url: http://10.0.0.5:8000/v1, model: Qwen/Qwen2.5-7B-Instruct,
              api: completions, api_key_env: OPENAI_API_KEY}}

The key is read from the environment variable NAMED in the config, only here, and kept only in the
HTTP client's headers: it is never logged, returned, pickled or written to the run directory. The
variable must exist where the replica runs (a local Ray inherits the driver's environment; on a
cluster, set it on the nodes). Each prompt is its own HTTP request, sent concurrently, so the server
batches them and its `usage` gives exact per-request token counts (what the provider bills).
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

from activesyn_ray.teacher.engines.base import (Completion, Engine, TeacherError, count_text_tokens,
                                                load_tokenizer, per_item, register)

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
PROMPT_MARGIN = (1.25, 32)
"""A remote model's tokenizer and chat wrapping are unknown here: its prompt estimate is
1.25 x (local count) + 32, so the worst-case budget check stays on the safe side."""


@register("openai")
class OpenAIEngine(Engine):
    def __init__(self, *, cfg, task=None, num_cpus: float = 1, rank: int = 0, max_workers: int = 16):
        import httpx

        o = cfg.teacher.openai
        self.model, self.api = o.model, o.api
        headers = {}
        key = os.environ.get(o.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        else:
            log.info("teacher.openai: $%s is not set; sending requests without a key", o.api_key_env)
        self.base_url = o.base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=o.timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=max_workers)
        # Local tokenizer of teacher.model: only a fallback when a server omits `usage`.
        self._tok_spec = cfg.teacher.model
        self._tok = None

    @classmethod
    def estimate_prompt_tokens(cls, tok, prompt: str) -> int:
        scale, extra = PROMPT_MARGIN
        return int(math.ceil(scale * count_text_tokens(tok, prompt))) + extra

    @classmethod
    def label(cls, cfg) -> str:
        return cfg.teacher.openai.model

    @classmethod
    def cache_identity(cls, cfg) -> dict:
        """The endpoint (any user:password@ in the URL dropped) and the model and API it is asked
        for; never the key or a header: the server's model is what answers, not the caller."""
        from urllib.parse import urlsplit, urlunsplit

        o = cfg.teacher.openai
        u = urlsplit(o.base_url.rstrip("/"))
        host = u.hostname or ""
        host = f"[{host}]" if ":" in host else host  # IPv6
        netloc = f"{host}:{u.port}" if u.port else host
        return {"engine": cls.name, "base_url": urlunsplit((u.scheme, netloc, u.path, u.query, "")),
                "model": o.model, "api": o.api}

    def __repr__(self) -> str:  # never show headers
        return f"OpenAIEngine(base_url={self.base_url!r}, model={self.model!r}, api={self.api!r})"

    def __getstate__(self):
        raise TypeError("OpenAIEngine holds an API key and is not picklable; build it where it runs")

    def _tokenizer(self):
        if self._tok is None:
            self._tok = load_tokenizer(self._tok_spec)
        return self._tok

    def _post(self, path: str, body: dict, *, attempts: int = 4) -> dict:
        import httpx

        for i in range(attempts):
            try:
                r = self._client.post(path, json=body)
            except httpx.TransportError as err:
                if i == attempts - 1:
                    raise TeacherError(f"teacher.openai: cannot reach {self.base_url}{path}: "
                                       f"{type(err).__name__}") from None
            else:
                if r.status_code < 400:
                    return r.json()
                if r.status_code not in _RETRY_STATUS or i == attempts - 1:
                    # the body may help (model name wrong, ...); the request headers are not shown
                    raise TeacherError(f"teacher.openai: {self.base_url}{path} answered "
                                       f"{r.status_code}: {r.text[:300]}")
            time.sleep(min(8.0, 0.5 * 2 ** i))
        raise AssertionError("unreachable")

    def _one(self, prompt: str, max_tokens: int, temperature: float, top_p: float, seed) -> Completion:
        body = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature,
                "top_p": top_p}
        if seed is not None:
            body["seed"] = seed
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            data = self._post("/chat/completions", body)
            text = data["choices"][0]["message"]["content"] or ""
        else:
            body["prompt"] = prompt
            data = self._post("/completions", body)
            text = data["choices"][0]["text"]
        usage = data.get("usage") or {}
        if "prompt_tokens" in usage and "completion_tokens" in usage:
            return Completion(text, int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
        tok = self._tokenizer()  # no usage reported: estimate with teacher.model's tokenizer
        return Completion(text, count_text_tokens(tok, prompt), count_text_tokens(tok, text))

    def generate(self, prompts, *, max_new_tokens, temperature, top_p, seed=None):
        n = len(prompts)
        limits, seeds = per_item(max_new_tokens, n), per_item(seed, n)
        futs = [self._pool.submit(self._one, p, m, temperature, top_p, s)
                for p, m, s in zip(prompts, limits, seeds)]
        return [f.result() for f in futs]

    def count_tokens(self, text: str) -> int:
        return count_text_tokens(self._tokenizer(), text)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._client.close()
