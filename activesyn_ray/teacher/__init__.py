"""The teacher: engines (vllm, hf, openai, procedural), prompts and parsers, the response cache,
and the replica pool (Ray actors or a Ray Serve deployment) that the coordinator calls.

The pool and the prompts are imported on first use (PEP 562): a module that needs only an engine's
types or the cache (teacher/cache.py, a replica, a cache-writing process) does not pay for Ray and
the task libraries."""

from activesyn_ray.teacher.engines import (ENGINES, Completion, Engine, TeacherError, TeacherRequest,
                                           build_engine)

_LAZY = {"TeacherPool": "activesyn_ray.teacher.pool",
         **dict.fromkeys(("NEUTRAL_GRADE", "Prompts", "parse_grade", "parse_sample"),
                         "activesyn_ray.teacher.prompts")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ENGINES", "Completion", "Engine", "NEUTRAL_GRADE", "Prompts", "TeacherError",
           "TeacherPool", "TeacherRequest", "build_engine", "parse_grade", "parse_sample"]
