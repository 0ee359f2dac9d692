"""Bad input in task files: one clear line naming file:line (or the config field), `on_bad_row: skip`
honoured for every kind of bad row, and nothing already written changes."""

import json
from pathlib import Path

import pytest

from activesyn_ray.config import ConfigError, TaskConfig, load_config
from activesyn_ray.tasks import build_task
from activesyn_ray.tasks.files import BadRow


def good_rows(n: int, start: int = 0) -> list[bytes]:
    return [json.dumps({"question": f"What is {i}+1?", "answer": f"{i}+1={i+1}\n#### {i+1}"}).encode()
            for i in range(start, start + n)]


def write(path: Path, rows: list[bytes], *, final_newline: bool = True) -> Path:
    path.write_bytes(b"\n".join(rows) + (b"\n" if final_newline else b""))
    return path


def task(path, **kw):
    return build_task(TaskConfig(kind="jsonl", path=str(path), seed_size=kw.pop("seed_size", 10),
                                 test_size=kw.pop("test_size", 4), **kw), seed=0)


def fails_with(path, pattern, **kw):
    with pytest.raises(BadRow, match=pattern) as err:
        task(path, **kw).splits()
    assert "\n" not in str(err.value)  # one line
    return str(err.value)


def test_invalid_utf8_names_file_line_byte_and_column_and_skip_drops_only_that_row(tmp_path):
    rows = good_rows(20)
    rows[4] = b'{"question": "caf\xff?", "answer": "#### 1"}'
    path = write(tmp_path / "d.jsonl", rows)
    fails_with(path, rf"^{path}:5: not valid UTF-8 \(byte 0xff at column 18\)")
    t = task(path, on_bad_row="skip")
    seeds, test = t.splits()
    assert len(seeds) + len(test) == 14 and [m.split(": ")[0] for m in t.skipped] == [f"{path}:5"]


def test_over_long_row_is_refused_at_a_configurable_limit(tmp_path):
    rows = good_rows(20)
    rows[2] = json.dumps({"question": "x" * 2_000_000, "answer": "#### 1"}).encode()  # a 2 MB row
    path = write(tmp_path / "d.jsonl", rows)
    fails_with(path, rf"^{path}:3: row longer than task.max_row_chars=20000")
    t = task(path, on_bad_row="skip")
    t.splits()
    assert [m.split(": ")[0] for m in t.skipped] == [f"{path}:3"]
    # the limit is a setting: a lower one refuses ordinary rows too, naming each line
    msg = fails_with(path, rf"^{path}:1: row longer than task.max_row_chars=30", max_row_chars=30)
    assert "(" in msg


def test_wrong_types_name_the_field_and_the_type_found(tmp_path):
    rows = good_rows(20)
    rows[0] = json.dumps({"question": 12, "answer": ["not", "a", "string"]}).encode()
    rows[7] = json.dumps({"question": "ok?", "answer": ["not", "a", "string"]}).encode()
    rows[9] = json.dumps({"question": "ok?", "answer": True}).encode()
    rows[11] = b'["a", "list"]'
    path = write(tmp_path / "d.jsonl", rows)
    fails_with(path, rf"^{path}:1: field 'question' must be a string, got int 12")
    t = task(path, on_bad_row="skip")
    t.splits()
    assert t.skipped == [
        f"{path}:1: field 'question' must be a string, got int 12",
        f'{path}:8: field \'answer\' must be a string or a number, got list ["not", "a", "string"]',
        f"{path}:10: field 'answer' must be a string or a number, got bool true",
        f"{path}:12: expected a JSON object with 'question' and 'answer', got list"]
    # a number is a fine answer
    ok = write(tmp_path / "n.jsonl", [json.dumps({"question": f"q{i}", "answer": i}).encode()
                                      for i in range(14)])
    assert task(ok).splits()[0][0].answer.isdigit()


def test_torn_last_line_is_named_as_such_and_a_complete_one_without_newline_is_fine(tmp_path):
    rows = good_rows(20)
    torn = write(tmp_path / "torn.jsonl", rows + [b'{"question": "half a ro'], final_newline=False)
    fails_with(torn, rf"^{torn}:21: last line is cut off")
    t = task(torn, on_bad_row="skip")
    t.splits()
    assert [m.split(": ")[0] for m in t.skipped] == [f"{torn}:21"]
    whole = write(tmp_path / "whole.jsonl", rows, final_newline=False)
    seeds, test = task(whole, seed_size=16).splits()
    assert len(seeds) + len(test) == 20


def test_seed_and_test_files_are_used_as_given(tmp_path):
    seed_file = write(tmp_path / "seed.jsonl", good_rows(12))
    # the test file repeats two seed questions: they must not be evaluated on
    test_file = write(tmp_path / "test.jsonl", good_rows(6, start=100) + good_rows(2))
    cfg = TaskConfig(kind="jsonl", seed_path=str(seed_file), test_path=str(test_file),
                     seed_size=12, test_size=6)
    seeds, test = build_task(cfg, seed=0).splits()
    assert {e.question for e in seeds} == {f"What is {i}+1?" for i in range(12)}
    assert {e.question for e in test} == {f"What is {i}+1?" for i in range(100, 106)}
    assert len({e.id for e in seeds + test}) == 18  # ids unique across the two files
    again, _ = build_task(cfg, seed=0).splits()
    assert [e.id for e in again] == [e.id for e in seeds]
    # a bad row in the test file is named by the test file
    bad = write(tmp_path / "bad.jsonl", good_rows(6, start=100) + [b'{"question": 1, "answer": "2"}'])
    with pytest.raises(BadRow, match=rf"^{bad}:7: field 'question'"):
        build_task(cfg.model_copy(update={"test_path": str(bad)}), seed=0).splits()
    with pytest.raises(FileNotFoundError, match="task.seed_path / task.test_path"):
        build_task(cfg.model_copy(update={"test_path": str(tmp_path / "nope.jsonl")}), seed=0).splits()


@pytest.mark.parametrize("sets, message", [
    (["task.seed_path=a.jsonl"], "task.test_path: required with task.seed_path"),
    (["task.test_path=b.jsonl"], "task.seed_path: required with task.test_path"),
    (["task.path=d.jsonl", "task.seed_path=a.jsonl", "task.test_path=b.jsonl"],
     "task.path: give either path"),
    (["task.kind=gym", "task.seed_path=a.jsonl", "task.test_path=b.jsonl"],
     "task.seed_path: only for file tasks"),
    (["task.max_row_chars=0"], "task.max_row_chars: must be > 0"),
])
def test_config_errors_name_the_field(sets, message):
    base = [] if any("kind" in s for s in sets) else ["task.kind=jsonl"]
    if message.startswith("task.max_row_chars"):
        base.append("task.path=d.jsonl")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, base + sets)


def test_bad_data_changes_nothing_already_written(tmp_path):
    from activesyn_ray.config import RunConfig
    from activesyn_ray.run_setup import new_run

    good = write(tmp_path / "good.jsonl", good_rows(20))
    run_dir = tmp_path / "run"
    cfg = RunConfig(task=TaskConfig(kind="jsonl", path=str(good), seed_size=10, test_size=4),
                    teacher={"engine": "hf"}, output={"run_dir": str(run_dir)})
    new_run(cfg)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    stamps = {p: p.stat().st_mtime_ns for p in before}
    rows = good_rows(20)
    rows[3] = b'{"question": "\xff", "answer": "#### 1"}'
    bad = write(tmp_path / "bad.jsonl", rows)
    for target in (run_dir, tmp_path / "fresh"):
        bad_cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"path": str(bad)}),
                                         "output": cfg.output.model_copy(update={"run_dir": str(target)})})
        with pytest.raises(BadRow, match=rf"{bad}:4: not valid UTF-8"):
            new_run(bad_cfg)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    assert {p: p.stat().st_mtime_ns for p in before} == stamps
    assert not (tmp_path / "fresh").exists()
