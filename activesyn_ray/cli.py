"""`activesyn`: run | resume | report | bench.

    activesyn run jobs/quickstart.yaml                   # the whole loop, local Ray, CPU
    activesyn run jobs/quickstart.yaml --set budget.samples=64 --set selection.strategy=random
    activesyn run jobs/quickstart.yaml --dry-run         # validate + write the run dir and splits only
    activesyn resume runs/quickstart-20261123-101500     # continue a killed run
    activesyn report runs/a runs/b --out report/         # curves, tables, win rates across runs
    activesyn experiment jobs/compare-cpu.yaml           # strategies x seeds x tasks, then a report
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from activesyn_ray.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
console = Console(stderr=True, soft_wrap=True)


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


@app.command()
def run(config: Path = typer.Argument(..., help="Run config YAML (see jobs/)."),
        set_: Optional[list[str]] = typer.Option(None, "--set", help="Override: key.path=value."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Validate and write the run dir only."),
        run_dir: Optional[Path] = typer.Option(None, help="Exact run directory to create.")):
    """Start a run from CONFIG."""
    from activesyn_ray.run_setup import new_run
    from activesyn_ray.tasks.files import BadRow

    try:
        cfg = load_config(config, set_ or [])
        store = new_run(cfg, run_dir)
    except (ConfigError, BadRow, FileNotFoundError, FileExistsError, ValueError) as err:
        _fail(str(err))
    state = store.load_state()
    console.print(f"run directory: [bold]{store.root}[/] ({state['n_seeds']} seeds, "
                  f"{state['n_test']} test examples, task {state['task']})")
    if dry_run:
        console.print("dry run: config and data are valid; nothing was trained or generated.")
        return
    from activesyn_ray.coordinator import run_loop

    run_loop(store)


@app.command()
def resume(run_dir: Path = typer.Argument(..., help="A run directory made by `activesyn run`.")):
    """Continue a killed run from its last completed step."""
    from activesyn_ray.coordinator import run_loop

    if not (run_dir / "state.json").exists():
        _fail(f"{run_dir}: no state.json; not a run directory")
    run_loop(run_dir)


@app.command()
def report(run_dirs: list[Path] = typer.Argument(..., help="Run directories to compare."),
           out: Path = typer.Option(Path("report"), help="Folder for the PNGs, tables and JSON.")):
    """Accuracy-vs-budget curves, final table, efficiency ratios, win rates, seed/synthetic rank
    correlation."""
    from activesyn_ray.report import write_report

    for d in run_dirs:
        if not (d / "state.json").exists():
            _fail(f"{d}: no state.json; not a run directory")
    write_report(run_dirs, out)


@app.command()
def experiment(grid: Path = typer.Argument(..., help="Experiment YAML with a `grid:` (see jobs/)."),
               set_: Optional[list[str]] = typer.Option(None, "--set", help="Override for every run."),
               report_dir: Optional[Path] = typer.Option(None, help="Where the report goes.")):
    """Run a grid of tasks x strategies x seeds (skipping finished runs), then write the report."""
    from activesyn_ray.experiment import run_experiment

    try:
        run_experiment(grid, set_ or [], report_dir=report_dir)
    except ConfigError as err:
        _fail(str(err))


@app.command()
def bench(out: Path = typer.Option(Path("bench.json"), help="JSON with every measurement."),
          teacher_model: str = typer.Option("smollm2-135m", help="Teacher model for vLLM vs HF."),
          student_model: str = typer.Option("smollm2-135m", help="Student for trainer/scoring/sync."),
          prompts: int = typer.Option(16), max_new_tokens: int = typer.Option(64),
          train_examples: int = typer.Option(16), score_examples: int = typer.Option(16),
          loop_model: str = typer.Option("tiny:h=64,l=2", help="Student of the loop-overhead run."),
          loop_budget: int = typer.Option(48), loop_k: int = typer.Option(16),
          num_gpus: float = typer.Option(0, help="GPUs per student actor (0 on CPU)."),
          parts: str = typer.Option("teacher,student,loop", help="Comma list of parts to run.")):
    """Throughput side by side: vLLM vs HF, replicas, scorer shards, trainer ranks, sync bytes,
    orchestration overhead. Prints a table and writes JSON."""
    from rich.table import Table

    from activesyn_ray.bench import run_bench

    res = run_bench(out=out, teacher_model=teacher_model, student_model=student_model, prompts=prompts,
                    max_new_tokens=max_new_tokens, train_examples=train_examples,
                    score_examples=score_examples, loop_model=loop_model, loop_budget=loop_budget,
                    loop_k=loop_k, num_gpus=num_gpus, parts=parts.split(","),
                    log=lambda m: console.print(f"[dim]{m}[/]"))
    table = Table(title=f"activesyn bench ({res['cpu_count']} CPUs, load {res['loadavg_1m_start']} -> "
                        f"{res['loadavg_1m_end']})")
    for col in ("figure", "value", "compared with / on"):
        table.add_column(col)
    for row in res["summary"]:
        table.add_row(*row)
    Console().print(table)
    console.print(f"wrote {out}")


def main() -> None:  # python -m activesyn_ray.cli
    app()


if __name__ == "__main__":
    sys.exit(main())
