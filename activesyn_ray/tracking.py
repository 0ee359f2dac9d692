"""Experiment trackers: every metrics row also goes to TensorBoard (default), W&B and/or MLflow.

    output.trackers: [tensorboard]            # event files in RUN_DIR/tensorboard/
    output.trackers: [tensorboard, wandb]     # + W&B (project = output.tracker_project, else `activesyn`)
    output.trackers: [tensorboard, mlflow]    # + MLflow (MLFLOW_TRACKING_URI, else ./mlruns)

    tensorboard --logdir runs/                # curves of every run side by side

The coordinator calls `track(cfg, run_dir, row)` after each metrics.jsonl row and
`close_trackers(run_dir)` at the end (or uses `Trackers(cfg, run_dir).log(row)` / `.close()`). The x axis (step) is the budget spent in samples, the axis every accuracy
curve of this project is drawn against; the iteration is logged as a scalar beside it.
Only the libraries' own APIs are used; W&B/MLflow run ids are kept in RUN_DIR/trackers.json so a
resumed run continues the same tracked run. TensorBoard's event files are written with tensorboard's
own EventFileWriter and the records torch.utils.tensorboard's SummaryWriter writes (`TBWriter`):
that wrapper imports torch, ~3 s of CPU in a coordinator that otherwise never needs it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path
from typing import Any

from activesyn_ray.atomic_files import atomic_write_json

TRACKERS = ("tensorboard", "wandb", "mlflow")
IDS_FILE = "trackers.json"
TB_DIR = "tensorboard"

# metrics row key -> scalar tag (flat numeric columns)
SCALARS = {"accuracy": "accuracy/overall", "val_accuracy": "accuracy/val",
           "train_loss_first": "loss/train_first_epoch", "train_loss_last": "loss/train_last_epoch",
           "samples": "budget/samples", "teacher_tokens": "budget/teacher_tokens",
           "judge_tokens": "budget/judge_tokens", "failed_parses": "budget/failed_parses",
           "contaminated": "budget/contaminated", "rejected": "budget/rejected",
           "train_size": "data/train_size",
           "iteration": "loop/iteration", "wall_s": "time/iteration_s",
           "train_s": "time/train_s", "eval_s": "time/eval_s"}
# metrics row key -> tag prefix (dict columns, one scalar per key)
GROUPS = {"accuracy_by_stratum": "accuracy", "selected_by_stratum": "selection",
          "phase_s": "time/phase", "n_test_by_stratum": "data/n_test"}


def flatten(row: dict[str, Any]) -> dict[str, float]:
    """The numeric scalars of a metrics row as {tag: value}; missing/None fields (old runs) skipped."""
    out: dict[str, float] = {}
    for key, tag in SCALARS.items():
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[tag] = float(v)
    for key, prefix in GROUPS.items():
        for name, v in (row.get(key) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{prefix}/{name}"] = float(v)
    return out


class TBWriter:
    """TensorBoard event files as torch.utils.tensorboard.SummaryWriter writes them, without torch:
    the same EventFileWriter (tensorboard's, which SummaryWriter wraps), scalars as `simple_value`
    (what EventAccumulator.Scalars and `tensorboard --logdir` read), text as the text plugin's
    string tensor under `<tag>/text_summary` (SummaryWriter.add_text's record)."""

    def __init__(self, log_dir: str | Path):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(str(log_dir))

    def _add(self, step: int, *values) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._writer.add_event(Event(wall_time=time.time(), step=int(step),
                                     summary=Summary(value=list(values))))

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._add(global_step, Summary.Value(tag=tag, simple_value=float(value)))

    def add_text(self, tag: str, text: str, global_step: int = 0) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData

        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name="text", content=TextPluginData(version=0).SerializeToString()))
        tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode("utf-8")],
                             tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
        self._add(global_step,
                  Summary.Value(tag=f"{tag}/text_summary", metadata=meta, tensor=tensor))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _flat_params(obj: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_flat_params(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): str(obj)[:250]}


def check_trackers(names: list[str]) -> None:
    """Fail before a run starts if a named tracker's library is not installed."""
    pkg = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
    for name in names:
        if importlib.util.find_spec(pkg[name]) is None:
            raise ValueError(f"output.trackers: {name!r} is named but not installed "
                             f"(pip install {pkg[name]}), or remove it from output.trackers")


class Trackers:
    """The trackers named in cfg.output.trackers, fed one metrics row at a time."""

    def __init__(self, cfg, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.names = list(cfg.output.trackers)
        check_trackers(self.names)
        ids_path = self.run_dir / IDS_FILE
        ids = json.loads(ids_path.read_text()) if ids_path.exists() else {}
        config = json.loads(cfg.model_dump_json())
        project = cfg.output.tracker_project or "activesyn"
        self._tb = self._wandb = self._mlflow = None
        if "tensorboard" in self.names:
            self._tb = TBWriter(self.run_dir / TB_DIR)
            if not ids.get("tensorboard"):  # config once, not again on resume
                self._tb.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")
                ids["tensorboard"] = TB_DIR
        if "wandb" in self.names:
            import wandb

            self._wandb = wandb.init(project=project, name=self.run_dir.name, config=config,
                                     dir=str(self.run_dir), id=ids.get("wandb"), resume="allow",
                                     group=cfg.name, tags=[cfg.selection.strategy])
            ids["wandb"] = self._wandb.id
        if "mlflow" in self.names:
            import mlflow

            mlflow.set_experiment(project)
            self._mlflow = mlflow.start_run(run_id=ids.get("mlflow"),
                                            run_name=None if ids.get("mlflow") else self.run_dir.name)
            if not ids.get("mlflow"):
                mlflow.log_params(_flat_params(config))
            ids["mlflow"] = self._mlflow.info.run_id
        atomic_write_json(ids_path, ids)

    def log(self, row: dict[str, Any], step: int | None = None) -> None:
        """Log one metrics.jsonl row; step defaults to the budget spent (row['samples'])."""
        step = int(row.get("samples") or 0) if step is None else int(step)
        scalars = flatten(row)
        if self._tb is not None:
            for tag, v in scalars.items():
                self._tb.add_scalar(tag, v, global_step=step)
            self._tb.flush()  # readable while the run goes on (tensorboard --logdir)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        if self._mlflow is not None:
            import mlflow

            # MLflow metric keys allow '/', not spaces; strata come from data, so sanitise
            mlflow.log_metrics({k.replace(" ", "_"): v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._mlflow is not None:
            import mlflow

            mlflow.end_run()
        self._tb = self._wandb = self._mlflow = None


def replay(run_dir: str | Path) -> int:
    """Write the tracker logs of an existing run from its metrics.jsonl (runs made before tracking,
    or with a tracker added later): `activesyn track RUN`. Returns the rows logged."""
    from activesyn_ray import runstore
    from activesyn_ray.config import load_config

    store = runstore.RunStore(run_dir)
    cfg = load_config(store.path(runstore.CONFIG))
    shutil.rmtree(store.root / TB_DIR, ignore_errors=True)  # rewritten whole, not appended twice
    rows = store.read(runstore.METRICS)
    trackers = Trackers(cfg, store.root)
    try:
        for row in rows:
            trackers.log(row)
    finally:
        trackers.close()
    return len(rows)


# ------------------------------------------------------------------- the coordinator's one-line hooks
_open: dict[str, Trackers] = {}


def track(cfg, run_dir: str | Path, row: dict[str, Any]) -> None:
    """Log one metrics row to the run's trackers, opening them on first use (call right after the
    row is appended to metrics.jsonl)."""
    key = str(run_dir)
    if key not in _open:
        _open[key] = Trackers(cfg, run_dir)
    _open[key].log(row)


def close_trackers(run_dir: str | Path) -> None:
    """Finish the run's trackers (W&B/MLflow mark the run finished); call when the run ends."""
    if (trackers := _open.pop(str(run_dir), None)) is not None:
        trackers.close()
