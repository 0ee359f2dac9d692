"""Experiment grids: the same base config over tasks x strategies x seeds, then one report.

    # jobs/compare-cpu.yaml
    name: compare-cpu
    base: quickstart.yaml             # relative to this file
    overrides: {budget.samples: 192}  # applied to every run
    grid:
      seeds: [0, 1, 2]
      strategies: [static, random, loss]
      tasks:                          # name -> overrides for that dataset
        arithmetic: {}
        chain_sum: {task.name: chain_sum}
      seeds_by_strategy: {loss: [0, 1]}   # optional: fewer (or other) seeds for some strategies

A task entry may also narrow the grid for itself with the reserved keys `strategies:` and
`seeds:` (e.g. a teacher-mode ablation run only for random and loss).

Runs go to OUTPUT_ROOT/<name>/<task>/<strategy>-s<seed>; a finished run is skipped and an unfinished
one resumed, so re-submitting the same experiment after a crash only does the missing work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from activesyn_ray.config import ConfigError, load_config


class Grid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seeds: list[int] = Field(default_factory=lambda: [0])
    strategies: list[str] = Field(default_factory=lambda: ["random", "loss"])
    tasks: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"default": {}})
    seeds_by_strategy: dict[str, list[int]] = Field(default_factory=dict)
    first: list[str] = Field(default_factory=list)
    """The primary comparison, as `strategy` or `task/strategy`: its runs (all seeds) go before
    every other run."""

    def cells(self) -> list[tuple[int, str, str, dict[str, Any]]]:
        """(seed, task, strategy, task overrides) in run order: the `first` strategies' runs, then
        the rest; within each part seeds outermost, so every strategy of seed 0 runs before seed 1
        and a grid cut short still compares on paired seeds."""
        cells = self._cells()
        primary = [c for c in cells if c[2] in self.first or f"{c[1]}/{c[2]}" in self.first]
        return primary + [c for c in cells if c not in primary]

    def _cells(self) -> list[tuple[int, str, str, dict[str, Any]]]:
        tasks = []
        for name, over in self.tasks.items():
            over = dict(over)
            strategies = over.pop("strategies", self.strategies)
            seeds = over.pop("seeds", None)
            tasks.append((name, over, strategies, seeds))
        all_seeds = sorted(set(self.seeds).union(*self.seeds_by_strategy.values(),
                                                 *(t[3] or [] for t in tasks)))
        out = []
        for seed in all_seeds:
            for name, over, strategies, task_seeds in tasks:
                for strategy in strategies:
                    allowed = task_seeds if task_seeds is not None else \
                        self.seeds_by_strategy.get(strategy, self.seeds)
                    if seed in allowed:
                        out.append((seed, name, strategy, over))
        return out


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    base: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    grid: Grid = Field(default_factory=Grid)
    root: str = "runs"


def _as_sets(d: dict[str, Any]) -> list[str]:
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in d.items()]


def load_experiment(path: str | Path, extra: list[str] = ()) -> tuple[Experiment, list[tuple[str, list[str]]]]:
    """Validate the grid file and EVERY run config it implies, before any run starts."""
    path = Path(path)
    try:
        exp = Experiment.model_validate(yaml.safe_load(path.read_text()) or {})
    except Exception as err:
        raise ConfigError(f"experiment error in {path}: {err}") from None
    base = (path.parent / exp.base).resolve()
    runs = []
    for seed, task_name, strategy, task_over in exp.grid.cells():
        # a string join, not Path: the root may be a storage URI (s3://...)
        run_dir = f"{exp.root.rstrip('/')}/{exp.name}/{task_name}/{strategy}-s{seed}"
        sets = _as_sets(exp.overrides) + _as_sets(task_over) + list(extra) + [
            f"selection.strategy={strategy}", f"seed={seed}", f"name={exp.name}-{task_name}",
            f"output.run_dir={run_dir}"]
        try:
            load_config(base, sets)  # raises ConfigError naming the field
        except ConfigError as err:
            raise ConfigError(f"{path}: grid cell {task_name}/{strategy}-s{seed}: {err}") from None
        runs.append((str(base), sets))
    return exp, runs


def run_experiment(path: str | Path, extra: list[str] = (), *, report_dir: str | Path | None = None,
                   verbose: bool = False) -> dict:
    from rich.console import Console

    from activesyn_ray.coordinator import run_loop
    from activesyn_ray.report import write_report
    from activesyn_ray.run_setup import new_run
    from activesyn_ray.runstore import RunStore
    from activesyn_ray.runtime import route_logs
    from activesyn_ray.storage import attach, fetch, is_uri, local_base, plan_run_dir, remote_exists

    console = Console(stderr=True)
    exp, runs = load_experiment(path, extra)
    dirs, task_of = [], {}
    for i, (base, sets) in enumerate(runs, 1):
        cfg = load_config(base, sets)
        local, uri, note = plan_run_dir(cfg)
        if note and i == 1:
            console.print(note)
        if uri and not (local / "state.json").exists() and remote_exists(uri):
            fetch(uri, local)  # started elsewhere (or before this machine's cache was wiped)
        store = RunStore(local)
        dirs.append(store.root)
        task_of[store.root] = [x for x in sets if x.startswith("name=")][-1].split("=", 1)[1]
        if store.exists() and store.load_state().get("done"):
            console.print(f"[{i}/{len(runs)}] {uri or store.root}: done, skipped")
            continue
        console.print(f"[{i}/{len(runs)}] {uri or store.root}")
        if not store.exists():
            store = new_run(cfg, local)
            if uri:
                attach(store.root, uri)
        route_logs(store.root, verbose=verbose)
        run_loop(store)
        store.sync()
    # the report is local (./runs/NAME/report for a storage URI root; ~/activesyn-runs under a job)
    base = local_base("runs" if is_uri(exp.root) else exp.root)[0]
    out = Path(report_dir or base / exp.name / "report")
    if len(exp.grid.tasks) == 1:
        summary = write_report(dirs, out)
        console.print(f"report: {out}/report.md")
        return summary
    # several grid tasks (e.g. two pools of one dataset): one report each, so their runs of the
    # same strategy are never averaged together
    summary = {}
    for name in exp.grid.tasks:
        mine = [d for d in dirs if task_of[d] == f"{exp.name}-{name}"]
        summary[name] = write_report(mine, out / name)
        console.print(f"report ({name}): {out / name}/report.md")
    return summary
