"""The student: DeepSpeed + PEFT LoRA trainer ranks, scorer shards, and the pool that drives both."""

from activesyn_ray.student.pool import StudentPool

__all__ = ["StudentPool"]
