"""Held-out questions never reach training: normalisation, n-gram overlap, procedural redraws,
and the start-up checks that keep answers scorable."""

import pytest

from activesyn_ray.config import ConfigError, load_config
from activesyn_ray.decontaminate import Decontaminator, normalize
from activesyn_ray.preflight import check_lengths, check_question_space
from activesyn_ray.run_setup import make_splits
from activesyn_ray.tasks import Example, build_task, stratum
from pathlib import Path

QUICK = Path(__file__).resolve().parents[1] / "jobs" / "tiny-cpu.yaml"


def test_normalisation_ignores_case_space_and_number_format():
    assert normalize("What is 1,000 + 3.0?") == normalize("what is 1000+3 ?")
    assert normalize("Calculate 07 - 2.") == normalize("calculate 7-2.")
    assert normalize("Calculate 7 - 2.") != normalize("Calculate 7 - 3.")


def test_exact_and_ngram_matches():
    long_q = ("A train leaves the station at 9 am and travels at 60 miles per hour towards a city "
              "that is 240 miles away. When does it arrive?")
    d = Decontaminator(["Calculate 5 + 3 =", long_q], ngram=13)
    assert d.match("calculate 5+3=") == "exact"
    assert d.match("Calculate 5 + 4 =") is None
    paraphrase = ("Problem: so, a train leaves the station at 9 am and travels at 60 miles per hour "
                  "towards a city far away. How long?")
    assert d.match(paraphrase) == "13-gram"
    assert Decontaminator([long_q], ngram=30).match(paraphrase) is None
    # the overlap may sit in the worked solution, not the question
    assert d.match("New question?", "the station at 9 am and travels at 60 miles per hour "
                                    "towards a city that") == "13-gram"


def test_procedural_teacher_redraws_held_out_questions():
    cfg = load_config(QUICK)
    task = build_task(cfg.task, seed=0)
    seeds, val, test = make_splits(cfg, task)
    level0 = [s for s in seeds if stratum(s) == "0"]
    held = {normalize(e.question) for e in test}
    draws = [task.generate_like(level0[i % len(level0)], seed=i) for i in range(300)]
    leaked = sum(normalize(d.question) in held for d in draws)
    assert leaked > 10  # the 1-digit a+b space is small: without the check, test questions recur
    task.held_out = Decontaminator([e.question for e in test])
    again = [task.generate_like(level0[i % len(level0)], seed=i) for i in range(300)]
    assert not any(normalize(d.question) in held for d in again)
    assert sum(d.meta["redraws"] > 0 for d in again) == leaked  # exactly the leaked ones redrawn
    # deterministic: the same seed gives the same redraw
    assert [d.question for d in again[:20]] == \
        [task.generate_like(level0[i % len(level0)], seed=i).question for i in range(20)]
    assert all(d.meta["level"] == 0 for d in again)


def test_validation_split_is_carved_from_the_pool_and_disjoint():
    cfg = load_config(QUICK, ["task.val_size=30"])
    seeds, val, test = make_splits(cfg, build_task(cfg.task, seed=0))
    assert (len(seeds), len(val), len(test)) == (180, 30, 90)
    qs = [normalize(e.question) for e in seeds + val + test]
    assert len(set(qs)) == len(qs)
    assert sorted({stratum(e) for e in val}) == ["0", "1", "2"]


def _splits(sets):
    cfg = load_config(QUICK, sets)
    task = build_task(cfg.task, seed=0)
    seeds, val, test = make_splits(cfg, task)
    return cfg, task, seeds, val + test


def test_too_short_max_new_tokens_is_refused_with_the_field_and_an_example():
    cfg, task, seeds, held = _splits(["student.max_new_tokens=8"])
    with pytest.raises(ConfigError, match=r"student\.max_new_tokens: 8 is too short .* at least 10"):
        check_lengths(cfg, task, seeds, held)
    cfg, task, seeds, held = _splits([])
    assert check_lengths(cfg, task, seeds, held) == []


def test_truncating_max_seq_len_and_small_question_spaces_warn_with_numbers():
    cfg, task, seeds, held = _splits(["student.max_seq_len=20"])
    (w,) = check_lengths(cfg, task, seeds, held)
    assert w.startswith("student.max_seq_len: 20 truncates prompt + target of")
    warns = check_question_space(cfg, task)
    assert [w.split(":")[0] for w in warns] == ["task.levels[0]", "task.levels[1]"]
    assert "121 distinct questions in 2,000 draws" in warns[0]
    big = load_config(QUICK, ["task.levels=[{min_digits: 3, max_digits: 3}]", "teacher.engine=procedural"])
    assert check_question_space(big, build_task(big.task, seed=0)) == []


LOCAL_JOBS = [QUICK.parent / n for n in ("quickstart.yaml", "tiny-cpu.yaml", "loop-timing-cpu.yaml",
                                        "pretrained-cpu.yaml")]
BENCH_LOOP = Path(__file__).resolve().parents[1] / "activesyn_ray" / "benchmarks" / "loop.yaml"


@pytest.mark.parametrize("path", LOCAL_JOBS + [BENCH_LOOP], ids=lambda p: p.name)
def test_shipped_local_jobs_pass_the_length_check(path):
    """The jobs that run on this machine (and the loop `activesyn bench` runs from the package)
    start: the check refused bench's loop once (max_new_tokens 8 < 10) and nothing noticed."""
    cfg = load_config(path)
    task = build_task(cfg.task, seed=0)
    seeds, val, test = make_splits(cfg, task)
    check_lengths(cfg, task, seeds, val + test)  # raises ConfigError on an unscorable answer


def test_quickstart_gives_no_warning_about_itself():
    """The first job a person runs must not warn about its own settings (the old one warned that
    its 1-digit levels had ~120 distinct questions), and it fits a 2-core machine."""
    from activesyn_ray.preflight import preflight

    cfg = load_config(QUICK.parent / "quickstart.yaml")
    task = build_task(cfg.task, seed=cfg.seed)
    seeds, val, test = make_splits(cfg, task)
    assert preflight(cfg, task, seeds, val + test) == []
    res = cfg.resources
    cpus = sum(g.num_workers * g.num_cpus for g in (res.trainer, res.scorers)) + \
        cfg.teacher.replicas * res.teacher.num_cpus + res.coordinator_num_cpus
    assert cpus <= res.local_num_cpus == 2
    assert cfg.student.model == "smollm2-135m" and cfg.student.lora
    assert cfg.teacher.engine == "procedural"
