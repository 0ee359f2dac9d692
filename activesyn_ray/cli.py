"""`activesyn`: run | resume | status | report | export | track | experiment | bench | make-teacher.

    activesyn run jobs/quickstart.yaml                   # the whole loop, local Ray, CPU
    activesyn run jobs/quickstart.yaml --set budget.samples=64 --set selection.strategy=random
    activesyn run jobs/quickstart.yaml --dry-run         # validate + write the run dir and splits only
    activesyn resume runs/quickstart-20261123-101500     # continue a killed run
    activesyn status runs/quickstart-20261123-101500     # iteration, budget, accuracy, ETA
    activesyn report runs/a runs/b --out report/         # curves, tables, win rates across runs
    activesyn export RUN [--out DIR] [--merge]           # synthetic set -> datasets/Parquet (+ model)
    activesyn track RUN                                  # metrics -> TensorBoard / W&B / MLflow
    activesyn experiment jobs/compare-cpu.yaml           # strategies x seeds x tasks, then a report
    activesyn bench                                      # throughput of every part, side by side
    activesyn make-teacher jobs/llm-teacher-cpu.yaml --name T   # a small trained LLM teacher
    activesyn cache stats [DIR] [--runs ROOT]            # teacher cache: entries, bytes, hits per run
    activesyn cache clear [DIR]                          # delete every cached teacher reply

A RUN may be a local folder or a storage URI (output.root: s3://..., file://...).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from activesyn_ray.config import ConfigError, load_config
from activesyn_ray.console import TerminalFile

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
# The terminal's stderr, also while a run holds sys.stderr for library output
# (runtime.library_output)
console = Console(file=TerminalFile(), soft_wrap=True)
VERBOSE_HELP = "Also show library output (Ray, transformers, DeepSpeed) on the console; it always " \
               "goes to RUN/run.log."
RUN_HELP = "A run directory, or its storage URI (s3://..., file://...)."


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


def _run_dir(run: str) -> Path:
    """A RUN argument as a local run directory (a URI is fetched into its local copy)."""
    from activesyn_ray.storage import local_run

    try:
        path = local_run(run)
    except (FileNotFoundError, OSError, ValueError) as err:
        _fail(str(err))
    if not (path / "state.json").exists():
        _fail(f"{run}: no state.json; not a run directory")
    return path


def _fail_run(err: Exception, store_root: Path) -> None:
    """A run stopped by a fault it could not get past (an actor group that kept failing, a teacher
    that answered nothing, an exception inside an actor): one line on the console, the traceback
    in run.log, exit 2. Anything else is a bug in this program and keeps its traceback."""
    import logging

    import ray

    from activesyn_ray.actors import ActorGroupError, one_line
    from activesyn_ray.placement import PlacementError
    from activesyn_ray.teacher.engines.base import TeacherError

    if not isinstance(err, (ActorGroupError, TeacherError, PlacementError, ray.exceptions.RayError)):
        raise err
    from activesyn_ray.fit import FitError

    if isinstance(err, FitError):  # nothing ran: the line says what to change (resume keeps the config)
        _fail(str(err))
    logging.getLogger("activesyn").error("the run stopped", exc_info=err)
    _fail(f"{one_line(err)} (traceback in {store_root / 'run.log'}; "
          f"`activesyn resume {store_root}` continues from the last completed step)")


def _drive(store_root: Path, verbose: bool) -> None:
    """Run/resume the loop with quiet console, then push the run directory to its storage URI."""
    from activesyn_ray.driver import run_loop
    from activesyn_ray.runtime import library_output, route_logs
    from activesyn_ray.storage import remote_of, sync_up

    console.print(f"library output (Ray, DeepSpeed, vLLM, transformers): "
                  f"{route_logs(store_root, verbose=verbose)}")
    with library_output():
        try:
            run_loop(store_root)
        except Exception as err:
            _fail_run(err, store_root)
        if not (store_root / "trackers.json").exists():
            # the loop did not track live (a coordinator without the tracking hook): write them now
            from activesyn_ray.tracking import replay

            replay(store_root)
        if uri := remote_of(store_root):
            sync_up(store_root)  # the end of the run (report, plots) -- errors are raised here
            console.print(f"synced to {uri}")


@app.command()
def run(config: Path = typer.Argument(..., help="Run config YAML (see jobs/)."),
        set_: Optional[list[str]] = typer.Option(None, "--set", help="Override: key.path=value."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Validate and write the run dir only."),
        run_dir: Optional[str] = typer.Option(None, help="Exact run directory (or URI) to create."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP)):
    """Start a run from CONFIG."""
    from activesyn_ray import runtime
    from activesyn_ray.run_setup import new_run
    from activesyn_ray.storage import attach, plan_run_dir
    from activesyn_ray.tasks.files import BadRow

    runtime.VERBOSE = verbose
    try:
        # reading the config imports the task's libraries: what they print at import goes to run.log
        with runtime.library_output(hold=True):
            cfg = load_config(config, set_ or [])
            local, uri, note = plan_run_dir(cfg, run_dir)
            if note:
                console.print(note)
            store = new_run(cfg, local)
            if uri:
                attach(store.root, uri)
    except (ConfigError, BadRow, FileNotFoundError, FileExistsError, ValueError, OSError) as err:
        _fail(str(err))
    state = store.load_state()
    console.print(f"run directory: [bold]{store.root}[/] ({state['n_seeds']} seeds, "
                  f"{state['n_test']} test examples, task {state['task']})")
    if uri:
        console.print(f"storage: {uri} (synced after every step)")
    if dry_run:
        console.print("dry run: config and data are valid; nothing was trained or generated.")
        return
    _drive(store.root, verbose)


@app.command()
def resume(run: str = typer.Argument(..., help=RUN_HELP),
           verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP)):
    """Continue a killed run from its last completed step."""
    _drive(_run_dir(run), verbose)


@app.command()
def status(runs: list[str] = typer.Argument(..., help=RUN_HELP)):
    """Iteration, budget spent of total, last accuracy, time per iteration and ETA of each RUN."""
    from activesyn_ray.status import format_status, run_status

    for run in runs:
        Console().print(format_status(run_status(_run_dir(run))), highlight=False)


@app.command()
def report(runs: list[str] = typer.Argument(..., help="Run directories (or URIs) to compare."),
           out: Path = typer.Option(Path("report"), help="Folder for the PNGs, tables and JSON."),
           baseline: list[str] = typer.Option([], "--baseline", help="Also compare every strategy "
                                              "with this one, paired by seed (random and static "
                                              "always); repeatable.")):
    """Accuracy-vs-budget curves, final table, efficiency ratios, paired AUC and final-accuracy
    differences, win rates, seed/synthetic rank correlation."""
    from activesyn_ray.report import write_report

    write_report([_run_dir(r) for r in runs], out, baselines=tuple(baseline))


@app.command()
def export(run: str = typer.Argument(..., help=RUN_HELP),
           out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN/export)."),
           merge: bool = typer.Option(False, "--merge", help="Also write RUN/checkpoints/final merged "
                                      "into the base model as a full HF model folder (OUT/model).")):
    """The synthetic set as a `datasets` dataset (OUT/dataset) and Parquet (OUT/synthetic.parquet)
    with flat provenance columns, and in the prompt/completion and chat layouts SFT tools read
    (OUT/sft/*.jsonl); --merge: the final student as one model folder."""
    from activesyn_ray.export import export_dataset, merge_model

    run_dir = _run_dir(run)
    out = out or run_dir / "export"
    try:
        res = export_dataset(run_dir, out)
        console.print(f"{res['rows']} samples -> {res['dataset']} (datasets.load_from_disk) and "
                      f"{res['parquet']}")
        console.print(f"{res['sft_rows']} trained-on samples for SFT tools (TRL SFTTrainer): "
                      f"{res['prompt_completion']} (prompt/completion), {res['messages']} (chat)")
        if merge:
            console.print(f"merged model -> {merge_model(run_dir, out)} (from_pretrained)")
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))


@app.command()
def track(run: str = typer.Argument(..., help=RUN_HELP)):
    """(Re)write a run's tracker logs (output.trackers: TensorBoard, W&B, MLflow) from its
    metrics.jsonl, e.g. for a run made before tracking was on."""
    from activesyn_ray.tracking import replay

    run_dir = _run_dir(run)
    try:
        n = replay(run_dir)
    except ValueError as err:
        _fail(str(err))
    console.print(f"logged {n} metrics rows; view with: tensorboard --logdir {run_dir}")


@app.command()
def experiment(grid: Path = typer.Argument(..., help="Experiment YAML with a `grid:` (see jobs/)."),
               set_: Optional[list[str]] = typer.Option(None, "--set", help="Override for every run."),
               report_dir: Optional[Path] = typer.Option(None, help="Where the report goes."),
               verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP)):
    """Run a grid of tasks x strategies x seeds (skipping finished runs), then write the report."""
    from activesyn_ray import runtime
    from activesyn_ray.experiment import run_experiment
    from activesyn_ray.placement import PlacementError

    runtime.VERBOSE = verbose
    try:
        run_experiment(grid, set_ or [], report_dir=report_dir, verbose=verbose)
    except (ConfigError, PlacementError) as err:  # PlacementError: a run does not fit the cluster
        _fail(str(err))


def _make_help(field: str) -> str:
    from activesyn_ray.teacher.make import MakeTeacherConfig

    return (MakeTeacherConfig.model_fields[field].description or "").replace("\n", " ")


@app.command("make-teacher")
def make_teacher(config: Path = typer.Argument(..., help="Run config whose task, generate prompt, "
                                               "teacher sampling and resources.trainer to use."),
                 name: str = typer.Option(..., help=_make_help("name")),
                 base: str = typer.Option("smollm2-135m", help=_make_help("base")),
                 train_seeds: int = typer.Option(160, help=_make_help("train_seeds")),
                 eval_seeds: int = typer.Option(64, help=_make_help("eval_seeds")),
                 epochs: int = typer.Option(2, help=_make_help("epochs")),
                 lr: float = typer.Option(2e-3, help=_make_help("lr")),
                 lora_r: int = typer.Option(16, help="LoRA rank (alpha = 2 x rank)."),
                 micro_batch_size: int = typer.Option(8, help=_make_help("micro_batch_size")),
                 measure_engine: str = typer.Option("vllm", help=_make_help("measure_engine")),
                 overwrite: bool = typer.Option(False, "--overwrite", help=_make_help("overwrite")),
                 set_: Optional[list[str]] = typer.Option(None, "--set", help="Override in CONFIG: "
                                                          "key.path=value.")):
    """Finetune a small LLM teacher (LoRA, DeepSpeed trainer) on the procedural teacher's samples in
    the generate-prompt format, merge it, save it in the model cache as NAME, and measure it on
    held-out seeds (parse rate, structure kept, right answers, tokens per kept sample)."""
    from pydantic import ValidationError

    from activesyn_ray.config import LoraConfig
    from activesyn_ray.teacher.make import INFO, MakeTeacherConfig
    from activesyn_ray.teacher.make import make_teacher as make

    try:
        cfg = load_config(config, set_ or [])
        mk = MakeTeacherConfig(name=name, base=base, train_seeds=train_seeds, eval_seeds=eval_seeds,
                               epochs=epochs, lr=lr, lora=LoraConfig(r=lora_r, alpha=2 * lora_r),
                               micro_batch_size=micro_batch_size, measure_engine=measure_engine,
                               overwrite=overwrite)
        info = make(cfg, mk, log=lambda m: console.print(f"[dim]{m}[/]"))
    except ValidationError as err:
        _fail(f"make-teacher: {err.errors()[0]['loc'][0]}: {err.errors()[0]['msg']}")
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, OSError) as err:
        _fail(str(err))
    h = info["held_out"]
    Console().print(
        f"{name}: {h['parsed']}/{h['replies']} held-out replies parsed ({h['parse_rate']:.0%}), "
        f"{h['keeps_structure']} keep the seed's structure ({h['structure_rate']:.0%}), "
        f"{h['right_answer']} with a right answer ({h['right_rate']:.0%}), "
        f"{h['tokens_per_kept_sample']} teacher tokens per kept sample, {h['cut_off']} cut off; "
        f"details in {info['folder']}/{INFO}", highlight=False)


@app.command()
def bench(out: Path = typer.Option(Path("bench.json"), help="JSON with every measurement."),
          teacher_model: str = typer.Option("smollm2-135m", help="Teacher model for vLLM vs HF."),
          student_model: str = typer.Option("smollm2-135m", help="Student for trainer/scoring/sync."),
          prompts: int = typer.Option(16), max_new_tokens: int = typer.Option(64),
          train_examples: int = typer.Option(16), score_examples: int = typer.Option(16),
          loop_model: str = typer.Option("tiny:h=64,l=2", help="Student of the loop-overhead run."),
          loop_budget: int = typer.Option(48), loop_k: int = typer.Option(16),
          num_gpus: float = typer.Option(0, help="GPUs per student actor (0 on CPU)."),
          parts: str = typer.Option("teacher,student,trainer,loop",
                                    help="Comma list of parts: teacher, student, trainer, loop, "
                                         "growth, fusion, llm-teacher, pipeline, pipeline-local."),
          llm_teacher: str = typer.Option("smollm2-arith-teacher", help="Made teacher (activesyn "
                                          "make-teacher) timed by --parts llm-teacher and "
                                          "pipeline-local.")):
    """Throughput side by side: vLLM vs HF, replicas, scorer shards, trainer ranks and their
    utilisation of the hardware, sync bytes, orchestration overhead, training cost growth; with the
    machine it ran on. Prints a table and writes JSON."""
    from rich.table import Table

    from activesyn_ray.bench import run_bench

    res = run_bench(out=out, teacher_model=teacher_model, student_model=student_model, prompts=prompts,
                    max_new_tokens=max_new_tokens, train_examples=train_examples,
                    score_examples=score_examples, loop_model=loop_model, loop_budget=loop_budget,
                    loop_k=loop_k, num_gpus=num_gpus, parts=parts.split(","),
                    llm_teacher=llm_teacher, log=lambda m: console.print(f"[dim]{m}[/]"))
    table = Table(title=f"activesyn bench ({res['cpu_count']} CPUs, load {res['loadavg_1m_start']} -> "
                        f"{res['loadavg_1m_end']})")
    for col in ("figure", "value", "compared with / on"):
        table.add_column(col)
    for row in res["summary"]:
        table.add_row(*row)
    Console().print(table)
    console.print(f"wrote {out}")


# ------------------------------------------------------------------------------ activesyn cache
cache_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="The teacher response cache (teacher.cache): what it holds, per run.")
app.add_typer(cache_app, name="cache")
CACHE_DIR_HELP = "Cache folder or storage URI (default: teacher.cache.dir's default, " \
                 "$ACTIVESYN_TEACHER_CACHE or $ACTIVESYN_CACHE/teacher-cache)."


def _cache_location(where: Optional[str], config: Optional[Path]) -> str:
    from activesyn_ray.teacher.cache import default_location, location_of

    if where and config:
        _fail("give a cache DIR or --config, not both")
    if config is not None:
        try:
            return location_of(load_config(config).teacher.cache)
        except ConfigError as err:
            _fail(str(err))
    return where or default_location()


def _ledger_tokens(root: Path) -> list[tuple[str, dict]]:
    """(run, its state.json ledger) for every run directory under root (root itself included)."""
    import json

    out = []
    for state in sorted(root.rglob("state.json")):
        try:
            led = json.loads(state.read_text()).get("ledger") or {}
        except (OSError, ValueError):
            continue
        rel = state.parent.relative_to(root).as_posix()
        out.append((rel if rel != "." else state.parent.name, led))
    return out


@cache_app.command("stats")
def cache_stats(where: Optional[str] = typer.Argument(None, metavar="DIR", help=CACHE_DIR_HELP),
                config: Optional[Path] = typer.Option(None, "--config", help="Take the cache "
                                                      "location from this run config's teacher.cache.dir."),
                runs: Optional[Path] = typer.Option(None, "--runs", help="Also list the teacher "
                                                    "tokens paid vs served from the cache of every "
                                                    "run directory under this folder (from their "
                                                    "state.json ledgers; with or without a cache).")):
    """Entries and bytes in the cache, and per run: hits, misses, unusable (corrupt) entries
    refetched, teacher tokens paid vs served from the cache."""
    from rich.table import Table

    from activesyn_ray.teacher.cache import stats

    location = _cache_location(where, config)
    try:
        st = stats(location)
    except (OSError, ValueError) as err:
        _fail(f"teacher cache {location}: {err}")
    out = Console()
    out.print(f"teacher cache {st['location']}: {st['entries']} entries, {st['bytes']:,} bytes",
              highlight=False)
    if st["runs"]:
        table = Table(title="runs that used it")
        for col in ("run", "hits", "misses", "corrupt", "tokens paid", "tokens cached", "evicted"):
            table.add_column(col, justify="left" if col == "run" else "right")
        for r in st["runs"]:
            table.add_row(str(r.get("run")), *(f"{int(r.get(k, 0)):,}" for k in
                                               ("hits", "misses", "corrupt", "tokens_paid",
                                                "tokens_cached", "evicted")))
        out.print(table)
    if runs is not None:
        rows = _ledger_tokens(runs)
        if not rows:
            _fail(f"{runs}: no run directory (state.json) under it")
        table = Table(title=f"teacher tokens of the runs under {runs}")
        for col in ("run", "teacher tokens", "paid", "served from cache"):
            table.add_column(col, justify="left" if col == "run" else "right")
        tot = [0, 0, 0]
        for name, led in rows:
            t = int(led.get("tokens", 0))
            c = int(led.get("cached_tokens", 0))
            for i, v in enumerate((t, t - c, c)):
                tot[i] += v
            table.add_row(name, f"{t:,}", f"{t - c:,}", f"{c:,}")
        table.add_row("total", *(f"{v:,}" for v in tot))
        out.print(table)


@cache_app.command("clear")
def cache_clear(where: Optional[str] = typer.Argument(None, metavar="DIR", help=CACHE_DIR_HELP),
                config: Optional[Path] = typer.Option(None, "--config", help="Take the cache "
                                                      "location from this run config's teacher.cache.dir.")):
    """Delete every cached teacher reply and the per-run counts."""
    from activesyn_ray.teacher.cache import clear

    location = _cache_location(where, config)
    try:
        res = clear(location)
    except (OSError, ValueError) as err:
        _fail(f"teacher cache {location}: {err}")
    Console().print(f"teacher cache {res['location']}: deleted {res['entries']} entries "
                    f"({res['bytes']:,} bytes)", highlight=False)


def main() -> None:  # python -m activesyn_ray.cli
    app()


if __name__ == "__main__":
    sys.exit(main())
