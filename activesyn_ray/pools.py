"""Starting a run's actor pools, saying on the console what starts and how long it took. Both
pools start at once (`start_pools`): the student's actors (DeepSpeed trainer ranks + scorer shards)
are created, the teacher replicas start while they come up, then the student is waited for. So
start-up takes about the slower pool's time instead of the sum (a vLLM teacher beside DeepSpeed
ranks and vLLM scorers on a cluster; on a small CPU box, whatever cores one pool leaves idle).
"""

from __future__ import annotations

import time

from activesyn_ray.console import started_line


def _n(count: int, what: str) -> str:
    return f"{count} {what}{'s' * (count != 1)}"


def start_pools(cfg, task, ledger, say):
    """(student, teacher), started together (see the module docstring); a failure of either
    stops what the other started."""
    from activesyn_ray.student.pool import StudentPool
    from activesyn_ray.student.scoring import resolve_inference
    from activesyn_ray.teacher.pool import TeacherPool

    s, res = cfg.student, cfg.resources
    t0 = time.perf_counter()
    lora = f" + LoRA r {s.lora.r}" if s.lora else ", all weights"
    say(f"loading the student ({s.model}{lora}): "
        f"{_n(res.trainer.num_workers, 'trainer rank')} (DeepSpeed ZeRO-{s.zero_stage}), "
        f"{_n(res.scorers.num_workers, 'scorer shard')} ({resolve_inference(s)})")
    student = StudentPool(cfg=cfg, task=task, wait=False)
    teacher = None
    try:
        say(f"starting {_n(cfg.teacher.replicas, 'teacher replica')} ({cfg.teacher.engine}, "
            f"{cfg.teacher.model}) while the student's actors start")
        teacher = TeacherPool(cfg=cfg, task=task, ledger=ledger)
        say(started_line("teacher", t0))
        student.wait_ready()
        say(started_line("trainer and scorers", t0))
    except BaseException:
        for pool in (teacher, student):
            if pool is not None:
                pool.shutdown()
        raise
    return student, teacher
