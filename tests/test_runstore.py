import json
import multiprocessing as mp
import os
import signal
import time

import pytest

from activesyn_ray import runstore
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
    assert path.stat().st_mode & 0o777 == 0o666 & ~runstore._UMASK


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
