import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from activesyn_ray import atomic_files, runstore
from activesyn_ray.budget import Ledger


def _writer_loop(path: str, big: str) -> None:
    # Rewrites the file forever; killed from outside at a random moment.
    i = 0
    while True:
        runstore.atomic_write_json(path, {"i": i, "payload": big})
        i += 1


def test_killed_atomic_writer_never_leaves_torn_json(tmp_path):
    path = tmp_path / "state.json"
    runstore.atomic_write_json(path, {"i": -1, "payload": ""})
    big = "x" * 2_000_000  # large enough that a kill lands mid-write often
    for trial in range(5):
        proc = mp.get_context("fork").Process(target=_writer_loop, args=(str(path), big))
        proc.start()
        time.sleep(0.15 + 0.05 * trial)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        data = json.loads(path.read_text())  # must parse: old or new, never half
        assert data["payload"] in ("", big)
    leftovers = [p for p in tmp_path.iterdir() if p.name != "state.json"]
    # a killed writer may leave its temp file behind, but never under the real name
    assert all(p.name.startswith(".state.json.") for p in leftovers)


def test_atomic_files_get_normal_permissions(tmp_path):
    path = tmp_path / "state.json"
    runstore.atomic_write_json(path, {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~atomic_files._UMASK


def test_torn_jsonl_tail_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "synthetic.jsonl"
    runstore.append_jsonl(path, [{"a": 1}, {"a": 2}])
    with open(path, "a") as f:
        f.write('{"a": 3, "b": "tor')  # a writer killed mid-line
    assert [r["a"] for r in runstore.read_jsonl(path)] == [1, 2]
    assert runstore.repair_jsonl(path) > 0
    runstore.append_jsonl(path, [{"a": 4}])
    assert [r["a"] for r in runstore.read_jsonl(path)] == [1, 2, 4]


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: corrupt"):
        list(runstore.read_jsonl(path))


def test_store_refuses_to_overwrite_a_run(tmp_path):
    store = runstore.RunStore(tmp_path / "r").create("name: x\n")
    store.save_state({"phase": "prepared"})
    with pytest.raises(FileExistsError, match="activesyn resume"):
        runstore.RunStore(tmp_path / "r").create("name: y\n")


def test_ledger_charges_each_request_once_and_caps():
    led = Ledger(max_samples=3, max_tokens=100)
    assert led.charge("r1", prompt_tokens=10, completion_tokens=5, samples=1)
    assert not led.charge("r1", prompt_tokens=10, completion_tokens=5, samples=1)  # retry duplicate
    assert (led.samples, led.tokens) == (1, 15)
    assert led.affordable(10, tokens_per_request=40) == 2  # 85 tokens left -> 2, samples left 2
    led.charge("j1", prompt_tokens=30, completion_tokens=2, judge=True)
    assert led.judge_tokens == 32 and led.samples == 1
    assert Ledger.from_dict(led.to_dict()).to_dict() == led.to_dict()


def test_resume_refuses_an_edited_config(tmp_path):
    from activesyn_ray.config import load_config
    from activesyn_ray.coordinator import Coordinator
    from activesyn_ray.run_setup import new_run

    cfg = load_config(None, ["task.seed_size=8", "task.test_size=4"])
    store = new_run(cfg, tmp_path / "run")
    Coordinator(run_dir=str(store.root))  # unchanged snapshot: accepted
    cfg_path = store.path(runstore.CONFIG)
    cfg_path.write_text(cfg_path.read_text().replace("samples: 64", "samples: 640"))
    with pytest.raises(RuntimeError, match="config.yaml was changed"):
        Coordinator(run_dir=str(store.root))


def test_a_run_stopped_by_a_fault_prints_one_line_and_keeps_the_traceback(tmp_path, monkeypatch):
    """An actor group that kept failing reaches the console as one line naming the cause, the run
    log and how to resume; exit code 2. A plain bug keeps its traceback."""
    from typer.testing import CliRunner

    import activesyn_ray.driver as driver
    from activesyn_ray.actors import ActorGroupError
    from activesyn_ray.cli import app

    cfg = Path(__file__).resolve().parents[1] / "jobs" / "tiny-cpu.yaml"

    def stops(run_dir):
        raise ActorGroupError("trainer: rank 1 died during 'train' again after 2 restart(s); "
                              "giving up (student.max_restarts, student.call_timeout_s)")

    import activesyn_ray.runtime as runtime

    # this process is pytest's: keep its logging as it is (route_logs rewires it for a real run)
    monkeypatch.setattr(runtime, "route_logs", lambda run_dir, verbose=False: Path(run_dir) / "run.log")
    monkeypatch.setattr(driver, "run_loop", stops)
    res = CliRunner().invoke(app, ["run", str(cfg), "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    line = [ln for ln in res.output.splitlines() if "error:" in ln]
    assert line and "ActorGroupError: trainer: rank 1 died" in " ".join(res.output.split())
    assert "run.log" in res.output and "activesyn resume" in res.output
    assert "Traceback" not in res.output

    def bug(run_dir):
        raise KeyError("a bug")

    monkeypatch.setattr(driver, "run_loop", bug)
    res = CliRunner().invoke(app, ["run", str(cfg), "--run-dir", str(tmp_path / "r2")])
    assert res.exit_code != 2 and isinstance(res.exception, KeyError)
