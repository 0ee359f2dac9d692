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

Two write disciplines keep a killed run resumable (atomic_files.py): whole files replaced
atomically, JSONL logs appended one fsynced line per record; a torn last line (a process killed
mid-line) is detected by `read_jsonl` and truncated by `repair_jsonl` on resume.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Iterable

# The file primitives (atomic_files.py), under the names the run directory's readers know them by.
from activesyn_ray.atomic_files import (  # noqa: F401
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
    repair_jsonl,
    write_jsonl,
)

STATE = "state.json"
CONFIG = "config.yaml"
SEEDS = "seeds.jsonl"
TEST = "test.jsonl"
VAL = "val.jsonl"
SYNTHETIC = "synthetic.jsonl"
METRICS = "metrics.jsonl"
SCORES = "scores.jsonl"


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
