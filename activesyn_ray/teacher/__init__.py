"""The teacher: engines (vllm, hf, openai, procedural), prompts and parsers, and the replica pool
(Ray actors or a Ray Serve deployment) that the coordinator calls."""

from activesyn_ray.teacher.engines import (ENGINES, Completion, Engine, TeacherError, TeacherRequest,
                                           build_engine)
from activesyn_ray.teacher.pool import TeacherPool
from activesyn_ray.teacher.prompts import NEUTRAL_GRADE, Prompts, parse_grade, parse_sample

__all__ = ["ENGINES", "Completion", "Engine", "NEUTRAL_GRADE", "Prompts", "TeacherError",
           "TeacherPool", "TeacherRequest", "build_engine", "parse_grade", "parse_sample"]
