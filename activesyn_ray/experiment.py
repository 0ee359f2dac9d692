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
      overrides_by_strategy:          # optional: settings of one strategy's runs only
        random: {budget.samples: 384} #   e.g. baselines run to 2x the budget, so the report can
        static: {budget.samples: 384} #   say how many samples random needs to reach loss's final

A task entry may also narrow the grid for itself with the reserved keys `strategies:` and
`seeds:` (e.g. a teacher-mode ablation run only for random and loss), and give its own
`seeds_by_strategy:` / `overrides_by_strategy:` (pools whose budgets differ: each pool's baselines
run to 2x that pool's budget, with its own seed count):

      tasks:
        p3:
          budget.samples: 120
          seeds_by_strategy: {static: [0, 1, 2]}
          overrides_by_strategy: {random: {budget.samples: 240}, static: {budget.samples: 240}}

Seeds of a cell: the task's `seeds_by_strategy`, else the task's `seeds`, else the grid's
`seeds_by_strategy`, else the grid's `seeds`. A run's settings are applied in this order, later
ones winning: `overrides`, the task's entry, `overrides_by_strategy` of its strategy (the grid's,
then the task's), the command line's `--set`s, then the cell itself
(selection.strategy, seed, name, output.run_dir). The run directory never depends on the overrides,
so adding `overrides_by_strategy` to a grid whose runs exist leaves them in place: a finished run
is still skipped (with a warning naming each setting it was run with that the grid now changes).

Runs go to OUTPUT_ROOT/<name>/<task>/<strategy>-s<seed>; a finished run is skipped and an unfinished
one resumed, so re-submitting the same experiment after a crash only does the missing work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from activesyn_ray.config import ConfigError, load_config


class Grid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seeds: list[int] = Field(default_factory=lambda: [0])
    strategies: list[str] = Field(default_factory=lambda: ["random", "loss"])
    tasks: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"default": {}})
    seeds_by_strategy: dict[str, list[int]] = Field(default_factory=dict)
    overrides_by_strategy: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """strategy -> overrides for that strategy's runs (after the grid's and the task's)."""
    first: list[str] = Field(default_factory=list)
    """The primary comparison, as `strategy` or `task/strategy`: its runs (all seeds) go before
    every other run."""

    def cells(self) -> list[tuple[int, str, str, dict[str, Any]]]:
        """(seed, task, strategy, task overrides) in run order: the `first` strategies' runs, then
        the rest; within each part seeds outermost, so every strategy of seed 0 runs before seed 1
        and a grid cut short still compares on paired seeds."""
        return [c[:4] for c in self.ordered()]

    def ordered(self) -> list[tuple[int, str, str, dict[str, Any], dict[str, Any]]]:
        """cells() plus each cell's own strategy overrides from its task entry."""
        cells = self._cells()
        primary = [c for c in cells if c[2] in self.first or f"{c[1]}/{c[2]}" in self.first]
        return primary + [c for c in cells if c not in primary]

    def _tasks(self) -> list[tuple[str, dict, list[str], list[int] | None, dict, dict]]:
        """(name, overrides, strategies, seeds, seeds_by_strategy, overrides_by_strategy) per task,
        the reserved keys taken out of its entry."""
        out = []
        for name, over in self.tasks.items():
            over = dict(over)
            out.append((name, over, over.pop("strategies", self.strategies), over.pop("seeds", None),
                        over.pop("seeds_by_strategy", {}), over.pop("overrides_by_strategy", {})))
        return out

    def _cells(self) -> list[tuple[int, str, str, dict[str, Any], dict[str, Any]]]:
        tasks = self._tasks()
        all_seeds = sorted(set(self.seeds).union(*self.seeds_by_strategy.values(),
                                                 *(t[3] or [] for t in tasks),
                                                 *(s for t in tasks for s in t[4].values())))
        out = []
        for seed in all_seeds:
            for name, over, strategies, task_seeds, task_sbs, task_obs in tasks:
                for strategy in strategies:
                    allowed = task_sbs.get(strategy, task_seeds if task_seeds is not None else
                                           self.seeds_by_strategy.get(strategy, self.seeds))
                    if seed in allowed:
                        out.append((seed, name, strategy, over, task_obs.get(strategy, {})))
        return out

    @model_validator(mode="after")
    def _known_strategies(self) -> "Grid":
        """A misspelt strategy under overrides_by_strategy / seeds_by_strategy would silently
        apply to nothing."""
        used = set(self.strategies).union(*(t["strategies"] for t in self.tasks.values()
                                            if isinstance(t.get("strategies"), list)))
        for field in ("overrides_by_strategy", "seeds_by_strategy"):
            if unknown := sorted(set(getattr(self, field)) - used):
                raise ValueError(f"{field}: {', '.join(unknown)} not among the grid's strategies "
                                 f"({', '.join(sorted(used))})")
        for name, _, strategies, _, task_sbs, task_obs in self._tasks():
            for field, given in (("seeds_by_strategy", task_sbs), ("overrides_by_strategy", task_obs)):
                if unknown := sorted(set(given) - set(strategies)):
                    raise ValueError(f"tasks.{name}.{field}: {', '.join(unknown)} not among the "
                                     f"task's strategies ({', '.join(sorted(strategies))})")
        return self


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    base: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    grid: Grid = Field(default_factory=Grid)
    root: str = "runs"

    def runs(self, extra: list[str] = ()) -> list[tuple[str, list[str]]]:
        """(cell name `task/strategy-sSEED`, the run's `--set`s) per grid cell, in run order; pure
        (load_experiment validates each against the base config)."""
        out = []
        for seed, task_name, strategy, task_over, task_strategy_over in self.grid.ordered():
            # a string join, not Path: the root may be a storage URI (s3://...)
            run_dir = f"{self.root.rstrip('/')}/{self.name}/{task_name}/{strategy}-s{seed}"
            sets = _as_sets(self.overrides) + _as_sets(task_over) + \
                _as_sets(self.grid.overrides_by_strategy.get(strategy, {})) + \
                _as_sets(task_strategy_over) + list(extra) + [
                    f"selection.strategy={strategy}", f"seed={seed}",
                    f"name={self.name}-{task_name}", f"output.run_dir={run_dir}"]
            out.append((f"{task_name}/{strategy}-s{seed}", sets))
        return out


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
    for cell, sets in exp.runs(extra):
        try:
            load_config(base, sets)  # raises ConfigError naming the field
        except ConfigError as err:
            raise ConfigError(f"{path}: grid cell {cell}: {err}") from None
        runs.append((str(base), sets))
    return exp, runs


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_settings(store, cfg) -> list[str]:
    """`key: was -> now` for each setting of an existing run directory's config.yaml that `cfg`
    (what the grid implies now) sets differently: such a run is skipped or resumed as it was
    started, so the grid's new value does NOT apply to it."""
    from activesyn_ray import runstore

    try:
        was = _flat(load_config(store.path(runstore.CONFIG)).model_dump(mode="json"))
    except (ConfigError, OSError):
        return []
    now = _flat(cfg.model_dump(mode="json"))
    return [f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(was) | set(now))
            if was.get(k) != now.get(k)]


def run_experiment(path: str | Path, extra: list[str] = (), *, report_dir: str | Path | None = None,
                   verbose: bool = False) -> dict:
    from rich.console import Console

    from activesyn_ray.driver import run_loop
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
        if store.exists() and (changed := changed_settings(store, cfg)):
            console.print(f"[yellow]{store.root}: started with other settings than the grid now "
                          f"gives it, which do not apply to it (a new experiment name or root "
                          f"runs them): {'; '.join(changed)}[/yellow]")
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
