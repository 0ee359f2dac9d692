"""Experiment grids: per-strategy overrides (baselines run to a larger budget), pure: no runs."""

from __future__ import annotations

import pytest

from activesyn_ray.config import ConfigError, dump_config, load_config
from activesyn_ray.experiment import Experiment, changed_settings, load_experiment

GRID = """\
name: eff
base: base.yaml
overrides: {budget.samples: 96, selection.k: 8}
grid:
  seeds: [0, 1]
  strategies: [learnability, random, static]
  tasks:
    p1: {}
    p2: {budget.samples: 48, strategies: [learnability, random]}
"""
BY_STRATEGY = """\
  overrides_by_strategy:
    random: {budget.samples: 192}
    static: {budget.samples: 192, selection.k: 16}
"""


def _write(tmp_path, text: str):
    (tmp_path / "base.yaml").write_text("name: b\n")
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return path


def _value(sets: list[str], key: str) -> str:
    """The value the LAST `key=...` set gives (load_config applies them in order)."""
    return [s.split("=", 1)[1] for s in sets if s.startswith(f"{key}=")][-1]


def test_strategy_overrides_apply_to_their_strategy_only_and_after_task_overrides(tmp_path):
    exp, runs = load_experiment(_write(tmp_path, GRID + BY_STRATEGY), extra=["student.epochs=2"])
    cfgs = {_value(sets, "output.run_dir").split("eff/", 1)[1]: load_config(base, sets)
            for base, sets in runs}
    assert len(cfgs) == 2 * 3 + 2 * 2
    for cell, cfg in cfgs.items():
        task, strat = cell.split("/")[0], cfg.selection.strategy
        want = 192 if strat in ("random", "static") else (48 if task == "p2" else 96)
        assert cfg.budget.samples == want, cell  # the strategy's wins over the task's 48
        assert cfg.selection.k == (16 if strat == "static" else 8), cell
        assert cfg.student.epochs == 2, cell  # the command line still applies to every run
    # the order of the sets: grid, task, strategy, command line, then the cell itself
    sets = dict(exp.runs(["student.epochs=2"]))["p2/random-s1"]
    assert sets == ["budget.samples=96", "selection.k=8", "budget.samples=48", "budget.samples=192",
                    "student.epochs=2", "selection.strategy=random", "seed=1", "name=eff-p2",
                    "output.run_dir=runs/eff/p2/random-s1"]


def test_run_names_and_dirs_do_not_depend_on_strategy_overrides(tmp_path):
    """Existing grids keep their cells, run directories and names (a finished run is still found
    and skipped); without overrides_by_strategy the sets are what they always were."""
    import yaml

    plain = Experiment.model_validate(yaml.safe_load(GRID))
    with_over = Experiment.model_validate(yaml.safe_load(GRID + BY_STRATEGY))
    assert plain.grid.cells() == with_over.grid.cells()

    def fixed(exp):
        return [(cell, [s for s in sets if s.startswith(("output.run_dir=", "name=", "seed=",
                                                         "selection.strategy="))])
                for cell, sets in exp.runs()]

    assert fixed(plain) == fixed(with_over)
    # the pre-existing layout, written out: grid + task overrides, then the cell
    assert dict(plain.runs())["p1/static-s0"] == [
        "budget.samples=96", "selection.k=8", "selection.strategy=static", "seed=0", "name=eff-p1",
        "output.run_dir=runs/eff/p1/static-s0"]


def test_a_misspelt_strategy_key_is_refused(tmp_path):
    bad = GRID + "  overrides_by_strategy: {randon: {budget.samples: 192}}\n"
    with pytest.raises(ConfigError, match="overrides_by_strategy: randon not among"):
        load_experiment(_write(tmp_path, bad))
    # a strategy only a task entry runs is known
    ok = GRID.replace("[learnability, random]}", "[learnability, loss]}") + \
        "  overrides_by_strategy: {loss: {budget.samples: 192}}\n"
    _, runs = load_experiment(_write(tmp_path, ok))
    loss = [s for _, s in runs if "selection.strategy=loss" in s]
    assert loss and {_value(s, "budget.samples") for s in loss} == {"192"}
    # a bad value names the cell and the field
    with pytest.raises(ConfigError, match="p1/random-s0.*budget.samples"):
        load_experiment(_write(tmp_path, GRID + "  overrides_by_strategy: "
                                              "{random: {budget.samples: 0}}\n"))


def test_a_run_started_with_other_settings_is_reported(tmp_path):
    """Adding overrides_by_strategy to a grid whose runs exist does not re-run them: the warning
    names what differs."""
    from activesyn_ray.runstore import RunStore

    old = load_config(None, ["budget.samples=96", "selection.strategy=random"])
    store = RunStore(tmp_path / "run").create(dump_config(old))
    assert changed_settings(store, old) == []
    now = load_config(None, ["budget.samples=192", "selection.strategy=random"])
    assert changed_settings(store, now) == ["budget.samples: 96 -> 192"]


PER_POOL = """\
name: eff
base: base.yaml
overrides: {selection.k: 8}
grid:
  seeds: [0, 1, 2, 3]
  strategies: [learnability, random, static]
  seeds_by_strategy: {static: [0]}
  tasks:
    p2:
      budget.samples: 96
      overrides_by_strategy: {random: {budget.samples: 192}, static: {budget.samples: 192}}
    p3:
      budget.samples: 120
      seeds: [0, 1]
      seeds_by_strategy: {static: [0, 1, 2]}
      overrides_by_strategy: {random: {budget.samples: 240}, static: {budget.samples: 240}}
"""


def test_each_pool_gives_its_baselines_their_own_budget_and_seeds(tmp_path):
    """Pools with different budgets in one grid: each task's own overrides_by_strategy and
    seeds_by_strategy (the task's win over the grid's), and the run folders stay task/strategy."""
    exp, runs = load_experiment(_write(tmp_path, PER_POOL))
    got = {}
    for base, sets in runs:
        cfg = load_config(base, sets)
        got[_value(sets, "output.run_dir").split("eff/", 1)[1]] = cfg.budget.samples
    want = {f"p2/{s}-s{i}": 96 if s == "learnability" else 192
            for s in ("learnability", "random") for i in range(4)}
    want["p2/static-s0"] = 192  # the grid's seeds_by_strategy
    want |= {f"p3/{s}-s{i}": 120 if s == "learnability" else 240
             for s in ("learnability", "random") for i in range(2)}
    want |= {f"p3/static-s{i}": 240 for i in range(3)}  # the task's seeds_by_strategy wins
    assert got == want
    # the reserved keys never reach a run's settings
    assert not [s for _, sets in runs for s in sets if "by_strategy" in s]
    bad = PER_POOL.replace("seeds_by_strategy: {static: [0, 1, 2]}",
                           "seeds_by_strategy: {statc: [0, 1, 2]}")
    with pytest.raises(ConfigError, match=r"tasks.p3.seeds_by_strategy: statc"):
        load_experiment(_write(tmp_path, bad))
