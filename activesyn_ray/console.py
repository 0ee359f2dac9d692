"""What a run shows on the terminal, drawn by the driver: what start-up is doing, one progress bar
(synthetic samples, the last accuracy beside it), one line per iteration, and a short summary that
says where the report and plot are and what to run next.

The coordinator actor keeps its console lines and counters and hands them over when asked
(`Coordinator.progress`); the driver polls it (`RunConsole.follow`), so nothing of ours reaches the
terminal through Ray's log streaming (which prefixed the bar with `(pid=...)`), and everything
else the libraries print goes to RUN/run.log (runtime.library_output). The bar is drawn only on a
terminal; through a pipe the iteration lines carry the same numbers.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

_lock = threading.RLock()  # Ray's log thread prints actors' `[activesyn]` lines too
_bar = None  # the live tqdm bar, if any
_terminals: list = []  # the terminal's stderr, one entry per runtime.library_output() scope


def console_stream():
    """Where the console writes: the stderr the terminal had before library_output() took it."""
    return _terminals[-1] if _terminals else sys.stderr


_stream = console_stream


@contextlib.contextmanager
def holding_terminal():
    """While sys.stdout/sys.stderr are taken (runtime.library_output), the console keeps the
    stream the terminal had, and this program's own warnings (loggers `activesyn*`) are shown."""
    for name in OUR_LOGGERS:
        lg = logging.getLogger(name)
        if not any(isinstance(h, _WarningsHere) for h in lg.handlers):
            lg.addHandler(_WarningsHere(logging.WARNING))
    _terminals.append(console_stream())
    try:
        yield
    finally:
        _terminals.pop()


OUR_LOGGERS = ("activesyn", "activesyn_ray")


class _WarningsHere(logging.Handler):
    """`warning: ...` on the console for this program's warnings (a config that will make the
    numbers wrong, rows dropped from a data file); they reach run.log too, through the root
    logger."""

    def emit(self, record: logging.LogRecord) -> None:
        say(f"{record.levelname.lower()}: {record.getMessage()}")


class TerminalFile:
    """A file for rich's Console that always writes where the console goes (console_stream()),
    also while library_output() holds sys.stderr."""

    def write(self, text: str) -> int:
        with _lock:
            if _bar is not None and text.strip():
                _bar.clear()
            n = _stream().write(text)
            if _bar is not None and text.endswith("\n"):
                _bar.refresh()
            return n

    def flush(self) -> None:
        _stream().flush()

    def isatty(self) -> bool:
        return _stream().isatty()

    def fileno(self) -> int:
        return _stream().fileno()


def say(text: str) -> None:
    """One line on the console, above the progress bar."""
    with _lock:
        out = _stream()
        if _bar is not None:
            _bar.clear()
        out.write(text + "\n")
        out.flush()
        if _bar is not None:
            _bar.refresh()


def seconds(s: float) -> str:
    s = int(round(s))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


def _acc(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def iteration_line(row: dict, total: int | None) -> str:
    """One metrics row as one console line, numbers rounded."""
    budget = f"{row['samples']}/{total}" if total else str(row["samples"])
    start = " (the starting student)" if row["iteration"] == 0 else ""
    line = f"iteration {row['iteration']}{start}: samples {budget}, " \
           f"accuracy {_acc(row['accuracy'])}"
    strata = row.get("accuracy_by_stratum") or {}
    if 1 < len(strata) <= 4:
        line += " (" + ", ".join(f"level {k}: {_acc(v)}" for k, v in strata.items()) + ")"
    if row.get("val_accuracy") is not None:
        line += f", validation {_acc(row['val_accuracy'])}"
    if row.get("wall_s"):
        line += f", {seconds(row['wall_s'])}"
    return line


def summary_lines(run_dir: str | Path, *, wall_s: float, next_step: str | None) -> list[str]:
    """The end of a run: accuracy from start to end (overall and per level), where things are,
    and what to run next."""
    from activesyn_ray import runstore

    run_dir = Path(run_dir)
    metrics = runstore.RunStore(run_dir).read(runstore.METRICS)
    lines = [f"run directory: {run_dir}"]
    if metrics:
        first, last = metrics[0], metrics[-1]
        rounds = last["iteration"]
        lines.insert(0, f"final accuracy: {_acc(last['accuracy'])} (from {_acc(first['accuracy'])} "
                        f"at the start; {last['n_test']} test questions) after {last['samples']} "
                        f"synthetic samples, {rounds} round{'s' * (rounds != 1)}, "
                        f"{seconds(wall_s)}")
        a, b = first.get("accuracy_by_stratum") or {}, last.get("accuracy_by_stratum") or {}
        if len(b) > 1:
            lines.insert(1, "  by level: " + ", ".join(f"{k}: {_acc(a.get(k))} -> {_acc(v)}"
                                                       for k, v in b.items()))
    found = [(what, run_dir / rel) for what, rel in (("report", "report/report.md"),
                                                     ("plot", "plots/accuracy_vs_budget.png"))]
    found = [f"{what}: {path}" for what, path in found if path.exists()]
    if found:
        lines.append(", ".join(found))
    if next_step:
        lines.append(f"next: {next_step}")
    return lines


class _Bar(tqdm):
    """tqdm with a `{status}` field (the accuracy and the step under way) for bar_format."""
    status = ""

    @property
    def format_dict(self):
        return dict(super().format_dict, status=self.status)


class RunConsole:
    """The driver's side of one run: prints the coordinator's lines and keeps the bar current."""

    POLL_S = 0.5

    def __init__(self, *, total: int | None):
        self.total = total
        self.seen = 0

    def follow(self, actor, run_ref):
        """Poll `actor.progress` until `run_ref` is done; return its result (or raise its error)."""
        import ray

        try:
            while True:
                try:
                    self.show(ray.get(actor.progress.remote(self.seen)))
                except ray.exceptions.RayActorError:
                    break  # the coordinator is gone: run_ref says why
                if ray.wait([run_ref], timeout=self.POLL_S)[0]:
                    try:
                        self.show(ray.get(actor.progress.remote(self.seen)))
                    except ray.exceptions.RayActorError:
                        pass
                    break
        finally:
            self.close()
        return ray.get(run_ref)

    def show(self, p: dict) -> None:
        global _bar
        for line in p["lines"]:
            say(line)
        self.seen += len(p["lines"])
        if not p.get("started") or not _stream().isatty():
            return
        with _lock:
            if _bar is None:
                _bar = _Bar(total=self.total, file=_stream(), dynamic_ncols=True, leave=False,
                            bar_format="synthetic samples {n}/{total} |{bar}| {status} [{elapsed}]")
            _bar.n = p["samples"]
            acc = "" if p.get("accuracy") is None else f"accuracy {p['accuracy']:.2f}"
            _bar.status = ", ".join(x for x in (acc, p.get("doing")) if x)
            _bar.refresh()

    def close(self) -> None:
        global _bar
        with _lock:
            if _bar is not None:
                _bar.close()
                _bar = None


def started_line(what: str, t0: float) -> str:
    return f"{what} ready ({seconds(time.perf_counter() - t0)})"
