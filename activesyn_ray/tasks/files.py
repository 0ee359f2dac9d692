"""Bring-your-own data: GSM8K-style JSONL/Parquet, the Tree-of-Thoughts Game-of-24 csv, LogiQA.

A malformed row is always reported as `file:line: what is wrong` (not valid UTF-8, not valid JSON,
longer than `task.max_row_chars`, a field missing, empty or of the wrong type, a torn last line);
`task.on_bad_row` decides whether the run stops (fail, default) or the row is skipped with a
warning (skip). Never silent. Data comes from one `task.path` (shuffled, then split into seeds and
test) or from two files, `task.seed_path` and `task.test_path`, used as given. A question repeated
in a file is kept once (its first row), and with two files a test question also among the seeds is
dropped from the test split; both are counted in a warning.
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
from activesyn_ray.decontaminate import normalize
from activesyn_ray.tasks.base import ANSWER_MARK, Example, Task, extract_answer, split_disjoint

log = logging.getLogger(__name__)


class BadRow(ValueError):
    pass


def read_lines(path: str | Path, *, max_chars: int):
    """(line number, text or BadRow) for each non-blank line, read as bytes so that one bad byte
    costs one row (with its file:line) instead of the whole file. A line over `max_chars` is
    refused without being held whole in memory; a last line with no newline is flagged torn only
    if it does not parse (many editors drop the final newline; a cut-off write leaves half a row)."""
    limit = 4 * max_chars + 2  # UTF-8 is at most 4 bytes a character, plus the newline
    with open(path, "rb") as f:
        lineno = 0
        while raw := f.readline(limit):
            lineno += 1
            if len(raw) == limit and not raw.endswith(b"\n"):
                while (more := f.readline(limit)) and not more.endswith(b"\n"):
                    pass  # skip the rest of the over-long line
                yield lineno, BadRow(f"row longer than task.max_row_chars={max_chars}")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield lineno, BadRow(f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column "
                                     f"{err.start + 1})")
                continue
            if len(text.rstrip("\r\n")) > max_chars:
                yield lineno, BadRow(f"row longer than task.max_row_chars={max_chars} "
                                     f"({len(text.rstrip())} characters)")
                continue
            if text.strip():
                yield lineno, (text if text.endswith("\n") else _Torn(text))


class _Torn(str):
    """The file's last line, which has no newline: fine if complete, reported as torn if not."""


def _text_field(row: dict, key: str, *, numbers: bool) -> str:
    """The field as text, or BadRow naming the field and what was found instead."""
    if key not in row or row[key] is None:
        raise BadRow(f"field '{key}' is missing")
    value = row[key]
    ok = (str,) + ((int, float) if numbers else ())
    if isinstance(value, bool) or not isinstance(value, ok):
        want = "a string or a number" if numbers else "a string"
        raise BadRow(f"field '{key}' must be {want}, got {type(value).__name__} {_short(value)}")
    if str(value).strip() == "":
        raise BadRow(f"field '{key}' is empty")
    return str(value)


def _short(value, n: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= n else text[:n] + "..."


class _FileTask(Task):
    """Reads rows, keeps the good ones, reports the bad ones, then shuffles and splits."""

    id_prefix = ""
    """Prepended to line-number ids ("seed-"/"test-" with two files, so ids stay unique)."""

    def _rows(self, path: str):
        raise NotImplementedError

    def _parse(self, lineno: int, row: dict) -> Example:
        raise NotImplementedError

    @property
    def source(self) -> str:
        return str(self.cfg.path)

    def load(self, path: str | None = None, *, id_prefix: str = "") -> list[Example]:
        path = str(path or self.source)
        if not Path(path).exists():
            field = "task.path" if path == self.source else "task.seed_path / task.test_path"
            raise FileNotFoundError(f"{field}: {path} does not exist")
        self.id_prefix = id_prefix
        good, bad = [], []
        for lineno, row in self._rows(path):
            try:
                if isinstance(row, BadRow):
                    raise row
                ex = self._parse(lineno, row)
                if len(ex.question) + len(ex.answer) + len(ex.solution or "") > self.cfg.max_row_chars:
                    raise BadRow(f"row longer than task.max_row_chars={self.cfg.max_row_chars}")
                good.append(ex)
            except BadRow as err:
                msg = f"{path}:{lineno}: {err}"
                if self.cfg.on_bad_row == "fail":
                    raise BadRow(msg + "  (set task.on_bad_row: skip to drop such rows)") from None
                bad.append(msg)
        for msg in bad:
            log.warning("skipped bad row %s", msg)
        self.skipped = getattr(self, "skipped", []) + bad
        return good

    def splits(self) -> tuple[list[Example], list[Example]]:
        """Duplicates dropped first (a file's repeated question would otherwise land on both
        sides of the split, or twice in the pool), then shuffled and split; what was dropped is
        said once, with its count."""
        self.skipped = []
        n_test = self.cfg.test_size
        if self.cfg.seed_path:  # two files: the split is yours; only the order is shuffled
            pool, dup_pool = distinct(self.load(self.cfg.seed_path, id_prefix="seed-"))
            test, dup_test = distinct(self.load(self.cfg.test_path, id_prefix="test-"))
            random.Random(self.seed).shuffle(pool)
            random.Random(self.seed + 1).shuffle(test)
            used = {normalize(e.question) for e in pool[:self.cfg.seed_size]}
            clean = [e for e in test if normalize(e.question) not in used]
            _say_dropped(self.cfg.seed_path, dup_pool)
            _say_dropped(self.cfg.test_path, dup_test)
            if len(clean) < len(test):
                log.warning("%s: dropped %d test question(s) also in the seed pool (%s)",
                            self.cfg.test_path, len(test) - len(clean), self.cfg.seed_path)
            return split_disjoint(pool, clean, self.cfg.seed_size, n_test,
                                  f"task files {self.cfg.seed_path} + {self.cfg.test_path}")
        rows, dup = distinct(self.load())
        _say_dropped(self.source, dup)
        random.Random(self.seed).shuffle(rows)
        return split_disjoint(rows[n_test:], rows[:n_test], self.cfg.seed_size, n_test,
                              f"task file {self.source}" + (f" ({dup} duplicate questions dropped)"
                                                            if dup else ""))


def distinct(examples: list[Example]) -> tuple[list[Example], int]:
    """The first row of each question (compared after the decontamination normalisation: case,
    white space, number format), in file order; and how many rows were dropped."""
    seen, out = set(), []
    for ex in examples:
        key = normalize(ex.question)
        if key not in seen:
            seen.add(key)
            out.append(ex)
    return out, len(examples) - len(out)


def _say_dropped(path, n: int) -> None:
    if n:
        log.warning("%s: dropped %d row(s) repeating an earlier question (the first is kept)",
                    path, n)


def _json_rows(self, path: str):
    """JSONL rows as (line, dict | BadRow): shared by JsonlTask and LogiQATask."""
    for lineno, line in read_lines(path, max_chars=self.cfg.max_row_chars):
        if isinstance(line, BadRow):
            yield lineno, line
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            why = "last line is cut off (no newline at the end and not valid JSON: was the file " \
                  "still being written?)" if isinstance(line, _Torn) else \
                  f"not valid JSON ({err.msg} at column {err.colno})"
            row = BadRow(why)
        yield lineno, row


class JsonlTask(_FileTask):
    """`{"question": ..., "answer": "...reasoning...\\n#### 42"}` per line (.jsonl) or per row (.parquet)."""

    name = "jsonl"

    def _rows(self, path: str):
        if Path(path).suffix == ".parquet":
            import pyarrow.parquet as pq

            # Parquet has no lines: report the 1-based row number instead.
            yield from enumerate(pq.read_table(path).to_pylist(), 1)
            return
        yield from _json_rows(self, path)

    def _parse(self, lineno: int, row) -> Example:
        if not isinstance(row, dict):
            raise BadRow(f"expected a JSON object with 'question' and 'answer', got "
                         f"{type(row).__name__}")
        question = _text_field(row, "question", numbers=False)
        raw = _text_field(row, "answer", numbers=True)
        final = extract_answer(raw) if ANSWER_MARK in raw else raw.strip()
        if final is None:
            raise BadRow(f"field 'answer' has '{ANSWER_MARK}' but no final answer after it")
        solution = raw.rsplit(ANSWER_MARK, 1)[0].strip() if ANSWER_MARK in raw else None
        return Example(id=str(row.get("id", f"{self.id_prefix}row-{lineno}")), question=question,
                       answer=final, solution=solution or None,
                       meta={"line": lineno, **({"stratum": str(row["stratum"])}
                                                if row.get("stratum") is not None else {})})


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

    def _rows(self, path: str):
        header = None
        for lineno, line in read_lines(path, max_chars=self.cfg.max_row_chars):
            if isinstance(line, BadRow):
                yield lineno, line
            elif header is None:
                header = next(csv.reader([line]))
            else:  # the puzzles file has no quoted newlines: one csv record per line
                yield lineno, dict(zip(header, next(csv.reader([line]))))

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
        try:
            msgs = row["input"]
            user = next(m["content"] for m in msgs if m.get("role") == "user")
            ideal = str(row["ideal"]).strip()
        except (KeyError, TypeError, StopIteration):
            raise BadRow("expected 'input' (chat messages with a user turn) and 'ideal'") from None
        if ideal not in {"A", "B", "C", "D"}:
            raise BadRow(f"field 'ideal' must be one of A-D, got {ideal!r}")
        return Example(id=f"logiqa-{self.id_prefix}{lineno}", question=user.strip(), answer=ideal, meta={"line": lineno})

    def check(self, example: Example, predicted: str | None) -> bool:
        return predicted is not None and predicted.strip().upper()[:1] == example.answer
