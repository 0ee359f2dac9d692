"""Tasks: where seed and test examples come from, and how answers are checked."""

from activesyn_ray.tasks.base import Example, Task, extract_answer, stratum
from activesyn_ray.tasks.files import Game24Task, JsonlTask, LogiQATask
from activesyn_ray.tasks.gym import GymTask
from activesyn_ray.tasks.hf import HfTask

TASKS: dict[str, type[Task]] = {"gym": GymTask, "jsonl": JsonlTask, "game24": Game24Task,
                                "logiqa": LogiQATask, "hf": HfTask}


def build_task(cfg, *, seed: int) -> Task:
    """`cfg` is a TaskConfig; `seed` makes the splits deterministic."""
    return TASKS[cfg.kind](cfg, seed=seed)


__all__ = ["Example", "Task", "build_task", "extract_answer", "stratum", "TASKS"]
