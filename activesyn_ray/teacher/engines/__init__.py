"""Teacher engines, chosen by name (`teacher.engine`): vllm, hf, openai, procedural."""

from activesyn_ray.teacher.engines.base import (ENGINES, Completion, Engine, TeacherError,
                                                TeacherRequest, request_seed)


def _load_all() -> None:
    # Imported for their @register side effect; heavy libraries load only when an engine is built.
    from activesyn_ray.teacher.engines import (hf_engine, openai_engine, procedural,  # noqa: F401
                                               vllm_engine)


def build_engine(cfg, *, task=None, num_cpus: float = 1, rank: int = 0) -> Engine:
    """`cfg` is the RunConfig (engines read cfg.teacher and cfg.seed)."""
    _load_all()
    name = cfg.teacher.engine
    if name not in ENGINES:
        raise TeacherError(f"teacher.engine: unknown {name!r}; choose one of {', '.join(sorted(ENGINES))}")
    return ENGINES[name](cfg=cfg, task=task, num_cpus=num_cpus, rank=rank)


__all__ = ["ENGINES", "Completion", "Engine", "TeacherError", "TeacherRequest", "build_engine",
           "request_seed"]
