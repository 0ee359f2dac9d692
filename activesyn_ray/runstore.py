"""The run directory: the single source of truth of a run.

    RUN_DIR/
      config.yaml          the validated config snapshot (+ its fingerprint in state.json)
      state.json           loop state after the last COMPLETED step (atomic replace)
      seeds.jsonl          the seed pool (task split), written once
      val.jsonl            the validation split carved from the seed pool (task.val_size), written once
      test.jsonl           the held-out test split, written once
      synthetic.jsonl      every teacher sample with provenance (seed id, iteration, engine, tokens, score)
      metrics.jsonl        one row per evaluation (iteration, budget spent, accuracy, ...)
      scores.jsonl         per-iteration seed scores (for the seed-vs-synthetic rank correlation)
      checkpoints/         adapters (PEFT format), one folder per round + `final`
      plots/               PNGs (accuracy vs budget, rewritten after every evaluation)
      report/              report.md/json + curves of this run (as `activesyn report` writes them)
      run.log              library output (Ray, transformers, DeepSpeed) kept off the console
      tensorboard/         TensorBoard event files (output.trackers)
      storage.json         {uri}: the storage URI this run is synced to (output.root: s3://...)

Two write disciplines keep a killed run resumable:
  * whole files are written to a temp file in the same folder, fsynced, then os.replace()d: a reader
    sees the old file or the new one, never half of one;
  * JSONL logs are appended one complete line per record and fsynced; a process killed mid-line can
    leave a torn last line, which `read_jsonl` detects (no trailing newline / bad JSON) and
    `repair_jsonl` truncates on resume.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

STATE = "state.json"
CONFIG = "config.yaml"
SEEDS = "seeds.jsonl"
TEST = "test.jsonl"
VAL = "val.jsonl"
SYNTHETIC = "synthetic.jsonl"
METRICS = "metrics.jsonl"
SCORES = "scores.jsonl"


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: os.umask can only be read by setting it


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; a run dir is read by other users too
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Write a whole JSONL file atomically (for files written once, like the task splits)."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Append complete lines and fsync: after return, the rows survive a crash."""
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if not data:
        return
    with open(path, "a") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield complete records; a torn LAST line (crash mid-append) is skipped, a bad line
    anywhere else is corruption and raises with file:line."""
    path = Path(path)
    if not path.exists():
        return
    with open(path) as f:
        lines = f.readlines()
    for i, line in enumerate(lines, 1):
        last = i == len(lines)
        if last and not line.endswith("\n"):
            return  # torn tail: the writer died mid-line
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            if last:
                return
            raise ValueError(f"{path}:{i}: corrupt JSONL record ({err.msg})") from None


def repair_jsonl(path: str | Path) -> int:
    """Truncate a torn last line in place; returns the number of bytes dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    raw = path.read_bytes()
    keep = raw.rfind(b"\n") + 1 if not raw.endswith(b"\n") else len(raw)
    if keep < len(raw):
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return len(raw) - keep


class RunStore:
    """Typed access to one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- layout
    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def create(self, config_yaml: str) -> "RunStore":
        if (self.root / STATE).exists():
            raise FileExistsError(f"{self.root} already holds a run: use `activesyn resume {self.root}`")
        self.root.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        self.plots.mkdir(exist_ok=True)
        atomic_write_text(self.root / CONFIG, config_yaml)
        return self

    def exists(self) -> bool:
        return (self.root / STATE).exists()

    # -- state
    def load_state(self) -> dict:
        try:
            return json.loads((self.root / STATE).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.root}: no {STATE}; not a run directory") from None

    def save_state(self, state: dict) -> None:
        state = dict(state, updated_at=time.time())
        atomic_write_json(self.root / STATE, state)
        self.sync()

    def sync(self) -> None:
        """Upload what changed to the run's storage URI (output.root: s3://..., see storage.py), if
        it has one. A failed upload is logged and retried at the next save, not fatal: the local
        copy is complete and `activesyn resume` syncs it again."""
        if not (self.root / "storage.json").exists():
            return
        from activesyn_ray.storage import sync_up

        try:
            sync_up(self.root)
        except Exception as err:  # noqa: BLE001 -- any filesystem's error; the run goes on
            logging.getLogger("activesyn").warning("sync of %s to storage failed: %s", self.root, err)

    # -- logs
    def append(self, name: str, rows: Iterable[dict]) -> None:
        append_jsonl(self.root / name, rows)

    def read(self, name: str) -> list[dict]:
        return list(read_jsonl(self.root / name))

    def truncate_after(self, name: str, keep: int) -> None:
        """Keep only the first `keep` records (drop work of a step that never completed)."""
        rows = self.read(name)
        if len(rows) != keep:
            write_jsonl(self.root / name, rows[:keep])

    def repair(self) -> dict[str, int]:
        return {n: repair_jsonl(self.root / n) for n in (SYNTHETIC, METRICS, SCORES)}
