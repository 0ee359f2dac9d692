"""Teacher prompts (templates in teacher/prompts/*.txt, replaceable by teacher.generate_prompt /
teacher.judge_prompt) and the parsers for what the teacher writes back.

Templates use Python `str.format` fields; write a literal brace as `{{` or `}}`.
  generate.txt  fields: {question} {answer} {solution} {worked_answer}  (worked_answer = solution +
                `#### answer`, the student's training target). Asks for ONE new problem as
                `Question: ...` / `Answer: ... #### X`; output that does not parse is discarded by the
                pool, counted in ledger.failed_parses, and still charged.
  judge.txt     fields: {question} {answer} {solution} {student_answer}. Asks for `Grade: N`, N in
                1..10; an unparseable grade counts as NEUTRAL_GRADE (the middle of the scale, so it
                neither hides nor promotes the seed) and is counted in ledger.failed_parses too.
"""

from __future__ import annotations

import re
import string
from importlib import resources
from pathlib import Path

from activesyn_ray.tasks.base import ANSWER_MARK, Example

NEUTRAL_GRADE = 5.5
FIELDS = {"generate": {"question", "answer", "solution", "worked_answer"},
          "judge": {"question", "answer", "solution", "student_answer"}}
REQUIRED = {"generate": {"question"}, "judge": {"question", "student_answer"}}


class PromptError(ValueError):
    pass


def load_template(kind: str, path: str | None = None) -> str:
    """The packaged template, or the file at `path`; its fields are checked so a typo fails at start."""
    if path is None:
        text = resources.files("activesyn_ray.teacher").joinpath(f"prompts/{kind}.txt").read_text()
        where = f"packaged prompts/{kind}.txt"
    else:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise PromptError(f"teacher.{kind}_prompt: cannot read {path}: {err.strerror}") from None
        where = f"teacher.{kind}_prompt {path}"
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as err:
        raise PromptError(f"{where}: bad template ({err}); write literal braces as {{{{ and }}}}") from None
    if unknown := used - FIELDS[kind]:
        raise PromptError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(FIELDS[kind])}")
    if missing := REQUIRED[kind] - used:
        raise PromptError(f"{where}: must contain {sorted('{' + m + '}' for m in missing)}")
    return text


class Prompts:
    def __init__(self, teacher_cfg):
        self.generate_tpl = load_template("generate", teacher_cfg.generate_prompt)
        self.judge_tpl = load_template("judge", teacher_cfg.judge_prompt)

    @staticmethod
    def _fields(ex: Example) -> dict:
        solution = (ex.solution or "").strip()
        worked = f"{solution}\n{ANSWER_MARK} {ex.answer}" if solution else f"{ANSWER_MARK} {ex.answer}"
        return {"question": ex.question.strip(), "answer": ex.answer, "solution": solution,
                "worked_answer": worked}

    def generate(self, seed: Example) -> str:
        return self.generate_tpl.format(**self._fields(seed)).strip()

    def judge(self, example: Example, student_answer: str) -> str:
        return self.judge_tpl.format(**self._fields(example),
                                     student_answer=student_answer.strip() or "(no answer)").strip()


# --------------------------------------------------------------------------------------- parsers
_SAMPLE_RE = re.compile(
    r"^(?:.*?Question:)?\s*(?P<q>.+?)\s*\n\s*Answer:\s*(?P<sol>.*?)\s*####[ \t]*(?P<ans>[^\n]*)",
    re.DOTALL)


def parse_sample(text: str) -> tuple[str, str | None, str] | None:
    """(question, solution or None, final answer) from `Question: ... Answer: ... #### X`, else None.
    Only the FIRST problem counts (models like to keep writing more)."""
    m = _SAMPLE_RE.search(text.strip())
    if not m:
        return None
    q, sol, ans = m.group("q").strip(), m.group("sol").strip(), m.group("ans").strip()
    if not q or not ans or "Question:" in q:
        return None
    return q, sol or None, ans


_GRADE_RE = re.compile(r"grade\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_grade(text: str) -> float | None:
    """The grade from `Grade: N` (or a reply that is just a number), N in 1..10; else None."""
    m = _GRADE_RE.search(text)
    raw = m.group(1) if m else text.strip().rstrip(".")
    try:
        g = float(raw)
    except ValueError:
        return None
    return g if 1 <= g <= 10 else None
