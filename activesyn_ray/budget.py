"""The budget ledger: synthetic samples and teacher tokens, charged exactly once per request.

Generation and llm-judge scoring both spend teacher tokens and are charged here. Charges are keyed
by request id, so a retried request (its replica died and the answer came back twice) or a resumed
run cannot charge the same work twice.

A reply served from the teacher response cache (teacher.cache) is charged like a paid one, so the
budget, and every choice made from it, is the same as in the run that paid; `cached_requests` and
`cached_tokens` count them apart, so `paid_tokens` is what the teacher was actually paid for.

Persistence stays flat as a run grows: state.json holds only the counters and `n_charged`; the
charged request ids live in an append-only journal in the run directory (`charged.jsonl`, one id
a line), attached with `Ledger.from_dict(state["ledger"], journal=path)`. `to_dict()` (called right
before each state save) appends only the ids charged since the previous save, with fsync, so the
journal is durable before a state that counts it; on resume, journal lines beyond `n_charged`
belong to a save that never completed and are dropped. Without a journal (tests, or a caller not
yet passing one) the ids are written into the dict as before, and old state.json files with a
`charged_ids` list still load (their ids move into the journal on first attach).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

LEDGER_JOURNAL = "charged.jsonl"


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
    rejected: int = 0
    """Parsed samples the task's verifier refused (teacher.verify): paid for, never trained on."""
    cached_requests: int = 0
    """Requests answered from the teacher cache: charged like the others, not paid again."""
    cached_tokens: int = 0
    """Prompt + completion tokens of those requests (part of `tokens`, not of `paid_tokens`)."""
    charged_ids: set[str] = field(default_factory=set)
    journal: Path | None = field(default=None, repr=False)
    """Append-only file of charged ids (see module docstring); None: ids go into to_dict()."""
    _unsaved: list[str] = field(default_factory=list, repr=False)
    # loop.pipeline: the teacher lane charges while the main lane saves state (to_dict)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def __getstate__(self) -> dict:
        # a lock does not pickle (Ray ships ledgers, tests pickle them): drop it, make a new one
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def paid_tokens(self) -> int:
        """Teacher tokens actually paid for (the budget counts `tokens`, cached ones included)."""
        return self.tokens - self.cached_tokens

    def charge(self, request_id: str, *, prompt_tokens: int, completion_tokens: int,
               samples: int = 0, judge: bool = False, parsed: bool = True,
               rejected: bool = False, cached: bool = False) -> bool:
        """Record one completed request (`cached`: its reply came from the teacher cache). Returns
        False (and charges nothing) for a duplicate."""
        with self._lock:
            return self._charge(request_id, prompt_tokens=prompt_tokens,
                                completion_tokens=completion_tokens, samples=samples, judge=judge,
                                parsed=parsed, rejected=rejected, cached=cached)

    def _charge(self, request_id: str, *, prompt_tokens: int, completion_tokens: int,
                samples: int, judge: bool, parsed: bool, rejected: bool, cached: bool) -> bool:
        if request_id in self.charged_ids:
            return False
        self.charged_ids.add(request_id)
        self._unsaved.append(request_id)
        self.requests += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if judge:
            self.judge_tokens += prompt_tokens + completion_tokens
        self.samples += samples
        self.failed_parses += 0 if parsed else 1
        self.rejected += int(rejected)
        if cached:
            self.cached_requests += 1
            self.cached_tokens += prompt_tokens + completion_tokens
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

    # -- persistence (state.json + the journal)
    COUNTERS = ("max_samples", "max_tokens", "samples", "prompt_tokens", "completion_tokens",
                "judge_tokens", "requests", "failed_parses", "rejected", "cached_requests",
                "cached_tokens")
    """Saved in state.json; a counter missing from an older state.json starts at its default."""

    def to_dict(self) -> dict:
        """The state.json entry: counters only (O(1)) when a journal is attached; the ids charged
        since the last call are appended to the journal first, durably."""
        with self._lock:
            return self._to_dict()

    def _to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.COUNTERS}
        d["tokens"] = self.tokens
        d["paid_tokens"] = self.paid_tokens
        if self.journal is None:
            self._unsaved.clear()
            d["charged_ids"] = sorted(self.charged_ids)
            return d
        if self._unsaved:
            with open(self.journal, "a") as f:
                f.write("".join(json.dumps(i) + "\n" for i in self._unsaved))
                f.flush()
                os.fsync(f.fileno())
            self._unsaved.clear()
        d["n_charged"] = len(self.charged_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict, *, journal: str | Path | None = None) -> "Ledger":
        """Rebuild from a state.json entry (and the journal, if given: exactly its first
        `n_charged` ids, the ones the saved counters include)."""
        led = cls(**{k: d[k] for k in cls.COUNTERS if k in d})
        led.charged_ids = set(d.get("charged_ids", []))
        if journal is None:
            return led
        led.journal = Path(journal)
        ids = _read_journal(led.journal, d.get("n_charged", 0))
        if "charged_ids" in d and not ids:  # an old state.json: move its ids into the journal
            led._unsaved = sorted(led.charged_ids)
            led.journal.write_text("")
        else:
            led.charged_ids = set(ids)
        return led

    def summary(self) -> dict:
        return {"samples": self.samples, "teacher_tokens": self.tokens,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "judge_tokens": self.judge_tokens, "requests": self.requests,
                "failed_parses": self.failed_parses, "rejected": self.rejected,
                **self.cache_fields(), "cached_requests": self.cached_requests}

    def cache_fields(self, records: list[dict] | None = None) -> dict:
        """Teacher tokens paid vs served from the cache, as a metrics row holds them (cumulative,
        like `teacher_tokens`; paid + cached = teacher_tokens). With `records` (synthetic.jsonl
        rows: a static run's prefix) they are summed over those records instead of the ledger."""
        if records is None:
            return {"teacher_tokens_paid": self.paid_tokens,
                    "teacher_tokens_cached": self.cached_tokens}
        cached = sum(r["prompt_tokens"] + r["completion_tokens"] for r in records
                     if r.get("cached"))
        total = sum(r["prompt_tokens"] + r["completion_tokens"] for r in records)
        return {"teacher_tokens_paid": total - cached, "teacher_tokens_cached": cached}


def _read_journal(path: Path, keep: int) -> list[str]:
    """The first `keep` ids of the journal; a longer file (a save that never completed, or a torn
    last line) is cut back to them in place."""
    if not path.exists():
        if keep:
            raise ValueError(f"{path}: missing, but state.json counts {keep} charged requests")
        return []
    with open(path, "rb") as f:
        lines = f.readlines()
    whole = [ln for ln in lines if ln.endswith(b"\n")]
    if len(whole) < keep:
        raise ValueError(f"{path}: {len(whole)} charged ids, but state.json counts {keep}")
    if len(lines) != keep:
        with open(path, "r+b") as f:
            f.truncate(sum(len(ln) for ln in lines[:keep]))
            f.flush()
            os.fsync(f.fileno())
    return [json.loads(ln) for ln in lines[:keep]]
