"""Decontamination: a synthetic sample that matches a held-out question never trains the student.

A teacher can reproduce evaluation questions: the procedural teacher draws from small question
spaces (1-digit sums have ~100), and an LLM teacher can paraphrase or copy public benchmarks. Every
sample is checked against the held-out questions (test + validation) before it may train:

  * exact match after normalisation: case, white space, and number formatting (`1,000` = `1000`,
    `3.0` = `3`, `07` = `7`) are ignored; tokens are words, numbers and single symbols, so
    `3+4` = `3 + 4`;
  * for longer texts, any shared word n-gram (13 by default, the usual benchmark-decontamination
    setting) between the sample (question and solution) and a held-out question.

A contaminated sample stays in synthetic.jsonl, marked, charged (the teacher spent the tokens) and
counted, but is left out of every training set. The procedural teacher never writes one: it redraws
(tasks/gym.py, `GymTask.generate_like`), deterministically, using `is_held_out`.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+|[^\w\s]")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _norm_number(tok: str) -> str:
    if not tok[0].isdigit():
        return tok
    v = float(tok)
    return str(int(v)) if v == int(v) else repr(v)


def tokens(text: str) -> list[str]:
    """Normalised tokens: lower case, thousands separators dropped, numbers in one canonical form."""
    text = _THOUSANDS.sub("", (text or "").lower())
    return [_norm_number(t) for t in _TOKEN.findall(text)]


def normalize(text: str) -> str:
    return " ".join(tokens(text))


def _ngrams(toks: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


class Decontaminator:
    """Answers "does this text match a held-out question?" with the reason, or None."""

    def __init__(self, held_out_questions: list[str], *, ngram: int = 13):
        self.ngram = ngram
        self.exact = {normalize(q) for q in held_out_questions}
        self.grams: set[tuple[str, ...]] = set()
        for q in held_out_questions:
            self.grams |= _ngrams(tokens(q), ngram)

    def __len__(self) -> int:
        return len(self.exact)

    def is_held_out(self, question: str) -> bool:
        return normalize(question) in self.exact

    def match(self, question: str, solution: str | None = None) -> str | None:
        """"exact", f"{n}-gram" or None for a sample with this question (and solution text)."""
        if self.is_held_out(question):
            return "exact"
        if self.grams:
            text = tokens(question) + tokens(solution or "")
            if not _ngrams(text, self.ngram).isdisjoint(self.grams):
                return f"{self.ngram}-gram"
        return None


def contamination(held_out: Decontaminator | None, record: dict) -> str | None:
    """Why a synthetic.jsonl record matches a held-out question (None: clean, unparsed, or
    decontamination off)."""
    ex = record.get("example")
    if held_out is None or not ex:
        return None
    return held_out.match(ex["question"], ex.get("solution"))
