"""One point of the learning curve: the metrics.jsonl row an evaluation writes, and the clock
that times the phases of the iteration it closes."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager

import numpy as np

from activesyn_ray.tasks import Example, stratum


class PhaseClock:
    """Seconds per phase of the current iteration, and the iteration's wall time: None for an
    iteration this process did not run from its start (resumed mid-way). 1 - sum(phases) / wall
    is the orchestration overhead `activesyn bench` reports (sync loop). With loop.pipeline the
    teacher lane's phases (select, generate) are kept by the round they belong to and join that
    round's row; they ran during the previous row's wall. Every phase is also a span (lane,
    name, round, start, end) for RUN/timeline.json, and `on_phase` hears of each (Ray metrics)."""

    def __init__(self, on_phase=None):
        self.seconds: dict[str, float] = {}
        self.ahead: dict[int, dict[str, float]] = {}  # teacher-lane phases by round
        self.spans: list[dict] = []
        self.on_phase = on_phase
        self._t0: float | None = None

    def start_iteration(self) -> None:
        self.seconds, self._t0 = {}, time.perf_counter()

    @contextmanager
    def phase(self, name: str, *, round: int | None = None, lane: str | None = None):
        t0, start = time.perf_counter(), time.time()
        yield
        dt = time.perf_counter() - t0
        if lane is None:
            self.seconds[name] = dt
        else:
            self.ahead.setdefault(round, {})[name] = dt
        self.spans.append({"lane": lane or "loop", "name": name, "round": round,
                           "start": start, "end": start + dt})
        if self.on_phase is not None:
            self.on_phase(name, lane or "loop", dt)

    def seconds_for(self, iteration: int) -> dict[str, float]:
        """This iteration's phases: its own, and its teacher-lane ones (pipelined)."""
        return {**self.ahead.pop(iteration, {}), **self.seconds}

    def wall(self) -> float | None:
        return None if self._t0 is None else time.perf_counter() - self._t0


def by_stratum(examples: list[Example], correct: list[bool]) -> dict[str, list[bool]]:
    out: dict[str, list[bool]] = {}
    for ex, ok in zip(examples, correct):
        out.setdefault(stratum(ex), []).append(ok)
    return out


def metrics_row(*, iteration: int, strategy: str, seed: int, test: list[Example],
                val: list[Example], correct: list[bool], samples: int, teacher_tokens: int,
                judge_tokens: int, records: list[dict], new: list[dict], train: dict,
                clock: PhaseClock) -> dict:
    """The metrics.jsonl row: test accuracy (overall and per stratum), validation accuracy (what
    pilots and settings choices read), the budget spent, the round's selection mix and training
    losses. `correct` covers test then validation; `records` are the samples the student was
    trained on so far, `new` this point's own."""
    test_ok, val_ok = correct[:len(test)], correct[len(test):]
    test_by, val_by = by_stratum(test, test_ok), by_stratum(val, val_ok)
    wall, phase_s = clock.wall(), clock.seconds_for(iteration)
    return {"iteration": iteration, "strategy": strategy, "seed": seed, "samples": samples,
            "train_size": train.get("train_size", 0),
            "train_replayed": train.get("train_replayed", 0),  # older samples in train_size
            "teacher_tokens": teacher_tokens,
            "judge_tokens": judge_tokens,
            "failed_parses": sum(not r["parsed"] for r in records),
            "contaminated": sum(bool(r.get("contaminated")) for r in records),
            "rejected": sum(bool(r.get("rejected")) for r in records),
            "accuracy": float(np.mean(test_ok)) if test_ok else 0.0, "n_test": len(test_ok),
            "accuracy_by_stratum": {s: float(np.mean(v)) for s, v in sorted(test_by.items())},
            "n_test_by_stratum": {s: len(v) for s, v in sorted(test_by.items())},
            "val_accuracy": float(np.mean(val_ok)) if val_ok else None,
            "val_accuracy_by_stratum": {s: float(np.mean(v)) for s, v in sorted(val_by.items())},
            "selected_by_stratum": dict(sorted(Counter(r["stratum"] for r in new
                                                       if "stratum" in r).items())),
            "train_loss_first": train.get("loss_first_epoch"),
            "train_loss_last": train.get("loss_last_epoch"),
            "phase_s": {k: round(v, 3) for k, v in phase_s.items()},
            "wall_s": None if wall is None else round(wall, 3)}
