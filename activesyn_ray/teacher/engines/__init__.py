"""Engines, chosen by name (`teacher.engine`): vllm, hf, openai, procedural.

Adding one = one module with a `@register("name")` Engine subclass, imported in `_load_all`, and its
name in config.TeacherConfig.engine. The vLLM construction (`vllm_engine.start_llm`) also serves the
student's vLLM scorer (student/vllm_scorer.py)."""

from activesyn_ray.teacher.engines.base import (ENGINES, Completion, Engine, TeacherError,
                                                TeacherRequest, request_seed)


def _load_all() -> None:
    # Imported for their @register side effect; heavy libraries load only when an engine is built.
    from activesyn_ray.teacher.engines import (hf_engine, openai_engine, procedural,  # noqa: F401
                                               vllm_engine)


def engine_class(name: str) -> type[Engine]:
    """The registered engine class (not started): its classmethods describe it to the driver."""
    _load_all()
    if name not in ENGINES:
        raise TeacherError(f"teacher.engine: unknown {name!r}; choose one of {', '.join(sorted(ENGINES))}")
    return ENGINES[name]


def build_engine(cfg, *, task=None, num_cpus: float = 1, rank: int = 0) -> Engine:
    """`cfg` is the RunConfig (engines read cfg.teacher and cfg.seed)."""
    return engine_class(cfg.teacher.engine)(cfg=cfg, task=task, num_cpus=num_cpus, rank=rank)


__all__ = ["ENGINES", "Completion", "Engine", "TeacherError", "TeacherRequest", "build_engine",
           "engine_class", "request_seed"]
