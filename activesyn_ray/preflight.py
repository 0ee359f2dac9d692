"""Start-up checks: settings that would silently make the numbers wrong, caught before any actor
starts, each naming the field and an example.

  * `student.max_new_tokens` shorter than the longest reference ` #### answer` (+ eos) in the
    held-out splits, in the student's tokenizer: such items could never be scored correct -> error;
    shorter than some full reference targets (worked solution + answer) -> warning with the count;
  * `student.max_seq_len` shorter than prompt + target of some examples: training truncates them
    -> warning with the count and the longest;
  * `teacher.verify` on a task without a verifier (`Task.cannot_verify`) -> error;
  * a procedural level whose question space is too small for its share of seeds + held-out +
    synthetic samples: samples repeat questions heavily (and held-out ones must be redrawn)
    -> warning with the numbers.
"""

from __future__ import annotations

import logging

from activesyn_ray.config import ConfigError, RunConfig
from activesyn_ray.tasks.base import ANSWER_MARK, Example, Task

log = logging.getLogger("activesyn")


def _student_tokenizer(cfg: RunConfig):
    from activesyn_ray.models import open_tokenizer, resolve_model

    return open_tokenizer(resolve_model(cfg.student.model))


def _n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def check_lengths(cfg: RunConfig, task: Task, seeds: list[Example], held_out: list[Example],
                  tok=None) -> list[str]:
    """Raise ConfigError if max_new_tokens cannot hold an answer; return warnings otherwise."""
    tok = tok or _student_tokenizer(cfg)
    s, warnings = cfg.student, []
    eos = 1  # generation stops on eos, which the student is trained to emit after the answer
    answer_need = [(_n_tokens(tok, f" {ANSWER_MARK} {e.answer}") + eos, e) for e in held_out]
    need, worst = max(answer_need, key=lambda t: t[0])
    if s.max_new_tokens < need:
        raise ConfigError(
            f"student.max_new_tokens: {s.max_new_tokens} is too short for the answer of held-out "
            f"example {worst.id!r} ({worst.question.strip()[:60]!r} -> ' {ANSWER_MARK} "
            f"{worst.answer}' is {need} tokens with eos); such items can never be scored correct: "
            f"set it to at least {need}")
    full = [(_n_tokens(tok, task.target(e)) + eos, e) for e in held_out]
    cut = [(n, e) for n, e in full if n > s.max_new_tokens]
    if cut:
        n, e = max(cut, key=lambda t: t[0])
        warnings.append(f"student.max_new_tokens: {s.max_new_tokens} is shorter than the full "
                        f"reference target (solution + answer) of {len(cut)}/{len(held_out)} "
                        f"held-out examples (longest {n} tokens, {e.id!r}); a student that writes "
                        f"its reasoning may be cut off before the answer")
    seq = [(len(tok(Task.prompt(e.question))["input_ids"]) + _n_tokens(tok, task.target(e)) + eos, e)
           for e in seeds + held_out]
    long = [(n, e) for n, e in seq if n > s.max_seq_len]
    if long:
        n, e = max(long, key=lambda t: t[0])
        warnings.append(f"student.max_seq_len: {s.max_seq_len} truncates prompt + target of "
                        f"{len(long)}/{len(seq)} seed/held-out examples (longest {n} tokens, "
                        f"{e.id!r}); synthetic samples like them lose their answer in training")
    return warnings


def check_question_space(cfg: RunConfig, task: Task) -> list[str]:
    """Warn when a procedural level's question space is small for what the run draws from it."""
    if cfg.teacher.engine != "procedural" or not hasattr(task, "question_space"):
        return []
    draws = 2000
    levels = len(task.levels)
    budget = cfg.budget.samples or 0
    t = cfg.task
    need = -(-(t.seed_size + t.val_size + t.test_size + budget) // levels)  # per level, evenly
    warnings = []
    for i, distinct in enumerate(task.question_space(draws)):
        if distinct < draws and distinct < 2 * need:
            warnings.append(
                f"task.levels[{i}]: its generator gave only {distinct:,} distinct questions in "
                f"{draws:,} draws, while the run takes ~{need:,} from this level (seeds + "
                f"validation + test + its share of budget.samples={budget:,}); synthetic samples "
                f"will repeat questions heavily, and held-out questions are redrawn")
    return warnings


def check_seed_like(cfg: RunConfig, task: Task) -> list[str]:
    """teacher.procedural.like=seed on a dataset with no structure to follow: it uses `level`."""
    if cfg.teacher.engine != "procedural" or cfg.teacher.procedural.like != "seed" or \
            not hasattr(task, "seed_like_support"):
        return []
    plain = [d for d in task.datasets if d not in task.seed_like_support()]
    out = [f"teacher.procedural.like: seed has no structure to follow in {', '.join(plain)} "
           f"(only linear arithmetic expressions: basic_arithmetic, chain_sum); its samples are "
           f"new instances of the seed's level (like: level)"] if plain else []
    if "basic_arithmetic" in task.datasets:  # reasoning-gym's default allows parentheses
        nested = [i for i, lv in enumerate(task.levels) if lv.get("allow_parentheses", True)]
        out += [f"task.levels[{i}]: allow_parentheses is on, so its seeds have no linear expression "
                f"for teacher.procedural.like: seed to follow; their samples use like: level"
                for i in nested]
    return out


def check_verifier(cfg: RunConfig, task: Task) -> None:
    """teacher.verify on a task that cannot check its answers: refuse, saying why."""
    if cfg.teacher.verify and (why := task.cannot_verify()):
        raise ConfigError(f"teacher.verify: {why}; or set teacher.verify: false")


def preflight(cfg: RunConfig, task: Task, seeds: list[Example], held_out: list[Example]) -> list[str]:
    """All checks; raises ConfigError on a fatal one, logs and returns the warnings."""
    check_verifier(cfg, task)
    warnings = check_lengths(cfg, task, seeds, held_out) + check_question_space(cfg, task) + \
        check_seed_like(cfg, task)
    for w in warnings:
        log.warning("%s", w)
    return warnings
