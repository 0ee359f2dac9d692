"""The task interface: splits, the student's prompt/target format, answer extraction and checking.

Every task speaks the same GSM8K-style answer format: a completion may reason freely and ends with
`#### <final answer>`. The student is trained on `prompt(q) + target(example)` with the prompt masked.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

ANSWER_MARK = "####"
_ANSWER_RE = re.compile(r"####\s*(.+)")


@dataclass
class Example:
    id: str
    question: str
    answer: str
    """The canonical final answer (what `check` compares against)."""
    solution: str | None = None
    """Optional worked reasoning that precedes `#### answer` in the training target."""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        return cls(id=d["id"], question=d["question"], answer=str(d["answer"]),
                   solution=d.get("solution"), meta=d.get("meta") or {})


def stratum(example: Example) -> str:
    """The group an example is reported under: a `stratum` field of your own data, else the
    reasoning-gym difficulty level, else "all". Metrics, selection mix and plots break down by it."""
    meta = example.meta or {}
    if meta.get("stratum") is not None:
        return str(meta["stratum"])
    if meta.get("level") is not None:
        return str(meta["level"])
    return "all"


def extract_answer(text: str) -> str | None:
    """The text after the LAST `####`, up to the end of its line; None if there is none."""
    matches = _ANSWER_RE.findall(text or "")
    if not matches:
        return None
    ans = matches[-1].strip()
    return ans or None


def normalize_number(s: str) -> str:
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        v = float(s)
    except ValueError:
        return s.lower()
    return str(int(v)) if v == int(v) else repr(round(v, 6))


class Task:
    """Base class. Subclasses build the splits and may override `check`."""

    name: str = "task"
    has_generator: bool = False

    def __init__(self, cfg, *, seed: int):
        self.cfg = cfg
        self.seed = seed

    # -- data
    def splits(self) -> tuple[list[Example], list[Example]]:
        """(seed pool, held-out test split), disjoint by question text, deterministic in seed."""
        raise NotImplementedError

    # -- format
    @staticmethod
    def prompt(question: str) -> str:
        return f"Question: {question.strip()}\nAnswer:"

    @staticmethod
    def target(example: Example) -> str:
        body = f"{example.solution.strip()}\n" if example.solution else ""
        return f" {body}{ANSWER_MARK} {example.answer}"

    # -- checking
    def check(self, example: Example, predicted: str | None) -> bool:
        if predicted is None:
            return False
        return normalize_number(predicted) == normalize_number(example.answer)

    def check_completion(self, example: Example, completion: str) -> bool:
        return self.check(example, extract_answer(completion))

    # -- verifier (teacher.verify)
    def verify(self, example: Example) -> bool | None:
        """Whether a teacher sample's written answer is right, computed from its question alone:
        True / False, or None when this sample cannot be checked (then teacher.verify drops it
        too). A task with a verifier overrides this and `cannot_verify`."""
        raise NotImplementedError(self.cannot_verify())

    def cannot_verify(self) -> str | None:
        """Why this task (with its config) has no verifier, or None when `verify` works; checked
        at start-up when teacher.verify is on."""
        return f"task {self.name} has no verifier (a Task subclass provides one by overriding " \
               f"Task.verify and Task.cannot_verify)"

    # -- procedural teacher support
    def generate_like(self, example: Example, *, seed: int) -> Example:
        raise NotImplementedError(f"task {self.name} has no generator; use an LLM teacher")


def split_disjoint(pool: list[Example], test: list[Example], seed_size: int, test_size: int,
                   what: str) -> tuple[list[Example], list[Example]]:
    """Drop test items whose question appears in the seed pool (after the decontamination
    normalisation: case, white space, number format), then cut both to size."""
    from activesyn_ray.decontaminate import normalize

    seen = {normalize(e.question) for e in pool[:seed_size]}
    test = [e for e in test if normalize(e.question) not in seen]
    if len(pool) < seed_size or len(test) < test_size:
        raise ValueError(f"{what}: asked for seed_size={seed_size} + test_size={test_size} distinct "
                         f"examples but only {len(pool)} + {len(test)} are available")
    return pool[:seed_size], test[:test_size]
