"""Creating a run directory: config snapshot, task splits and the initial state, before any Ray work.

`activesyn run --dry-run` stops here, so a config and its data are validated (and the splits can be
inspected) without starting a single actor.
"""

from __future__ import annotations

import time
from pathlib import Path

from activesyn_ray import runstore
from activesyn_ray.budget import Ledger
from activesyn_ray.config import RunConfig, dump_config
from activesyn_ray.runstore import RunStore
from activesyn_ray.tasks import Example, build_task


def default_run_dir(cfg: RunConfig) -> Path:
    if cfg.output.run_dir:
        return Path(cfg.output.run_dir)
    return Path(cfg.output.root) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def new_run(cfg: RunConfig, run_dir: str | Path | None = None) -> RunStore:
    """Validate the task data, then write the run directory atomically file by file."""
    task = build_task(cfg.task, seed=cfg.seed)
    seeds, test = task.splits()  # raises with file:line on bad rows before anything is written
    store = RunStore(run_dir or default_run_dir(cfg)).create(dump_config(cfg))
    runstore.write_jsonl(store.path(runstore.SEEDS), (e.to_dict() for e in seeds))
    runstore.write_jsonl(store.path(runstore.TEST), (e.to_dict() for e in test))
    ledger = Ledger(max_samples=cfg.budget.samples, max_tokens=cfg.budget.teacher_tokens)
    store.save_state({"phase": "prepared", "iteration": 0, "config_fingerprint": cfg.fingerprint(),
                      "task": task.name, "n_seeds": len(seeds), "n_test": len(test),
                      "n_synthetic": 0, "n_metrics": 0, "n_scores": 0, "ledger": ledger.to_dict(),
                      "done": False})
    return store


def load_splits(store: RunStore) -> tuple[list[Example], list[Example]]:
    return ([Example.from_dict(d) for d in store.read(runstore.SEEDS)],
            [Example.from_dict(d) for d in store.read(runstore.TEST)])
