"""`ray job submit` entrypoint for one run or one experiment grid.

    ray start --head --dashboard-host=127.0.0.1
    python -m activesyn_ray.jobs.wait     # until the new head accepts jobs
    ray job submit --working-dir . -- python -m activesyn_ray.jobs.run jobs/quickstart.yaml
    ray job submit --working-dir . -- python -m activesyn_ray.jobs.run jobs/compare-cpu.yaml

Inside a job RAY_ADDRESS is set, so the run joins the cluster instead of starting a local Ray. A file
with a top-level `grid:` is an experiment (many runs + a report); anything else is a run config.
Before any run directory or actor exists, every run's resources are checked against the cluster
the job joined (fit.py): the job log then starts with what the run reserves and what the cluster
has, or the job ends with one line saying what does not fit. Pools are sized by the config, not by
the cluster: the same config reserves the same actors (and torch threads) everywhere, so results
do not depend on which cluster ran them. Progress goes to the job log; the run directory and final
metrics are printed at the end.
"""

import sys
from pathlib import Path

import yaml


def _sets(args: list[str]) -> list[str]:
    """The `--set key=value` overrides among the CLI arguments after the config path."""
    out = []
    for i, a in enumerate(args):
        if a == "--set" and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith("--set="):
            out.append(a.removeprefix("--set="))
    return out


def check_fit(path: Path, args: list[str], *, is_grid: bool) -> None:
    """Join the cluster as the run will, and exit with one line if any run cannot fit it. Bad
    config input is left to the CLI, which reports it with its path."""
    from activesyn_ray.config import ConfigError, load_config
    from activesyn_ray.fit import FitError, check_cluster
    from activesyn_ray.runtime import init_ray

    try:
        if is_grid:
            from activesyn_ray.experiment import load_experiment

            cfgs = [load_config(base, sets) for base, sets in load_experiment(path, _sets(args))[1]]
        else:
            cfgs = [load_config(path, _sets(args))]
    except (ConfigError, OSError, ValueError):
        return
    if not cfgs:
        return
    init_ray(cfgs[0].resources)
    try:
        summaries = list(dict.fromkeys(check_cluster(cfg) for cfg in cfgs))
    except FitError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    for line in summaries:
        print(f"[activesyn] {line}", flush=True)


def main(argv: list[str] | None = None) -> None:
    from activesyn_ray.cli import app

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.exit(__doc__)
    first = Path(argv[0])
    is_grid = first.suffix in (".yaml", ".yml") and first.exists() and \
        "grid" in (yaml.safe_load(first.read_text()) or {})
    if first.exists():
        check_fit(first, argv[1:], is_grid=is_grid)
    app(["experiment" if is_grid else "run", *argv], standalone_mode=True)


if __name__ == "__main__":
    main()
