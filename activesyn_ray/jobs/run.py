"""`ray job submit` entrypoint for one run or one experiment grid.

    ray job submit --working-dir . -- python -m activesyn_ray.jobs.run jobs/quickstart.yaml
    ray job submit --working-dir . -- python -m activesyn_ray.jobs.run jobs/compare-cpu.yaml

Inside a job RAY_ADDRESS is set, so the run joins the cluster instead of starting a local Ray. A file
with a top-level `grid:` is an experiment (many runs + a report); anything else is a run config.
Progress goes to the job log; the run directory and final metrics are printed at the end.
"""

import sys
from pathlib import Path

import yaml


def main(argv: list[str] | None = None) -> None:
    from activesyn_ray.cli import app

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.exit(__doc__)
    first = Path(argv[0])
    is_grid = first.suffix in (".yaml", ".yml") and first.exists() and \
        "grid" in (yaml.safe_load(first.read_text()) or {})
    app(["experiment" if is_grid else "run", *argv], standalone_mode=True)


if __name__ == "__main__":
    main()
