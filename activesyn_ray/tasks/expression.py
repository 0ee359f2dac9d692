"""Linear arithmetic expressions (`12 + 7 - 30`): safe parsing (also out of a question's text, for
the verifier `GymTask.verify`), the generators' answer, and a new expression with the SAME
structure as a given one (the procedural teacher's `like: seed`).

reasoning-gym's `basic_arithmetic` (without parentheses) and `chain_sum` write questions around an
expression of integers joined by `+ - * /`, and compute its value LEFT TO RIGHT (`3 + 4 * 5` is 35
there; the checker compares with that stored answer). `evaluate` does the same, with integers only
(no `eval`), so an answer computed here is the answer the generator would have stored.

The structure a new problem keeps from its seed (`signature`), chosen as the properties that make
such a problem easy or hard for a small model:
  * the number of terms and the operator sequence;
  * each operand's digit count (of its absolute value) and sign;
  * per step `x op c`, the kind of column work it needs and whether it carries: for a magnitude
    ADDITION (`+` with equal signs, `-` with opposite ones) whether any column carries; for a
    magnitude SUBTRACTION whether any column borrows (larger minus smaller magnitude); for `*`
    whether any single-digit partial product reaches 10; `/` has no flag;
  * per step, whether the running result is negative (a - b below zero is a different skill).
Fresh values are drawn with the same digit counts and signs until the signature matches (bounded
tries, deterministic in the draw's seed); an expression that no draw matches keeps what the last
draw kept and says so (`keeps_structure` False).
"""

from __future__ import annotations

import random
import re

_TOKEN = re.compile(r"\s*(-?\d+|[-+*/])")
OPS = frozenset("+-*/")
# An expression inside free text: not starting inside a word or number, not ending in a decimal.
_IN_TEXT = re.compile(r"(?<![\w.])-?\d+(?:\s*[-+*/]\s*-?\d+)+(?![\w.]*\d)")


def parse(expression: str) -> tuple[list[int], list[str]] | None:
    """`'12 + 7 - 30'` -> ([12, 7, 30], ['+', '-']); None if it is not a linear expression of
    integers (parentheses, decimals, anything else). A leading `-` on an operand is its sign."""
    pos, tokens = 0, []
    text = expression.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            return None
        tokens.append(m.group(1))
        pos = m.end()
    # operands at even positions, operators at odd ones; '-5' at an operator slot is op + operand
    fixed: list[str] = []
    for t in tokens:
        if len(fixed) % 2 == 1 and t.lstrip("-").isdigit() and t.startswith("-"):
            fixed += ["-", t[1:]]
        else:
            fixed.append(t)
    if len(fixed) % 2 == 0:
        return None
    operands, ops = fixed[0::2], fixed[1::2]
    if not all(re.fullmatch(r"-?\d+", o) for o in operands) or not all(o in OPS for o in ops):
        return None
    return [int(o) for o in operands], ops


def find(text: str) -> tuple[list[int], list[str]] | None:
    """The one linear expression written in a question (`Calculate 12 + 7.`, `... problem: 4 - 1 =`),
    parsed; None when the text holds none, or several (which one is asked would be a guess)."""
    found = [parse(m.group(0)) for m in _IN_TEXT.finditer(text or "")]
    found = [f for f in found if f is not None]
    return found[0] if len(found) == 1 else None


def render(operands: list[int], ops: list[str]) -> str:
    parts = [str(operands[0])]
    for op, c in zip(ops, operands[1:]):
        parts += [op, str(c)]
    return " ".join(parts)


def evaluate(operands: list[int], ops: list[str]) -> int | None:
    """Left to right, as the generators compute it; None for a division that is not exact."""
    result = operands[0]
    for op, c in zip(ops, operands[1:]):
        if op == "+":
            result += c
        elif op == "-":
            result -= c
        elif op == "*":
            result *= c
        else:
            if c == 0 or result % c:
                return None
            result //= c
    return result


def _digits(n: int) -> list[int]:
    return [int(d) for d in str(abs(n))[::-1]]


def _carries(a: int, b: int) -> bool:
    """Column addition of |a| + |b| carries somewhere."""
    da, db, carry = _digits(a), _digits(b), 0
    for i in range(max(len(da), len(db))):
        s = (da[i] if i < len(da) else 0) + (db[i] if i < len(db) else 0) + carry
        carry = int(s >= 10)
        if carry:
            return True
    return False


def _borrows(a: int, b: int) -> bool:
    """Column subtraction of the larger magnitude minus the smaller borrows somewhere."""
    big, small = (abs(a), abs(b)) if abs(a) >= abs(b) else (abs(b), abs(a))
    db, ds, borrow = _digits(big), _digits(small), 0
    for i in range(len(db)):
        d = db[i] - (ds[i] if i < len(ds) else 0) - borrow
        borrow = int(d < 0)
        if borrow:
            return True
    return False


def _partial_carry(a: int, b: int) -> bool:
    return any(x * y >= 10 for x in _digits(a) for y in _digits(b))


def signature(operands: list[int], ops: list[str]) -> tuple:
    """What `like: seed` keeps (module docstring); comparable with ==."""
    shape = tuple((len(str(abs(c))), c < 0) for c in operands)
    steps, x = [], operands[0]
    for op, c in zip(ops, operands[1:]):
        if op in "+-":
            same = (x >= 0) == (c >= 0)
            adds = same if op == "+" else not same
            kind, flag = ("add", _carries(x, c)) if adds else ("sub", _borrows(x, c))
        elif op == "*":
            kind, flag = "mul", _partial_carry(x, c)
        else:
            kind, flag = "div", False
        x = evaluate([x, c], [op])
        if x is None:
            return (shape, tuple(ops), None)
        steps.append((kind, flag, x < 0))
    return (shape, tuple(ops), tuple(steps))


def _draw_operand(rng: random.Random, digits: int, negative: bool) -> int:
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    v = rng.randint(lo, 10 ** digits - 1)
    return -v if negative and v else v


def redraw_like(operands: list[int], ops: list[str], *, seed: int, tries: int = 400
                ) -> tuple[list[int], bool]:
    """New operands with the seed's signature, deterministic in `seed`: (operands, kept), where
    kept is False when no draw within `tries` matched (then the last exact draw with the same
    digit counts is returned). Never returns the seed's own operands when another draw exists."""
    want = signature(operands, ops)
    rng = random.Random(seed)
    last = None
    for _ in range(tries):
        new = [_draw_operand(rng, len(str(abs(c))), c < 0) for c in operands]
        if "/" in ops:  # a division must stay exact: pick each divisor among the running value's
            new = _exact_divisions(new, ops, rng)
            if new is None:
                continue
        if evaluate(new, ops) is None:
            continue
        if new == operands:
            continue
        last = new
        if signature(new, ops) == want:
            return new, True
    return (last if last is not None else list(operands)), False


def _exact_divisions(new: list[int], ops: list[str], rng: random.Random) -> list[int] | None:
    x = new[0]
    out = [x]
    for op, c in zip(ops, new[1:]):
        if op == "/":
            digits = len(str(abs(c)))
            lo = 1 if digits == 1 else 10 ** (digits - 1)
            divisors = [d for d in range(lo, 10 ** digits) if x % d == 0]
            if not divisors:
                return None
            c = rng.choice(divisors)
        out.append(c)
        x = evaluate([x, c], [op])
    return out
