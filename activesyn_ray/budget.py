"""The budget ledger: synthetic samples and teacher tokens, charged exactly once per request.

Generation and llm-judge scoring both spend teacher tokens and are charged here. Charges are keyed
by request id, so a retried request (its replica died and the answer came back twice) or a resumed
run cannot charge the same work twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


class BudgetExceeded(RuntimeError):
    pass


@dataclass
class Ledger:
    max_samples: int | None = None
    max_tokens: int | None = None
    samples: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    judge_tokens: int = 0
    requests: int = 0
    failed_parses: int = 0
    charged_ids: set[str] = field(default_factory=set)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def charge(self, request_id: str, *, prompt_tokens: int, completion_tokens: int,
               samples: int = 0, judge: bool = False, parsed: bool = True) -> bool:
        """Record one completed request. Returns False (and charges nothing) for a duplicate."""
        if request_id in self.charged_ids:
            return False
        self.charged_ids.add(request_id)
        self.requests += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if judge:
            self.judge_tokens += prompt_tokens + completion_tokens
        self.samples += samples
        self.failed_parses += 0 if parsed else 1
        return True

    # -- how much may still be asked for
    def samples_left(self) -> int | None:
        return None if self.max_samples is None else max(0, self.max_samples - self.samples)

    def tokens_left(self) -> int | None:
        return None if self.max_tokens is None else max(0, self.max_tokens - self.tokens)

    def exhausted(self) -> bool:
        return self.samples_left() == 0 or self.tokens_left() == 0

    def affordable(self, n: int, tokens_per_request: int) -> int:
        """How many of n requests fit, each costing at most `tokens_per_request` teacher tokens.
        Used BEFORE dispatching, so the ledger is never driven over its cap."""
        fit = n
        if (left := self.samples_left()) is not None:
            fit = min(fit, left)
        if (left := self.tokens_left()) is not None:
            fit = min(fit, left // max(1, tokens_per_request))
        return max(0, fit)

    # -- persistence (state.json)
    def to_dict(self) -> dict:
        d = asdict(self)
        d["charged_ids"] = sorted(self.charged_ids)
        d["tokens"] = self.tokens
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Ledger":
        d = {k: v for k, v in d.items() if k != "tokens"}
        d["charged_ids"] = set(d.get("charged_ids", []))
        return cls(**d)

    def summary(self) -> dict:
        return {"samples": self.samples, "teacher_tokens": self.tokens,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "judge_tokens": self.judge_tokens, "requests": self.requests,
                "failed_parses": self.failed_parses}
