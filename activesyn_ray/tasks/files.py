"""Bring-your-own data: GSM8K-style JSONL/Parquet, the Tree-of-Thoughts Game-of-24 csv, LogiQA.

A malformed row is always reported as `file:line: what is wrong`; `task.on_bad_row` decides whether
the run stops (fail, default) or the row is skipped with a warning (skip). Never silent.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import random
from fractions import Fraction
from pathlib import Path

from activesyn_ray.assets import package_file
from activesyn_ray.tasks.base import ANSWER_MARK, Example, Task, extract_answer, split_disjoint

log = logging.getLogger(__name__)


class BadRow(ValueError):
    pass


class _FileTask(Task):
    """Reads rows, keeps the good ones, reports the bad ones, then shuffles and splits."""

    def _rows(self) -> list[tuple[int, dict]]:
        raise NotImplementedError

    def _parse(self, lineno: int, row: dict) -> Example:
        raise NotImplementedError

    @property
    def source(self) -> str:
        return str(self.cfg.path)

    def load(self) -> list[Example]:
        good, bad = [], []
        for lineno, row in self._rows():
            try:
                good.append(self._parse(lineno, row))
            except BadRow as err:
                msg = f"{self.source}:{lineno}: {err}"
                if self.cfg.on_bad_row == "fail":
                    raise BadRow(msg + "  (set task.on_bad_row: skip to drop such rows)") from None
                bad.append(msg)
        for msg in bad:
            log.warning("skipped bad row %s", msg)
        self.skipped = bad
        return good

    def splits(self) -> tuple[list[Example], list[Example]]:
        rows = self.load()
        random.Random(self.seed).shuffle(rows)
        n_test = self.cfg.test_size
        return split_disjoint(rows[n_test:], rows[:n_test], self.cfg.seed_size, n_test,
                              f"task file {self.source}")


class JsonlTask(_FileTask):
    """`{"question": ..., "answer": "...reasoning...\\n#### 42"}` per line (.jsonl) or per row (.parquet)."""

    name = "jsonl"

    def _rows(self):
        path = Path(self.source)
        if not path.exists():
            raise FileNotFoundError(f"task.path: {path} does not exist")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            # Parquet has no lines: report the 1-based row number instead.
            yield from enumerate(pq.read_table(path).to_pylist(), 1)
            return
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    row = BadRow(f"not valid JSON ({err.msg} at column {err.colno})")
                yield lineno, row

    def _parse(self, lineno: int, row) -> Example:
        if isinstance(row, BadRow):
            raise row
        if not isinstance(row, dict):
            raise BadRow("expected a JSON object with 'question' and 'answer'")
        for key in ("question", "answer"):
            if not isinstance(row.get(key), (str, int, float)) or str(row[key]).strip() == "":
                raise BadRow(f"field '{key}' is missing or empty")
        raw = str(row["answer"])
        final = extract_answer(raw) if ANSWER_MARK in raw else raw.strip()
        if final is None:
            raise BadRow(f"field 'answer' has '{ANSWER_MARK}' but no final answer after it")
        solution = raw.rsplit(ANSWER_MARK, 1)[0].strip() if ANSWER_MARK in raw else None
        return Example(id=str(row.get("id", f"row-{lineno}")), question=str(row["question"]),
                       answer=final, solution=solution or None, meta={"line": lineno})


# ----------------------------------------------------------------------------------- Game of 24
def solve24(nums: list[int]) -> str | None:
    """One expression using each number once that makes 24 (exact fractions), or None."""
    def rec(items):
        if len(items) == 1:
            return items[0][1] if items[0][0] == 24 else None
        for i, j in itertools.permutations(range(len(items)), 2):
            (a, ea), (b, eb) = items[i], items[j]
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            cands = [(a + b, f"({ea} + {eb})"), (a - b, f"({ea} - {eb})"), (a * b, f"{ea} * {eb}"
                     if len(items) == 2 else f"({ea} * {eb})")]
            if b != 0:
                cands.append((a / b, f"({ea} / {eb})"))
            for v, e in cands:
                if (found := rec(rest + [(v, e)])) is not None:
                    return found
        return None
    expr = rec([(Fraction(n), str(n)) for n in nums])
    if expr and expr.startswith("(") and _closing_paren(expr) == len(expr) - 1:
        expr = expr[1:-1]  # drop only a pair that wraps the whole expression
    return expr


def _closing_paren(s: str) -> int:
    depth = 0
    for i, ch in enumerate(s):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return i
    return -1


def check24(nums: list[int], expr: str) -> bool:
    import ast

    try:
        tree = ast.parse(expr.replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError:
        return False
    used: list[int] = []

    def ev(node) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div):
            a, b = ev(node.left), ev(node.right)
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op)) \
                if not isinstance(node.op, ast.Div) else a / b
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            used.append(node.value)
            return Fraction(node.value)
        raise ValueError("only + - * / on integers")

    try:
        ok = ev(tree.body) == 24
    except (ValueError, ZeroDivisionError):
        return False
    return ok and sorted(used) == sorted(nums)


class Game24Task(_FileTask):
    """The 1,362 puzzles of the Tree-of-Thoughts paper (`tot/data/24/24.csv`), ranked by difficulty."""

    name = "game24"

    @property
    def source(self) -> str:
        return str(self.cfg.path or package_file("tree-of-thoughts-llm", "tot/data/24/24.csv"))

    def _rows(self):
        with open(self.source, newline="") as f:
            for lineno, row in enumerate(csv.DictReader(f), 2):  # line 1 is the header
                yield lineno, row

    def _parse(self, lineno: int, row: dict) -> Example:
        try:
            nums = [int(x) for x in row["Puzzles"].split()]
        except (KeyError, ValueError, AttributeError):
            raise BadRow("column 'Puzzles' must hold four integers") from None
        if len(nums) != 4:
            raise BadRow(f"column 'Puzzles' must hold four integers, got {len(nums)}")
        expr = solve24(nums)
        if expr is None:
            raise BadRow(f"puzzle {nums} has no solution")
        q = f"Use the numbers {' '.join(map(str, nums))} and + - * / to make 24. Use each number once."
        return Example(id=f"24-{row.get('Rank', lineno)}", question=q, answer=expr,
                       meta={"numbers": nums, "rank": int(row.get("Rank") or lineno)})

    def check(self, example: Example, predicted: str | None) -> bool:
        return predicted is not None and check24(example.meta["numbers"], predicted)


# ----------------------------------------------------------------------------------------- LogiQA
class LogiQATask(_FileTask):
    """LogiQA 4-choice logical reasoning from the `evals` package's registry (answer: A-D)."""

    name = "logiqa"
    MEMBER = "evals/registry/data/logiqa/logiqa.jsonl"

    @property
    def source(self) -> str:
        return str(self.cfg.path or package_file("evals", self.MEMBER))

    _rows = JsonlTask._rows

    def _parse(self, lineno: int, row) -> Example:
        if isinstance(row, BadRow):
            raise row
        try:
            msgs = row["input"]
            user = next(m["content"] for m in msgs if m.get("role") == "user")
            ideal = str(row["ideal"]).strip()
        except (KeyError, TypeError, StopIteration):
            raise BadRow("expected 'input' (chat messages with a user turn) and 'ideal'") from None
        if ideal not in {"A", "B", "C", "D"}:
            raise BadRow(f"field 'ideal' must be one of A-D, got {ideal!r}")
        return Example(id=f"logiqa-{lineno}", question=user.strip(), answer=ideal, meta={"line": lineno})

    def check(self, example: Example, predicted: str | None) -> bool:
        return predicted is not None and predicted.strip().upper()[:1] == example.answer
