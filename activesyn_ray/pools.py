"""Starting a run's actor pools, saying on the console what starts and how long it took: the
student (DeepSpeed trainer ranks + scorer shards) first, then the teacher replicas while the
scorer shards bring up their inference engines."""

from __future__ import annotations

import time

from activesyn_ray.console import started_line


def _n(count: int, what: str) -> str:
    return f"{count} {what}{'s' * (count != 1)}"


def start_student(cfg, task, say):
    from activesyn_ray.student.pool import StudentPool
    from activesyn_ray.student.scoring import resolve_inference

    s, res = cfg.student, cfg.resources
    t0 = time.perf_counter()
    lora = f" + LoRA r {s.lora.r}" if s.lora else ", all weights"
    say(f"loading the student ({s.model}{lora}): "
        f"{_n(res.trainer.num_workers, 'trainer rank')} (DeepSpeed ZeRO-{s.zero_stage}), "
        f"{_n(res.scorers.num_workers, 'scorer shard')} ({resolve_inference(s)})")
    student = StudentPool(cfg=cfg, task=task)
    say(started_line("trainer", t0))
    return student


def start_teacher(cfg, task, ledger, student, say):
    from activesyn_ray.student.scoring import resolve_inference
    from activesyn_ray.teacher.pool import TeacherPool

    t0 = time.perf_counter()
    say(f"starting {_n(cfg.teacher.replicas, 'teacher replica')} ({cfg.teacher.engine}, "
        f"{cfg.teacher.model}) while the scorer shards start their "
        f"{resolve_inference(cfg.student)} engines")
    teacher = TeacherPool(cfg=cfg, task=task, ledger=ledger)
    student.scorers.gather("paths")  # the scorers' engines started with them
    say(started_line("teacher and scorers", t0))
    return teacher
