"""Fitting the ecosystem: hub models, worker environment, tracking, export, storage, status, HF data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _py(code: str, env: dict, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


# ------------------------------------------------------------------------------------------ models
def test_hub_id_offline_and_not_cached_fails_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(ROOT))
    res = _py("from activesyn_ray.models import resolve_model\n"
              "try:\n    resolve_model('Qwen/Qwen2.5-0.5B-Instruct')\n"
              "except FileNotFoundError as e:\n    print(e)\n", env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.stdout
    assert "'Qwen/Qwen2.5-0.5B-Instruct'" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert str(tmp_path / "hf") in lines[0]  # names the cache it looked in


def test_hub_id_found_in_cache_offline(tmp_path, monkeypatch):
    """A cached snapshot (laid out as huggingface_hub does) resolves offline, with no download."""
    from activesyn_ray.models import resolve_model

    cache = tmp_path / "hub"
    snap = cache / "models--org--tiny" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("org/tiny") == snap


def test_worker_env_passes_hf_settings_but_no_secrets(monkeypatch):
    from activesyn_ray.config import load_config
    from activesyn_ray.runtime import worker_env

    monkeypatch.setenv("HF_HOME", "/data/hf")
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_secret2")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    env = worker_env(load_config(None, ["resources.model_cache=/models"]).resources)
    assert env["HF_HOME"] == "/data/hf" and env["HF_ENDPOINT"] == "https://mirror.example"
    assert env["HF_HUB_CACHE"] == "/models"
    assert "HF_HUB_OFFLINE" not in env  # never forced offline when the user did not ask
    assert not any("secret" in v for v in env.values()), env


# ---------------------------------------------------------------------------------------- tracking
def test_tensorboard_events_hold_the_accuracy_curve(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from activesyn_ray.config import load_config
    from activesyn_ray.tracking import Trackers

    cfg = load_config(None)
    rows = [{"iteration": i, "samples": 8 * i, "accuracy": acc, "teacher_tokens": 100 * i,
             "train_loss_last": 2.0 / i, "accuracy_by_stratum": {"easy": acc + 0.1, "hard": acc - 0.1},
             "selected_by_stratum": {"easy": 3, "hard": 5}, "phase_s": {"train": 1.5, "eval": 0.5},
             "val_accuracy": None}
            for i, acc in [(1, 0.2), (2, 0.35), (3, 0.5)]]
    from activesyn_ray.tracking import close_trackers, track

    tr = Trackers(cfg, tmp_path)
    for r in rows[:2]:
        tr.log(r)
    tr.close()
    track(cfg, tmp_path, rows[2])  # a resumed run, through the coordinator's one-line hook
    close_trackers(tmp_path)
    ea = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    curve = [(e.step, round(e.value, 6)) for e in ea.Scalars("accuracy/overall")]
    assert curve == [(8, 0.2), (16, 0.35), (24, 0.5)]
    assert [round(e.value, 6) for e in ea.Scalars("accuracy/hard")] == [0.1, 0.25, 0.4]
    assert {"selection/easy", "time/phase/train", "budget/teacher_tokens",
            "loss/train_last_epoch"} <= set(ea.Tags()["scalars"])
    assert "accuracy/val" not in ea.Tags()["scalars"]  # None (no validation split) is not logged


def test_tensorboard_records_are_what_torchs_summarywriter_writes(tmp_path):
    """TBWriter (no torch in the coordinator) against torch.utils.tensorboard.SummaryWriter, the
    same calls into two folders: every event as TensorBoard reads it back is the same (tag, step,
    value; the text plugin's record and its metadata), in the same order."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from torch.utils.tensorboard import SummaryWriter

    from activesyn_ray.tracking import TBWriter

    def write(w):
        w.add_text("config", "```\nname: tiny ü\n```")
        for step, acc in [(0, 0.0), (8, 0.25), (16, 1 / 3)]:
            w.add_scalar("accuracy/overall", acc, global_step=step)
            w.add_scalar("budget/teacher_tokens", 1e6 + step, global_step=step)
        w.flush()
        w.close()

    def events(folder):
        (path,) = folder.glob("events.out.tfevents.*")
        out = []
        for ev in EventFileLoader(str(path)).Load():
            for v in ev.summary.value:
                out.append((ev.step, v.SerializeToString(deterministic=True)))
            if ev.HasField("file_version"):
                out.append(("file_version", ev.file_version))
        return out

    write(SummaryWriter(log_dir=str(tmp_path / "torch")))
    write(TBWriter(tmp_path / "ours"))
    ours, theirs = events(tmp_path / "ours"), events(tmp_path / "torch")
    assert len(ours) == 8 and ours == theirs


def test_named_tracker_not_installed_fails_clearly():
    import importlib.util

    from activesyn_ray.tracking import check_trackers

    missing = [n for n in ("wandb", "mlflow") if importlib.util.find_spec(n) is None]
    if not missing:
        pytest.skip("wandb and mlflow are both installed")
    with pytest.raises(ValueError, match=f"output.trackers: '{missing[0]}' is named but not installed"):
        check_trackers(["tensorboard", missing[0]])


# ------------------------------------------------------------------------------------------ export
def _fake_run(root: Path, *, model: str = "tiny") -> Path:
    """A finished run directory as the coordinator leaves it (config, splits, synthetic, scores)."""
    from activesyn_ray import runstore
    from activesyn_ray.config import dump_config, load_config

    cfg = load_config(None, [f"student.model={model}", "selection.strategy=loss"])
    store = runstore.RunStore(root / "run").create(dump_config(cfg))
    store.save_state({"phase": "done", "iteration": 2, "done": True, "n_seeds": 2, "n_test": 1})
    runstore.write_jsonl(store.path(runstore.SEEDS), [
        {"id": "s1", "question": "1+1=?", "answer": "2", "meta": {"level": 0}},
        {"id": "s2", "question": "2+5=?", "answer": "7", "meta": {"stratum": "hard"}}])
    syn = [{"request_id": "gen-1-s1", "seed_id": "s1", "iteration": 1, "engine": "hf",
            "model": "smollm2-135m", "prompt_tokens": 40, "completion_tokens": 12, "parsed": True,
            "seed_score": 1.5, "seed_index": 0, "rejected": "wrong answer", "contaminated": None,
            "example": {"id": "gen-1-s1", "question": "3+4=?", "answer": "7", "solution": "3+4 is 7",
                        "meta": {"seed_id": "s1", "iteration": 1, "teacher": "hf"}}},
           {"request_id": "gen-2-s2", "seed_id": "s2", "iteration": 2, "engine": "hf",
            "model": "smollm2-135m", "prompt_tokens": 41, "completion_tokens": 30, "parsed": False,
            "seed_score": 0.5, "seed_index": 1, "example": None, "raw": "I cannot"}]
    store.append(runstore.SYNTHETIC, syn)
    store.append(runstore.SCORES, [{"iteration": 1, "request_id": "gen-1-s1", "seed_score": 1.5,
                                    "sample_score": 0.9, "kind": "synthetic", "stratum": "0"}])
    return store.root


def test_export_round_trips_through_load_from_disk(tmp_path):
    import datasets
    import pyarrow.parquet as pq

    from activesyn_ray.export import export_dataset, synthetic_rows

    run = _fake_run(tmp_path)
    res = export_dataset(run, tmp_path / "out")
    rows = synthetic_rows(run)
    loaded = datasets.load_from_disk(str(res["dataset"]))
    assert loaded.to_list() == rows
    assert pq.read_table(res["parquet"]).to_pylist() == rows
    first, second = rows
    assert (first["seed_id"], first["iteration"], first["seed_score"], first["sample_score"],
            first["teacher"], first["prompt_tokens"], first["stratum"], first["strategy"]) == \
        ("s1", 1, 1.5, 0.9, "hf", 40, "0", "loss")
    assert second["parsed"] is False and second["question"] is None and second["stratum"] == "hard"
    assert (first["rejected"], first["contaminated"], second["rejected"]) == ("wrong answer", None, None)


def test_export_sft_layouts_are_what_trl_sfttrainer_trains_on(tmp_path):
    """OUT/sft/prompt_completion.jsonl and messages.jsonl, read with datasets' json loader and
    handed as they are to TRL's SFTTrainer: the prompt/completion layout gives the very token ids
    and loss mask the student's own trainer builds; the chat layout keeps the `#### answer`
    format in the assistant turn. Only trained-on samples (parsed, not contaminated) are there."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from activesyn_ray import runstore
    from activesyn_ray.export import export_dataset
    from activesyn_ray.models import resolve_model
    from activesyn_ray.student.data import encode

    run = _fake_run(tmp_path)
    runstore.RunStore(run).append(runstore.SYNTHETIC, [  # a held-out question: never trained on
        {"request_id": "gen-2-s1", "seed_id": "s1", "iteration": 2, "parsed": True,
         "contaminated": "exact", "example": {"id": "g", "question": "9+9=?", "answer": "18"}}])
    res = export_dataset(run, tmp_path / "out")
    assert res["sft_rows"] == 1
    load = lambda p: datasets.load_dataset("json", data_files=str(p), split="train")  # noqa: E731
    pc, chat = load(res["prompt_completion"]), load(res["messages"])
    assert pc.to_list() == [{"prompt": "Question: 3+4=?\nAnswer:",
                             "completion": " 3+4 is 7\n#### 7"}]
    assert chat.to_list() == [{"messages": [{"content": "3+4=?", "role": "user"},
                                            {"content": "3+4 is 7\n#### 7", "role": "assistant"}]}]

    tok = AutoTokenizer.from_pretrained(resolve_model("tiny"))
    # a base model has no chat template; a user gives one, as here (SmolLM2 and hub chat models ship theirs)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    model = AutoModelForCausalLM.from_pretrained(resolve_model("tiny"))

    def prepared(ds):
        args = SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], max_steps=1, use_cpu=True)
        return SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok).train_dataset[0]

    row = prepared(pc)
    ids, labels = encode(tok, {"question": "3+4=?", "target": " 3+4 is 7\n#### 7"}, max_len=1024)
    assert row["input_ids"] == ids and row["labels"] == labels  # what the student trains on
    row = prepared(chat)
    assert tok.decode(row["input_ids"]) == "<user>3+4=?\n<assistant>3+4 is 7\n#### 7\n"


def test_merged_model_answers_like_base_plus_adapter(tmp_path):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from activesyn_ray.export import merge_model
    from activesyn_ray.models import resolve_model

    torch.manual_seed(0)
    run = _fake_run(tmp_path)
    base_dir = resolve_model("tiny")
    # an adapter with non-zero B (a fresh LoRA is a no-op), saved where the coordinator saves it
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                          LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                     init_lora_weights=False))
    peft.save_pretrained(run / "checkpoints" / "final")
    merged_dir = merge_model(run, tmp_path / "out")

    tok = AutoTokenizer.from_pretrained(merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir),
                                    run / "checkpoints" / "final").eval()
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    batch = tok(["Q: 12+7=?\nA:", "Q: 3*4=?\nA:"], return_tensors="pt", padding=True)
    gen = dict(max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        out_merged = merged.generate(**batch, **gen)
        out_ref = ref.generate(**batch, **gen)
        out_base = base.generate(**batch, **gen)
    assert torch.equal(out_merged, out_ref)
    assert not torch.equal(out_merged, out_base)  # the adapter did change the answers


# ----------------------------------------------------------------------------------------- console
CHATTER = ("Loading weights", "Writing model shards", "real_accelerator", "Token authentication",
           "Started a local Ray", "repeated", "WARNING", "autoscaler", "(pid=", "Traceback")
# Every line the console may print for a run (console.py, cli.py); anything else is a leak.
OUR_LINES = re.compile(r"^(run directory: |library output |starting Ray |Ray ready |the run reserves |"
                       r"\[activesyn\] student precision: |"
                       r"the local Ray timed out during startup |"
                       r"loading the student |starting \d+ teacher |teacher ready |trainer and scorers ready |"
                       r"evaluating the starting student |iteration \d+( \(the starting student\))?: "
                       r"samples |final accuracy: |  by level: |report: |plot: |next: )")
SMALL = ["budget.samples=8", "selection.k=4", "task.seed_size=8", "task.test_size=4",
         "student.epochs=1"]


def _tiny_cli(run_dir: Path, sets: list[str]) -> list[str]:
    return [sys.executable, "-m", "activesyn_ray.cli", "run", "jobs/tiny-cpu.yaml", "--run-dir",
            str(run_dir), *sum((["--set", s] for s in sets), [])]


def _run_in_a_terminal(cmd: list[str], env: dict, timeout: float) -> tuple[int, str]:
    """`cmd` with stdin/stdout/stderr on a pseudo-terminal (120 x 40), as in a person's terminal;
    returns the exit code and everything it wrote to the terminal."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
                            start_new_session=True)
    os.close(slave)
    out, deadline = b"", time.time() + timeout
    try:
        while time.time() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's last writer is gone
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(timeout=60), out.decode("utf-8", "replace")


@pytest.mark.slow
def test_console_in_a_terminal_says_what_it_does_and_nothing_else(tmp_path):
    """What a person sees in a terminal, on a machine where the student model is not built yet
    (a fresh ACTIVESYN_CACHE: the driver builds it, which printed loading/writing bars and
    DeepSpeed's accelerator warning): start-up prints its phases, the bar is drawn (no `(pid=`
    prefix), one line per iteration, the summary; no library warning or bar."""
    from activesyn_ray import runstore

    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="xterm",
               ACTIVESYN_CACHE=str(tmp_path / "fresh-cache"))
    code, out = _run_in_a_terminal(_tiny_cli(run_dir, SMALL), env, timeout=900)
    assert code == 0, out[-3000:]
    for phase in ("starting Ray (local, 2 CPUs)", "Ray ready", "loading the student (tiny:h=128,l=2",
                  "1 trainer rank (DeepSpeed ZeRO-2), 2 scorer shards (hf)",
                  "starting 1 teacher replica (procedural", "teacher ready",
                  "trainer and scorers ready",
                  "evaluating the starting student on 4 test questions"):
        assert phase in out, (phase, out[-3000:])
    assert "synthetic samples 4/8 |" in out  # the bar, redrawn in place
    assert not [c for c in CHATTER if c in out], out
    # a terminal ends lines with \r\n; what stays on the screen of a line is what follows its last \r
    screen = [ln.split("\r")[-1] for ln in out.replace("\r\n", "\n").split("\n")]
    screen = [ln for ln in screen if ln.strip()]
    assert [ln for ln in screen if not OUR_LINES.match(ln)] == [], out
    metrics = runstore.RunStore(run_dir).read(runstore.METRICS)
    assert len([ln for ln in screen if ln.startswith("iteration ")]) == len(metrics) == 3
    assert f"report: {run_dir}/report/report.md" in out
    log = (run_dir / "run.log").read_text()
    assert "Writing model shards" in log  # the model was built in the driver, and its bar went here


# ----------------------------------------------------------------------------------------- storage
def test_run_dir_synced_to_a_file_uri_and_read_back(tmp_path, monkeypatch):
    """output.root as a URI: the run works in a local copy, every state save uploads what changed,
    and status/export read the run back from the URI alone (a second folder = remote storage)."""
    from activesyn_ray import runstore, storage
    from activesyn_ray.config import load_config
    from activesyn_ray.run_setup import new_run
    from activesyn_ray.status import run_status

    monkeypatch.setenv("ACTIVESYN_CACHE", str(tmp_path / "cache"))
    remote = tmp_path / "bucket"
    cfg = load_config(ROOT / "jobs" / "tiny-cpu.yaml",
                      [f"output.root=file://{remote}", "task.seed_size=8", "task.test_size=4"])
    local, uri, note = storage.plan_run_dir(cfg)
    assert uri.startswith(f"file://{remote}/tiny-cpu-") and note is None
    assert str(local).startswith(str(tmp_path / "cache" / "runs"))
    store = new_run(cfg, local)
    storage.attach(store.root, uri)
    name = uri.rsplit("/", 1)[-1]
    assert (remote / name / "seeds.jsonl").read_text() == store.path("seeds.jsonl").read_text()

    # a step: a metrics row, then the state save that completes it
    store.append(runstore.METRICS, [{"iteration": 1, "samples": 96, "accuracy": 0.25, "wall_s": 30.0}])
    state = store.load_state()
    state["ledger"]["samples"] = 96
    store.save_state(dict(state, iteration=1, phase="evaluated", n_metrics=1))
    assert runstore.RunStore(remote / name).read(runstore.METRICS)[0]["accuracy"] == 0.25
    assert storage.sync_up(store.root) == 0  # nothing changed since: nothing uploaded

    # another machine: only the URI
    monkeypatch.setenv("ACTIVESYN_CACHE", str(tmp_path / "other-machine"))
    fetched = storage.local_run(uri)
    assert fetched != store.root and storage.remote_of(fetched) == uri
    st = run_status(fetched)
    assert (st["iteration"], st["samples"], st["samples_total"], st["accuracy"]) == (1, 96, 768, 0.25)
    assert st["iterations_left"] == 7 and st["eta_s"] == 7 * 30.0


def test_cli_status_and_export_take_a_uri(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from activesyn_ray import storage
    from activesyn_ray.cli import app

    monkeypatch.setenv("ACTIVESYN_CACHE", str(tmp_path / "cache"))
    run = _fake_run(tmp_path)
    remote = tmp_path / "bucket" / "run1"
    storage.attach(run, f"file://{remote}")
    res = CliRunner().invoke(app, ["status", f"file://{remote}"])
    assert res.exit_code == 0, res.output
    assert "iteration 2" in res.output and "done" in res.output
    res = CliRunner().invoke(app, ["export", f"file://{remote}", "--out", str(tmp_path / "exp")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "exp" / "synthetic.parquet").exists()
    res = CliRunner().invoke(app, ["status", f"file://{tmp_path}/nothing-here"])
    assert res.exit_code == 2 and "not a run directory" in res.output


def test_relative_root_under_ray_job_goes_to_a_persistent_folder(tmp_path, monkeypatch):
    from activesyn_ray import storage
    from activesyn_ray.config import load_config

    job_wd = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    job_wd.mkdir(parents=True)
    monkeypatch.chdir(job_wd)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    monkeypatch.setenv("ACTIVESYN_RUNS", str(tmp_path / "home-runs"))
    local, uri, note = storage.plan_run_dir(load_config(None, ["name=q"]))
    assert uri is None and local.parent == tmp_path / "home-runs" / "runs"
    assert "ray job submit" in note and str(tmp_path / "home-runs") in note
    absolute = tmp_path / "mine"
    assert storage.plan_run_dir(load_config(None), str(absolute))[0] == absolute  # chosen: kept
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert storage.plan_run_dir(load_config(None, ["name=q"]))[0].parent == Path("runs")


# ------------------------------------------------------------------------------------- task.kind hf
def _hf_folder(tmp_path: Path, bad: bool = False) -> Path:
    import datasets

    def rows(n, off):
        return [{"problem": f"What is {i} + {off}?", "solution": f"{i} plus {off}.\n#### {i + off}",
                 "difficulty": "easy" if i % 2 else "hard"} for i in range(n)]
    train = rows(12, 100)
    if bad:
        train[4]["solution"] = "no final answer here"
    folder = tmp_path / "myset"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                          "validation": datasets.Dataset.from_list(rows(6, 200))}).save_to_disk(str(folder))
    return folder


def _hf_cfg(folder: Path, *extra: str):
    from activesyn_ray.config import load_config

    return load_config(None, ["task.kind=hf", f"task.hf.dataset={folder}", "task.hf.test_split=validation",
                              "task.hf.question_field=problem", "task.hf.answer_field=solution",
                              "task.hf.stratum_field=difficulty", "task.seed_size=10",
                              "task.test_size=5", "teacher.engine=hf", *extra])


def test_hf_task_reads_a_local_datasets_folder_with_a_field_mapping(tmp_path):
    from activesyn_ray.tasks import build_task, stratum

    task = build_task(_hf_cfg(_hf_folder(tmp_path)).task, seed=0)
    seeds, test = task.splits()
    assert len(seeds) == 10 and len(test) == 5
    ex = next(e for e in seeds if e.question == "What is 3 + 100?")
    assert (ex.answer, ex.solution, stratum(ex), ex.id) == ("103", "3 plus 100.", "easy", "train-4")
    assert all("+ 200" in e.question for e in test)
    assert task.check(ex, "103") and not task.check(ex, "104")
    again, _ = build_task(_hf_cfg(_hf_folder(tmp_path / "b")).task, seed=0).splits()
    assert [e.id for e in again] == [e.id for e in seeds]  # deterministic in the seed


def test_hf_task_bad_row_named_by_row_number(tmp_path):
    from activesyn_ray.tasks import build_task
    from activesyn_ray.tasks.files import BadRow

    folder = _hf_folder(tmp_path, bad=True)
    with pytest.raises(BadRow, match=r"myset\[train\] row 5: field 'solution' does not match"):
        build_task(_hf_cfg(folder).task, seed=0).splits()
    task = build_task(_hf_cfg(folder, "task.on_bad_row=skip", "task.seed_size=6").task, seed=0)
    seeds, _ = task.splits()
    assert len(seeds) == 6 and len(task.skipped) == 1
    with pytest.raises(ValueError, match="has no split 'dev'; it has train, validation"):
        build_task(_hf_cfg(folder, "task.hf.test_split=dev", "task.on_bad_row=skip").task, seed=0).splits()


def test_hf_task_dry_run_writes_the_splits(tmp_path):
    """The CLI end to end up to the first actor: config + dataset validated, splits written."""
    from typer.testing import CliRunner

    from activesyn_ray import runstore
    from activesyn_ray.cli import app

    folder = _hf_folder(tmp_path)
    sets = ["task.kind=hf", f"task.hf.dataset={folder}", "task.hf.test_split=null",
            "task.hf.question_field=problem", "task.hf.answer_field=solution",
            "task.seed_size=8", "task.test_size=4", "teacher.engine=hf"]
    res = CliRunner().invoke(app, ["run", str(ROOT / "jobs" / "tiny-cpu.yaml"), "--dry-run",
                                   "--run-dir", str(tmp_path / "run"),
                                   *sum((["--set", s] for s in sets), [])])
    assert res.exit_code == 0, res.output
    store = runstore.RunStore(tmp_path / "run")
    assert len(store.read(runstore.SEEDS)) == 8 and len(store.read(runstore.TEST)) == 4
    assert store.load_state()["task"] == f"hf:{folder}"


# ------------------------------------------------------------------------------------------ config
def test_every_config_field_has_a_meaning():
    from activesyn_ray.config import reference_markdown

    rows = [ln for ln in reference_markdown().splitlines() if ln.startswith("| `")]
    empty = [ln.split("|")[1].strip() for ln in rows if not ln.rstrip(" |").split("|")[-1].strip()
             or ln.split("|")[3].strip() == ""]
    assert rows and not empty, f"fields without a docstring: {empty}"


def test_teacher_count_has_one_source_and_eval_every_is_gone(tmp_path):
    from activesyn_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"resources.teacher.num_workers: .*teacher.replicas \(2\)"):
        load_config(None, ["teacher.replicas=2", "resources.teacher.num_workers=3"])
    assert load_config(None, ["teacher.replicas=2", "resources.teacher.num_workers=2"])
    old = tmp_path / "config.yaml"  # a run snapshot from before eval_every was removed
    old.write_text("name: old\neval_every: 1\n")
    assert load_config(old).name == "old"
    with pytest.raises(ConfigError, match="eval_every: no longer a setting"):
        load_config(None, ["eval_every=5"])


def _run_tiny(run_dir, sets):
    """jobs/tiny-cpu.yaml with overrides, run in this process on the suite's shared Ray (the CLI
    around it is tested by the console tests); returns the finished run (4 synthetic samples: every
    caller asks for budget.samples=4)."""
    from activesyn_ray import runstore
    from activesyn_ray.config import load_config
    from activesyn_ray.driver import run_loop
    from activesyn_ray.run_setup import new_run

    store = new_run(load_config(ROOT / "jobs" / "tiny-cpu.yaml", sets), run_dir)
    run_loop(store)
    assert store.load_state()["done"] and len(store.read(runstore.SYNTHETIC)) == 4
    return store


@pytest.mark.slow
def test_hf_dataset_run_end_to_end(tmp_path, ray_session):
    """task.kind: hf from a local datasets folder through the whole loop (tiny hf-engine teacher:
    its samples rarely parse, which the loop must survive), then export."""
    import datasets

    from activesyn_ray import runstore

    folder = _hf_folder(tmp_path)
    run_dir = tmp_path / "run"
    sets = ["task.kind=hf", f"task.hf.dataset={folder}", "task.hf.test_split=validation",
            "task.hf.question_field=problem", "task.hf.answer_field=solution",
            "task.hf.stratum_field=difficulty", "task.seed_size=8", "task.test_size=4",
            "teacher.engine=hf", "teacher.model=tiny", "teacher.max_new_tokens=16",
            "budget.samples=4", "selection.k=4", "student.epochs=1", "output.plots=false"]
    store = _run_tiny(run_dir, sets)
    assert store.read(runstore.METRICS)[-1]["n_test"] == 4
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "activesyn_ray.cli", "export", str(run_dir)],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = datasets.load_from_disk(str(run_dir / "export" / "dataset")).to_list()
    assert len(rows) == 4 and {r["stratum"] for r in rows} <= {"easy", "hard"}


@pytest.mark.slow
def test_seed_and_test_jsonl_files_run_end_to_end(tmp_path, ray_session):
    """task.kind: jsonl with a seed file and a test file (GSM8K style, with a stratum field) through
    the whole loop; per-stratum accuracy comes from the file's field."""
    import json

    from activesyn_ray import runstore

    def rows(lo, hi):
        return "".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}",
                                   "stratum": "small" if i % 2 else "large"}) + "\n"
                       for i in range(lo, hi))

    (tmp_path / "seed.jsonl").write_text(rows(0, 12))
    (tmp_path / "test.jsonl").write_text(rows(100, 106))
    run_dir = tmp_path / "run"
    sets = ["task.kind=jsonl", f"task.seed_path={tmp_path / 'seed.jsonl'}",
            f"task.test_path={tmp_path / 'test.jsonl'}", "task.seed_size=12",
            "task.test_size=6", "teacher.engine=hf", "teacher.model=tiny",
            "teacher.max_new_tokens=16", "budget.samples=4", "selection.k=4", "student.epochs=1",
            "output.plots=false"]
    store = _run_tiny(run_dir, sets)
    assert {e["question"] for e in store.read(runstore.TEST)} == \
        {f"What is {i} + 1?" for i in range(100, 106)}
    last = store.read(runstore.METRICS)[-1]
    assert last["n_test_by_stratum"] == {"large": 3, "small": 3}
