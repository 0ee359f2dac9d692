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
from activesyn_ray.preflight import preflight
from activesyn_ray.runstore import RunStore
from activesyn_ray.tasks import Example, build_task


def default_run_dir(cfg: RunConfig) -> Path:
    if cfg.output.run_dir:
        return Path(cfg.output.run_dir)
    return Path(cfg.output.root) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_splits(cfg: RunConfig, task) -> tuple[list[Example], list[Example], list[Example]]:
    """(seeds, validation, test). Validation is carved from the seed pool's draw (`val_size` more
    examples are drawn, so the seed pool keeps `seed_size`); the pool order is balanced over levels,
    so its tail is too."""
    n_val = cfg.task.val_size
    if n_val:
        task.cfg = cfg.task.model_copy(update={"seed_size": cfg.task.seed_size + n_val})
    pool, test = task.splits()  # raises with file:line on bad rows before anything is written
    task.cfg = cfg.task
    return pool[:cfg.task.seed_size], pool[cfg.task.seed_size:], test


def new_run(cfg: RunConfig, run_dir: str | Path | None = None) -> RunStore:
    """Validate the task data and the settings that would make numbers wrong (preflight), then
    write the run directory atomically file by file."""
    from activesyn_ray.runtime import keep_library_output, library_output

    # A model's first use builds or converts it here (loading bars, DeepSpeed's import warning):
    # held, then written to the new run.log; this program's warnings still reach the console.
    with library_output(hold=True):
        task = build_task(cfg.task, seed=cfg.seed)
        seeds, val, test = make_splits(cfg, task)
        warnings = preflight(cfg, task, seeds, val + test)
    store = RunStore(run_dir or default_run_dir(cfg)).create(dump_config(cfg))
    keep_library_output(store.root)  # (what an outer hold gathers later reaches it with route_logs)
    runstore.write_jsonl(store.path(runstore.SEEDS), (e.to_dict() for e in seeds))
    runstore.write_jsonl(store.path(runstore.VAL), (e.to_dict() for e in val))
    runstore.write_jsonl(store.path(runstore.TEST), (e.to_dict() for e in test))
    ledger = Ledger(max_samples=cfg.budget.samples, max_tokens=cfg.budget.teacher_tokens)
    store.save_state({"phase": "prepared", "iteration": 0, "config_fingerprint": cfg.fingerprint(),
                      "task": task.name, "n_seeds": len(seeds), "n_val": len(val),
                      "n_test": len(test), "n_synthetic": 0, "n_metrics": 0, "n_scores": 0,
                      "ledger": ledger.to_dict(), "warnings": warnings, "done": False})
    return store


def load_splits(store: RunStore) -> tuple[list[Example], list[Example], list[Example]]:
    """(seeds, validation, test) of a run directory; runs made before validation splits have none."""
    val = store.read(runstore.VAL) if store.path(runstore.VAL).exists() else []
    return ([Example.from_dict(d) for d in store.read(runstore.SEEDS)],
            [Example.from_dict(d) for d in val],
            [Example.from_dict(d) for d in store.read(runstore.TEST)])
